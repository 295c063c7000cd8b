//! The native backends as Python objects, and the dead-letter record.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};

use foxtive_core::backend::{Backend, MemoryBackend};
use foxtive_core::dlq::DeadLetter;

use crate::awaitable::Ready;
use crate::convert::{body_from_py, headers_to_py, outgoing_from_py};
use crate::errors::IntoPyResult;
use crate::python_backend::PythonBackend;

/// Find the core backend behind a Python backend object: a native one, or an
/// adapter around a backend written in Python.
pub type Resolved = (Arc<dyn Backend>, Option<Arc<PythonBackend>>);

pub fn resolve_backend(obj: &Bound<'_, PyAny>) -> PyResult<Resolved> {
    if let Ok(m) = obj.cast::<PyMemoryBackend>() {
        return Ok((m.get().inner.clone(), None));
    }
    if let Ok(r) = obj.cast::<crate::rabbitmq::PyRabbitMqBackend>() {
        return Ok((r.get().inner.clone(), None));
    }
    if let Ok(r) = obj.cast::<crate::resilient::PyResilientBackend>() {
        let r = r.get();
        return Ok((r.inner.clone(), r.python_backend.clone()));
    }
    if let Ok(r) = obj.cast::<crate::redis_streams::PyRedisStreamBackend>() {
        return Ok((r.get().inner.clone(), None));
    }
    if let Ok(r) = obj.cast::<crate::postgres::PyPostgresBackend>() {
        return Ok((r.get().inner.clone(), None));
    }
    // Python wrapper classes keep their native object in `_native`.
    if let Ok(native) = obj.getattr("_native") {
        if !native.is_none() {
            return resolve_backend(&native);
        }
    }
    let adapter = PythonBackend::wrap(obj)?;
    Ok((adapter.clone(), Some(adapter)))
}

#[pyclass(frozen, name = "MemoryBackend", module = "foxtive._core")]
pub struct PyMemoryBackend {
    pub(crate) inner: Arc<MemoryBackend>,
}

#[pymethods]
impl PyMemoryBackend {
    #[new]
    #[pyo3(signature = (name = "memory"))]
    fn new(name: &str) -> PyResult<Self> {
        Ok(PyMemoryBackend {
            inner: Arc::new(MemoryBackend::new(name).py_err()?),
        })
    }

    #[getter]
    fn name(&self) -> &str {
        self.inner.name()
    }

    /// Publish one message; returns its id (synchronously: memory never waits).
    #[pyo3(signature = (body, headers = None, delay = None, message_id = None))]
    fn publish_sync(
        &self,
        body: &Bound<'_, PyAny>,
        headers: Option<&Bound<'_, PyDict>>,
        delay: Option<&Bound<'_, PyAny>>,
        message_id: Option<String>,
    ) -> PyResult<String> {
        let out = outgoing_from_py(body, headers, delay, message_id)?;
        Ok(self.inner.publish_now(vec![out]).remove(0))
    }

    /// Publish many; returns their ids.
    #[pyo3(signature = (bodies, headers = None, delay = None))]
    fn publish_many_sync(
        &self,
        bodies: &Bound<'_, PyAny>,
        headers: Option<&Bound<'_, PyDict>>,
        delay: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Vec<String>> {
        let mut outs = Vec::new();
        for body in bodies.try_iter()? {
            outs.push(outgoing_from_py(&body?, headers, delay, None)?);
        }
        Ok(self.inner.publish_now(outs))
    }

    /// Publish bodies with nothing else, as fast as possible; returns the count.
    /// Ids are assigned on first delivery. The bodies of one call share one
    /// buffer, so a million small messages cost one allocation, not a million.
    fn publish_bulk(&self, bodies: &Bound<'_, PyAny>) -> PyResult<usize> {
        let mut parts: Vec<Bytes> = Vec::new();
        let mut arena = BytesMut::new();
        let mut spans: Vec<(usize, usize)> = Vec::new();
        for body in bodies.try_iter()? {
            let body = body?;
            match body.cast::<PyBytes>() {
                Ok(b) => {
                    let start = arena.len();
                    arena.extend_from_slice(b.as_bytes());
                    spans.push((start, arena.len()));
                }
                Err(_) => {
                    // Rare: keep order by flushing the arena first.
                    let frozen = std::mem::take(&mut arena).freeze();
                    parts.extend(spans.drain(..).map(|(a, b)| frozen.slice(a..b)));
                    parts.push(body_from_py(&body)?);
                }
            }
        }
        let frozen = arena.freeze();
        parts.extend(spans.into_iter().map(|(a, b)| frozen.slice(a..b)));
        Ok(self.inner.publish_bodies(parts))
    }

    #[pyo3(signature = (body, headers = None, delay = None, message_id = None))]
    fn publish(
        &self,
        py: Python<'_>,
        body: &Bound<'_, PyAny>,
        headers: Option<&Bound<'_, PyDict>>,
        delay: Option<&Bound<'_, PyAny>>,
        message_id: Option<String>,
    ) -> PyResult<Ready> {
        let id = self.publish_sync(body, headers, delay, message_id)?;
        Ok(Ready::of(id.into_pyobject(py)?.into_any().unbind()))
    }

    #[pyo3(signature = (bodies, headers = None, delay = None))]
    fn publish_many(
        &self,
        py: Python<'_>,
        bodies: &Bound<'_, PyAny>,
        headers: Option<&Bound<'_, PyDict>>,
        delay: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Ready> {
        let ids = self.publish_many_sync(bodies, headers, delay)?;
        Ok(Ready::of(ids.into_pyobject(py)?.into_any().unbind()))
    }

    /// Messages waiting, ready or delayed.
    fn qsize(&self) -> usize {
        self.inner.qsize()
    }

    /// Messages delivered and not settled.
    fn unacked(&self) -> usize {
        self.inner.unacked()
    }

    fn dead_letters(&self) -> Vec<PyDeadLetter> {
        self.inner
            .dead_letters()
            .into_iter()
            .map(|d| PyDeadLetter { inner: d })
            .collect()
    }

    /// Remove and return dead letters (all, or those with these original ids).
    #[pyo3(signature = (ids = None))]
    fn take_dead_letters(&self, ids: Option<Vec<String>>) -> Vec<PyDeadLetter> {
        self.inner
            .take_dead_letters(ids.as_deref())
            .into_iter()
            .map(|d| PyDeadLetter { inner: d })
            .collect()
    }

    /// The backend's dead letters as a store (list, replay, purge).
    fn dead_letter_store(&self) -> crate::dlq::PyDeadLetterStore {
        crate::dlq::PyDeadLetterStore::of(
            foxtive_core::backend::memory_dlq::MemoryDeadLetters::new(self.inner.clone()),
        )
    }

    fn __repr__(&self) -> String {
        format!("MemoryBackend(name={:?})", self.inner.name())
    }
}

/// A message that failed for good.
#[pyclass(frozen, name = "DeadLetter", module = "foxtive")]
pub struct PyDeadLetter {
    pub(crate) inner: DeadLetter,
}

#[pymethods]
impl PyDeadLetter {
    #[getter]
    fn original_id(&self) -> &str {
        &self.inner.original_id
    }
    #[getter]
    fn body<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.inner.body)
    }
    #[getter]
    fn headers<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        headers_to_py(py, &self.inner.headers)
    }
    #[getter]
    fn source_queue(&self) -> &str {
        &self.inner.source_queue
    }
    #[getter]
    fn attempts(&self) -> u32 {
        self.inner.attempts
    }
    #[getter]
    fn error_type(&self) -> &str {
        &self.inner.error_type
    }
    #[getter]
    fn error_message(&self) -> &str {
        &self.inner.error_message
    }
    #[getter]
    fn failed_at(&self) -> f64 {
        self.inner.failed_at
    }
    #[getter]
    fn worker_id(&self) -> &str {
        &self.inner.worker_id
    }
    #[getter]
    fn poison_pill(&self) -> bool {
        self.inner.poison_pill
    }

    fn __repr__(&self) -> String {
        format!(
            "DeadLetter(original_id={:?}, source_queue={:?}, attempts={}, error_type={:?})",
            self.inner.original_id,
            self.inner.source_queue,
            self.inner.attempts,
            self.inner.error_type
        )
    }
}

/// `url` with every credential (userinfo password, `?password=`, `?pass=`, ...)
/// replaced by `***`: the one redaction of foxtive-core.
#[pyfunction]
pub fn redact_url(url: &str) -> String {
    foxtive_core::redact::redact_url(url)
}

/// `publish(...)` of a native backend: one message, awaitable of its id.
pub fn publish_one<'py>(
    py: Python<'py>,
    backend: Arc<dyn Backend>,
    body: &Bound<'py, PyAny>,
    headers: Option<&Bound<'py, PyDict>>,
    delay: Option<&Bound<'py, PyAny>>,
    message_id: Option<String>,
) -> PyResult<Bound<'py, PyAny>> {
    let out = outgoing_from_py(body, headers, delay, message_id)?;
    crate::bridge::awaitable(py, async move {
        let mut ids = backend.publish(vec![out]).await?;
        Ok(ids.pop().unwrap_or_default())
    })
}

/// `publish_many(...)` of a native backend: awaitable of the ids.
pub fn publish_many<'py>(
    py: Python<'py>,
    backend: Arc<dyn Backend>,
    bodies: &Bound<'py, PyAny>,
    headers: Option<&Bound<'py, PyDict>>,
    delay: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyAny>> {
    let mut outs = Vec::new();
    for body in bodies.try_iter()? {
        outs.push(outgoing_from_py(&body?, headers, delay, None)?);
    }
    crate::bridge::awaitable(py, async move { backend.publish(outs).await })
}
