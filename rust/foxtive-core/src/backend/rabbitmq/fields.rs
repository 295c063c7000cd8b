//! AMQP field tables to and from foxtive headers, nothing dropped.
//!
//! Every AMQP integer width becomes `Int`, floats and decimals `Float`,
//! long strings `Str` when they are UTF-8 (else `Bytes`), byte arrays
//! `Bytes`, arrays and nested tables keep their structure (`x-death`).
//! On the way back integers take the narrowest of 32/64-bit signed.

use bytes::Bytes;
use lapin::types::{AMQPValue, ByteArray, FieldArray, FieldTable, LongString, ShortString};

use crate::message::{header, HeaderValue, Headers};

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

/// Remove what dead-lettering through foxtive's own queues added to a
/// message: the `x-death` entries naming one of them, and the
/// `x-first-death-*` / `x-last-death-*` headers when they name one (rebuilt
/// from the entries left, which are the original publisher's). Every other
/// header stays as it was.
pub fn strip_own_deaths(headers: &mut Headers, is_own_queue: impl Fn(&str) -> bool) {
    if !headers.iter().any(|(k, _)| is_death_key(k)) {
        return;
    }
    let entry_queue = |v: &HeaderValue| match v {
        HeaderValue::Table(t) => match header(t, "queue") {
            Some(HeaderValue::Str(q)) => Some(q.clone()),
            _ => None,
        },
        _ => None,
    };
    let mut left: Vec<HeaderValue> = Vec::new();
    let mut had_deaths = false;
    if let Some(pos) = headers.iter().position(|(k, _)| k == "x-death") {
        if let HeaderValue::Array(entries) = &headers[pos].1 {
            had_deaths = true;
            left = entries
                .iter()
                .filter(|e| !entry_queue(e).is_some_and(|q| is_own_queue(&q)))
                .cloned()
                .collect();
            if left.is_empty() {
                headers.remove(pos);
            } else {
                headers[pos].1 = HeaderValue::Array(left.clone());
            }
        }
    }
    // x-death lists the most recent death first.
    for (prefix, entry) in [
        ("x-first-death-", left.last()),
        ("x-last-death-", left.first()),
    ] {
        let named = header(headers, &format!("{prefix}queue"));
        if !matches!(named, Some(HeaderValue::Str(q)) if is_own_queue(q)) {
            continue;
        }
        headers.retain(|(k, _)| !k.starts_with(prefix));
        let Some(HeaderValue::Table(t)) = entry.filter(|_| had_deaths) else {
            continue;
        };
        for field in ["queue", "reason", "exchange"] {
            if let Some(v) = header(t, field) {
                headers.push((format!("{prefix}{field}"), v.clone()));
            }
        }
    }
}

fn is_death_key(k: &str) -> bool {
    k == "x-death" || k.starts_with("x-first-death-") || k.starts_with("x-last-death-")
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
    #[test]
    fn every_amqp_kind_maps_to_a_header_value() {
        use lapin::types::DecimalValue;
        let utf8 = |s: &str| AMQPValue::LongString(LongString::from(s));
        let raw = || AMQPValue::LongString(LongString::from(vec![0xc3u8, 0x28]));
        let mut inner = FieldTable::default();
        inner.insert("queue".into(), utf8("q.retry.500"));
        inner.insert("bin".into(), raw());
        inner.insert(
            "list".into(),
            AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::LongInt(1), raw()])),
        );
        let mut table = FieldTable::default();
        let kinds = [
            ("bool", AMQPValue::Boolean(true), HeaderValue::Bool(true)),
            ("i8", AMQPValue::ShortShortInt(-8), HeaderValue::Int(-8)),
            ("u8", AMQPValue::ShortShortUInt(255), HeaderValue::Int(255)),
            ("i16", AMQPValue::ShortInt(-16), HeaderValue::Int(-16)),
            ("u16", AMQPValue::ShortUInt(65535), HeaderValue::Int(65535)),
            ("i32", AMQPValue::LongInt(-32), HeaderValue::Int(-32)),
            (
                "u32",
                AMQPValue::LongUInt(u32::MAX),
                HeaderValue::Int(i64::from(u32::MAX)),
            ),
            (
                "i64",
                AMQPValue::LongLongInt(i64::MIN),
                HeaderValue::Int(i64::MIN),
            ),
            (
                "ts",
                AMQPValue::Timestamp(1_700_000_000),
                HeaderValue::Int(1_700_000_000),
            ),
            (
                "ts_past_i64",
                AMQPValue::Timestamp(u64::MAX),
                HeaderValue::Int(i64::MAX),
            ),
            ("f32", AMQPValue::Float(0.5), HeaderValue::Float(0.5)),
            ("f64", AMQPValue::Double(-2.25), HeaderValue::Float(-2.25)),
            (
                "dec",
                AMQPValue::DecimalValue(DecimalValue {
                    scale: 2,
                    value: 12345,
                }),
                HeaderValue::Float(123.45),
            ),
            (
                "short",
                AMQPValue::ShortString("kurz".into()),
                HeaderValue::Str("kurz".into()),
            ),
            ("long", utf8("héllo"), HeaderValue::Str("héllo".into())),
            ("empty", utf8(""), HeaderValue::Str(String::new())),
            (
                "not_utf8",
                raw(),
                HeaderValue::Bytes(Bytes::from_static(b"\xc3\x28")),
            ),
            (
                "bytes",
                AMQPValue::ByteArray(ByteArray::from(vec![0u8, 0xff])),
                HeaderValue::Bytes(Bytes::from_static(b"\x00\xff")),
            ),
            ("void", AMQPValue::Void, HeaderValue::Null),
            (
                "empty_array",
                AMQPValue::FieldArray(FieldArray::default()),
                HeaderValue::Array(Vec::new()),
            ),
            (
                "empty_table",
                AMQPValue::FieldTable(FieldTable::default()),
                HeaderValue::Table(Vec::new()),
            ),
            (
                "x-death",
                AMQPValue::FieldArray(FieldArray::from(vec![
                    AMQPValue::FieldTable(inner.clone()),
                    AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::Void])),
                ])),
                HeaderValue::Array(vec![
                    // A table's keys come out in the table's (sorted) order.
                    HeaderValue::Table(vec![
                        (
                            "bin".into(),
                            HeaderValue::Bytes(Bytes::from_static(b"\xc3\x28")),
                        ),
                        (
                            "list".into(),
                            HeaderValue::Array(vec![
                                HeaderValue::Int(1),
                                HeaderValue::Bytes(Bytes::from_static(b"\xc3\x28")),
                            ]),
                        ),
                        ("queue".into(), HeaderValue::Str("q.retry.500".into())),
                    ]),
                    HeaderValue::Array(vec![HeaderValue::Null]),
                ]),
            ),
        ];
        for (key, amqp, _) in &kinds {
            table.insert((*key).into(), amqp.clone());
        }
        let headers = headers_from_table(&table);
        assert_eq!(headers.len(), kinds.len());
        for (key, _, want) in &kinds {
            let got = header(&headers, key);
            if let (Some(HeaderValue::Float(g)), HeaderValue::Float(w)) = (got, want) {
                assert!((g - w).abs() < 1e-9, "{key}: {g} != {w}");
            } else {
                assert_eq!(got, Some(want), "{key}");
            }
        }
        assert_eq!(headers_from_table(&FieldTable::default()), Vec::new());
    }

    #[test]
    fn own_deaths_are_stripped_and_the_publishers_kept() {
        let death = |q: &str| {
            HeaderValue::Table(vec![
                ("queue".into(), HeaderValue::Str(q.into())),
                ("reason".into(), HeaderValue::Str("expired".into())),
                ("exchange".into(), HeaderValue::Str(String::new())),
                ("count".into(), HeaderValue::Int(1)),
            ])
        };
        let own = |q: &str| q.starts_with("q.retry.");
        let s = |v: &str| HeaderValue::Str(v.into());
        // Only foxtive's bucket: every death header goes, the rest stays.
        let mut h: Headers = vec![
            ("custom".into(), s("kept")),
            (
                "x-death".into(),
                HeaderValue::Array(vec![death("q.retry.500")]),
            ),
            ("x-first-death-queue".into(), s("q.retry.500")),
            ("x-first-death-reason".into(), s("expired")),
            ("x-first-death-exchange".into(), s("")),
            ("x-last-death-queue".into(), s("q.retry.500")),
            ("x-last-death-reason".into(), s("expired")),
        ];
        strip_own_deaths(&mut h, own);
        assert_eq!(h, vec![("custom".into(), s("kept"))]);
        // The publisher's own dead-lettering before foxtive saw it stays.
        let mut h: Headers = vec![
            (
                "x-death".into(),
                HeaderValue::Array(vec![death("q.retry.500"), death("upstream")]),
            ),
            ("x-first-death-queue".into(), s("upstream")),
            ("x-first-death-reason".into(), s("expired")),
            ("x-last-death-queue".into(), s("q.retry.500")),
            ("x-last-death-reason".into(), s("expired")),
        ];
        strip_own_deaths(&mut h, own);
        assert_eq!(
            header(&h, "x-death"),
            Some(&HeaderValue::Array(vec![death("upstream")]))
        );
        assert_eq!(header(&h, "x-first-death-queue"), Some(&s("upstream")));
        assert_eq!(header(&h, "x-last-death-queue"), Some(&s("upstream")));
        assert_eq!(header(&h, "x-last-death-exchange"), Some(&s("")));
    }
}
