//! `_core.DeadLetterStore`: the core's dead-letter stores for `foxtive.dlq`.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use parking_lot::Mutex;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};

use foxtive_core::dlq::{
    self, DeadLetter, DeadLetterStore, FileStore, MemoryStore, RedisStore, StoredDeadLetter,
};

use crate::backends::{resolve_backend, PyDeadLetter};
use crate::bridge;
use crate::convert::headers_to_py;
use crate::errors::{backend_error, config_error, IntoPyResult};

/// A record to replay through a backend written in Python:
/// `(key, body, headers, message_id)`.
type ReplayItem = (String, Py<PyBytes>, Py<PyDict>, String);

#[pyclass(frozen, name = "DeadLetterStore", module = "foxtive._core")]
pub struct PyDeadLetterStore {
    pub(crate) inner: Arc<dyn DeadLetterStore>,
    watch: Arc<Watched>,
}

impl PyDeadLetterStore {
    pub(crate) fn of(store: impl DeadLetterStore) -> Self {
        PyDeadLetterStore::shared(Arc::new(store))
    }

    /// A view of a store that others hold too (a backend's own DLQ).
    pub(crate) fn shared(store: Arc<dyn DeadLetterStore>) -> Self {
        let watch = Arc::new(Watched {
            inner: store,
            last_error: Mutex::new(None),
        });
        PyDeadLetterStore {
            inner: watch.clone(),
            watch,
        }
    }
}

/// A store that remembers why its last write failed, so that Python can see
/// it (`dlq.last_error`) without a tokio thread ever calling into Python.
struct Watched {
    inner: Arc<dyn DeadLetterStore>,
    last_error: Mutex<Option<String>>,
}

#[async_trait]
impl DeadLetterStore for Watched {
    fn name(&self) -> &str {
        self.inner.name()
    }
    async fn put(&self, records: Vec<DeadLetter>) -> foxtive_core::Result<()> {
        let result = self.inner.put(records).await;
        *self.last_error.lock() = result.as_ref().err().map(ToString::to_string);
        result
    }
    async fn list(&self, limit: usize) -> foxtive_core::Result<Vec<StoredDeadLetter>> {
        self.inner.list(limit).await
    }
    async fn remove(&self, keys: &[String]) -> foxtive_core::Result<usize> {
        self.inner.remove(keys).await
    }
    async fn purge(&self) -> foxtive_core::Result<usize> {
        self.inner.purge().await
    }
    async fn count(&self) -> foxtive_core::Result<usize> {
        self.inner.count().await
    }
    async fn exists(&self) -> foxtive_core::Result<bool> {
        self.inner.exists().await
    }
    async fn replay_in_place(&self, ids: Option<&[String]>) -> foxtive_core::Result<usize> {
        self.inner.replay_in_place(ids).await
    }
    fn skipped(&self) -> usize {
        self.inner.skipped()
    }
    fn set_aside(&self) -> usize {
        self.inner.set_aside()
    }
}

/// Run `fut` on the runtime and wait for it without holding the GIL (for the
/// synchronous methods; the Python thread is never a runtime thread).
fn wait<T, F>(py: Python<'_>, fut: F) -> PyResult<T>
where
    F: Future<Output = foxtive_core::Result<T>> + Send + 'static,
    T: Send + 'static,
{
    let runtime = crate::runtime::get()?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    runtime.spawn(async move {
        let _ = tx.send(fut.await);
    });
    py.detach(|| rx.blocking_recv())
        .map_err(|_| backend_error("dead-letter store: the operation was dropped"))?
        .py_err()
}

fn limit_from(limit: i64) -> PyResult<usize> {
    usize::try_from(limit)
        .map_err(|_| config_error(format!("limit: must be an integer >= 0, got {limit}")))
}

#[pymethods]
impl PyDeadLetterStore {
    /// Records in process memory.
    #[staticmethod]
    fn memory() -> Self {
        PyDeadLetterStore::of(MemoryStore::new())
    }

    /// Records appended to a JSON-lines file at `path`.
    #[staticmethod]
    fn file(path: PathBuf) -> PyResult<Self> {
        Ok(PyDeadLetterStore::of(FileStore::new(path).py_err()?))
    }

    /// Records in a Redis stream at `key`.
    #[staticmethod]
    fn redis(url: &str, key: &str) -> PyResult<Self> {
        Ok(PyDeadLetterStore::of(RedisStore::new(url, key).py_err()?))
    }

    #[getter]
    fn name(&self) -> &str {
        self.inner.name()
    }

    /// Why the last write failed; None when it succeeded (or none happened).
    #[getter]
    fn last_error(&self) -> Option<String> {
        self.watch.last_error.lock().clone()
    }

    /// Up to `limit` records, oldest first.
    #[pyo3(signature = (limit = 100))]
    fn records(&self, py: Python<'_>, limit: i64) -> PyResult<Vec<PyDeadLetter>> {
        let limit = limit_from(limit)?;
        let store = self.inner.clone();
        let stored = wait(py, async move { store.list(limit).await })?;
        Ok(stored
            .into_iter()
            .map(|s| PyDeadLetter { inner: s.record })
            .collect())
    }

    /// How many records the store holds.
    fn count(&self, py: Python<'_>) -> PyResult<usize> {
        let store = self.inner.clone();
        wait(py, async move { store.count().await })
    }

    /// Republish records to a native backend, then remove them (awaitable
    /// count). `ids`: original message ids, or None for every record.
    #[pyo3(signature = (to, ids = None))]
    fn replay<'py>(
        &self,
        py: Python<'py>,
        to: &Bound<'py, PyAny>,
        ids: Option<Vec<String>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let (backend, adapter) = resolve_backend(to)?;
        if adapter.is_some() {
            return Err(config_error(
                "to: a backend written in Python is replayed with replay_plan() and its publish()",
            ));
        }
        let store = self.inner.clone();
        bridge::awaitable(py, async move {
            dlq::replay(&*store, &*backend, ids.as_deref()).await
        })
    }

    /// The records to replay through a backend written in Python, as
    /// `(key, body, headers, message_id)`, headers ready for a fresh message.
    #[pyo3(signature = (ids = None))]
    fn replay_plan(&self, py: Python<'_>, ids: Option<Vec<String>>) -> PyResult<Vec<ReplayItem>> {
        let store = self.inner.clone();
        let mut stored = wait(py, async move { store.list(usize::MAX).await })?;
        if let Some(ids) = ids {
            stored.retain(|s| ids.contains(&s.record.original_id));
        }
        stored
            .into_iter()
            .map(|s| {
                let out = s.record.to_replay();
                Ok((
                    s.key,
                    PyBytes::new(py, &out.body).unbind(),
                    headers_to_py(py, &out.headers)?.unbind(),
                    s.record.original_id,
                ))
            })
            .collect()
    }

    /// Remove records by key (awaitable count).
    fn remove<'py>(&self, py: Python<'py>, keys: Vec<String>) -> PyResult<Bound<'py, PyAny>> {
        let store = self.inner.clone();
        bridge::awaitable(py, async move { store.remove(&keys).await })
    }

    /// Whether the store is there (a file, a key, a queue).
    fn exists(&self, py: Python<'_>) -> PyResult<bool> {
        let store = self.inner.clone();
        wait(py, async move { store.exists().await })
    }

    /// Unreadable records the last read skipped.
    #[getter]
    fn skipped(&self) -> usize {
        self.inner.skipped()
    }

    /// Unreadable records the last replay or purge set aside.
    #[getter]
    fn set_aside(&self) -> usize {
        self.inner.set_aside()
    }

    /// Replay into the source queue in place, each record moved whole
    /// (native dead-letter queues; awaitable count).
    #[pyo3(signature = (ids = None))]
    fn replay_in_place<'py>(
        &self,
        py: Python<'py>,
        ids: Option<Vec<String>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let store = self.inner.clone();
        bridge::awaitable(
            py,
            async move { store.replay_in_place(ids.as_deref()).await },
        )
    }

    /// Remove every record (awaitable count).
    fn purge<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let store = self.inner.clone();
        bridge::awaitable(py, async move { store.purge().await })
    }

    fn __repr__(&self) -> String {
        format!("DeadLetterStore({})", self.inner.name())
    }
}
