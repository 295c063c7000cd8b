//! Rust futures as asyncio futures, without tokio threads ever touching Python.
//!
//! pyo3-async-runtimes completes a future by taking the GIL on a tokio thread
//! and calling `loop.call_soon_threadsafe`. Besides costing ~15–20 µs a call,
//! that thread can be caught re-taking the GIL while the interpreter
//! finalises, which aborts the process. Here a tokio task only pushes a
//! boxed "make the result" closure onto a queue and writes one byte to a
//! socket watched by the loop (`loop.add_reader`); the loop thread runs the
//! closures and resolves the futures (see `foxtive/_bridge.py`).

use std::future::Future;
use std::sync::Arc;

use parking_lot::Mutex;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyList, PyTuple};
use pyo3::IntoPyObjectExt;

use foxtive_core::pool::WakeFd;

use crate::errors::{backend_error, to_py};

type MakeResult = Box<dyn for<'py> FnOnce(Python<'py>) -> PyResult<Py<PyAny>> + Send>;

struct Inner {
    fd: WakeFd,
    done: Mutex<Vec<(u64, MakeResult)>>,
}

impl Inner {
    fn complete(&self, id: u64, make: MakeResult) {
        let first = {
            let mut done = self.done.lock();
            done.push((id, make));
            done.len() == 1
        };
        if first {
            self.fd.wake();
        }
    }
}

/// The completion queue of one event loop.
#[pyclass(frozen, module = "foxtive._core")]
pub struct Completions {
    inner: Arc<Inner>,
}

#[pymethods]
impl Completions {
    #[new]
    fn new() -> PyResult<Self> {
        let fd = WakeFd::new().map_err(|e| backend_error(format!("wake-up socket: {e}")))?;
        Ok(Completions {
            inner: Arc::new(Inner {
                fd,
                done: Mutex::new(Vec::new()),
            }),
        })
    }

    fn fileno(&self) -> i32 {
        self.inner.fd.read_fd()
    }

    /// Finished operations as `(id, ok, value_or_exception)` tuples.
    fn drain<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        self.inner.fd.clear();
        let done = std::mem::take(&mut *self.inner.done.lock());
        let out = PyList::empty(py);
        for (id, make) in done {
            let item = match make(py) {
                Ok(value) => (id, true, value),
                Err(err) => (id, false, err.into_value(py).into_any()),
            };
            out.append(PyTuple::new(
                py,
                [
                    id_obj(py, item.0)?,
                    pyo3::types::PyBool::new(py, item.1)
                        .to_owned()
                        .into_any()
                        .unbind(),
                    item.2,
                ],
            )?)?;
        }
        Ok(out)
    }
}

fn id_obj(py: Python<'_>, id: u64) -> PyResult<Py<PyAny>> {
    Ok(id.into_pyobject(py)?.into_any().unbind())
}

/// Run `fut` on the tokio runtime and return an asyncio future of its result.
/// Must be called on the thread that runs the event loop.
pub fn awaitable<'py, F, T>(py: Python<'py>, fut: F) -> PyResult<Bound<'py, PyAny>>
where
    F: Future<Output = foxtive_core::Result<T>> + Send + 'static,
    T: for<'a> IntoPyObject<'a> + Send + 'static,
{
    static BEGIN: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    let begin = BEGIN.import(py, "foxtive._bridge", "begin")?;
    let (completions, id, future): (Bound<'py, Completions>, u64, Bound<'py, PyAny>) =
        begin.call0()?.extract()?;
    let inner = completions.get().inner.clone();
    let runtime = crate::runtime::get()?;
    runtime.spawn(async move {
        let result = fut.await;
        inner.complete(
            id,
            Box::new(move |py| match result {
                Ok(value) => value.into_py_any(py),
                Err(e) => Err(to_py(e)),
            }),
        );
    });
    Ok(future)
}
