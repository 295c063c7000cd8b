//! `_core.RedisStreamBackend`: the Redis Streams backend as a Python object.
//! Configuration is validated in Python (`foxtive.RedisStreamConsumerConfig`)
//! and again in the core.

use std::sync::Arc;
use std::time::Duration;

use pyo3::prelude::*;

use foxtive_core::backend::redis_streams::{
    default_claim_interval, default_consumer_name, RedisStreamBackend, RedisStreamConfig,
};
use foxtive_core::dlq::DeadLetterStore;

use crate::backends::PyDeadLetter;
use crate::bridge;
use crate::convert::duration_from_py;
use crate::errors::{config_error, IntoPyResult};
use crate::native_backend::NativeBackend;

#[pyclass(extends = NativeBackend, frozen, name = "RedisStreamBackend", module = "foxtive._core")]
pub struct PyRedisStreamBackend {
    pub(crate) inner: Arc<RedisStreamBackend>,
}

fn count(name: &str, value: i64, min: i64) -> PyResult<u64> {
    if value < min {
        return Err(config_error(format!(
            "{name}: must be >= {min}, got {value}"
        )));
    }
    Ok(value as u64)
}

#[pymethods]
impl PyRedisStreamBackend {
    #[new]
    #[pyo3(signature = (
        url,
        stream_name = "worker_stream",
        group_name = "worker_group",
        consumer_name = None,
        batch_size = 100,
        block_ms = 1000,
        claim_idle = None,
        claim_interval = None,
        maxlen = None,
        delete_on_ack = true,
        dead_letter_stream = None,
        max_deliveries = 10,
    ))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        url: &str,
        stream_name: &str,
        group_name: &str,
        consumer_name: Option<String>,
        batch_size: i64,
        block_ms: i64,
        claim_idle: Option<&Bound<'_, PyAny>>,
        claim_interval: Option<&Bound<'_, PyAny>>,
        maxlen: Option<i64>,
        delete_on_ack: bool,
        dead_letter_stream: Option<String>,
        max_deliveries: i64,
    ) -> PyResult<PyClassInitializer<Self>> {
        let mut cfg = RedisStreamConfig::new(stream_name, group_name);
        cfg.consumer_name = consumer_name.unwrap_or_else(default_consumer_name);
        cfg.batch_size = count("batch_size", batch_size, 1)? as usize;
        cfg.block = Duration::from_millis(count("block_ms", block_ms, 0)?);
        if let Some(v) = claim_idle {
            cfg.claim_idle = duration_from_py("claim_idle", v)?;
        }
        cfg.claim_interval = match claim_interval {
            Some(v) if !v.is_none() => duration_from_py("claim_interval", v)?,
            _ => default_claim_interval(cfg.claim_idle),
        };
        cfg.maxlen = maxlen.map(|n| count("maxlen", n, 1)).transpose()?;
        cfg.delete_on_ack = delete_on_ack;
        if let Some(dlq) = dead_letter_stream {
            cfg.dead_letter_stream = dlq;
        }
        cfg.max_deliveries = u32::try_from(count("max_deliveries", max_deliveries, 1)?)
            .map_err(|_| config_error("max_deliveries: too large"))?;
        let inner = Arc::new(RedisStreamBackend::new(url, cfg).py_err()?);
        let dead_letters: Arc<dyn DeadLetterStore> = Arc::new(inner.dead_letter_store());
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

    /// Up to `limit` entries of the dead-letter stream, oldest first (awaitable).
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
