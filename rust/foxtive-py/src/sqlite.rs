//! `_core.SqliteBackend`: the SQLite backend as a Python object, and the
//! SQL of the transactional enqueue (`publish(..., transaction=conn)`),
//! taken from the core so that there is one INSERT.

use std::sync::Arc;

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyTuple};

use foxtive_core::backend::sqlite::row::{self, SqlValue};
use foxtive_core::backend::sqlite::{path_from_url, schema, SqliteBackend, SqliteConfig};
use foxtive_core::backend::Backend;

use crate::backends::PyDeadLetter;
use crate::bridge;
use crate::convert::{duration_from_py, outgoing_from_py};
use crate::errors::IntoPyResult;

#[pyclass(frozen, name = "SqliteBackend", module = "foxtive._core")]
pub struct PySqliteBackend {
    pub(crate) inner: Arc<SqliteBackend>,
}

#[pymethods]
impl PySqliteBackend {
    #[new]
    #[pyo3(signature = (path = "foxtive.db", queue = "default", lease_timeout = None,
                        busy_timeout = None, poll_max = None))]
    fn new(
        path: &str,
        queue: &str,
        lease_timeout: Option<&Bound<'_, PyAny>>,
        busy_timeout: Option<&Bound<'_, PyAny>>,
        poll_max: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let mut cfg = SqliteConfig::new(path, queue);
        if let Some(v) = lease_timeout {
            cfg.lease_timeout = duration_from_py("lease_timeout", v)?;
        }
        if let Some(v) = busy_timeout {
            cfg.busy_timeout = duration_from_py("busy_timeout", v)?;
        }
        if let Some(v) = poll_max {
            cfg.poll_max = duration_from_py("poll_max", v)?;
        }
        Ok(PySqliteBackend {
            inner: Arc::new(SqliteBackend::new(cfg).py_err()?),
        })
    }

    #[getter]
    fn name(&self) -> &str {
        self.inner.name()
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
    fn state(&self) -> &'static str {
        self.inner.state().as_str()
    }

    #[getter]
    fn reconnect_attempts(&self) -> u64 {
        self.inner.reconnect_attempts()
    }

    #[getter]
    fn consecutive_failures(&self) -> u32 {
        self.inner.consecutive_failures()
    }

    /// Rows delivered and not settled yet.
    fn held(&self) -> usize {
        self.inner.held()
    }

    /// Publish one message (awaitable → its id).
    #[pyo3(signature = (body, headers = None, delay = None, message_id = None))]
    fn publish<'py>(
        &self,
        py: Python<'py>,
        body: &Bound<'py, PyAny>,
        headers: Option<&Bound<'py, PyDict>>,
        delay: Option<&Bound<'py, PyAny>>,
        message_id: Option<String>,
    ) -> PyResult<Bound<'py, PyAny>> {
        crate::backends::publish_one(py, self.inner.clone(), body, headers, delay, message_id)
    }

    /// Publish many messages in one transaction (awaitable → their ids).
    #[pyo3(signature = (bodies, headers = None, delay = None))]
    fn publish_many<'py>(
        &self,
        py: Python<'py>,
        bodies: &Bound<'py, PyAny>,
        headers: Option<&Bound<'py, PyDict>>,
        delay: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        crate::backends::publish_many(py, self.inner.clone(), bodies, headers, delay)
    }

    /// Up to `limit` dead letters of this queue, oldest first (awaitable).
    #[pyo3(signature = (limit = 100))]
    fn dead_letters<'py>(&self, py: Python<'py>, limit: usize) -> PyResult<Bound<'py, PyAny>> {
        let inner = self.inner.clone();
        bridge::awaitable(py, async move {
            let letters = inner.dead_letters(limit).await?;
            Ok(letters
                .into_iter()
                .map(|inner| PyDeadLetter { inner })
                .collect::<Vec<_>>())
        })
    }

    /// The dead-letter table of this queue as a store (list, replay, purge).
    fn dead_letter_store(&self) -> crate::dlq::PyDeadLetterStore {
        crate::dlq::PyDeadLetterStore::of(self.inner.dead_letter_store())
    }

    /// Hand back unsettled jobs and close the file (awaitable).
    fn close<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let inner = self.inner.clone();
        bridge::awaitable(py, async move { inner.close().await })
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
#[pyfunction]
#[pyo3(signature = (queue, bodies, headers = None, delay = None, message_id = None))]
#[allow(clippy::type_complexity)]
pub fn sqlite_enqueue<'py>(
    py: Python<'py>,
    queue: &str,
    bodies: &Bound<'py, PyAny>,
    headers: Option<&Bound<'py, PyDict>>,
    delay: Option<&Bound<'py, PyAny>>,
    message_id: Option<String>,
) -> PyResult<(
    Vec<&'static str>,
    &'static str,
    Vec<Bound<'py, PyTuple>>,
    Vec<String>,
)> {
    let now = foxtive_core::clock::unix_now();
    let mut rows = Vec::new();
    let mut ids = Vec::new();
    for body in bodies.try_iter()? {
        let out = outgoing_from_py(&body?, headers, delay, message_id.clone())?;
        let (params, id) = row::insert_params(queue, &out, now);
        let values = params
            .into_iter()
            .map(|v| sql_to_py(py, v))
            .collect::<PyResult<Vec<_>>>()?;
        rows.push(PyTuple::new(py, values)?);
        ids.push(id);
    }
    Ok((schema::DDL.to_vec(), schema::INSERT_JOB, rows, ids))
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

/// Add the class and functions of this module to `_core`.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PySqliteBackend>()?;
    m.add_function(wrap_pyfunction!(sqlite_path_from_url, m)?)?;
    m.add_function(wrap_pyfunction!(sqlite_enqueue, m)?)?;
    Ok(())
}
