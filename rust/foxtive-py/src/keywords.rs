//! The keywords a config pyclass is built from. This reads each value's
//! Python type (a `ConfigError` naming the keyword when it is wrong); the
//! rules (ranges, names, combinations) are the core config's `validate`,
//! checked once, there. An absent keyword leaves the core default.

use std::time::Duration;

use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyInt, PyString};

use crate::convert::duration_from_py;
use crate::errors::config_error;

pub struct Keywords<'py> {
    given: Option<Bound<'py, PyDict>>,
}

fn type_name(obj: &Bound<'_, PyAny>) -> String {
    obj.get_type()
        .name()
        .map_or_else(|_| "?".to_string(), |n| n.to_string())
}

impl<'py> Keywords<'py> {
    /// The keywords given to `what`; any not in `fields` is a `ConfigError`.
    pub fn new(what: &str, given: Option<&Bound<'py, PyDict>>, fields: &[&str]) -> PyResult<Self> {
        if let Some(dict) = given {
            for key in dict.keys() {
                let key: String = key.extract()?;
                if !fields.contains(&key.as_str()) {
                    return Err(config_error(format!("{key}: not a {what} field")));
                }
            }
        }
        Ok(Keywords {
            given: given.cloned(),
        })
    }

    /// The value given for `name`, None when absent.
    fn raw(&self, name: &str) -> PyResult<Option<Bound<'py, PyAny>>> {
        match &self.given {
            Some(dict) => dict.get_item(name),
            None => Ok(None),
        }
    }

    /// The value given for `name`, None when absent or given as None.
    fn value(&self, name: &str) -> PyResult<Option<Bound<'py, PyAny>>> {
        Ok(self.raw(name)?.filter(|v| !v.is_none()))
    }

    /// A string that may not be None.
    pub fn string(&self, name: &str) -> PyResult<Option<String>> {
        match self.raw(name)? {
            None => Ok(None),
            Some(v) => string(name, &v).map(Some),
        }
    }

    /// A string or None.
    pub fn opt_string(&self, name: &str) -> PyResult<Option<String>> {
        self.value(name)?.map(|v| string(name, &v)).transpose()
    }

    /// An integer (not a bool); None when absent or None.
    pub fn integer(&self, name: &str) -> PyResult<Option<i64>> {
        self.value(name)?
            .map(|v| {
                if v.is_instance_of::<PyInt>() && !v.is_instance_of::<PyBool>() {
                    v.extract::<i64>()
                        .map_err(|_| config_error(format!("{name}: out of range, got {v}")))
                } else {
                    Err(config_error(format!(
                        "{name}: expected an integer, got {}",
                        type_name(&v)
                    )))
                }
            })
            .transpose()
    }

    /// An integer that fits `T` (a core field's type), else a `ConfigError`
    /// saying what it must be.
    pub fn int_as<T: TryFrom<i64>>(&self, name: &str, must: &str) -> PyResult<Option<T>> {
        self.integer(name)?
            .map(|n| {
                T::try_from(n).map_err(|_| config_error(format!("{name}: must be {must}, got {n}")))
            })
            .transpose()
    }

    /// A number (int or float, not a bool).
    pub fn number(&self, name: &str) -> PyResult<Option<f64>> {
        self.value(name)?
            .map(|v| {
                if v.is_instance_of::<PyBool>() || v.is_instance_of::<PyString>() {
                    return Err(config_error(format!(
                        "{name}: expected a number, got {}",
                        type_name(&v)
                    )));
                }
                v.extract::<f64>().map_err(|_| {
                    config_error(format!("{name}: expected a number, got {}", type_name(&v)))
                })
            })
            .transpose()
    }

    /// True or False.
    pub fn flag(&self, name: &str) -> PyResult<Option<bool>> {
        self.value(name)?
            .map(|v| {
                v.cast::<PyBool>().map(|b| b.is_true()).map_err(|_| {
                    config_error(format!(
                        "{name}: expected True or False, got {}",
                        type_name(&v)
                    ))
                })
            })
            .transpose()
    }

    /// Seconds (a number or a `datetime.timedelta`).
    pub fn seconds(&self, name: &str) -> PyResult<Option<Duration>> {
        self.value(name)?
            .map(|v| {
                if v.is_instance_of::<PyBool>() || v.is_instance_of::<PyString>() {
                    return Err(config_error(format!(
                        "{name}: expected seconds (float) or datetime.timedelta, got {}",
                        type_name(&v)
                    )));
                }
                duration_from_py(name, &v)
            })
            .transpose()
    }

    /// A dict with str keys.
    pub fn dict(&self, name: &str) -> PyResult<Option<Bound<'py, PyDict>>> {
        self.value(name)?
            .map(|v| {
                v.cast_into::<PyDict>()
                    .map_err(|_| config_error(format!("{name}: expected a dict with str keys")))
            })
            .transpose()
    }
}

fn string(name: &str, value: &Bound<'_, PyAny>) -> PyResult<String> {
    value.extract::<String>().map_err(|_| {
        config_error(format!(
            "{name}: expected a string, got {}",
            type_name(value)
        ))
    })
}
