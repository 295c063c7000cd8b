//! `_core.NativeBackend`: the one base class of every backend that runs in
//! Rust. What they all share (name, connection state and counters, connect,
//! close, publish, their dead-letter store) is written here once; each
//! subclass (`MemoryBackend`, `RabbitMqBackend`, ...) adds only what is its
//! own. Finding the core backend behind a Python object is then one downcast
//! to this class, whatever the backend ([`native_of`]).

use std::sync::Arc;

use parking_lot::Mutex;
use pyo3::prelude::*;
use pyo3::types::PyDict;
use tokio::sync::oneshot;

use foxtive_core::backend::Backend;
use foxtive_core::dlq::DeadLetterStore;

use crate::bridge;
use crate::convert::{outgoings_from_py, publish_from_py};
use crate::dlq::PyDeadLetterStore;
use crate::errors::{backend_error, config_error, IntoPyResult};
use crate::python_backend::{bind_loop, PythonBackend};

#[pyclass(subclass, frozen, name = "NativeBackend", module = "foxtive._core")]
pub struct NativeBackend {
    pub(crate) inner: Arc<dyn Backend>,
    /// The backend written in Python this one drives (a `ResilientBackend`
    /// around one): its coroutines run on the event loop of the first call.
    pub(crate) python_backend: Option<Arc<PythonBackend>>,
    /// The backend's own dead-letter queue, when it has one.
    dead_letters: Option<Arc<dyn DeadLetterStore>>,
}

impl NativeBackend {
    pub fn new(inner: Arc<dyn Backend>) -> Self {
        NativeBackend {
            inner,
            python_backend: None,
            dead_letters: None,
        }
    }

    /// The backend keeps its dead letters in `store` (its native DLQ).
    pub fn with_dead_letters(mut self, store: Option<Arc<dyn DeadLetterStore>>) -> Self {
        self.dead_letters = store;
        self
    }

    /// The backend drives `backend`, written in Python.
    pub fn driving(mut self, backend: Option<Arc<PythonBackend>>) -> Self {
        self.python_backend = backend;
        self
    }

    pub fn dead_letters(&self) -> Option<Arc<dyn DeadLetterStore>> {
        self.dead_letters.clone()
    }

    /// Start publishing `outs` on the runtime, from a thread with no event
    /// loop: the caller waits on the returned [`PublishWait`]. A backend
    /// driving one written in Python has its coroutines bound to an event
    /// loop, so it has no such path (the app publishes on a loop instead).
    fn begin(&self, outs: Vec<foxtive_core::Outgoing>) -> PyResult<PublishWait> {
        if self.python_backend.is_some() {
            return Err(config_error(
                "this backend drives one written in Python: publish from an event loop",
            ));
        }
        let backend = self.inner.clone();
        PublishWait::spawn(async move { backend.publish(outs).await })
    }
}

type PublishResult = foxtive_core::Result<Vec<String>>;

/// A publish running on the runtime, started by `publish_begin` /
/// `publish_many_begin` on a thread with no event loop (`send_sync`):
/// `wait()` blocks that thread, the GIL released, until the broker took
/// the messages. The caller may do other work in between (the app writes
/// the "pending" result record meanwhile).
#[pyclass(frozen, name = "PublishWait", module = "foxtive._core")]
pub struct PublishWait {
    rx: Mutex<Option<oneshot::Receiver<PublishResult>>>,
}

impl PublishWait {
    /// Run `publish` on the runtime; the caller waits with `wait()`.
    pub(crate) fn spawn<F>(publish: F) -> PyResult<Self>
    where
        F: std::future::Future<Output = PublishResult> + Send + 'static,
    {
        let runtime = crate::runtime::get()?;
        let (tx, rx) = oneshot::channel();
        runtime.spawn(async move {
            let _ = tx.send(publish.await);
        });
        Ok(PublishWait {
            rx: Mutex::new(Some(rx)),
        })
    }
}

#[pymethods]
impl PublishWait {
    /// The messages' ids, in order, once published; the publish's error
    /// otherwise. Only once.
    fn wait(&self, py: Python<'_>) -> PyResult<Vec<String>> {
        let rx = self
            .rx
            .lock()
            .take()
            .ok_or_else(|| config_error("PublishWait.wait: already waited on"))?;
        // The Python thread is never a runtime thread: blocking here cannot
        // starve the publish it waits for.
        py.detach(|| rx.blocking_recv())
            .map_err(|_| backend_error("publish: the operation was dropped"))?
            .py_err()
    }
}

/// The native backend `obj` is (any subclass of the base), or the one a
/// Python front keeps in `_native`; None for anything else.
pub fn native_of<'py>(obj: &Bound<'py, PyAny>) -> Option<Bound<'py, NativeBackend>> {
    if let Ok(native) = obj.cast::<NativeBackend>() {
        return Some(native.clone());
    }
    let front = obj.getattr("_native").ok()?;
    front.cast_into::<NativeBackend>().ok()
}

#[pymethods]
impl NativeBackend {
    /// The queue or stream name.
    #[getter]
    fn name(&self) -> &str {
        self.inner.name()
    }

    /// "connected", "reconnecting" or "closed".
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

    /// Connect and declare (awaitable); a pool does this when it starts.
    fn connect<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        bind_loop(py, &self.python_backend)?;
        let inner = self.inner.clone();
        bridge::awaitable(py, async move { inner.connect().await })
    }

    /// Close the connections (awaitable); a pool does this when it stops.
    fn close<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        bind_loop(py, &self.python_backend)?;
        let inner = self.inner.clone();
        bridge::awaitable(py, async move { inner.close().await })
    }

    /// Publish one message (durably where the broker can); awaitable of its id.
    /// `priority`: 0-9, 9 delivered first (a ConfigError where the broker has none).
    /// `dedup_key` + `dedup_ttl`: publish only if the key is free; the id
    /// returned is then the one of the message holding it.
    #[pyo3(signature = (body, headers = None, delay = None, message_id = None, priority = None,
                        dedup_key = None, dedup_ttl = None))]
    #[allow(clippy::too_many_arguments)]
    fn publish<'py>(
        &self,
        py: Python<'py>,
        body: &Bound<'py, PyAny>,
        headers: Option<&Bound<'py, PyDict>>,
        delay: Option<&Bound<'py, PyAny>>,
        message_id: Option<String>,
        priority: Option<&Bound<'py, PyAny>>,
        dedup_key: Option<String>,
        dedup_ttl: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        bind_loop(py, &self.python_backend)?;
        let out = publish_from_py(
            body, headers, delay, message_id, priority, dedup_key, dedup_ttl,
        )?;
        let backend = self.inner.clone();
        bridge::awaitable(py, async move {
            let mut ids = backend.publish(vec![out]).await?;
            Ok(ids.pop().unwrap_or_default())
        })
    }

    /// Publish many in one batch; awaitable of their ids, in order.
    /// `message_ids`: each message's own id, one per body.
    #[pyo3(signature = (bodies, headers = None, delay = None, message_ids = None, priority = None))]
    fn publish_many<'py>(
        &self,
        py: Python<'py>,
        bodies: &Bound<'py, PyAny>,
        headers: Option<&Bound<'py, PyDict>>,
        delay: Option<&Bound<'py, PyAny>>,
        message_ids: Option<Vec<String>>,
        priority: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        bind_loop(py, &self.python_backend)?;
        let outs = outgoings_from_py(bodies, headers, delay, message_ids, priority)?;
        let backend = self.inner.clone();
        bridge::awaitable(py, async move { backend.publish(outs).await })
    }

    /// Whether `publish_begin` / `publish_many_begin` work here: false for
    /// a backend driving one written in Python (its publish needs a loop).
    #[getter]
    fn blocking(&self) -> bool {
        self.python_backend.is_none()
    }

    /// `publish`, started on the runtime from a thread with no event loop;
    /// `.wait()` on the result blocks (GIL released) for `[id]`.
    #[pyo3(signature = (body, headers = None, delay = None, message_id = None, priority = None,
                        dedup_key = None, dedup_ttl = None))]
    #[allow(clippy::too_many_arguments)]
    fn publish_begin(
        &self,
        body: &Bound<'_, PyAny>,
        headers: Option<&Bound<'_, PyDict>>,
        delay: Option<&Bound<'_, PyAny>>,
        message_id: Option<String>,
        priority: Option<&Bound<'_, PyAny>>,
        dedup_key: Option<String>,
        dedup_ttl: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<PublishWait> {
        let out = publish_from_py(
            body, headers, delay, message_id, priority, dedup_key, dedup_ttl,
        )?;
        self.begin(vec![out])
    }

    /// `publish_many`, started on the runtime from a thread with no event
    /// loop; `.wait()` on the result blocks (GIL released) for the ids.
    #[pyo3(signature = (bodies, headers = None, delay = None, message_ids = None, priority = None))]
    fn publish_many_begin(
        &self,
        bodies: &Bound<'_, PyAny>,
        headers: Option<&Bound<'_, PyDict>>,
        delay: Option<&Bound<'_, PyAny>>,
        message_ids: Option<Vec<String>>,
        priority: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<PublishWait> {
        let outs = outgoings_from_py(bodies, headers, delay, message_ids, priority)?;
        self.begin(outs)
    }

    /// How many messages the queue holds (awaitable): a dict of `ready`,
    /// `delayed`, `in_progress`, `dead` and `consumers` (each an int, or
    /// None where the broker cannot tell), or None when the backend
    /// cannot tell at all.
    fn queue_stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        bind_loop(py, &self.python_backend)?;
        let inner = self.inner.clone();
        bridge::awaitable(py, async move {
            let stats = inner.queue_stats().await?;
            Ok(stats.map(|s| {
                s.fields()
                    .into_iter()
                    .collect::<std::collections::BTreeMap<&'static str, Option<u64>>>()
            }))
        })
    }

    /// The backend's own dead-letter queue as a store (list, replay, purge);
    /// None when it has none.
    fn dead_letter_store(&self) -> Option<PyDeadLetterStore> {
        self.dead_letters.clone().map(PyDeadLetterStore::shared)
    }
}
