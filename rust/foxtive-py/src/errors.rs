//! Core errors as the Python exceptions of `foxtive.errors`.

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyType;

use foxtive_core::Error;

macro_rules! exception {
    ($fn_name:ident, $name:literal) => {
        pub fn $fn_name(msg: impl Into<String>) -> PyErr {
            static CELL: PyOnceLock<Py<PyType>> = PyOnceLock::new();
            let msg = msg.into();
            Python::attach(|py| match CELL.import(py, "foxtive.errors", $name) {
                Ok(ty) => PyErr::from_type(ty.clone(), (msg,)),
                Err(e) => e,
            })
        }
    };
}

exception!(config_error, "ConfigError");
exception!(backend_error, "BackendError");
exception!(already_settled, "AlreadySettledError");
exception!(shutdown_error, "ShutdownError");
exception!(payload_error, "PayloadError");

/// Map a core error to its Python exception.
pub fn to_py(err: Error) -> PyErr {
    match err {
        Error::Config(m) => config_error(m),
        Error::AlreadySettled => already_settled(
            "message already settled; the first settlement wins and later ones never reach the broker",
        ),
        Error::Shutdown => shutdown_error("the pool or backend is shut down"),
        e @ (Error::Backend(_) | Error::ConnectionLost(_) | Error::DeadLetter(_)) => {
            backend_error(e.to_string())
        }
    }
}

pub trait IntoPyResult<T> {
    fn py_err(self) -> PyResult<T>;
}

impl<T> IntoPyResult<T> for foxtive_core::Result<T> {
    fn py_err(self) -> PyResult<T> {
        self.map_err(to_py)
    }
}
