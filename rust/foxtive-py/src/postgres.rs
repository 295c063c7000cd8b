//! `_core.PostgresBackend`: the PostgreSQL backend as a Python object (a
//! subclass of the native base: name, state, publish, close are there), and
//! `_core.postgres_enqueue`, which turns messages into the backend's own
//! INSERT (SQL text and parameters) for a transactional enqueue through the
//! caller's connection.

use std::sync::Arc;

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyTuple};

use foxtive_core::backend::postgres::dedup;
use foxtive_core::backend::postgres::publish::EnqueueRows;
use foxtive_core::backend::postgres::schema::{insert_sql, Placeholders};
use foxtive_core::backend::postgres::{PostgresBackend, PostgresConfig};
use foxtive_core::dlq::DeadLetterStore;

use crate::bridge;
use crate::convert::{duration_from_py, outgoings_from_py};
use crate::errors::{config_error, IntoPyResult};
use crate::native_backend::NativeBackend;

#[pyclass(extends = NativeBackend, frozen, name = "PostgresBackend", module = "foxtive._core")]
pub struct PyPostgresBackend {
    pub(crate) inner: Arc<PostgresBackend>,
}

#[pymethods]
impl PyPostgresBackend {
    #[new]
    #[pyo3(signature = (dsn, queue = "default", schema = "foxtive", lease_timeout = None, poll_interval = None, keep_finished = None))]
    fn new(
        dsn: &str,
        queue: &str,
        schema: &str,
        lease_timeout: Option<&Bound<'_, PyAny>>,
        poll_interval: Option<&Bound<'_, PyAny>>,
        keep_finished: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<PyClassInitializer<Self>> {
        let mut cfg = PostgresConfig::new(queue);
        cfg.schema = schema.to_string();
        if let Some(v) = lease_timeout {
            cfg.lease_timeout = duration_from_py("lease_timeout", v)?;
        }
        if let Some(v) = poll_interval {
            cfg.poll_interval = duration_from_py("poll_interval", v)?;
        }
        if let Some(v) = keep_finished {
            cfg.keep_finished = duration_from_py("keep_finished", v)?;
        }
        let inner = Arc::new(PostgresBackend::new(dsn, cfg).py_err()?);
        let dead_letters: Arc<dyn DeadLetterStore> = Arc::new(inner.dead_letter_store());
        let base = NativeBackend::new(inner.clone()).with_dead_letters(Some(dead_letters));
        Ok(PyClassInitializer::from(base).add_subclass(PyPostgresBackend { inner }))
    }

    /// The DSN with its password replaced by `***`.
    #[getter]
    fn url(&self) -> &str {
        self.inner.url()
    }

    #[getter]
    fn schema(&self) -> &str {
        &self.inner.config().schema
    }

    #[getter]
    fn lease_timeout(&self) -> f64 {
        self.inner.config().lease_timeout.as_secs_f64()
    }

    /// Seconds a finished job is kept in `finished_jobs` (0: deleted at ack).
    #[getter]
    fn keep_finished(&self) -> f64 {
        self.inner.config().keep_finished.as_secs_f64()
    }

    /// Rows claimed by this backend and not settled yet.
    #[getter]
    fn held(&self) -> usize {
        self.inner.held()
    }

    /// Connect, creating or migrating the schema (awaitable).
    fn ensure_schema<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let inner = self.inner.clone();
        bridge::awaitable(py, async move { inner.ensure_schema().await })
    }

    fn __repr__(&self) -> String {
        let c = self.inner.config();
        format!(
            "PostgresBackend(dsn={:?}, queue={:?}, schema={:?}, lease_timeout={})",
            self.inner.url(),
            c.queue,
            c.schema,
            c.lease_timeout.as_secs_f64()
        )
    }
}

/// The backend's INSERT for `bodies`, as `(sql, params)` with psycopg's `%s`
/// placeholders: run it through the caller's connection (transactional
/// enqueue) and the jobs exist exactly when that transaction commits.
/// Returns `(sql, params, ids)`. `message_ids`: one id per body (a batch
/// of tasks, each with its task id), still one statement.
#[pyfunction]
#[pyo3(signature = (schema, queue, bodies, headers = None, delay = None, message_id = None, priority = None, message_ids = None))]
#[allow(clippy::too_many_arguments)]
pub fn postgres_enqueue<'py>(
    py: Python<'py>,
    schema: &str,
    queue: &str,
    bodies: &Bound<'py, PyAny>,
    headers: Option<&Bound<'py, PyDict>>,
    delay: Option<&Bound<'py, PyAny>>,
    message_id: Option<String>,
    priority: Option<&Bound<'py, PyAny>>,
    message_ids: Option<Vec<String>>,
) -> PyResult<Bound<'py, PyTuple>> {
    foxtive_core::backend::postgres::validate_schema(schema).py_err()?;
    if queue.is_empty() {
        return Err(config_error("queue: must be a non-empty string"));
    }
    let mut outs = outgoings_from_py(bodies, headers, delay, message_ids, priority)?;
    if message_id.is_some() {
        if outs.len() != 1 {
            return Err(config_error("message_id: only for a single message"));
        }
        outs[0].message_id = message_id;
    }
    let rows = EnqueueRows::of(outs);
    // One string per column (PostgreSQL array literals built here), not ten
    // lists of Python objects for the driver to adapt one element at a time.
    let mut params = vec![queue.into_pyobject(py)?.into_any()];
    for lit in rows.array_literals() {
        params.push(lit.into_pyobject(py)?.into_any());
    }
    let params = PyList::new(py, params)?;
    let sql = insert_sql(schema, Placeholders::Percent);
    PyTuple::new(
        py,
        [
            sql.into_pyobject(py)?.into_any(),
            params.into_any(),
            PyList::new(py, &rows.message_id)?.into_any(),
        ],
    )
}

/// Bring the schema of `dsn` (or `schema`, or the URL's `?schema=`) to the
/// latest version, on a connection of its own: an awaitable of
/// `(schema, version_before, version_after)` (`foxtive db migrate`).
#[pyfunction]
#[pyo3(signature = (dsn, schema = None))]
pub fn postgres_migrate<'py>(
    py: Python<'py>,
    dsn: String,
    schema: Option<String>,
) -> PyResult<Bound<'py, PyAny>> {
    bridge::awaitable(py, async move {
        foxtive_core::backend::postgres::schema::migrate_url(&dsn, schema.as_deref()).await
    })
}

/// The transactional enqueue's deduplication for `schema`, with psycopg's
/// `%s` placeholders: `(claim, held)`. Run `claim` with (queue, key,
/// message id, TTL seconds) in the caller's transaction: a row back means
/// the key is taken, insert the job; none means another job holds it, and
/// `held` with (queue, key) names it.
#[pyfunction]
pub fn postgres_dedup_sql(schema: &str) -> PyResult<(String, String)> {
    foxtive_core::backend::postgres::validate_schema(schema).py_err()?;
    Ok((
        dedup::claim_sql(schema, Placeholders::Percent),
        dedup::held_sql(schema, Placeholders::Percent),
    ))
}
