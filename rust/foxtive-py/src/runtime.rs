//! The process's tokio runtime: built lazily, guarded by the process id
//! (tokio does not survive `fork`; foxtive's multi-process mode spawns fresh
//! interpreters instead).

use std::sync::OnceLock;

use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use tokio::runtime::Runtime;

use crate::errors::config_error;

struct Owned {
    pid: u32,
    runtime: Runtime,
}

static RUNTIME: OnceLock<Owned> = OnceLock::new();

/// Worker threads of the runtime: `FOXTIVE_IO_THREADS`, default 1. The
/// Rust side of a message costs a few microseconds, so one thread keeps up
/// with any pool the GIL-bound Python side can feed; a second one mostly
/// adds cross-thread wake-ups (measured: 9 % fewer messages per second on
/// RabbitMQ with two, no difference on Redis; benches/RESULTS.md).
fn io_threads() -> PyResult<usize> {
    match std::env::var("FOXTIVE_IO_THREADS") {
        Err(_) => Ok(1),
        Ok(v) => match v.trim().parse::<usize>() {
            Ok(n) if (1..=64).contains(&n) => Ok(n),
            _ => Err(config_error(format!(
                "FOXTIVE_IO_THREADS: must be an integer from 1 to 64, got {v:?}"
            ))),
        },
    }
}

fn build(threads: usize) -> Owned {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .thread_name("foxtive-io")
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("cannot start the tokio runtime: {e}"));
    Owned {
        pid: std::process::id(),
        runtime,
    }
}

/// The runtime, or an error when used in a forked child.
pub fn get() -> PyResult<&'static Runtime> {
    let owned = match RUNTIME.get() {
        Some(owned) => owned,
        // A bad setting fails the first call that needs the runtime, clearly.
        None => {
            let threads = io_threads()?;
            RUNTIME.get_or_init(|| build(threads))
        }
    };
    if owned.pid != std::process::id() {
        return Err(PyRuntimeError::new_err(
            "foxtive's runtime was started before fork(); use a fresh process \
             (multiprocessing 'spawn' or `foxtive run --processes N`)",
        ));
    }
    // pyo3-async-runtimes (cold paths) shares our runtime.
    let _ = pyo3_async_runtimes::tokio::init_with_runtime(&owned.runtime);
    Ok(&owned.runtime)
}

/// The pid that started the runtime (0 if not started); for tests.
#[pyfunction]
pub fn runtime_pid() -> u32 {
    RUNTIME.get().map_or(0, |o| o.pid)
}

/// Turn a Rust future into a Python awaitable through pyo3-async-runtimes.
/// Prefer [`crate::bridge::awaitable`]: it never takes the GIL on a tokio
/// thread. This remains for code that needs a `PyErr` built on the tokio side.
#[allow(dead_code)]
pub fn future_into_py<'py, F, T>(py: Python<'py>, fut: F) -> PyResult<Bound<'py, PyAny>>
where
    F: std::future::Future<Output = PyResult<T>> + Send + 'static,
    T: for<'a> IntoPyObject<'a> + Send + 'static,
{
    get()?;
    pyo3_async_runtimes::tokio::future_into_py(py, fut)
}
