//! The broker URL registry of foxtive-core, for `foxtive.backend_from_url`
//! and the Python classes of the backends the core opens from a URL.

use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDelta, PyDict, PyFloat, PyInt, PyString};

use foxtive_core::backend::options::{OptionValue, Options};
use foxtive_core::backend::registry;

use crate::errors::{config_error, IntoPyResult};
use crate::native_backend::NativeBackend;

/// `(name, type name)` of the backend a broker URL is for (`("memory",
/// "MemoryBackend")`, `("rabbitmq", "RabbitMqBackend")`...); a `ConfigError`
/// listing the known schemes otherwise.
#[pyfunction]
pub fn backend_kind(url: &str) -> PyResult<(&'static str, &'static str)> {
    registry::backend_kind(url)
        .map(|kind| (kind.name, kind.type_name))
        .py_err()
}

/// Open the backend `url` names with `options` (a dict; `None` values mean
/// "the default"), when the core builds it from a URL; `None` when its
/// Python class builds it from a typed config instead.
#[pyfunction]
#[pyo3(signature = (url, queue, options = None))]
pub fn open_backend(
    url: &str,
    queue: &str,
    options: Option<&Bound<'_, PyDict>>,
) -> PyResult<Option<NativeBackend>> {
    let options = match options {
        Some(dict) => options_from_py(dict)?,
        None => Options::new(),
    };
    let Some(opened) = registry::open(url, queue, options).py_err()? else {
        return Ok(None);
    };
    Ok(Some(
        NativeBackend::new(opened.backend).with_dead_letters(opened.dead_letters),
    ))
}

pub(crate) fn options_from_py(dict: &Bound<'_, PyDict>) -> PyResult<Options> {
    let mut options = Options::new();
    for (key, value) in dict.iter() {
        let key: String = key.extract()?;
        if value.is_none() {
            continue;
        }
        // bool before int: a Python bool is an int.
        let value = if value.is_instance_of::<PyBool>() {
            OptionValue::Bool(value.extract()?)
        } else if value.is_instance_of::<PyInt>() {
            OptionValue::Int(
                value
                    .extract()
                    .map_err(|_| config_error(format!("{key}: integer out of range")))?,
            )
        } else if value.is_instance_of::<PyFloat>() {
            OptionValue::Float(value.extract()?)
        } else if value.is_instance_of::<PyString>() {
            OptionValue::Str(value.extract()?)
        } else if value.is_instance_of::<PyDelta>() {
            // Seconds may be given as a timedelta, as everywhere in the API.
            OptionValue::Float(value.call_method0("total_seconds")?.extract()?)
        } else {
            let type_name = value
                .get_type()
                .name()
                .map_or_else(|_| "?".to_string(), |n| n.to_string());
            return Err(config_error(format!(
                "{key}: expected a bool, int, float or string, got {type_name}"
            )));
        };
        options.set(key, value);
    }
    Ok(options)
}

/// The error text for an object given as a backend that is none: the
/// backends it lists come from the core registry, not from a copy here.
#[pyfunction]
pub fn not_a_backend(got: &str) -> String {
    format!(
        "backend: expected a foxtive backend ({}, ResilientBackend or a foxtive.Backend \
         subclass), got {got}",
        registry::available_backends().join(", ")
    )
}
