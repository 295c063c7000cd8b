//! A rate limiter Python code can await: the task layer's `rate_limit`
//! shared through Redis, so every process of an app draws from one budget
//! (API.md: "shared across processes where the broker has a store"). The
//! GCRA and its fallback to a local limit when Redis is away are the core's.

use std::sync::Arc;

use foxtive_core::policy::RateLimiter;
use pyo3::prelude::*;

use crate::bridge;
use crate::errors::IntoPyResult;

#[pyclass(frozen, name = "SharedRateLimiter", module = "foxtive._core")]
pub struct PySharedRateLimiter {
    limiter: Arc<RateLimiter>,
}

#[pymethods]
impl PySharedRateLimiter {
    /// `per_second` permits a second with bursts of `burst`, counted in
    /// Redis at `redis_url` under `key`. Connects on first use.
    #[new]
    fn new(per_second: f64, burst: u32, redis_url: &str, key: &str) -> PyResult<Self> {
        let limiter = RateLimiter::shared(per_second, burst, redis_url, key).py_err()?;
        Ok(PySharedRateLimiter {
            limiter: Arc::new(limiter),
        })
    }

    /// Wait for one permit (an awaitable; call it on the event loop's thread).
    fn acquire<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let limiter = self.limiter.clone();
        bridge::awaitable(py, async move {
            limiter.until_ready().await;
            Ok(())
        })
    }

    /// Admissions that waited, and the seconds they waited in all.
    fn waits(&self) -> (u64, f64) {
        let w = self.limiter.waits();
        (w.waits, w.wait_seconds)
    }
}
