//! Dead letters as JSON, for stores that keep text (a file, Redis).
//!
//! One record is one JSON object on one line. The body is base64 so any bytes
//! survive. Headers keep their types: a list of `[name, value]` pairs (order
//! and duplicates kept) where null, booleans, integers and strings are plain
//! JSON, and everything JSON cannot say unambiguously is tagged:
//! `{"float": 1.5}` (`"NaN"`, `"inf"`, `"-inf"` for the non-finite),
//! `{"bytes": "<base64>"}`, `{"array": [...]}`, `{"table": [[name, value], ...]}`.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use bytes::Bytes;
use serde_json::{json, Map, Number, Value};

use super::{DeadLetter, StoredDeadLetter};
use crate::message::{HeaderValue, Headers};
use crate::{Error, Result};

/// Bumped when the layout changes incompatibly; readers skip what they do not know.
const VERSION: u64 = 1;

/// One record as a JSON line (no trailing newline).
pub fn encode(key: &str, record: &DeadLetter) -> String {
    let value = json!({
        "v": VERSION,
        "key": key,
        "original_id": record.original_id,
        "body": B64.encode(&record.body),
        "headers": headers_to_json(&record.headers),
        "source_queue": record.source_queue,
        "attempts": record.attempts,
        "error_type": record.error_type,
        "error_message": record.error_message,
        "failed_at": float_to_json(record.failed_at),
        "worker_id": record.worker_id,
        "poison_pill": record.poison_pill,
    });
    value.to_string()
}

/// Parse one line written by [`encode`].
pub fn decode(line: &str) -> Result<StoredDeadLetter> {
    let value: Value = serde_json::from_str(line).map_err(|e| bad(format!("not JSON: {e}")))?;
    let obj = value
        .as_object()
        .ok_or_else(|| bad("not a JSON object".to_string()))?;
    let version = obj.get("v").and_then(Value::as_u64).unwrap_or(0);
    if version != VERSION {
        return Err(bad(format!("unknown record version {version}")));
    }
    let body = B64
        .decode(string(obj, "body")?)
        .map_err(|e| bad(format!("body: not base64: {e}")))?;
    let record = DeadLetter {
        original_id: string(obj, "original_id")?.to_string(),
        body: Bytes::from(body),
        headers: headers_from_json(obj.get("headers").unwrap_or(&Value::Null))?,
        source_queue: string(obj, "source_queue")?.to_string(),
        attempts: obj
            .get("attempts")
            .and_then(Value::as_u64)
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| bad("attempts: missing or not a u32".to_string()))?,
        error_type: string(obj, "error_type")?.to_string(),
        error_message: string(obj, "error_message")?.to_string(),
        failed_at: float_from_json(obj.get("failed_at").unwrap_or(&Value::Null))
            .ok_or_else(|| bad("failed_at: missing or not a number".to_string()))?,
        worker_id: string(obj, "worker_id")?.to_string(),
        poison_pill: obj
            .get("poison_pill")
            .and_then(Value::as_bool)
            .unwrap_or(false),
    };
    Ok(StoredDeadLetter {
        key: string(obj, "key")?.to_string(),
        record,
    })
}

fn bad(why: String) -> Error {
    Error::DeadLetter(format!("unreadable dead-letter record: {why}"))
}

fn string<'a>(obj: &'a Map<String, Value>, field: &str) -> Result<&'a str> {
    obj.get(field)
        .and_then(Value::as_str)
        .ok_or_else(|| bad(format!("{field}: missing or not a string")))
}

fn float_to_json(f: f64) -> Value {
    match Number::from_f64(f) {
        Some(n) => Value::Number(n),
        None if f.is_nan() => Value::from("NaN"),
        None if f > 0.0 => Value::from("inf"),
        None => Value::from("-inf"),
    }
}

fn float_from_json(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => match s.as_str() {
            "NaN" => Some(f64::NAN),
            "inf" => Some(f64::INFINITY),
            "-inf" => Some(f64::NEG_INFINITY),
            _ => None,
        },
        _ => None,
    }
}

/// Headers alone as typed JSON text (the layout above), for stores that
/// keep them in a column of their own (the SQL backends).
pub fn headers_to_text(headers: &Headers) -> String {
    headers_to_json(headers).to_string()
}

/// Parse what [`headers_to_text`] wrote.
pub fn headers_from_text(text: &str) -> Result<Headers> {
    let value: Value = serde_json::from_str(text).map_err(|e| bad(format!("not JSON: {e}")))?;
    headers_from_json(&value)
}

pub fn headers_to_json(headers: &Headers) -> Value {
    Value::Array(
        headers
            .iter()
            .map(|(k, v)| Value::Array(vec![Value::from(k.as_str()), header_to_json(v)]))
            .collect(),
    )
}

fn header_to_json(value: &HeaderValue) -> Value {
    match value {
        HeaderValue::Null => Value::Null,
        HeaderValue::Bool(b) => Value::Bool(*b),
        HeaderValue::Int(i) => Value::from(*i),
        HeaderValue::Float(f) => json!({ "float": float_to_json(*f) }),
        HeaderValue::Str(s) => Value::from(s.as_str()),
        HeaderValue::Bytes(b) => json!({ "bytes": B64.encode(b) }),
        HeaderValue::Array(items) => {
            json!({ "array": items.iter().map(header_to_json).collect::<Vec<_>>() })
        }
        HeaderValue::Table(table) => json!({ "table": headers_to_json(table) }),
    }
}

pub fn headers_from_json(value: &Value) -> Result<Headers> {
    let Some(pairs) = value.as_array() else {
        return Err(bad("headers: not a list".to_string()));
    };
    pairs
        .iter()
        .map(|pair| match pair.as_array().map(Vec::as_slice) {
            Some([Value::String(k), v]) => Ok((k.clone(), header_from_json(v)?)),
            _ => Err(bad(
                "headers: an entry is not a [name, value] pair".to_string()
            )),
        })
        .collect()
}

fn header_from_json(value: &Value) -> Result<HeaderValue> {
    Ok(match value {
        Value::Null => HeaderValue::Null,
        Value::Bool(b) => HeaderValue::Bool(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => HeaderValue::Int(i),
            // Only integers are written bare; accept a bare float all the same.
            None => HeaderValue::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        Value::String(s) => HeaderValue::Str(s.clone()),
        Value::Array(_) => return Err(bad("headers: a bare list value".to_string())),
        Value::Object(tagged) => {
            let mut entries = tagged.iter();
            match (entries.next(), entries.next()) {
                (Some((tag, inner)), None) => match tag.as_str() {
                    "float" => HeaderValue::Float(
                        float_from_json(inner)
                            .ok_or_else(|| bad("headers: bad float".to_string()))?,
                    ),
                    "bytes" => HeaderValue::Bytes(Bytes::from(
                        inner
                            .as_str()
                            .and_then(|s| B64.decode(s).ok())
                            .ok_or_else(|| bad("headers: bad bytes".to_string()))?,
                    )),
                    "array" => HeaderValue::Array(
                        inner
                            .as_array()
                            .ok_or_else(|| bad("headers: bad array".to_string()))?
                            .iter()
                            .map(header_from_json)
                            .collect::<Result<_>>()?,
                    ),
                    "table" => HeaderValue::Table(headers_from_json(inner)?),
                    other => return Err(bad(format!("headers: unknown tag {other:?}"))),
                },
                _ => return Err(bad("headers: a tagged value has one key".to_string())),
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dlq::testing::sample;

    #[test]
    fn round_trips_every_type_on_one_line() {
        let record = sample();
        let line = encode("k1", &record);
        assert!(!line.contains('\n'), "a record must stay on one line");
        let back = decode(&line).unwrap();
        assert_eq!(back.key, "k1");
        assert_eq!(back.record, record);
        // Int and Float stay apart even for whole numbers.
        assert_eq!(
            crate::message::header(&back.record.headers, "whole"),
            Some(&HeaderValue::Float(3.0))
        );
    }

    #[test]
    fn nan_survives() {
        let mut record = sample();
        record.headers = vec![("x".into(), HeaderValue::Float(f64::NAN))];
        let back = decode(&encode("k", &record)).unwrap();
        assert!(matches!(back.record.headers[0].1, HeaderValue::Float(f) if f.is_nan()));
    }

    #[test]
    fn torn_or_foreign_lines_are_errors_not_panics() {
        let line = encode("k1", &sample());
        for cut in [1, line.len() / 2, line.len() - 1] {
            let cut = (0..=cut).rev().find(|&i| line.is_char_boundary(i)).unwrap();
            assert!(matches!(decode(&line[..cut]), Err(Error::DeadLetter(_))));
        }
        assert!(decode("{\"v\": 99}").is_err());
        assert!(decode("[1, 2]").is_err());
    }
}
