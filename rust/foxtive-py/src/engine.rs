//! `_core.Engine`: the Python side's handle on a running pool.

use std::sync::Arc;
use std::time::Duration;

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

use foxtive_core::message::{Delivery, LocalReceipt, Receipt};
use foxtive_core::pool::{Engine, Lane};

use crate::backends::resolve_backend;
use crate::bridge;
use crate::convert::{body_from_py, headers_from_py};
use crate::errors::{config_error, IntoPyResult};
use crate::message::PyMessage;
use crate::policies::PyEngineConfig;

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
        let engine = &self.engine;
        PyList::new(
            py,
            items
                .into_iter()
                .map(|inflight| PyMessage::new(py, inflight, engine.clone())),
        )
    }
}

#[pymethods]
impl PyEngine {
    /// An engine over `backend` built from `config` (checked when it was
    /// built); `metrics` outlive it (a pool's counters span its runs).
    #[new]
    #[pyo3(signature = (config, backend, metrics = None))]
    fn new(
        config: PyRef<'_, PyEngineConfig>,
        backend: &Bound<'_, PyAny>,
        metrics: Option<PyRef<'_, crate::observe::PyMetrics>>,
    ) -> PyResult<Self> {
        let config = config.config.clone();
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
            Receipt::packed(LocalReceipt(seq)),
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
        if let Some(w) = self.engine.rate_limit_waits() {
            d.set_item("rate_limit_waits", w.waits)?;
            d.set_item("rate_limit_wait_seconds", w.wait_seconds)?;
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
