//! The broker URL registry of foxtive-core, for `foxtive.backend_from_url`.

use pyo3::prelude::*;

use crate::errors::IntoPyResult;

/// The backend kind a broker URL is for (`"memory"`, `"rabbitmq"`, `"redis"`);
/// a `ConfigError` listing the known schemes otherwise.
#[pyfunction]
pub fn backend_kind(url: &str) -> PyResult<&'static str> {
    foxtive_core::backend::registry::backend_kind(url)
        .map(|kind| kind.as_str())
        .py_err()
}
