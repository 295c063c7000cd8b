//! AMQP field tables to and from foxtive headers, nothing dropped.
//!
//! Every AMQP integer width becomes `Int`, floats and decimals `Float`,
//! long strings `Str` when they are UTF-8 (else `Bytes`), byte arrays
//! `Bytes`, arrays and nested tables keep their structure (`x-death`).
//! On the way back integers take the narrowest of 32/64-bit signed.

use bytes::Bytes;
use lapin::types::{AMQPValue, ByteArray, FieldArray, FieldTable, LongString, ShortString};

use crate::message::{HeaderValue, Headers};

pub fn value_from_amqp(value: &AMQPValue) -> HeaderValue {
    match value {
        AMQPValue::Boolean(b) => HeaderValue::Bool(*b),
        AMQPValue::ShortShortInt(i) => HeaderValue::Int(i64::from(*i)),
        AMQPValue::ShortShortUInt(i) => HeaderValue::Int(i64::from(*i)),
        AMQPValue::ShortInt(i) => HeaderValue::Int(i64::from(*i)),
        AMQPValue::ShortUInt(i) => HeaderValue::Int(i64::from(*i)),
        AMQPValue::LongInt(i) => HeaderValue::Int(i64::from(*i)),
        AMQPValue::LongUInt(i) => HeaderValue::Int(i64::from(*i)),
        AMQPValue::LongLongInt(i) => HeaderValue::Int(*i),
        AMQPValue::Timestamp(t) => HeaderValue::Int(i64::try_from(*t).unwrap_or(i64::MAX)),
        AMQPValue::Float(f) => HeaderValue::Float(f64::from(*f)),
        AMQPValue::Double(f) => HeaderValue::Float(*f),
        AMQPValue::DecimalValue(d) => {
            HeaderValue::Float(f64::from(d.value) / 10f64.powi(i32::from(d.scale)))
        }
        AMQPValue::ShortString(s) => HeaderValue::Str(s.as_str().to_string()),
        AMQPValue::LongString(s) => match std::str::from_utf8(s.as_bytes()) {
            Ok(text) => HeaderValue::Str(text.to_string()),
            Err(_) => HeaderValue::Bytes(Bytes::copy_from_slice(s.as_bytes())),
        },
        AMQPValue::ByteArray(b) => HeaderValue::Bytes(Bytes::copy_from_slice(b.as_slice())),
        AMQPValue::FieldArray(items) => {
            HeaderValue::Array(items.as_slice().iter().map(value_from_amqp).collect())
        }
        AMQPValue::FieldTable(table) => HeaderValue::Table(headers_from_table(table)),
        AMQPValue::Void => HeaderValue::Null,
    }
}

pub fn headers_from_table(table: &FieldTable) -> Headers {
    table
        .into_iter()
        .map(|(k, v)| (k.as_str().to_string(), value_from_amqp(v)))
        .collect()
}

pub fn value_to_amqp(value: &HeaderValue) -> AMQPValue {
    match value {
        HeaderValue::Null => AMQPValue::Void,
        HeaderValue::Bool(b) => AMQPValue::Boolean(*b),
        HeaderValue::Int(i) => match i32::try_from(*i) {
            Ok(small) => AMQPValue::LongInt(small),
            Err(_) => AMQPValue::LongLongInt(*i),
        },
        HeaderValue::Float(f) => AMQPValue::Double(*f),
        HeaderValue::Str(s) => AMQPValue::LongString(LongString::from(s.as_bytes().to_vec())),
        HeaderValue::Bytes(b) => AMQPValue::ByteArray(ByteArray::from(b.to_vec())),
        HeaderValue::Array(items) => AMQPValue::FieldArray(FieldArray::from(
            items.iter().map(value_to_amqp).collect::<Vec<_>>(),
        )),
        HeaderValue::Table(t) => AMQPValue::FieldTable(table_from_headers(t)),
    }
}

pub fn table_from_headers(headers: &Headers) -> FieldTable {
    let mut table = FieldTable::default();
    for (k, v) in headers {
        // Keys longer than a short string cannot be sent; they cannot have
        // come from AMQP either, so only a publisher could have set them.
        if let Ok(key) = ShortString::try_new(k.as_str()) {
            table.insert(key, value_to_amqp(v));
        }
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_keeps_types_and_structure() {
        let headers: Headers = vec![
            ("i".into(), HeaderValue::Int(-7)),
            ("big".into(), HeaderValue::Int(1 << 40)),
            ("b".into(), HeaderValue::Bool(true)),
            ("f".into(), HeaderValue::Float(1.5)),
            ("s".into(), HeaderValue::Str("héllo".into())),
            (
                "x".into(),
                HeaderValue::Bytes(Bytes::from_static(b"\xff\x00")),
            ),
            ("n".into(), HeaderValue::Null),
            (
                "a".into(),
                HeaderValue::Array(vec![HeaderValue::Int(1), HeaderValue::Str("two".into())]),
            ),
            (
                "t".into(),
                HeaderValue::Table(vec![("count".into(), HeaderValue::Int(3))]),
            ),
        ];
        let back = headers_from_table(&table_from_headers(&headers));
        let mut want = headers.clone();
        want.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(back, want);
    }

    #[test]
    fn long_strings_that_are_not_utf8_become_bytes() {
        let v = AMQPValue::LongString(LongString::from(vec![0xffu8, 0xfe]));
        assert_eq!(
            value_from_amqp(&v),
            HeaderValue::Bytes(Bytes::from_static(b"\xff\xfe"))
        );
    }
}
