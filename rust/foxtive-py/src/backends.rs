//! Resolving a Python backend object to the core, the memory backend, and
//! the dead-letter record.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};

use foxtive_core::backend::memory_dlq::MemoryDeadLetters;
use foxtive_core::backend::{Backend, MemoryBackend};
use foxtive_core::dlq::{DeadLetter, DeadLetterStore};

use crate::convert::{body_from_py, headers_to_py, outgoings_from_py, publish_from_py};
use crate::errors::IntoPyResult;
use crate::native_backend::{native_of, NativeBackend};
use crate::python_backend::PythonBackend;

/// The core backend behind a Python backend object, and the adapter when it
/// is (or drives) one written in Python.
pub type Resolved = (Arc<dyn Backend>, Option<Arc<PythonBackend>>);

/// Find the core backend behind `obj`: one downcast to the native base class
/// (every native backend is a subclass of it), else the native object a
/// Python front keeps in `_native`, else an adapter around a backend written
/// in Python.
pub fn resolve_backend(obj: &Bound<'_, PyAny>) -> PyResult<Resolved> {
    if let Some(native) = native_of(obj) {
        let native = native.get();
        return Ok((native.inner.clone(), native.python_backend.clone()));
    }
    let adapter = PythonBackend::wrap(obj)?;
    Ok((adapter.clone(), Some(adapter)))
}

/// The in-process backend. Publishing is synchronous here (`publish_sync`):
/// memory never waits, so it needs no trip through the runtime.
#[pyclass(extends = NativeBackend, frozen, name = "MemoryBackend", module = "foxtive._core")]
pub struct PyMemoryBackend {
    pub(crate) inner: Arc<MemoryBackend>,
}

#[pymethods]
impl PyMemoryBackend {
    #[new]
    #[pyo3(signature = (name = "memory"))]
    fn new(name: &str) -> PyResult<PyClassInitializer<Self>> {
        let inner = Arc::new(MemoryBackend::new(name).py_err()?);
        let dead_letters: Arc<dyn DeadLetterStore> =
            Arc::new(MemoryDeadLetters::new(inner.clone()));
        let base = NativeBackend::new(inner.clone()).with_dead_letters(Some(dead_letters));
        Ok(PyClassInitializer::from(base).add_subclass(PyMemoryBackend { inner }))
    }

    /// Publish one message; returns its id (synchronously: memory never waits).
    #[pyo3(signature = (body, headers = None, delay = None, message_id = None, priority = None,
                        dedup_key = None, dedup_ttl = None))]
    #[allow(clippy::too_many_arguments)]
    fn publish_sync(
        &self,
        body: &Bound<'_, PyAny>,
        headers: Option<&Bound<'_, PyDict>>,
        delay: Option<&Bound<'_, PyAny>>,
        message_id: Option<String>,
        priority: Option<&Bound<'_, PyAny>>,
        dedup_key: Option<String>,
        dedup_ttl: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<String> {
        let out = publish_from_py(
            body, headers, delay, message_id, priority, dedup_key, dedup_ttl,
        )?;
        Ok(self.inner.publish_now(vec![out]).remove(0))
    }

    /// Publish many; returns their ids.
    #[pyo3(signature = (bodies, headers = None, delay = None, message_ids = None, priority = None))]
    fn publish_many_sync(
        &self,
        bodies: &Bound<'_, PyAny>,
        headers: Option<&Bound<'_, PyDict>>,
        delay: Option<&Bound<'_, PyAny>>,
        message_ids: Option<Vec<String>>,
        priority: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Vec<String>> {
        let outs = outgoings_from_py(bodies, headers, delay, message_ids, priority)?;
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
