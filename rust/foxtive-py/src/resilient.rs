//! `_core.ResilientBackend`: any backend, reconnected with a strategy.

use std::sync::Arc;
use std::time::Duration;

use pyo3::prelude::*;
use pyo3::types::PyDict;

use foxtive_core::backend::{Backend, ResilientBackend};
use foxtive_core::policy::ReconnectStrategy;

use crate::backends::resolve_backend;
use crate::bridge;
use crate::errors::{config_error, IntoPyResult};
use crate::python_backend::PythonBackend;

#[pyclass(frozen, name = "ResilientBackend", module = "foxtive._core")]
pub struct PyResilientBackend {
    pub(crate) inner: Arc<ResilientBackend>,
    pub(crate) python_backend: Option<Arc<PythonBackend>>,
}

fn secs(name: &str, value: f64) -> PyResult<Duration> {
    Duration::try_from_secs_f64(value).map_err(|_| {
        config_error(format!(
            "{name}: must be a finite number of seconds >= 0, got {value}"
        ))
    })
}

/// A strategy from its parts: `kind` is "exponential" or "fixed".
pub fn strategy(
    kind: &str,
    initial: f64,
    max: f64,
    multiplier: f64,
    jitter: f64,
) -> PyResult<ReconnectStrategy> {
    match kind {
        "exponential" => ReconnectStrategy::exponential(
            secs("initial", initial)?,
            secs("max", max)?,
            multiplier,
            jitter,
        )
        .py_err(),
        "fixed" => Ok(ReconnectStrategy::fixed(secs("delay", initial)?)),
        other => Err(config_error(format!(
            "strategy: unknown kind {other:?}; allowed: exponential, fixed"
        ))),
    }
}

/// The delay a strategy gives after `failures` consecutive failures.
#[pyfunction]
pub fn reconnect_delay(
    kind: &str,
    initial: f64,
    max: f64,
    multiplier: f64,
    jitter: f64,
    failures: u32,
) -> PyResult<f64> {
    Ok(strategy(kind, initial, max, multiplier, jitter)?
        .delay(failures)
        .as_secs_f64())
}

#[pymethods]
impl PyResilientBackend {
    #[new]
    #[pyo3(signature = (backend, kind = "exponential", initial = 1.0, max = 60.0, multiplier = 2.0, jitter = 0.1))]
    fn new(
        backend: &Bound<'_, PyAny>,
        kind: &str,
        initial: f64,
        max: f64,
        multiplier: f64,
        jitter: f64,
    ) -> PyResult<Self> {
        let strategy = strategy(kind, initial, max, multiplier, jitter)?;
        let (inner, python_backend) = resolve_backend(backend)?;
        Ok(PyResilientBackend {
            inner: Arc::new(ResilientBackend::new(inner, strategy)),
            python_backend,
        })
    }

    #[getter]
    fn name(&self) -> &str {
        self.inner.name()
    }

    /// "connected", "reconnecting" or "closed".
    #[getter]
    fn state(&self) -> &'static str {
        self.inner.state().as_str()
    }

    #[getter]
    fn reconnect_attempts(&self) -> u64 {
        self.inner.reconnect_attempts()
    }

    #[getter]
    fn consecutive_failures(&self) -> u32 {
        self.inner.consecutive_failures()
    }

    /// State changes since the last call, oldest first: `[(old, new), ...]`.
    fn take_changes(&self) -> Vec<(&'static str, &'static str)> {
        self.inner
            .take_changes()
            .into_iter()
            .map(|(a, b)| (a.as_str(), b.as_str()))
            .collect()
    }

    /// The delay after `failures` consecutive failures (jitter included).
    fn delay(&self, failures: u32) -> f64 {
        self.inner.strategy().delay(failures).as_secs_f64()
    }

    #[pyo3(signature = (body, headers = None, delay = None, message_id = None))]
    fn publish<'py>(
        &self,
        py: Python<'py>,
        body: &Bound<'py, PyAny>,
        headers: Option<&Bound<'py, PyDict>>,
        delay: Option<&Bound<'py, PyAny>>,
        message_id: Option<String>,
    ) -> PyResult<Bound<'py, PyAny>> {
        crate::python_backend::bind_loop(py, &self.python_backend)?;
        crate::backends::publish_one(py, self.inner.clone(), body, headers, delay, message_id)
    }

    #[pyo3(signature = (bodies, headers = None, delay = None))]
    fn publish_many<'py>(
        &self,
        py: Python<'py>,
        bodies: &Bound<'py, PyAny>,
        headers: Option<&Bound<'py, PyDict>>,
        delay: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        crate::python_backend::bind_loop(py, &self.python_backend)?;
        crate::backends::publish_many(py, self.inner.clone(), bodies, headers, delay)
    }

    /// Close the wrapped backend; a reconnect wait in progress ends at once.
    fn close<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let inner = self.inner.clone();
        bridge::awaitable(py, async move { inner.close().await })
    }

    fn __repr__(&self) -> String {
        format!(
            "ResilientBackend(name={:?}, state={:?})",
            self.inner.name(),
            self.inner.state().as_str()
        )
    }
}
