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

use foxtive_core::policy::{Backoff, BreakerConfig, PoisonPillTracker, RateLimiter, RetryPolicy};
use foxtive_core::pool::{EngineConfig, WorkerSpec};

use crate::convert::{duration_from_py, int_from_py, number_from_py, opt_str_from_py};
use crate::errors::{config_error, IntoPyResult};

/// Seconds given as a float or a `timedelta`; `default` when not given.
fn secs_or(name: &str, value: Option<&Bound<'_, PyAny>>, default: Duration) -> PyResult<Duration> {
    match value {
        Some(v) => duration_from_py(name, v),
        None => Ok(default),
    }
}

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
    #[new]
    #[pyo3(signature = (*, max_retries = None, initial_backoff = None, max_backoff = None, backoff_multiplier = None, jitter = None))]
    fn new(
        max_retries: Option<&Bound<'_, PyAny>>,
        initial_backoff: Option<&Bound<'_, PyAny>>,
        max_backoff: Option<&Bound<'_, PyAny>>,
        backoff_multiplier: Option<&Bound<'_, PyAny>>,
        jitter: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let defaults = RetryPolicy::default();
        let max_retries = match max_retries {
            Some(v) => int_from_py("max_retries", v)?,
            None => defaults.max_retries,
        };
        let multiplier = match backoff_multiplier {
            Some(v) => number_from_py("backoff_multiplier", v)?,
            None => defaults.backoff.multiplier(),
        };
        let jitter = match jitter {
            Some(v) => v.is_truthy()?,
            None => defaults.backoff.jitter(),
        };
        let backoff = Backoff::new(
            secs_or(
                "initial_backoff",
                initial_backoff,
                defaults.backoff.initial(),
            )?,
            secs_or("max_backoff", max_backoff, defaults.backoff.max())?,
            multiplier,
            jitter,
        )
        .py_err()?;
        Ok(PyRetryPolicy {
            policy: RetryPolicy {
                max_retries,
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
    #[new]
    #[pyo3(signature = (*, max_failures = None, time_window = None))]
    fn new(
        max_failures: Option<&Bound<'_, PyAny>>,
        time_window: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let max_failures = match max_failures {
            Some(v) => int_from_py("max_failures", v)?,
            None => 10, // PoisonPillTracker()'s default
        };
        let time_window = secs_or("time_window", time_window, Duration::from_secs(3600))?;
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
    #[new]
    #[pyo3(signature = (*, failure_threshold = None, reset_timeout = None, success_threshold = None))]
    fn new(
        failure_threshold: Option<&Bound<'_, PyAny>>,
        reset_timeout: Option<&Bound<'_, PyAny>>,
        success_threshold: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let failures = match failure_threshold {
            Some(v) => int_from_py("failure_threshold", v)?,
            None => 5,
        };
        let successes = match success_threshold {
            Some(v) => int_from_py("success_threshold", v)?,
            None => 1,
        };
        let reset = secs_or("reset_timeout", reset_timeout, Duration::from_secs(30))?;
        Ok(PyCircuitBreakerPolicy {
            config: BreakerConfig::new(failures, reset, successes).py_err()?,
        })
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
    #[new]
    #[pyo3(signature = (*, per_second = None, burst = None, redis_url = None, key = None))]
    fn new(
        per_second: Option<&Bound<'_, PyAny>>,
        burst: Option<&Bound<'_, PyAny>>,
        redis_url: Option<&Bound<'_, PyAny>>,
        key: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let per_second = match per_second {
            Some(v) => number_from_py("per_second", v)?,
            None => 100.0,
        };
        let burst = match burst {
            Some(v) => int_from_py("burst", v)?,
            None => 10,
        };
        let redis_url = opt_str_from_py(
            "redis_url",
            redis_url,
            "a Redis URL string (redis://, rediss://, unix://)",
        )?;
        let key = opt_str_from_py("key", key, "a non-empty string")?;
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
    #[new]
    #[pyo3(signature = (*, seconds = None))]
    fn new(seconds: Option<&Bound<'_, PyAny>>) -> PyResult<Self> {
        let seconds = secs_or("seconds", seconds, Duration::from_secs(25))?;
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
    #[new]
    #[pyo3(signature = (*, batch_size = None, flush_interval = None))]
    fn new(
        batch_size: Option<&Bound<'_, PyAny>>,
        flush_interval: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let batch_size: usize = match batch_size {
            Some(v) => int_from_py("batch_size", v)?,
            None => 100,
        };
        if batch_size == 0 {
            return Err(config_error("batch_size: must be >= 1, got 0"));
        }
        let interval = secs_or("flush_interval", flush_interval, Duration::from_secs(5))?;
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
    #[new]
    #[pyo3(signature = (*, id, lane, concurrency = None))]
    fn new(id: &str, lane: usize, concurrency: Option<&Bound<'_, PyAny>>) -> PyResult<Self> {
        let concurrency = match concurrency {
            Some(v) if !v.is_none() => Some(int_from_py("concurrency", v)?),
            _ => None,
        };
        Ok(PyWorkerConfig {
            id: Arc::from(id),
            concurrency,
            lane,
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
    /// `dead_letter_store`: where dead letters go instead of the backend's own DLQ.
    #[new]
    #[pyo3(signature = (*, pool, concurrency_limit, workers, strategy, lanes, retry = None, batch_size = 256, breaker = None, rate_limit = None, poison = None, dead_letter_store = None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        pool: &str,
        concurrency_limit: &Bound<'_, PyAny>,
        workers: Vec<PyRef<'_, PyWorkerConfig>>,
        strategy: &str,
        lanes: Vec<bool>,
        retry: Option<PyRef<'_, PyRetryPolicy>>,
        batch_size: usize,
        breaker: Option<PyRef<'_, PyCircuitBreakerPolicy>>,
        rate_limit: Option<PyRef<'_, PyRateLimitPolicy>>,
        poison: Option<PyRef<'_, PyPoisonPillPolicy>>,
        dead_letter_store: Option<Bound<'_, crate::dlq::PyDeadLetterStore>>,
    ) -> PyResult<Self> {
        let concurrency_limit: usize = int_from_py("concurrency_limit", concurrency_limit)?;
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
