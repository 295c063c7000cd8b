//! `_core.RedisPublish`: one task's publish on Redis, converted once.
//!
//! A send on Redis may try up to two paths (the caller's own connection,
//! then the runtime's when that one is missing or failed): the message and
//! its "pending" mark are converted from Python once, here, and every path
//! of `RedisStreamBackend` takes this object instead of repeating the
//! seven keywords and their conversion.

use pyo3::prelude::*;
use pyo3::types::PyDict;

use foxtive_core::backend::redis_streams::MarkNew;
use foxtive_core::Outgoing;

use crate::convert::{body_from_py, duration_from_py, outgoing_from_py};

/// The message (body, headers, delay, id) and, optionally, the record
/// written with it where no such key is (`SET NX PX`: `mark_key` =
/// `mark_value`, expiring after `mark_ttl` seconds).
#[pyclass(frozen, name = "RedisPublish", module = "foxtive._core")]
pub struct PyRedisPublish {
    pub(crate) message: Outgoing,
    pub(crate) mark: Option<MarkNew>,
}

#[pymethods]
impl PyRedisPublish {
    #[new]
    #[pyo3(signature = (body, headers = None, delay = None, message_id = None, *,
                        mark_key = None, mark_value = None, mark_ttl = None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        body: &Bound<'_, PyAny>,
        headers: Option<&Bound<'_, PyDict>>,
        delay: Option<&Bound<'_, PyAny>>,
        message_id: Option<String>,
        mark_key: Option<String>,
        mark_value: Option<&Bound<'_, PyAny>>,
        mark_ttl: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        Ok(PyRedisPublish {
            message: outgoing_from_py(body, headers, delay, message_id)?,
            mark: optional_mark(mark_key, mark_value, mark_ttl)?,
        })
    }

    /// The message's own id, when it was given.
    #[getter]
    fn message_id(&self) -> Option<&str> {
        self.message.message_id.as_deref()
    }

    /// Whether a "pending" record goes with the message.
    #[getter]
    fn marks(&self) -> bool {
        self.mark.is_some()
    }

    fn __repr__(&self) -> String {
        // The body and the record's value are the user's data: not shown.
        format!(
            "RedisPublish(message_id={:?}, body_len={}, marks={})",
            self.message.message_id,
            self.message.body.len(),
            self.mark.is_some()
        )
    }
}

/// The `mark_*` keywords: all three or none.
fn optional_mark(
    key: Option<String>,
    value: Option<&Bound<'_, PyAny>>,
    ttl: Option<&Bound<'_, PyAny>>,
) -> PyResult<Option<MarkNew>> {
    match (key, value, ttl) {
        (None, None, None) => Ok(None),
        (Some(key), Some(value), Some(ttl)) => Ok(Some(MarkNew {
            key,
            value: body_from_py(value)?.to_vec(),
            ttl: duration_from_py("mark_ttl", ttl)?,
        })),
        _ => Err(crate::errors::config_error(
            "mark_key, mark_value, mark_ttl: give all three or none",
        )),
    }
}
