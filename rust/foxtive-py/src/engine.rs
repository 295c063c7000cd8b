//! `_core.Engine`: the Python side's handle on a running pool.

use std::sync::Arc;
use std::time::Duration;

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

use foxtive_core::message::{Delivery, LocalReceipt, Receipt};
use foxtive_core::policy::{Backoff, BreakerConfig, RateLimitConfig, RetryPolicy};
use foxtive_core::pool::{Engine, EngineConfig, Lane, WorkerSpec};

use crate::backends::resolve_backend;
use crate::bridge;
use crate::convert::{body_from_py, duration_from_py, headers_from_py};
use crate::errors::{config_error, IntoPyResult};
use crate::message::PyMessage;

/// The failure policy's numbers (built from `foxtive.RetryHandler`).
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
    #[pyo3(signature = (max_retries = 5, initial_backoff = None, max_backoff = None, backoff_multiplier = 2.0, jitter = true))]
    fn new(
        max_retries: i64,
        initial_backoff: Option<&Bound<'_, PyAny>>,
        max_backoff: Option<&Bound<'_, PyAny>>,
        backoff_multiplier: f64,
        jitter: bool,
    ) -> PyResult<Self> {
        let max_retries = u32::try_from(max_retries).map_err(|_| {
            config_error(format!(
                "max_retries: must be an integer from 0 to {}, got {max_retries}",
                u32::MAX
            ))
        })?;
        let initial = match initial_backoff {
            Some(v) => duration_from_py("initial_backoff", v)?,
            None => Duration::from_secs(1),
        };
        let max = match max_backoff {
            Some(v) => duration_from_py("max_backoff", v)?,
            None => Duration::from_secs(60),
        };
        let backoff = Backoff::new(initial, max, backoff_multiplier, jitter).py_err()?;
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
}

/// `(per_second, burst, (redis_url, key) | None)` as Python passes it.
type RateLimitArg = (f64, u32, Option<(String, String)>);

fn secs(name: &str, value: f64) -> PyResult<Duration> {
    Duration::try_from_secs_f64(value).map_err(|_| {
        config_error(format!(
            "{name}: must be a finite number of seconds >= 0, got {value}"
        ))
    })
}

#[pyclass(frozen, name = "Engine", module = "foxtive._core")]
pub struct PyEngine {
    engine: Arc<Engine>,
    python_backend: Option<Arc<crate::python_backend::PythonBackend>>,
}

impl PyEngine {
    fn lane(&self, index: usize) -> PyResult<&Lane> {
        self.engine
            .lane(index)
            .ok_or_else(|| config_error(format!("lane {index} does not exist")))
    }

    fn wrap<'py>(
        &self,
        py: Python<'py>,
        items: Vec<Arc<foxtive_core::pool::InFlight>>,
    ) -> PyResult<Bound<'py, PyList>> {
        let mut out = Vec::with_capacity(items.len());
        for inflight in items {
            out.push(Bound::new(
                py,
                PyMessage::new(py, inflight, self.engine.clone()),
            )?);
        }
        PyList::new(py, out)
    }
}

#[pymethods]
impl PyEngine {
    /// `workers`: (id, limit, lane) triples; `lanes`: True for an event-loop lane.
    #[new]
    /// `breaker`: (failure_threshold, reset_timeout, success_threshold);
    /// `rate_limit`: (per_second, burst); `poison`: (max_failures, time_window).
    /// `dead_letter_store`: where dead letters go instead of the backend's own DLQ.
    #[pyo3(signature = (pool, concurrency_limit, workers, strategy, lanes, backend, retry = None, batch_size = 256, breaker = None, rate_limit = None, poison = None, metrics = None, dead_letter_store = None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        pool: &str,
        concurrency_limit: i64,
        workers: Vec<(String, i64, usize)>,
        strategy: &str,
        lanes: Vec<bool>,
        backend: &Bound<'_, PyAny>,
        retry: Option<PyRef<'_, PyRetryPolicy>>,
        batch_size: usize,
        breaker: Option<(u32, f64, u32)>,
        rate_limit: Option<RateLimitArg>,
        poison: Option<(u32, f64)>,
        metrics: Option<PyRef<'_, crate::observe::PyMetrics>>,
        dead_letter_store: Option<Bound<'_, crate::dlq::PyDeadLetterStore>>,
    ) -> PyResult<Self> {
        if concurrency_limit < 1 {
            return Err(config_error(format!(
                "concurrency_limit: must be an integer >= 1, got {concurrency_limit}"
            )));
        }
        let mut specs = Vec::with_capacity(workers.len());
        for (id, limit, lane) in workers {
            if limit < 1 {
                return Err(config_error(format!(
                    "concurrency: worker {id:?} must be >= 1, got {limit}"
                )));
            }
            specs.push(WorkerSpec {
                id: Arc::from(id.as_str()),
                limit: (limit as usize).min(concurrency_limit as usize),
                lane,
            });
        }
        let config = EngineConfig {
            pool: Arc::from(pool),
            concurrency_limit: concurrency_limit as usize,
            workers: specs,
            strategy: strategy.parse().py_err()?,
            retry: retry.map(|r| r.policy).unwrap_or_default(),
            lanes,
            batch_size,
            breaker: match breaker {
                Some((failures, reset, successes)) => Some(
                    BreakerConfig::new(failures, secs("reset_timeout", reset)?, successes)
                        .py_err()?,
                ),
                None => None,
            },
            rate_limit: rate_limit.map(|(per_second, burst, shared)| RateLimitConfig {
                per_second,
                burst,
                shared,
            }),
            poison: match poison {
                Some((max, window)) => Some((max, secs("time_window", window)?)),
                None => None,
            },
            dead_letter_store: dead_letter_store.map(|s| s.get().inner.clone()),
        };
        let (backend, python_backend) = resolve_backend(backend)?;
        let engine = match metrics {
            Some(m) => Engine::with_metrics(config, backend, m.inner.clone()),
            None => Engine::new(config, backend),
        }
        .py_err()?;
        Ok(PyEngine {
            engine,
            python_backend,
        })
    }

    /// Connect and start consuming (awaitable). Captures the running loop for
    /// backends written in Python.
    fn start<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        crate::python_backend::bind_loop(py, &self.python_backend)?;
        let engine = self.engine.clone();
        bridge::awaitable(py, async move { engine.start().await })
    }

    fn wake_fd(&self, lane: usize) -> PyResult<Option<i32>> {
        Ok(self.lane(lane)?.wake_fd().map(|fd| fd.read_fd()))
    }

    fn clear_wake(&self, lane: usize) -> PyResult<()> {
        if let Some(fd) = self.lane(lane)?.wake_fd() {
            fd.clear();
        }
        Ok(())
    }

    /// Up to `max` ready messages of an event-loop lane, without waiting.
    fn drain<'py>(&self, py: Python<'py>, lane: usize, max: usize) -> PyResult<Bound<'py, PyList>> {
        let items = self.engine.screen(self.lane(lane)?.drain(max));
        self.wrap(py, items)
    }

    /// Up to `max` messages of a thread lane, waiting up to `timeout` seconds
    /// for the first (without the GIL). None once the lane is closed and empty.
    fn take<'py>(
        &self,
        py: Python<'py>,
        lane: usize,
        max: usize,
        timeout: f64,
    ) -> PyResult<Option<Bound<'py, PyList>>> {
        let lane_ref = self.lane(lane)?;
        let wait = Duration::try_from_secs_f64(timeout.max(0.0)).unwrap_or(Duration::from_secs(1));
        let items = py.detach(|| lane_ref.take(max, wait));
        match items {
            Some(items) => Ok(Some(self.wrap(py, self.engine.screen(items))?)),
            None => Ok(None),
        }
    }

    /// Messages waiting in a lane.
    fn lane_len(&self, lane: usize) -> PyResult<usize> {
        Ok(self.lane(lane)?.len())
    }

    /// Acknowledge every message of the list not settled yet.
    fn ack_many(&self, messages: &Bound<'_, PyList>) -> PyResult<usize> {
        let mut held = Vec::with_capacity(messages.len());
        for item in messages.iter() {
            held.push(item.cast_into::<PyMessage>()?);
        }
        Ok(self.engine.ack_many(held.iter().map(|m| &m.get().inflight)))
    }

    /// A message handed in by the user (`pool.dispatch`).
    #[pyo3(signature = (body, headers = None, message_id = None, queue = None, attempt = 1))]
    fn adopt(
        &self,
        py: Python<'_>,
        body: &Bound<'_, PyAny>,
        headers: Option<&Bound<'_, PyDict>>,
        message_id: Option<String>,
        queue: Option<String>,
        attempt: u32,
    ) -> PyResult<PyMessage> {
        static LOCAL_SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let seq = LOCAL_SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let queue: Arc<str> = Arc::from(queue.as_deref().unwrap_or("local"));
        let mut d = Delivery::new(
            message_id.unwrap_or_else(|| format!("local-{seq}")),
            body_from_py(body)?,
            queue,
            Receipt::new(LocalReceipt(seq)),
        );
        d.attempt = attempt.max(1);
        if let Some(h) = headers {
            d.headers = headers_from_py(h)?;
        }
        Ok(PyMessage::new(
            py,
            self.engine.adopt(d),
            self.engine.clone(),
        ))
    }

    fn in_flight(&self) -> usize {
        self.engine.in_flight()
    }

    fn state(&self) -> &'static str {
        self.engine.state().as_str()
    }

    fn backend_state(&self) -> &'static str {
        self.engine.backend().state().as_str()
    }

    fn is_idle(&self) -> Option<bool> {
        self.engine.is_idle()
    }

    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = crate::observe::stats_dict(py, &self.engine.stats())?;
        d.set_item("in_flight", self.engine.in_flight())?;
        let loads = PyDict::new(py);
        for (id, load) in self.engine.worker_loads() {
            loads.set_item(&*id, load)?;
        }
        d.set_item("workers", loads)?;
        if let Some((state, transitions)) = self.engine.breaker_state() {
            d.set_item("circuit_breaker", state.as_str())?;
            d.set_item("circuit_breaker_transitions", transitions)?;
        }
        Ok(d)
    }

    fn concurrency_limit(&self) -> usize {
        self.engine.config().concurrency_limit
    }

    /// Stop taking messages; hand back what no handler has started (awaitable).
    fn begin_drain<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let engine = self.engine.clone();
        bridge::awaitable(py, async move {
            engine.begin_drain().await;
            Ok(())
        })
    }

    /// Flush settlements and close the backend (awaitable).
    fn finish<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let engine = self.engine.clone();
        bridge::awaitable(py, async move { engine.finish().await })
    }
}
