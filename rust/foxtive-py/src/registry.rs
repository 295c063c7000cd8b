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

/// The error text for an object given as a backend that is none: the
/// backends it lists come from the core registry, not from a copy here.
#[pyfunction]
pub fn not_a_backend(got: &str) -> String {
    format!(
        "backend: expected a foxtive backend ({}, ResilientBackend or a foxtive.Backend \
         subclass), got {got}",
        foxtive_core::backend::registry::available_backends().join(", ")
    )
}
