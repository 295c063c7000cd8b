//! `_core.RedisStreamBackend`: the Redis Streams backend as a Python object.
//! Its configuration crosses as one `_core.RedisStreamConsumerConfig`.

use std::sync::Arc;
use std::time::Duration;

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};

use foxtive_core::backend::redis_streams::{
    default_claim_interval, RedisStreamBackend, RedisStreamConfig,
};
use foxtive_core::backend::Backend;
use foxtive_core::dlq::DeadLetterStore;

use crate::bridge;
use crate::errors::IntoPyResult;
use crate::keywords::Keywords;
use crate::native_backend::{NativeBackend, PublishWait};
use crate::redis_commands::PyRedisCommands;
use crate::redis_publish::PyRedisPublish;

#[pyclass(extends = NativeBackend, frozen, name = "RedisStreamBackend", module = "foxtive._core")]
pub struct PyRedisStreamBackend {
    pub(crate) inner: Arc<RedisStreamBackend>,
}

/// `RedisStreamConsumerConfig` as a config object: built from keywords,
/// checked once by the core (`RedisStreamConfig::validate`), its fields
/// read-only.
#[pyclass(frozen, name = "RedisStreamConsumerConfig", module = "foxtive._core")]
pub struct PyRedisStreamConfig {
    pub(crate) inner: RedisStreamConfig,
}

const FIELDS: &[&str] = &[
    "stream_name",
    "group_name",
    "consumer_name",
    "batch_size",
    "block_ms",
    "claim_idle",
    "claim_interval",
    "maxlen",
    "delete_on_ack",
    "dead_letter_stream",
    "max_deliveries",
    "cluster",
    "partitions",
    "wait_replicas",
    "wait_timeout",
];

fn config_from(kw: &Keywords<'_>) -> PyResult<RedisStreamConfig> {
    let stream = kw.string("stream_name")?;
    let group = kw.string("group_name")?;
    let mut cfg = RedisStreamConfig::new(
        stream.as_deref().unwrap_or("worker_stream"),
        group.as_deref().unwrap_or("worker_group"),
    );
    if let Some(name) = kw.opt_string("consumer_name")? {
        cfg.consumer_name = name;
    }
    if let Some(n) = kw.int_as::<usize>("batch_size", "between 1 and 100000")? {
        cfg.batch_size = n;
    }
    if let Some(ms) = kw.int_as::<u64>("block_ms", "between 0 and 3600000")? {
        cfg.block = Duration::from_millis(ms);
    }
    if let Some(idle) = kw.seconds("claim_idle")? {
        cfg.claim_idle = idle;
    }
    cfg.claim_interval = match kw.seconds("claim_interval")? {
        Some(interval) => interval,
        None => default_claim_interval(cfg.claim_idle),
    };
    cfg.maxlen = kw.int_as::<u64>("maxlen", ">= 1 (or None for no trimming)")?;
    if let Some(delete) = kw.flag("delete_on_ack")? {
        cfg.delete_on_ack = delete;
    }
    if let Some(dlq) = kw.opt_string("dead_letter_stream")? {
        cfg.dead_letter_stream = dlq;
    }
    if let Some(n) = kw.int_as::<u32>("max_deliveries", ">= 1")? {
        cfg.max_deliveries = n;
    }
    if let Some(cluster) = kw.flag("cluster")? {
        cfg.cluster = cluster;
    }
    if let Some(n) = kw.int_as::<u16>("partitions", "between 1 and 1024")? {
        cfg.partitions = n;
    }
    if let Some(n) = kw.int_as::<u32>("wait_replicas", "between 0 and 64")? {
        cfg.wait_replicas = n;
    }
    if let Some(t) = kw.seconds("wait_timeout")? {
        cfg.wait_timeout = t;
    }
    cfg.validate().py_err()?;
    Ok(cfg)
}

#[pymethods]
impl PyRedisStreamConfig {
    /// Keywords: the fields below; an absent one takes its default (derived
    /// ones follow `stream_name` and `claim_idle`).
    #[new]
    #[pyo3(signature = (**kwargs))]
    fn new(kwargs: Option<&Bound<'_, PyDict>>) -> PyResult<Self> {
        let kw = Keywords::new("RedisStreamConsumerConfig", kwargs, FIELDS)?;
        Ok(PyRedisStreamConfig {
            inner: config_from(&kw)?,
        })
    }

    #[getter]
    fn stream_name(&self) -> &str {
        &self.inner.stream_name
    }
    #[getter]
    fn group_name(&self) -> &str {
        &self.inner.group_name
    }
    #[getter]
    fn consumer_name(&self) -> &str {
        &self.inner.consumer_name
    }
    #[getter]
    fn batch_size(&self) -> usize {
        self.inner.batch_size
    }
    #[getter]
    fn block_ms(&self) -> u128 {
        self.inner.block.as_millis()
    }
    #[getter]
    fn claim_idle(&self) -> f64 {
        self.inner.claim_idle.as_secs_f64()
    }
    #[getter]
    fn claim_interval(&self) -> f64 {
        self.inner.claim_interval.as_secs_f64()
    }
    #[getter]
    fn maxlen(&self) -> Option<u64> {
        self.inner.maxlen
    }
    #[getter]
    fn delete_on_ack(&self) -> bool {
        self.inner.delete_on_ack
    }
    #[getter]
    fn dead_letter_stream(&self) -> &str {
        &self.inner.dead_letter_stream
    }
    #[getter]
    fn delayed_key(&self) -> &str {
        &self.inner.delayed_key
    }
    #[getter]
    fn max_deliveries(&self) -> u32 {
        self.inner.max_deliveries
    }
    #[getter]
    fn cluster(&self) -> bool {
        self.inner.cluster
    }
    #[getter]
    fn partitions(&self) -> u16 {
        self.inner.partitions
    }
    #[getter]
    fn wait_replicas(&self) -> u32 {
        self.inner.wait_replicas
    }
    #[getter]
    fn wait_timeout(&self) -> f64 {
        self.inner.wait_timeout.as_secs_f64()
    }
}

#[pymethods]
impl PyRedisStreamBackend {
    #[new]
    fn new(
        url: &str,
        config: PyRef<'_, PyRedisStreamConfig>,
    ) -> PyResult<PyClassInitializer<Self>> {
        let inner = Arc::new(RedisStreamBackend::new(url, config.inner.clone()).py_err()?);
        let dead_letters: Arc<dyn DeadLetterStore> = inner.dead_letters_store();
        let base = NativeBackend::new(inner.clone()).with_dead_letters(Some(dead_letters));
        Ok(PyClassInitializer::from(base).add_subclass(PyRedisStreamBackend { inner }))
    }

    /// The URL with its password replaced by `***`.
    #[getter]
    fn url(&self) -> &str {
        self.inner.url()
    }

    #[getter]
    fn consumer_name(&self) -> &str {
        &self.inner.config().consumer_name
    }

    /// The stream keys read and written, one per partition (hash-tagged on
    /// a cluster or with partitions).
    #[getter]
    fn stream_keys(&self) -> Vec<String> {
        self.inner.stream_keys()
    }

    /// The dead-letter stream keys, one per partition.
    #[getter]
    fn dead_letter_keys(&self) -> Vec<String> {
        self.inner.dead_letter_keys()
    }

    /// Whether `url` names this backend's Redis (server, credentials,
    /// database; the queue's own URL parameters aside): keys written by
    /// `publish_marking` are then the ones a client of `url` reads.
    fn same_redis(&self, url: &str) -> bool {
        self.inner.same_redis(url)
    }

    /// `p` published through the runtime, its "pending" record (when it
    /// has one) written where no such key is (`SET NX PX`): one round
    /// trip when the message is immediate. Awaitable of the message's id.
    fn publish_prepared<'py>(
        &self,
        py: Python<'py>,
        p: &Bound<'py, PyRedisPublish>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let run = self.runtime_publish(p.get());
        bridge::awaitable(py, run)
    }

    /// `publish_prepared`, started on the runtime from a thread with no
    /// event loop; `.wait()` on the result blocks (GIL released) for `[id]`.
    fn publish_prepared_begin(&self, p: &Bound<'_, PyRedisPublish>) -> PyResult<PublishWait> {
        let run = self.runtime_publish(p.get());
        PublishWait::spawn(async move { Ok(vec![run.await?]) })
    }

    /// `p` published from the calling thread on its own connection to the
    /// Redis (blocking, the GIL released): the id, or None when the direct
    /// path does not apply (TLS, partitions, a cluster, a delay,
    /// `wait_replicas`) or its connection failed: publish through the
    /// runtime then.
    fn publish_now(
        &self,
        py: Python<'_>,
        p: &Bound<'_, PyRedisPublish>,
    ) -> PyResult<Option<String>> {
        let p = p.get();
        let backend = &self.inner;
        py.detach(|| backend.publish_now(&p.message, p.mark.as_ref()))
            .transpose()
            .py_err()
    }

    /// The commands of `publish_now`, encoded for a connection of the
    /// caller's own to the Redis, and how many replies they get (the last
    /// is the XADD's: the entry id); None where `publish_now` has no
    /// direct path.
    fn publish_commands<'py>(
        &self,
        py: Python<'py>,
        p: &Bound<'py, PyRedisPublish>,
    ) -> Option<(Bound<'py, PyBytes>, usize)> {
        let p = p.get();
        self.inner
            .direct_commands(&p.message, p.mark.as_ref())
            .map(|(bytes, n)| (PyBytes::new(py, &bytes), n))
    }

    /// The commands on this backend's Redis (result records, direct sends),
    /// sharing its connections.
    #[getter]
    fn commands(&self) -> PyRedisCommands {
        PyRedisCommands {
            inner: self.inner.commands().clone(),
        }
    }

    fn __repr__(&self) -> String {
        let c = self.inner.config();
        format!(
            "RedisStreamBackend(url={:?}, stream_name={:?}, group_name={:?}, consumer_name={:?})",
            self.inner.url(),
            c.stream_name,
            c.group_name,
            c.consumer_name
        )
    }
}

impl PyRedisStreamBackend {
    /// The runtime's publish of `p` (with its mark: `publish_marking`).
    fn runtime_publish(
        &self,
        p: &PyRedisPublish,
    ) -> impl std::future::Future<Output = foxtive_core::Result<String>> + Send + 'static {
        let backend = self.inner.clone();
        let (message, mark) = (p.message.clone(), p.mark.clone());
        async move {
            match mark {
                Some(mark) => backend.publish_marking(message, &mark).await,
                None => {
                    let mut ids = Backend::publish(&*backend, vec![message]).await?;
                    ids.pop().ok_or_else(|| {
                        foxtive_core::Error::Backend("publish returned no id".into())
                    })
                }
            }
        }
    }
}
