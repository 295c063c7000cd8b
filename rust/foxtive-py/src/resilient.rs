//! `_core.ResilientBackend`: any backend, reconnected with a strategy.

use std::sync::Arc;
use std::time::Duration;

use pyo3::prelude::*;
use pyo3::types::PyDict;

use foxtive_core::backend::{Backend, ResilientBackend};
use foxtive_core::policy::ReconnectStrategy;

use crate::backends::resolve_backend;
use crate::convert::duration_from_py;
use crate::errors::{config_error, IntoPyResult};
use crate::keywords::Keywords;
use crate::native_backend::{native_of, NativeBackend};

#[pyclass(extends = NativeBackend, frozen, name = "ResilientBackend", module = "foxtive._core")]
pub struct PyResilientBackend {
    pub(crate) inner: Arc<ResilientBackend>,
}

/// `ReconnectStrategy` as a config object: built from keywords, checked by
/// the core (`ReconnectStrategy::exponential`), its fields read-only.
#[pyclass(frozen, name = "ReconnectStrategy", module = "foxtive._core")]
pub struct PyReconnectStrategy {
    pub(crate) inner: ReconnectStrategy,
}

const STRATEGY_FIELDS: &[&str] = &["kind", "initial", "max", "multiplier", "jitter"];

/// A strategy from its parts: `kind` is "exponential" or "fixed" (which
/// waits `initial` every time).
fn strategy(
    kind: &str,
    initial: Duration,
    max: Duration,
    multiplier: f64,
    jitter: f64,
) -> PyResult<ReconnectStrategy> {
    match kind {
        "exponential" => ReconnectStrategy::exponential(initial, max, multiplier, jitter).py_err(),
        "fixed" => Ok(ReconnectStrategy::fixed(initial)),
        other => Err(config_error(format!(
            "kind: unknown value {other:?}; allowed: exponential, fixed"
        ))),
    }
}

#[pymethods]
impl PyReconnectStrategy {
    /// Keywords: kind ("exponential" or "fixed"), initial, max (seconds),
    /// multiplier, jitter.
    #[new]
    #[pyo3(signature = (**kwargs))]
    fn new(kwargs: Option<&Bound<'_, PyDict>>) -> PyResult<Self> {
        let kw = Keywords::new("ReconnectStrategy", kwargs, STRATEGY_FIELDS)?;
        let inner = strategy(
            &kw.string("kind")?
                .unwrap_or_else(|| "exponential".to_string()),
            kw.seconds("initial")?.unwrap_or(Duration::from_secs(1)),
            kw.seconds("max")?.unwrap_or(Duration::from_secs(60)),
            kw.number("multiplier")?.unwrap_or(2.0),
            kw.number("jitter")?.unwrap_or(0.1),
        )?;
        Ok(PyReconnectStrategy { inner })
    }

    /// The same `delay` (seconds or timedelta) every time.
    #[staticmethod]
    fn fixed(delay: &Bound<'_, PyAny>) -> PyResult<Self> {
        Ok(PyReconnectStrategy {
            inner: ReconnectStrategy::fixed(duration_from_py("delay", delay)?),
        })
    }

    #[getter]
    fn kind(&self) -> &'static str {
        match self.inner {
            ReconnectStrategy::Fixed(_) => "fixed",
            ReconnectStrategy::Exponential { .. } => "exponential",
        }
    }

    #[getter]
    fn initial(&self) -> f64 {
        match self.inner {
            ReconnectStrategy::Fixed(d) => d.as_secs_f64(),
            ReconnectStrategy::Exponential { initial, .. } => initial.as_secs_f64(),
        }
    }

    #[getter]
    fn max(&self) -> f64 {
        match self.inner {
            ReconnectStrategy::Fixed(d) => d.as_secs_f64(),
            ReconnectStrategy::Exponential { max, .. } => max.as_secs_f64(),
        }
    }

    #[getter]
    fn multiplier(&self) -> f64 {
        match self.inner {
            ReconnectStrategy::Fixed(_) => 1.0,
            ReconnectStrategy::Exponential { multiplier, .. } => multiplier,
        }
    }

    #[getter]
    fn jitter(&self) -> f64 {
        match self.inner {
            ReconnectStrategy::Fixed(_) => 0.0,
            ReconnectStrategy::Exponential { jitter, .. } => jitter,
        }
    }

    /// Seconds to wait after `failures` consecutive failures (jitter included).
    fn delay(&self, failures: u32) -> f64 {
        self.inner.delay(failures).as_secs_f64()
    }
}

#[pymethods]
impl PyResilientBackend {
    #[new]
    #[pyo3(signature = (backend, strategy = None))]
    fn new(
        backend: &Bound<'_, PyAny>,
        strategy: Option<PyRef<'_, PyReconnectStrategy>>,
    ) -> PyResult<PyClassInitializer<Self>> {
        let strategy = strategy.map(|s| s.inner).unwrap_or_default();
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
