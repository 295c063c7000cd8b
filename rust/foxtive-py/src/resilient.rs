//! `_core.ResilientBackend`: any backend, reconnected with a strategy.

use std::sync::Arc;
use std::time::Duration;

use pyo3::prelude::*;

use foxtive_core::backend::{Backend, ResilientBackend};
use foxtive_core::policy::ReconnectStrategy;

use crate::backends::resolve_backend;
use crate::errors::{config_error, IntoPyResult};
use crate::native_backend::{native_of, NativeBackend};

#[pyclass(extends = NativeBackend, frozen, name = "ResilientBackend", module = "foxtive._core")]
pub struct PyResilientBackend {
    pub(crate) inner: Arc<ResilientBackend>,
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
    ) -> PyResult<PyClassInitializer<Self>> {
        let strategy = strategy(kind, initial, max, multiplier, jitter)?;
        let (wrapped, python_backend) = resolve_backend(backend)?;
        // The wrapped backend's own dead-letter queue stays reachable.
        let dead_letters = native_of(backend).and_then(|n| n.get().dead_letters());
        let inner = Arc::new(ResilientBackend::new(wrapped, strategy));
        let base = NativeBackend::new(inner.clone())
            .with_dead_letters(dead_letters)
            .driving(python_backend);
        Ok(PyClassInitializer::from(base).add_subclass(PyResilientBackend { inner }))
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

    fn __repr__(&self) -> String {
        format!(
            "ResilientBackend(name={:?}, state={:?})",
            self.inner.name(),
            self.inner.state().as_str()
        )
    }
}
