//! Engine settings as Python builds them: one frozen pyclass per policy and
//! one for the engine, each built from keywords and checked by the core's
//! own constructors and `validate` (never again in Python), then handed to
//! the engine as it is: no tuples or positional codes cross the boundary.
//!
//! Timeout and batching run in Python (`_dispatch`), so the core has no
//! type for them: their few checks live here, once.

use std::sync::Arc;
use std::time::Duration;

use pyo3::prelude::*;
use pyo3::types::PyDict;

use foxtive_core::policy::{Backoff, BreakerConfig, PoisonPillTracker, RateLimiter, RetryPolicy};
use foxtive_core::pool::{EngineConfig, WorkerSpec};

use crate::errors::{config_error, IntoPyResult};
use crate::keywords::Keywords;

/// What a count must be to fit the core's field.
const COUNT: &str = "a non-negative integer";

/// Most deliveries an engine asks of its backend at once, unless told.
const DEFAULT_RECEIVE_BATCH: usize = 256;

/// A duration that must be more than zero (a timeout, a flush interval).
fn positive(name: &str, value: Duration) -> PyResult<Duration> {
    if value.is_zero() {
        return Err(config_error(format!("{name}: must be > 0 seconds, got 0")));
    }
    Ok(value)
}

/// The failure policy: retries with backoff (`foxtive.RetryHandler`).
#[pyclass(
    frozen,
    skip_from_py_object,
    name = "RetryPolicy",
    module = "foxtive._core"
)]
#[derive(Clone)]
pub struct PyRetryPolicy {
    pub(crate) policy: RetryPolicy,
}

#[pymethods]
impl PyRetryPolicy {
    /// Keywords: max_retries, initial_backoff, max_backoff,
    /// backoff_multiplier, jitter; an absent one takes its default.
    #[new]
    #[pyo3(signature = (**kwargs))]
    fn new(kwargs: Option<&Bound<'_, PyDict>>) -> PyResult<Self> {
        let kw = Keywords::new(
            "RetryPolicy",
            kwargs,
            &[
                "max_retries",
                "initial_backoff",
                "max_backoff",
                "backoff_multiplier",
                "jitter",
            ],
        )?;
        let defaults = RetryPolicy::default();
        let d = defaults.backoff;
        let backoff = Backoff::new(
            kw.seconds("initial_backoff")?.unwrap_or(d.initial()),
            kw.seconds("max_backoff")?.unwrap_or(d.max()),
            kw.number("backoff_multiplier")?.unwrap_or(d.multiplier()),
            kw.flag("jitter")?.unwrap_or(d.jitter()),
        )
        .py_err()?;
        Ok(PyRetryPolicy {
            policy: RetryPolicy {
                max_retries: kw
                    .int_as("max_retries", COUNT)?
                    .unwrap_or(defaults.max_retries),
                backoff,
            },
        })
    }

    /// The delay before retry number `retry` (1 = first), jitter included.
    fn delay(&self, retry: u32) -> f64 {
        self.policy.backoff.delay(retry).as_secs_f64()
    }

    #[getter]
    fn max_retries(&self) -> u32 {
        self.policy.max_retries
    }

    #[getter]
    fn initial_backoff(&self) -> f64 {
        self.policy.backoff.initial().as_secs_f64()
    }

    #[getter]
    fn max_backoff(&self) -> f64 {
        self.policy.backoff.max().as_secs_f64()
    }

    #[getter]
    fn backoff_multiplier(&self) -> f64 {
        self.policy.backoff.multiplier()
    }

    #[getter]
    fn jitter(&self) -> bool {
        self.policy.backoff.jitter()
    }
}

/// Failures within a window that make a message a poison pill.
#[pyclass(
    frozen,
    skip_from_py_object,
    name = "PoisonPillPolicy",
    module = "foxtive._core"
)]
pub struct PyPoisonPillPolicy {
    max_failures: u32,
    time_window: Duration,
}

#[pymethods]
impl PyPoisonPillPolicy {
    /// Keywords: max_failures, time_window.
    #[new]
    #[pyo3(signature = (**kwargs))]
    fn new(kwargs: Option<&Bound<'_, PyDict>>) -> PyResult<Self> {
        let kw = Keywords::new("PoisonPillPolicy", kwargs, &["max_failures", "time_window"])?;
        // PoisonPillTracker()'s defaults.
        let max_failures = kw.int_as("max_failures", COUNT)?.unwrap_or(10);
        let time_window = kw
            .seconds("time_window")?
            .unwrap_or(Duration::from_secs(3600));
        // The tracker's own constructor is the check (it allocates nothing).
        PoisonPillTracker::new(max_failures, time_window, 1).py_err()?;
        Ok(PyPoisonPillPolicy {
            max_failures,
            time_window,
        })
    }

    #[getter]
    fn max_failures(&self) -> u32 {
        self.max_failures
    }

    #[getter]
    fn time_window(&self) -> f64 {
        self.time_window.as_secs_f64()
    }
}

/// The circuit breaker's thresholds (`foxtive.CircuitBreakerMiddleware`).
#[pyclass(
    frozen,
    skip_from_py_object,
    name = "CircuitBreakerPolicy",
    module = "foxtive._core"
)]
pub struct PyCircuitBreakerPolicy {
    config: BreakerConfig,
}

#[pymethods]
impl PyCircuitBreakerPolicy {
    /// Keywords: failure_threshold, reset_timeout, success_threshold.
    #[new]
    #[pyo3(signature = (**kwargs))]
    fn new(kwargs: Option<&Bound<'_, PyDict>>) -> PyResult<Self> {
        let kw = Keywords::new(
            "CircuitBreakerPolicy",
            kwargs,
            &["failure_threshold", "reset_timeout", "success_threshold"],
        )?;
        let config = BreakerConfig::new(
            kw.int_as("failure_threshold", COUNT)?.unwrap_or(5),
            kw.seconds("reset_timeout")?
                .unwrap_or(Duration::from_secs(30)),
            kw.int_as("success_threshold", COUNT)?.unwrap_or(1),
        )
        .py_err()?;
        Ok(PyCircuitBreakerPolicy { config })
    }

    #[getter]
    fn failure_threshold(&self) -> u32 {
        self.config.failure_threshold
    }

    #[getter]
    fn reset_timeout(&self) -> f64 {
        self.config.reset_timeout.as_secs_f64()
    }

    #[getter]
    fn success_threshold(&self) -> u32 {
        self.config.success_threshold
    }
}

/// Messages a second and burst, optionally shared through Redis
/// (`foxtive.RateLimitMiddleware`). The key defaults to the pool's.
#[pyclass(
    frozen,
    skip_from_py_object,
    name = "RateLimitPolicy",
    module = "foxtive._core"
)]
pub struct PyRateLimitPolicy {
    per_second: f64,
    burst: u32,
    redis_url: Option<String>,
    key: Option<String>,
}

/// The shared key of a pool that names none.
fn default_rate_key(pool: &str) -> String {
    format!("foxtive:rate:{pool}")
}

#[pymethods]
impl PyRateLimitPolicy {
    /// Keywords: per_second, burst, redis_url, key.
    #[new]
    #[pyo3(signature = (**kwargs))]
    fn new(kwargs: Option<&Bound<'_, PyDict>>) -> PyResult<Self> {
        let kw = Keywords::new(
            "RateLimitPolicy",
            kwargs,
            &["per_second", "burst", "redis_url", "key"],
        )?;
        let per_second = kw.number("per_second")?.unwrap_or(100.0);
        let burst = kw.int_as("burst", COUNT)?.unwrap_or(10);
        let redis_url = kw.opt_string("redis_url")?;
        let key = kw.opt_string("key")?;
        // The limiter's own constructors are the check; building one only
        // parses (it connects on first use).
        match &redis_url {
            None => RateLimiter::new(per_second, burst).py_err()?,
            Some(url) => RateLimiter::shared(
                per_second,
                burst,
                url,
                key.as_deref().unwrap_or(&default_rate_key("pool")),
            )
            .py_err()?,
        };
        Ok(PyRateLimitPolicy {
            per_second,
            burst,
            redis_url,
            key,
        })
    }

    #[getter]
    fn per_second(&self) -> f64 {
        self.per_second
    }

    #[getter]
    fn burst(&self) -> u32 {
        self.burst
    }

    #[getter]
    fn redis_url(&self) -> Option<&str> {
        self.redis_url.as_deref()
    }

    #[getter]
    fn key(&self) -> Option<&str> {
        self.key.as_deref()
    }
}

/// Most time one message (or batch) may take (`foxtive.TimeoutMiddleware`).
#[pyclass(
    frozen,
    skip_from_py_object,
    name = "TimeoutPolicy",
    module = "foxtive._core"
)]
pub struct PyTimeoutPolicy {
    seconds: Duration,
}

#[pymethods]
impl PyTimeoutPolicy {
    /// Keyword: seconds.
    #[new]
    #[pyo3(signature = (**kwargs))]
    fn new(kwargs: Option<&Bound<'_, PyDict>>) -> PyResult<Self> {
        let kw = Keywords::new("TimeoutPolicy", kwargs, &["seconds"])?;
        let seconds = kw.seconds("seconds")?.unwrap_or(Duration::from_secs(25));
        Ok(PyTimeoutPolicy {
            seconds: positive("seconds", seconds)?,
        })
    }

    #[getter]
    fn seconds(&self) -> f64 {
        self.seconds.as_secs_f64()
    }
}

/// When a batch is handed over (`foxtive.BatchConfig`).
#[pyclass(
    frozen,
    skip_from_py_object,
    name = "BatchPolicy",
    module = "foxtive._core"
)]
pub struct PyBatchPolicy {
    batch_size: usize,
    flush_interval: Duration,
}

#[pymethods]
impl PyBatchPolicy {
    /// Keywords: batch_size, flush_interval.
    #[new]
    #[pyo3(signature = (**kwargs))]
    fn new(kwargs: Option<&Bound<'_, PyDict>>) -> PyResult<Self> {
        let kw = Keywords::new("BatchPolicy", kwargs, &["batch_size", "flush_interval"])?;
        let batch_size: usize = kw.int_as("batch_size", COUNT)?.unwrap_or(100);
        if batch_size == 0 {
            return Err(config_error("batch_size: must be >= 1, got 0"));
        }
        let interval = kw
            .seconds("flush_interval")?
            .unwrap_or(Duration::from_secs(5));
        Ok(PyBatchPolicy {
            batch_size,
            flush_interval: positive("flush_interval", interval)?,
        })
    }

    #[getter]
    fn batch_size(&self) -> usize {
        self.batch_size
    }

    #[getter]
    fn flush_interval(&self) -> f64 {
        self.flush_interval.as_secs_f64()
    }
}

/// One worker as the engine sees it: its id, its own cap on messages in
/// flight (None: the pool's), and the lane its messages go to.
#[pyclass(
    frozen,
    skip_from_py_object,
    name = "WorkerConfig",
    module = "foxtive._core"
)]
pub struct PyWorkerConfig {
    id: Arc<str>,
    concurrency: Option<usize>,
    lane: usize,
}

#[pymethods]
impl PyWorkerConfig {
    /// Keywords: id, lane, concurrency (None: the pool's limit).
    #[new]
    #[pyo3(signature = (**kwargs))]
    fn new(kwargs: Option<&Bound<'_, PyDict>>) -> PyResult<Self> {
        let kw = Keywords::new("WorkerConfig", kwargs, &["id", "lane", "concurrency"])?;
        let id = kw
            .string("id")?
            .ok_or_else(|| config_error("id: a worker needs one"))?;
        Ok(PyWorkerConfig {
            id: Arc::from(id.as_str()),
            concurrency: kw.int_as("concurrency", COUNT)?,
            lane: kw.int_as("lane", COUNT)?.unwrap_or(0),
        })
    }

    #[getter]
    fn id(&self) -> &str {
        &self.id
    }

    #[getter]
    fn concurrency(&self) -> Option<usize> {
        self.concurrency
    }

    #[getter]
    fn lane(&self) -> usize {
        self.lane
    }
}

/// Everything an engine is built from, checked once by the core's
/// `EngineConfig::validate`; each run of a pool builds its engine from it.
#[pyclass(
    frozen,
    skip_from_py_object,
    name = "EngineConfig",
    module = "foxtive._core"
)]
pub struct PyEngineConfig {
    pub(crate) config: EngineConfig,
}

#[pymethods]
impl PyEngineConfig {
    /// `lanes`: True for an event-loop lane, False for a thread lane.
    /// `dead_letter_store`: where dead letters go instead of the backend's
    /// own DLQ. Keywords `concurrency_limit` (required) and `batch_size`.
    #[new]
    #[pyo3(signature = (*, pool, workers, strategy, lanes, retry = None, breaker = None, rate_limit = None, poison = None, dead_letter_store = None, **limits))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        pool: &str,
        workers: Vec<PyRef<'_, PyWorkerConfig>>,
        strategy: &str,
        lanes: Vec<bool>,
        retry: Option<PyRef<'_, PyRetryPolicy>>,
        breaker: Option<PyRef<'_, PyCircuitBreakerPolicy>>,
        rate_limit: Option<PyRef<'_, PyRateLimitPolicy>>,
        poison: Option<PyRef<'_, PyPoisonPillPolicy>>,
        dead_letter_store: Option<Bound<'_, crate::dlq::PyDeadLetterStore>>,
        limits: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Self> {
        let kw = Keywords::new("EngineConfig", limits, &["concurrency_limit", "batch_size"])?;
        let concurrency_limit: usize = kw
            .int_as("concurrency_limit", COUNT)?
            .ok_or_else(|| config_error("concurrency_limit: required"))?;
        let batch_size = kw
            .int_as("batch_size", COUNT)?
            .unwrap_or(DEFAULT_RECEIVE_BATCH);
        let workers = workers
            .iter()
            .map(|w| WorkerSpec {
                id: w.id.clone(),
                // A worker's own cap lives under the pool's.
                limit: w
                    .concurrency
                    .unwrap_or(concurrency_limit)
                    .min(concurrency_limit),
                lane: w.lane,
            })
            .collect();
        let config = EngineConfig {
            pool: Arc::from(pool),
            concurrency_limit,
            workers,
            strategy: strategy.parse().py_err()?,
            retry: retry.map(|r| r.policy).unwrap_or_default(),
            lanes,
            batch_size,
            breaker: breaker.map(|b| b.config),
            rate_limit: rate_limit.map(|r| foxtive_core::policy::RateLimitConfig {
                per_second: r.per_second,
                burst: r.burst,
                shared: r.redis_url.clone().map(|url| {
                    let key = r.key.clone().unwrap_or_else(|| default_rate_key(pool));
                    (url, key)
                }),
            }),
            poison: poison.map(|p| (p.max_failures, p.time_window)),
            dead_letter_store: dead_letter_store.map(|s| s.get().inner.clone()),
        };
        config.validate().py_err()?;
        Ok(PyEngineConfig { config })
    }

    #[getter]
    fn pool(&self) -> &str {
        &self.config.pool
    }

    #[getter]
    fn concurrency_limit(&self) -> usize {
        self.config.concurrency_limit
    }

    /// Each worker's cap on messages in flight, in the order given.
    #[getter]
    fn worker_limits(&self) -> Vec<usize> {
        self.config.workers.iter().map(|w| w.limit).collect()
    }
}
