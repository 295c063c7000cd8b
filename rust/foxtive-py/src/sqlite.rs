//! `_core.SqliteBackend`: the SQLite backend as a Python object, and the
//! SQL of the transactional enqueue (`publish(..., transaction=conn)`),
//! taken from the core so that there is one INSERT.

use std::sync::Arc;

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyTuple};

use foxtive_core::backend::options::Options;
use foxtive_core::backend::sqlite::row::{self, SqlValue};
use foxtive_core::backend::sqlite::{dedup, path_from_url, schema, SqliteBackend, SqliteConfig};
use foxtive_core::dlq::DeadLetterStore;

use crate::convert::outgoings_from_py;
use crate::errors::{config_error, IntoPyResult};
use crate::native_backend::NativeBackend;
use crate::registry::options_from_py;

/// A SQLite queue. Name, state, counters, connect, close, publish and the
/// dead-letter store come from the base class; here only what is SQLite's.
#[pyclass(extends = NativeBackend, frozen, name = "SqliteBackend", module = "foxtive._core")]
pub struct PySqliteBackend {
    pub(crate) inner: Arc<SqliteBackend>,
}

fn text(name: &str, value: &Bound<'_, PyAny>) -> PyResult<String> {
    value.extract::<String>().map_err(|_| {
        let type_name = value
            .get_type()
            .name()
            .map_or_else(|_| "?".to_string(), |n| n.to_string());
        config_error(format!("{name}: expected a string, got {type_name}"))
    })
}

#[pymethods]
impl PySqliteBackend {
    /// `options`: the settings by name (`lease_timeout`, `busy_timeout`,
    /// `poll_max`, `keep_finished`; None or absent: the default), read and checked once by the
    /// core, as `backend_from_url("sqlite:///...")` does.
    #[new]
    #[pyo3(signature = (path, queue, options = None))]
    fn new(
        path: &Bound<'_, PyAny>,
        queue: &Bound<'_, PyAny>,
        options: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<PyClassInitializer<Self>> {
        let options = match options {
            Some(dict) => options_from_py(dict)?,
            None => Options::new(),
        };
        let cfg = SqliteConfig::from_options(text("path", path)?, &text("queue", queue)?, options)
            .py_err()?;
        let inner = Arc::new(SqliteBackend::new(cfg).py_err()?);
        let dead_letters: Arc<dyn DeadLetterStore> = Arc::new(inner.dead_letter_store());
        let base = NativeBackend::new(inner.clone()).with_dead_letters(Some(dead_letters));
        Ok(PyClassInitializer::from(base).add_subclass(PySqliteBackend { inner }))
    }

    #[getter]
    fn path(&self) -> String {
        self.inner.config().path.display().to_string()
    }

    #[getter]
    fn lease_timeout(&self) -> f64 {
        self.inner.config().lease_timeout.as_secs_f64()
    }

    #[getter]
    fn busy_timeout(&self) -> f64 {
        self.inner.config().busy_timeout.as_secs_f64()
    }

    #[getter]
    fn poll_max(&self) -> f64 {
        self.inner.config().poll_max.as_secs_f64()
    }

    /// Seconds a finished job is kept (0: deleted at ack).
    #[getter]
    fn keep_finished(&self) -> f64 {
        self.inner.config().keep_finished.as_secs_f64()
    }

    /// Rows delivered and not settled yet.
    fn held(&self) -> usize {
        self.inner.held()
    }

    fn __repr__(&self) -> String {
        let c = self.inner.config();
        format!(
            "SqliteBackend(path={:?}, queue={:?}, lease_timeout={})",
            c.path.display().to_string(),
            c.queue,
            c.lease_timeout.as_secs_f64()
        )
    }
}

/// The file a `sqlite:///` URL names (relative) or `sqlite:////` (absolute).
#[pyfunction]
pub fn sqlite_path_from_url(url: &str) -> PyResult<String> {
    Ok(path_from_url(url).py_err()?.display().to_string())
}

/// The transactional enqueue, as SQL for the caller's own connection:
/// `(ddl, insert, rows, ids)`. Run each `ddl` statement (all `IF NOT
/// EXISTS`), then `executemany(insert, rows)`; `ids` are the message ids.
/// `message_ids`: one id per body (a batch of tasks). The DDL includes the
/// result table, so the task layer can write a task's "pending" record in
/// the same transaction (no second connection waiting on the caller's lock).
#[pyfunction]
#[pyo3(signature = (queue, bodies, headers = None, delay = None, message_id = None, priority = None, message_ids = None))]
// The Python keywords, one argument each (as postgres_enqueue).
#[allow(clippy::type_complexity, clippy::too_many_arguments)]
pub fn sqlite_enqueue<'py>(
    py: Python<'py>,
    queue: &str,
    bodies: &Bound<'py, PyAny>,
    headers: Option<&Bound<'py, PyDict>>,
    delay: Option<&Bound<'py, PyAny>>,
    message_id: Option<String>,
    priority: Option<&Bound<'py, PyAny>>,
    message_ids: Option<Vec<String>>,
) -> PyResult<(
    Vec<&'static str>,
    &'static str,
    Vec<Bound<'py, PyTuple>>,
    Vec<String>,
)> {
    let now = foxtive_core::clock::unix_now();
    let mut rows = Vec::new();
    let mut ids = Vec::new();
    let batch = message_ids.is_some();
    for mut out in outgoings_from_py(bodies, headers, delay, message_ids, priority)? {
        if !batch {
            out.message_id = message_id.clone();
        }
        let (params, id) = row::insert_params(queue, &out, now);
        let values = params
            .into_iter()
            .map(|v| sql_to_py(py, v))
            .collect::<PyResult<Vec<_>>>()?;
        rows.push(PyTuple::new(py, values)?);
        ids.push(id);
    }
    let ddl = schema::DDL.iter().chain(schema::RESULTS).copied().collect();
    Ok((ddl, schema::INSERT_JOB, rows, ids))
}

/// Create `path` if missing and bring its tables to the latest version:
/// `(version_before, version_after)` (`foxtive db migrate`, result stores).
#[pyfunction]
pub fn sqlite_migrate(py: Python<'_>, path: String) -> PyResult<(i64, i64)> {
    py.detach(|| {
        foxtive_core::backend::sqlite::migrate_path(
            std::path::Path::new(&path),
            foxtive_core::backend::sqlite::DEFAULT_BUSY_TIMEOUT,
        )
    })
    .py_err()
}

fn sql_to_py(py: Python<'_>, v: SqlValue) -> PyResult<Bound<'_, PyAny>> {
    Ok(match v {
        SqlValue::Null => py.None().into_bound(py),
        SqlValue::Integer(i) => i.into_pyobject(py)?.into_any(),
        SqlValue::Real(f) => f.into_pyobject(py)?.into_any(),
        SqlValue::Text(s) => s.into_pyobject(py)?.into_any(),
        SqlValue::Blob(b) => PyBytes::new(py, &b).into_any(),
    })
}

/// The transactional enqueue's deduplication, as SQL for the caller's
/// connection: `(claim, held)`. Run `claim` with (queue, key, message id,
/// expires at, now) in unix seconds: a row back means the key is taken,
/// insert the job; none means another job holds it, and `held` with
/// (queue, key) names it.
#[pyfunction]
pub fn sqlite_dedup_sql() -> (&'static str, &'static str) {
    (dedup::CLAIM, dedup::HELD)
}

/// Add the class and functions of this module to `_core`.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PySqliteBackend>()?;
    m.add_function(wrap_pyfunction!(sqlite_path_from_url, m)?)?;
    m.add_function(wrap_pyfunction!(sqlite_enqueue, m)?)?;
    m.add_function(wrap_pyfunction!(sqlite_migrate, m)?)?;
    m.add_function(wrap_pyfunction!(sqlite_dedup_sql, m)?)?;
    Ok(())
}
