//! Values across the boundary: headers, durations, outgoing messages.

use std::time::Duration;

use bytes::Bytes;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyBytes, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple};

use foxtive_core::message::{Dedup, HeaderValue, Headers, Outgoing};

use crate::errors::config_error;

/// A header value as the Python object users expect.
pub fn header_to_py<'py>(py: Python<'py>, value: &HeaderValue) -> PyResult<Bound<'py, PyAny>> {
    Ok(match value {
        HeaderValue::Null => py.None().into_bound(py),
        HeaderValue::Bool(b) => PyBool::new(py, *b).to_owned().into_any(),
        HeaderValue::Int(i) => i.into_pyobject(py)?.into_any(),
        HeaderValue::Float(f) => PyFloat::new(py, *f).into_any(),
        HeaderValue::Str(s) => PyString::new(py, s).into_any(),
        HeaderValue::Bytes(b) => PyBytes::new(py, b).into_any(),
        HeaderValue::Array(items) => {
            let list = PyList::empty(py);
            for item in items {
                list.append(header_to_py(py, item)?)?;
            }
            list.into_any()
        }
        HeaderValue::Table(table) => headers_to_py(py, table)?.into_any(),
    })
}

pub fn headers_to_py<'py>(py: Python<'py>, headers: &Headers) -> PyResult<Bound<'py, PyDict>> {
    let dict = PyDict::new(py);
    for (k, v) in headers {
        dict.set_item(k, header_to_py(py, v)?)?;
    }
    Ok(dict)
}

/// A Python value as a header value; `name` is for the error message.
pub fn header_from_py(name: &str, obj: &Bound<'_, PyAny>) -> PyResult<HeaderValue> {
    if obj.is_none() {
        return Ok(HeaderValue::Null);
    }
    // bool before int: True is an int in Python.
    if let Ok(b) = obj.cast::<PyBool>() {
        return Ok(HeaderValue::Bool(b.is_true()));
    }
    if obj.is_instance_of::<PyInt>() {
        return obj.extract::<i64>().map(HeaderValue::Int).map_err(|_| {
            config_error(format!(
                "headers[{name:?}]: integer out of the 64-bit range"
            ))
        });
    }
    if let Ok(f) = obj.cast::<PyFloat>() {
        return Ok(HeaderValue::Float(f.value()));
    }
    if let Ok(s) = obj.cast::<PyString>() {
        return Ok(HeaderValue::Str(s.to_str()?.to_string()));
    }
    if let Ok(b) = obj.cast::<PyBytes>() {
        return Ok(HeaderValue::Bytes(Bytes::copy_from_slice(b.as_bytes())));
    }
    if let Ok(d) = obj.cast::<PyDict>() {
        return Ok(HeaderValue::Table(headers_from_py(d)?));
    }
    if obj.is_instance_of::<PyList>() || obj.is_instance_of::<PyTuple>() {
        let mut items = Vec::new();
        for item in obj.try_iter()? {
            items.push(header_from_py(name, &item?)?);
        }
        return Ok(HeaderValue::Array(items));
    }
    Err(config_error(format!(
        "headers[{name:?}]: unsupported type {}; allowed: str, int, float, bool, bytes, None, list, dict",
        obj.get_type().name()?
    )))
}

pub fn headers_from_py(dict: &Bound<'_, PyDict>) -> PyResult<Headers> {
    let mut out = Vec::with_capacity(dict.len());
    for (k, v) in dict.iter() {
        let key: String = k
            .extract()
            .map_err(|_| config_error("headers: keys must be str"))?;
        let value = header_from_py(&key, &v)?;
        out.push((key, value));
    }
    Ok(out)
}

/// Seconds as a float, or a `datetime.timedelta`.
pub fn duration_from_py(name: &str, obj: &Bound<'_, PyAny>) -> PyResult<Duration> {
    let secs: f64 = if let Ok(f) = obj.extract::<f64>() {
        f
    } else if let Ok(total) = obj.call_method0("total_seconds") {
        total.extract()?
    } else {
        return Err(config_error(format!(
            "{name}: expected seconds (float) or datetime.timedelta"
        )));
    };
    if !secs.is_finite() || secs < 0.0 {
        return Err(config_error(format!(
            "{name}: must be a finite, non-negative number of seconds, got {secs}"
        )));
    }
    Duration::try_from_secs_f64(secs)
        .map_err(|_| config_error(format!("{name}: {secs} seconds is out of range")))
}

pub fn opt_duration(name: &str, obj: Option<&Bound<'_, PyAny>>) -> PyResult<Option<Duration>> {
    match obj {
        None => Ok(None),
        Some(o) if o.is_none() => Ok(None),
        Some(o) => duration_from_py(name, o).map(Some),
    }
}

/// Body bytes: `bytes`, `bytearray`, `memoryview` or `str` (UTF-8).
pub fn body_from_py(obj: &Bound<'_, PyAny>) -> PyResult<Bytes> {
    if let Ok(b) = obj.cast::<PyBytes>() {
        return Ok(Bytes::copy_from_slice(b.as_bytes()));
    }
    if let Ok(s) = obj.cast::<PyString>() {
        return Ok(Bytes::copy_from_slice(s.to_str()?.as_bytes()));
    }
    if let Ok(v) = obj.extract::<Vec<u8>>() {
        return Ok(Bytes::from(v));
    }
    let bytes_fn = obj.py().import("builtins")?.getattr("bytes")?;
    match bytes_fn.call1((obj,)) {
        Ok(b) => Ok(Bytes::copy_from_slice(b.cast::<PyBytes>()?.as_bytes())),
        Err(_) => Err(config_error(format!(
            "body: expected bytes, bytearray, memoryview or str, got {}",
            obj.get_type().name()?
        ))),
    }
}

/// The `priority=` of a publish: an integer 0-9 (9 delivered first) or None.
pub fn priority_from_py(obj: Option<&Bound<'_, PyAny>>) -> PyResult<Option<u8>> {
    let Some(obj) = obj.filter(|o| !o.is_none()) else {
        return Ok(None);
    };
    let value = if obj.is_instance_of::<PyBool>() {
        None
    } else {
        obj.extract::<i64>().ok()
    };
    match value {
        Some(p @ 0..=9) => Ok(Some(p as u8)),
        _ => Err(config_error(format!(
            "priority: must be an integer 0-9 (9 runs first) or None, got {}",
            obj.repr()?
        ))),
    }
}

/// The `dedup_key=` / `dedup_ttl=` of a publish: both or neither; the TTL
/// in seconds (or a timedelta), more than zero.
pub fn dedup_from_py(
    key: Option<String>,
    ttl: Option<&Bound<'_, PyAny>>,
) -> PyResult<Option<Dedup>> {
    let ttl = opt_duration("dedup_ttl", ttl)?;
    match (key, ttl) {
        (None, None) => Ok(None),
        (Some(key), Some(ttl)) if !key.is_empty() && !ttl.is_zero() => Ok(Some(Dedup { key, ttl })),
        (Some(key), Some(_)) if key.is_empty() => {
            Err(config_error("dedup_key: must be a non-empty string"))
        }
        (Some(_), Some(_)) => Err(config_error("dedup_ttl: must be more than 0 seconds")),
        _ => Err(config_error(
            "dedup_key, dedup_ttl: give both (the key, and how long it holds), or neither",
        )),
    }
}

/// Build an outgoing message from publish() arguments.
pub fn outgoing_from_py(
    body: &Bound<'_, PyAny>,
    headers: Option<&Bound<'_, PyDict>>,
    delay: Option<&Bound<'_, PyAny>>,
    message_id: Option<String>,
) -> PyResult<Outgoing> {
    let mut out = Outgoing::new(body_from_py(body)?);
    if let Some(h) = headers {
        out.headers = headers_from_py(h)?;
    }
    out.delay = opt_duration("delay", delay)?;
    out.message_id = message_id;
    Ok(out)
}

/// The message of a publish(), every argument of it: the above plus its
/// priority and its dedup key (one place for `publish`, `publish_begin`
/// and the memory backend's `publish_sync`).
#[allow(clippy::too_many_arguments)]
pub fn publish_from_py(
    body: &Bound<'_, PyAny>,
    headers: Option<&Bound<'_, PyDict>>,
    delay: Option<&Bound<'_, PyAny>>,
    message_id: Option<String>,
    priority: Option<&Bound<'_, PyAny>>,
    dedup_key: Option<String>,
    dedup_ttl: Option<&Bound<'_, PyAny>>,
) -> PyResult<Outgoing> {
    let mut out = outgoing_from_py(body, headers, delay, message_id)?;
    out.priority = priority_from_py(priority)?;
    out.dedup = dedup_from_py(dedup_key, dedup_ttl)?;
    Ok(out)
}

/// Build the outgoing messages of a publish_many(): the headers, delay
/// and priority they share are converted once, not once per body.
/// `message_ids`, when given, are the messages' own ids, one per body, in
/// order.
pub fn outgoings_from_py(
    bodies: &Bound<'_, PyAny>,
    headers: Option<&Bound<'_, PyDict>>,
    delay: Option<&Bound<'_, PyAny>>,
    message_ids: Option<Vec<String>>,
    priority: Option<&Bound<'_, PyAny>>,
) -> PyResult<Vec<Outgoing>> {
    let headers = headers.map(headers_from_py).transpose()?;
    let delay = opt_duration("delay", delay)?;
    let priority = priority_from_py(priority)?;
    let mut ids = message_ids.map(Vec::into_iter);
    let mut outs = Vec::new();
    for body in bodies.try_iter()? {
        let mut out = Outgoing::new(body_from_py(&body?)?);
        if let Some(h) = &headers {
            out.headers = h.clone();
        }
        out.delay = delay;
        out.priority = priority;
        if let Some(ids) = ids.as_mut() {
            out.message_id = Some(ids.next().ok_or_else(|| {
                crate::errors::config_error("message_ids: fewer ids than bodies")
            })?);
        }
        outs.push(out);
    }
    if ids.is_some_and(|mut rest| rest.next().is_some()) {
        return Err(crate::errors::config_error(
            "message_ids: more ids than bodies",
        ));
    }
    Ok(outs)
}
