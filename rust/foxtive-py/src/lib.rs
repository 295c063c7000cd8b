//! PyO3 glue: the `foxtive._core` extension module. No policy lives here;
//! this crate converts types and hands work between Python and foxtive-core.

mod awaitable;
mod backends;
mod bridge;
mod convert;
mod engine;
mod errors;
mod message;
mod python_backend;
mod redis_streams;
mod runtime;

use pyo3::prelude::*;

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_class::<awaitable::Ready>()?;
    m.add_class::<bridge::Completions>()?;
    m.add_class::<message::PyMessage>()?;
    m.add_class::<engine::PyEngine>()?;
    m.add_class::<engine::PyRetryPolicy>()?;
    m.add_class::<backends::PyMemoryBackend>()?;
    m.add_class::<backends::PyDeadLetter>()?;
    m.add_class::<redis_streams::PyRedisStreamBackend>()?;
    m.add_function(wrap_pyfunction!(backends::redact_url, m)?)?;
    m.add_function(wrap_pyfunction!(runtime::runtime_pid, m)?)?;
    Ok(())
}
