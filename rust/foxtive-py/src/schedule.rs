//! `_core.ScheduleTrigger`, `_core.Scheduler` and `_core.schedule_status`:
//! the glue of `foxtive.schedules`. The triggers, the lease, the store and
//! the loop are all in `foxtive_core::schedule`; here only conversions.

use std::sync::Arc;
use std::time::Duration;

use foxtive_core::schedule::{DateTime, Utc};
use parking_lot::Mutex;
use pyo3::prelude::*;
use pyo3::types::PyDict;

use foxtive_core::schedule::brokers::{self, ScheduleBroker};
use foxtive_core::schedule::{
    CatchUp, Schedule, ScheduleMetrics, Scheduler, SchedulerSettings, Trigger,
};

use crate::convert::outgoing_from_py;
use crate::errors::{config_error, IntoPyResult};
use crate::native_backend::native_of;
use crate::registry::options_from_py;
use foxtive_core::backend::options::Options;

fn to_utc(secs: f64) -> PyResult<DateTime<Utc>> {
    let whole = secs.floor();
    DateTime::from_timestamp(whole as i64, ((secs - whole) * 1e9) as u32)
        .ok_or_else(|| config_error(format!("time out of range: {secs}")))
}

fn unix(t: DateTime<Utc>) -> f64 {
    t.timestamp() as f64
}

/// The lease and store of `app`, the credentials converted as a backend's
/// options are (`open_backend`).
fn open_broker(
    app: &str,
    broker: &str,
    results: Option<&str>,
    credentials: Option<&Bound<'_, PyDict>>,
) -> PyResult<Arc<dyn ScheduleBroker>> {
    let options = match credentials {
        Some(dict) => options_from_py(dict)?,
        None => Options::new(),
    };
    brokers::open_for_app(broker, app, results, options).py_err()
}

/// When a schedule fires: `cron` (5 or 6 fields) or `every` (seconds), in `tz`.
#[pyclass(frozen, name = "ScheduleTrigger", module = "foxtive._core")]
pub struct PyScheduleTrigger {
    inner: Trigger,
}

#[pymethods]
impl PyScheduleTrigger {
    #[new]
    #[pyo3(signature = (cron = None, every = None, tz = "UTC"))]
    fn new(cron: Option<&str>, every: Option<f64>, tz: &str) -> PyResult<Self> {
        let inner = match (cron, every) {
            (Some(expr), None) => Trigger::cron(expr, tz),
            (None, Some(secs)) if secs.is_finite() && secs > 0.0 => {
                Trigger::every(Duration::from_secs_f64(secs), tz)
            }
            (None, Some(secs)) => {
                return Err(config_error(format!(
                    "every: must be a positive number of seconds, got {secs}"
                )))
            }
            _ => {
                return Err(config_error(
                    "schedule: give exactly one of cron=\"...\" or every=seconds",
                ))
            }
        }
        .py_err()?;
        Ok(PyScheduleTrigger { inner })
    }

    /// Identifies the trigger: changing it resets the stored last tick.
    #[getter]
    fn fingerprint(&self) -> String {
        self.inner.fingerprint()
    }

    /// The IANA name of the trigger's time zone.
    #[getter]
    fn tz(&self) -> String {
        self.inner.tz().name().to_string()
    }

    /// The next `n` ticks strictly after unix time `after`, as unix seconds.
    fn next_ticks(&self, after: f64, n: usize) -> PyResult<Vec<f64>> {
        Ok(self
            .inner
            .next_ticks(to_utc(after)?, n.min(10_000))
            .into_iter()
            .map(unix)
            .collect())
    }

    /// `t` (unix seconds) in the trigger's zone, ISO 8601 with its offset.
    fn local_iso(&self, t: f64) -> PyResult<String> {
        Ok(self.inner.local(to_utc(t)?).to_rfc3339())
    }
}

/// One app's scheduler: schedules are added, then it runs on the tokio
/// runtime until `stop()`.
#[pyclass(frozen, name = "Scheduler", module = "foxtive._core")]
pub struct PyScheduler {
    app: String,
    broker: Arc<dyn ScheduleBroker>,
    lease: Duration,
    pending: Mutex<Vec<Schedule>>,
    running: Mutex<Option<Arc<Scheduler>>>,
    metrics: Mutex<Option<Arc<ScheduleMetrics>>>,
    done: Arc<tokio::sync::Notify>,
    finished: Arc<std::sync::atomic::AtomicBool>,
}

#[pymethods]
impl PyScheduler {
    /// `broker`: the app's broker URL (the lease and the last ticks live
    /// there, or in `results`, the app's result store URL, on RabbitMQ);
    /// `lease`: seconds, at most 10; `credentials`: what the broker's
    /// backend connects with besides the URL (NATS: `token`, `nkey_file`,
    /// `creds_file`).
    #[new]
    #[pyo3(signature = (app, broker, lease = 10.0, results = None, credentials = None))]
    fn new(
        app: &str,
        broker: &str,
        lease: f64,
        results: Option<&str>,
        credentials: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Self> {
        if !lease.is_finite() || lease <= 0.0 {
            return Err(config_error(format!(
                "lease: must be > 0 seconds, got {lease}"
            )));
        }
        let lease =
            foxtive_core::schedule::leader::check_lease(Duration::from_secs_f64(lease)).py_err()?;
        Ok(PyScheduler {
            app: app.to_string(),
            broker: open_broker(app, broker, results, credentials)?,
            lease,
            pending: Mutex::new(Vec::new()),
            running: Mutex::new(None),
            metrics: Mutex::new(None),
            done: Arc::new(tokio::sync::Notify::new()),
            finished: Arc::new(std::sync::atomic::AtomicBool::new(false)),
        })
    }

    /// Add a schedule: each tick publishes `body` with `headers` on
    /// `backend` (a native backend), with the tick id as message id.
    #[pyo3(signature = (name, trigger, catch_up, backend, body, headers))]
    fn add(
        &self,
        name: &str,
        trigger: &PyScheduleTrigger,
        catch_up: &str,
        backend: &Bound<'_, PyAny>,
        body: &Bound<'_, PyAny>,
        headers: &Bound<'_, PyDict>,
    ) -> PyResult<()> {
        let native = native_of(backend).ok_or_else(|| {
            config_error(
                "schedules: the queue's backend is written in Python; schedules need a \
                 native backend (memory, redis, postgresql, sqlite, rabbitmq)",
            )
        })?;
        let catch_up = CatchUp::parse(catch_up).py_err()?;
        let template = outgoing_from_py(body, Some(headers), None, None)?;
        let mut pending = self.pending.lock();
        if pending.iter().any(|s| s.name == name) {
            return Err(config_error(format!(
                "name: a schedule named {name:?} is already added"
            )));
        }
        pending.push(Schedule {
            name: name.to_string(),
            trigger: trigger.inner.clone(),
            catch_up,
            publisher: native.get().inner.clone(),
            template,
        });
        Ok(())
    }

    /// Start the lease keeper and the tick loop on the tokio runtime.
    fn start(&self) -> PyResult<()> {
        let mut running = self.running.lock();
        if running.is_some() {
            return Err(config_error("scheduler: already started"));
        }
        let schedules = std::mem::take(&mut *self.pending.lock());
        let settings = SchedulerSettings { lease: self.lease };
        let scheduler =
            Scheduler::new(&self.app, schedules, self.broker.clone(), settings).py_err()?;
        *self.metrics.lock() = Some(scheduler.metrics());
        let (done, finished) = (self.done.clone(), self.finished.clone());
        let runtime = crate::runtime::get()?;
        let s = scheduler.clone();
        runtime.spawn(async move {
            s.run().await;
            finished.store(true, std::sync::atomic::Ordering::Release);
            done.notify_waiters();
        });
        *running = Some(scheduler);
        Ok(())
    }

    /// Ask it to stop (the lease is released); see `wait()`.
    fn stop(&self) {
        if let Some(s) = self.running.lock().as_ref() {
            s.stop();
        }
    }

    /// Awaitable: done once the loops have ended (after `stop()`).
    fn wait<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let (done, finished) = (self.done.clone(), self.finished.clone());
        let started = self.running.lock().is_some();
        crate::bridge::awaitable(py, async move {
            let notified = done.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if started && !finished.load(std::sync::atomic::Ordering::Acquire) {
                notified.await;
            }
            Ok(())
        })
    }

    /// True while this process holds the lease.
    #[getter]
    fn leader(&self) -> bool {
        self.metrics
            .lock()
            .as_ref()
            .is_some_and(|m| m.leader.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// The counters in the Prometheus text format.
    fn metrics_text(&self) -> String {
        let metrics = self.metrics.lock().clone().unwrap_or_default();
        metrics.render(&self.app)
    }
}

/// Awaitable of `(leader, last)`: the current leader as `(host, pid,
/// token, seconds left)` or None, and the last tick per schedule name as
/// `(unix seconds, fingerprint)`. `results`: the app's result store URL
/// (where a RabbitMQ app's schedules live); `credentials`: as `Scheduler`'s.
#[pyfunction]
#[pyo3(signature = (app, broker, results = None, credentials = None))]
pub fn schedule_status<'py>(
    py: Python<'py>,
    app: &str,
    broker: &str,
    results: Option<&str>,
    credentials: Option<&Bound<'_, PyDict>>,
) -> PyResult<Bound<'py, PyAny>> {
    let b = open_broker(app, broker, results, credentials)?;
    crate::bridge::awaitable(py, async move {
        let leader = b.current().await?.map(|l| {
            (
                l.holder.host,
                l.holder.pid,
                l.token,
                l.expires_in.as_secs_f64(),
            )
        });
        let last: Vec<(String, (f64, String))> = b
            .all()
            .await?
            .into_iter()
            .map(|(name, v)| (name, (unix(v.tick), v.fingerprint)))
            .collect();
        Ok((leader, last))
    })
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyScheduleTrigger>()?;
    m.add_class::<PyScheduler>()?;
    m.add_function(wrap_pyfunction!(schedule_status, m)?)?;
    Ok(())
}
