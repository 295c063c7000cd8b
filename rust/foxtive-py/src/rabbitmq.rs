//! The RabbitMQ backend as a Python object (`foxtive._core.RabbitMqBackend`).
//! Its configuration crosses as one `_core.RabbitMqConsumerConfig`.

use std::sync::Arc;

use pyo3::prelude::*;
use pyo3::types::PyDict;

use foxtive_core::backend::rabbitmq::{QueueType, RabbitMqBackend, RabbitMqConfig};
use foxtive_core::backend::Backend;
use foxtive_core::dlq::DeadLetterStore;

use crate::bridge;
use crate::convert::{duration_from_py, headers_from_py, headers_to_py};
use crate::errors::{config_error, IntoPyResult};
use crate::keywords::Keywords;
use crate::native_backend::NativeBackend;
use crate::resilient::PyReconnectStrategy;

#[pyclass(extends = NativeBackend, frozen, name = "RabbitMqBackend", module = "foxtive._core")]
pub struct PyRabbitMqBackend {
    pub(crate) inner: Arc<RabbitMqBackend>,
}

/// `RabbitMqConsumerConfig` as a config object: built from keywords,
/// checked once by the core (`RabbitMqConfig::validate`), its fields
/// read-only. The reconnect strategy is the backend's, not part of it.
#[pyclass(frozen, name = "RabbitMqConsumerConfig", module = "foxtive._core")]
pub struct PyRabbitMqConfig {
    pub(crate) inner: RabbitMqConfig,
}

const FIELDS: &[&str] = &[
    "queue_name",
    "consumer_tag",
    "prefetch_count",
    "declare",
    "durable",
    "queue_type",
    "queue_arguments",
    "max_priority",
    "exchange",
    "routing_key",
    "exchange_type",
    "connection_name",
    "heartbeat",
    "retry_queue_prefix",
    "dead_letter_queue",
    "connect_timeout",
];

fn config_from(kw: &Keywords<'_>) -> PyResult<RabbitMqConfig> {
    let mut c = RabbitMqConfig::new(
        kw.string("queue_name")?
            .as_deref()
            .unwrap_or("worker_queue"),
    );
    if let Some(tag) = kw.opt_string("consumer_tag")? {
        c.consumer_tag = tag;
    }
    if let Some(n) = kw.int_as::<u16>("prefetch_count", "between 1 and 65535")? {
        c.prefetch_count = n;
    }
    if let Some(declare) = kw.flag("declare")? {
        c.declare = declare;
    }
    if let Some(durable) = kw.flag("durable")? {
        c.durable = durable;
    }
    if let Some(t) = kw.string("queue_type")? {
        c.queue_type = QueueType::parse(&t).py_err()?;
    }
    if let Some(args) = kw.dict("queue_arguments")? {
        c.queue_arguments = headers_from_py(&args)?;
    }
    c.max_priority = kw.int_as::<u8>("max_priority", "between 1 and 255")?;
    c.exchange = kw.opt_string("exchange")?;
    c.routing_key = kw.opt_string("routing_key")?;
    if let Some(t) = kw.string("exchange_type")? {
        c.exchange_type = t;
    }
    c.connection_name = kw.opt_string("connection_name")?;
    c.heartbeat = kw
        .seconds("heartbeat")?
        .map(|hb| {
            u16::try_from(hb.as_secs_f64().round() as u64).map_err(|_| {
                config_error(format!(
                    "heartbeat: must be between 0 and 65535 seconds, got {}",
                    hb.as_secs_f64()
                ))
            })
        })
        .transpose()?;
    c.retry_queue_prefix = kw.opt_string("retry_queue_prefix")?;
    c.dead_letter_queue = kw.opt_string("dead_letter_queue")?;
    if let Some(t) = kw.seconds("connect_timeout")? {
        c.connect_timeout = t;
    }
    c.validate().py_err()?;
    Ok(c)
}

#[pymethods]
impl PyRabbitMqConfig {
    /// Keywords: the fields below; an absent one takes its default.
    #[new]
    #[pyo3(signature = (**kwargs))]
    fn new(kwargs: Option<&Bound<'_, PyDict>>) -> PyResult<Self> {
        let kw = Keywords::new("RabbitMqConsumerConfig", kwargs, FIELDS)?;
        Ok(PyRabbitMqConfig {
            inner: config_from(&kw)?,
        })
    }

    #[getter]
    fn queue_name(&self) -> &str {
        &self.inner.queue_name
    }
    #[getter]
    fn consumer_tag(&self) -> &str {
        &self.inner.consumer_tag
    }
    #[getter]
    fn prefetch_count(&self) -> u16 {
        self.inner.prefetch_count
    }
    #[getter]
    fn declare(&self) -> bool {
        self.inner.declare
    }
    #[getter]
    fn durable(&self) -> bool {
        self.inner.durable
    }
    #[getter]
    fn queue_type(&self) -> &'static str {
        self.inner.queue_type.as_str()
    }
    #[getter]
    fn queue_arguments<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        headers_to_py(py, &self.inner.queue_arguments)
    }
    #[getter]
    fn max_priority(&self) -> Option<u8> {
        self.inner.max_priority
    }
    #[getter]
    fn exchange(&self) -> Option<&str> {
        self.inner.exchange.as_deref()
    }
    #[getter]
    fn routing_key(&self) -> Option<&str> {
        self.inner.routing_key.as_deref()
    }
    #[getter]
    fn exchange_type(&self) -> &str {
        &self.inner.exchange_type
    }
    #[getter]
    fn connection_name(&self) -> Option<&str> {
        self.inner.connection_name.as_deref()
    }
    #[getter]
    fn heartbeat(&self) -> Option<f64> {
        self.inner.heartbeat.map(f64::from)
    }
    #[getter]
    fn retry_queue_prefix(&self) -> Option<&str> {
        self.inner.retry_queue_prefix.as_deref()
    }
    #[getter]
    fn dead_letter_queue(&self) -> Option<&str> {
        self.inner.dead_letter_queue.as_deref()
    }
    #[getter]
    fn connect_timeout(&self) -> f64 {
        self.inner.connect_timeout.as_secs_f64()
    }
}

/// One URL (maybe with comma-separated hosts) or a list of them.
fn broker_urls(url: &Bound<'_, PyAny>) -> PyResult<Vec<String>> {
    if let Ok(one) = url.extract::<String>() {
        return Ok(vec![one]);
    }
    url.extract::<Vec<String>>().map_err(|_| {
        config_error(format!(
            "url: expected a string or a list of strings, got {}",
            url.get_type()
                .name()
                .map_or_else(|_| "?".to_string(), |n| n.to_string())
        ))
    })
}

#[pymethods]
impl PyRabbitMqBackend {
    #[new]
    #[pyo3(signature = (url, config, reconnect = None))]
    fn new(
        url: &Bound<'_, PyAny>,
        config: PyRef<'_, PyRabbitMqConfig>,
        reconnect: Option<PyRef<'_, PyReconnectStrategy>>,
    ) -> PyResult<PyClassInitializer<Self>> {
        let mut config = config.inner.clone();
        if let Some(strategy) = reconnect {
            config.reconnect = strategy.inner;
        }
        let urls = broker_urls(url)?;
        let urls: Vec<&str> = urls.iter().map(String::as_str).collect();
        let inner = Arc::new(RabbitMqBackend::with_urls(&urls, config).py_err()?);
        let dead_letters: Arc<dyn DeadLetterStore> = Arc::new(inner.dead_letter_store());
        let base = NativeBackend::new(inner.clone()).with_dead_letters(Some(dead_letters));
        Ok(PyClassInitializer::from(base).add_subclass(PyRabbitMqBackend { inner }))
    }

    #[getter]
    fn url(&self) -> &str {
        self.inner.redacted_url()
    }

    #[getter]
    fn consumer_tag(&self) -> &str {
        &self.inner.config().consumer_tag
    }

    #[getter]
    fn dead_letter_queue(&self) -> &str {
        self.inner.dead_letter_queue()
    }

    /// Grows by one with every (re)connection.
    #[getter]
    fn epoch(&self) -> u64 {
        self.inner.epoch()
    }

    /// The delay-bucket queue a retry after `delay` seconds waits in.
    fn retry_queue_for(&self, delay: &Bound<'_, PyAny>) -> PyResult<Option<String>> {
        Ok(self
            .inner
            .retry_queue_for(duration_from_py("delay", delay)?))
    }

    /// Close the connection as a broker failure would (tests of the reconnect path).
    fn break_connection<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let inner = self.inner.clone();
        bridge::awaitable(py, async move { inner.break_connection().await })
    }

    /// The name of the connection the dead-letter store's calls open.
    #[getter]
    fn dead_letter_connection_name(&self) -> String {
        self.inner.dead_letter_store().connection_name()
    }

    fn __repr__(&self) -> String {
        format!(
            "RabbitMqBackend(url={:?}, queue={:?})",
            self.inner.redacted_url(),
            self.inner.name()
        )
    }
}
