//! The RabbitMQ backend as a Python object (`foxtive._core.RabbitMqBackend`).
//! Configuration arrives already checked by `foxtive.RabbitMqConsumerConfig`
//! and is checked again by the core.

use std::sync::Arc;
use std::time::Duration;

use pyo3::prelude::*;
use pyo3::types::PyDict;

use foxtive_core::backend::rabbitmq::{QueueType, RabbitMqBackend, RabbitMqConfig};
use foxtive_core::backend::Backend;
use foxtive_core::dlq::DeadLetterStore;
use foxtive_core::policy::ReconnectStrategy;

use crate::bridge;
use crate::convert::{duration_from_py, headers_from_py};
use crate::errors::{config_error, IntoPyResult};
use crate::native_backend::NativeBackend;

#[pyclass(extends = NativeBackend, frozen, name = "RabbitMqBackend", module = "foxtive._core")]
pub struct PyRabbitMqBackend {
    pub(crate) inner: Arc<RabbitMqBackend>,
}

fn secs(name: &str, v: f64) -> PyResult<Duration> {
    if !v.is_finite() || v < 0.0 {
        return Err(config_error(format!(
            "{name}: must be a finite, non-negative number of seconds, got {v}"
        )));
    }
    Duration::try_from_secs_f64(v).map_err(|_| config_error(format!("{name}: out of range")))
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
    #[pyo3(signature = (
        url, queue_name = "worker_queue", *, consumer_tag = None, prefetch_count = 100,
        declare = true, durable = true, queue_type = "classic", queue_arguments = None,
        exchange = None, exchange_type = "direct", routing_key = None, connection_name = None,
        heartbeat = None, retry_queue_prefix = None, dead_letter_queue = None,
        reconnect_initial = 1.0, reconnect_max = 60.0, reconnect_multiplier = 2.0,
        reconnect_jitter = 0.1, connect_timeout = 10.0,
    ))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        url: &Bound<'_, PyAny>,
        queue_name: &str,
        consumer_tag: Option<String>,
        prefetch_count: i64,
        declare: bool,
        durable: bool,
        queue_type: &str,
        queue_arguments: Option<&Bound<'_, PyDict>>,
        exchange: Option<String>,
        exchange_type: &str,
        routing_key: Option<String>,
        connection_name: Option<String>,
        heartbeat: Option<i64>,
        retry_queue_prefix: Option<String>,
        dead_letter_queue: Option<String>,
        reconnect_initial: f64,
        reconnect_max: f64,
        reconnect_multiplier: f64,
        reconnect_jitter: f64,
        connect_timeout: f64,
    ) -> PyResult<PyClassInitializer<Self>> {
        let mut config = RabbitMqConfig::new(queue_name);
        if let Some(tag) = consumer_tag {
            config.consumer_tag = tag;
        }
        config.prefetch_count = u16::try_from(prefetch_count)
            .ok()
            .filter(|&p| p > 0)
            .ok_or_else(|| {
                config_error(format!(
                    "prefetch_count: must be between 1 and 65535, got {prefetch_count}"
                ))
            })?;
        config.declare = declare;
        config.durable = durable;
        config.queue_type = QueueType::parse(queue_type).py_err()?;
        if let Some(args) = queue_arguments {
            config.queue_arguments = headers_from_py(args)?;
        }
        config.exchange = exchange;
        config.exchange_type = exchange_type.to_string();
        config.routing_key = routing_key;
        config.connection_name = connection_name;
        config.heartbeat = match heartbeat {
            None => None,
            Some(h) => Some(u16::try_from(h).map_err(|_| {
                config_error(format!(
                    "heartbeat: must be between 0 and 65535 seconds, got {h}"
                ))
            })?),
        };
        config.retry_queue_prefix = retry_queue_prefix;
        config.dead_letter_queue = dead_letter_queue;
        config.reconnect = ReconnectStrategy::exponential(
            secs("reconnect_initial", reconnect_initial)?,
            secs("reconnect_max", reconnect_max)?,
            reconnect_multiplier,
            reconnect_jitter,
        )
        .py_err()?;
        config.connect_timeout = secs("connect_timeout", connect_timeout)?;
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
