//! `foxtive._core.TaskRoutes`: the task router's fast path.
//!
//! The app's router (`foxtive.app._Router`) registers, per task name, a
//! decoder (`body -> envelope` with a typed `args` tuple and a `kwargs`
//! dict: a `msgspec.json.Decoder(...).decode`) and the task's function.
//! `call(message)` reads the `foxtive-task` and `foxtive-envelope` headers
//! in place (no Python string per header), decodes the body and returns
//! `function(*args)`, the awaitable the router awaits: Python sees only the
//! task call. Anything else (no route for the name, another envelope
//! version, keyword arguments, a body the decoder rejects) is `None`, and
//! the router's general path handles the message and says what is wrong.

use std::collections::HashMap;

use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};

use foxtive_core::message::HeaderValue;

use crate::message::PyMessage;

const TASK_HEADER: &str = "foxtive-task";
const ENVELOPE_HEADER: &str = "foxtive-envelope";

struct Route {
    decode: Py<PyAny>,
    function: Py<PyAny>,
}

#[pyclass(name = "TaskRoutes", module = "foxtive._core")]
#[derive(Default)]
pub struct PyTaskRoutes {
    routes: HashMap<String, Route>,
}

/// The task name a message names, if its envelope is one this path reads
/// (version 1 or no version header).
fn task_name(message: &PyMessage) -> Option<&str> {
    let mut name = None;
    let mut seen_name = false;
    let mut seen_version = false;
    for (key, value) in &message.inflight.delivery.headers {
        if !seen_name && key == TASK_HEADER {
            seen_name = true;
            name = match value {
                HeaderValue::Str(s) => Some(s.as_str()),
                _ => return None,
            };
        } else if !seen_version && key == ENVELOPE_HEADER {
            seen_version = true;
            match value {
                HeaderValue::Int(1) => {}
                HeaderValue::Str(s) if s == "1" => {}
                _ => return None,
            }
        }
    }
    name
}

#[pymethods]
impl PyTaskRoutes {
    #[new]
    fn new() -> Self {
        Self::default()
    }

    /// Route the task `name` to `function(*decode(body).args)`.
    fn add(&mut self, name: String, decode: Py<PyAny>, function: Py<PyAny>) {
        self.routes.insert(name, Route { decode, function });
    }

    fn __len__(&self) -> usize {
        self.routes.len()
    }

    fn __contains__(&self, name: &str) -> bool {
        self.routes.contains_key(name)
    }

    /// The task call for `message` (what the task function returned), or
    /// None when this path does not take the message.
    fn call<'py>(
        &self,
        py: Python<'py>,
        message: &Bound<'py, PyAny>,
    ) -> PyResult<Option<Bound<'py, PyAny>>> {
        let Ok(message) = message.cast::<PyMessage>() else {
            return Ok(None);
        };
        let message = message.get();
        let Some(route) = task_name(message).and_then(|name| self.routes.get(name)) else {
            return Ok(None);
        };
        // A body the decoder rejects goes the general way, which names the
        // argument and the reason in its PayloadError.
        let Ok(envelope) = route.decode.bind(py).call1((message.body.bind(py),)) else {
            return Ok(None);
        };
        let kwargs = envelope.getattr(intern!(py, "kwargs"))?;
        if kwargs.cast::<PyDict>().map_or(true, |d| !d.is_empty()) {
            return Ok(None);
        }
        let args = envelope.getattr(intern!(py, "args"))?;
        let Ok(args) = args.cast_into::<PyTuple>() else {
            return Ok(None);
        };
        route.function.bind(py).call1(args).map(Some)
    }
}
