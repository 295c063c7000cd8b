//! How a message is laid out in a stream entry, and back.
//!
//! Entry fields written by foxtive (all values are raw bytes, binary-safe):
//!
//! | field        | meaning                                                           |
//! |--------------|-------------------------------------------------------------------|
//! | `body`       | the payload, untouched                                            |
//! | `id`         | message id set by the publisher, kept on retry copies; absent: the entry id is the message id |
//! | `attempt`    | attempt number this entry carries (decimal); absent: 1           |
//! | `h:<name>`   | one header: a type byte, then the value (see [`encode_header`])   |
//! | `p:<name>`   | a property: `correlation_id`, `content_type`, `reply_to`, `routing_key`, `priority` |
//!
//! Entries written by other clients work too: `data` is the body when there
//! is no `body` field, and every other field becomes a header (a `str` when
//! it is UTF-8, else `bytes`). An entry with neither `body` nor `data` gets a
//! JSON object of its fields as body, so `message.json()` sees them all.
//!
//! Dead-letter entries (in `{stream}:dlq`) carry `body`, `id`, the `h:`/`p:`
//! fields, and `entry_id`, `source`, `attempts`, `error_type`,
//! `error_message`, `failed_at` (unix seconds), `worker_id`, `consumer` and
//! `poison_pill` (`true`/`false`).
//!
//! Delayed messages wait in a sorted set; each member is a netstring list
//! (`<len>:<bytes>,`...) of a unique tag followed by the entry's fields, so
//! the Lua mover can XADD it unchanged.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use bytes::Bytes;

use crate::dlq::DeadLetter;
use crate::message::{Delivery, Failure, HeaderValue, Headers, Outgoing, Receipt};

/// A field name and value as written to a stream entry.
pub(crate) type Field<'a> = (Cow<'a, [u8]>, Cow<'a, [u8]>);

/// A stream delivery's receipt: its entry id (`<ms>-<seq>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamReceipt(pub String, pub u16);

/// A stream entry id (`<ms>-<seq>`), small and cheap to hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamId {
    pub ms: u64,
    pub seq: u64,
}

impl StreamId {
    /// `<ms>-<seq>`, both decimal. By hand: it runs at least twice per
    /// message (reading and settling), and `split_once` + `str::parse` were
    /// ~800 instructions a message.
    pub fn parse(s: &str) -> Option<StreamId> {
        let dash = s.bytes().position(|b| b == b'-')?;
        let (ms, seq) = s.as_bytes().split_at(dash);
        Some(StreamId {
            ms: decimal(ms)?,
            seq: decimal(&seq[1..])?,
        })
    }
}

/// A u64 in plain decimal digits (no sign, no spaces, no overflow).
fn decimal(s: &[u8]) -> Option<u64> {
    // Up to 19 digits cannot overflow; 20 (u64::MAX has 20) are checked.
    if s.is_empty() || s.len() > 20 {
        return None;
    }
    let (head, last) = s.split_at(s.len().min(19));
    let mut n: u64 = 0;
    for &d in head {
        if !d.is_ascii_digit() {
            return None;
        }
        n = n * 10 + u64::from(d - b'0');
    }
    match last.first() {
        None => Some(n),
        Some(d) if d.is_ascii_digit() => n.checked_mul(10)?.checked_add(u64::from(d - b'0')),
        Some(_) => None,
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

/// What is written for a message: borrowed from a publish or a delivery.
pub(crate) struct Parts<'a> {
    pub body: &'a [u8],
    pub id: Option<&'a str>,
    pub attempt: u32,
    pub headers: &'a Headers,
    pub correlation_id: Option<&'a str>,
    pub content_type: Option<&'a str>,
    pub reply_to: Option<&'a str>,
    pub routing_key: Option<&'a str>,
    pub priority: Option<u8>,
}

impl<'a> Parts<'a> {
    pub fn from_outgoing(out: &'a Outgoing, id: Option<&'a str>) -> Self {
        Parts {
            body: &out.body,
            id,
            attempt: out.attempt.max(1),
            headers: &out.headers,
            correlation_id: out.correlation_id.as_deref(),
            content_type: out.content_type.as_deref(),
            reply_to: out.reply_to.as_deref(),
            routing_key: out.routing_key.as_deref(),
            priority: out.priority,
        }
    }

    /// A copy of a delivery (retry or dead letter): the message id is kept.
    pub fn from_delivery(d: &'a Delivery, attempt: u32) -> Self {
        Parts {
            body: &d.body,
            id: Some(&d.id),
            attempt,
            headers: &d.headers,
            correlation_id: d.correlation_id.as_deref(),
            content_type: d.content_type.as_deref(),
            reply_to: d.reply_to.as_deref(),
            routing_key: d.routing_key.as_deref(),
            priority: d.priority,
        }
    }

    pub fn fields(&self) -> Vec<Field<'a>> {
        let mut out: Vec<Field<'a>> = Vec::with_capacity(3 + self.headers.len());
        out.push((Cow::Borrowed(b"body"), Cow::Borrowed(self.body)));
        if let Some(id) = self.id {
            out.push((Cow::Borrowed(b"id"), Cow::Borrowed(id.as_bytes())));
        }
        if self.attempt > 1 {
            out.push((
                Cow::Borrowed(b"attempt"),
                Cow::Owned(self.attempt.to_string().into_bytes()),
            ));
        }
        for (name, value) in self.headers {
            let mut key = Vec::with_capacity(2 + name.len());
            key.extend_from_slice(b"h:");
            key.extend_from_slice(name.as_bytes());
            out.push((Cow::Owned(key), Cow::Owned(encode_header(value))));
        }
        let props = [
            ("p:correlation_id", self.correlation_id),
            ("p:content_type", self.content_type),
            ("p:reply_to", self.reply_to),
            ("p:routing_key", self.routing_key),
        ];
        for (name, value) in props {
            if let Some(v) = value {
                out.push((Cow::Borrowed(name.as_bytes()), Cow::Borrowed(v.as_bytes())));
            }
        }
        if let Some(p) = self.priority {
            out.push((
                Cow::Borrowed(b"p:priority"),
                Cow::Owned(p.to_string().into_bytes()),
            ));
        }
        out
    }
}

/// The fields of a dead-letter entry.
pub(crate) fn dead_letter_fields<'a>(
    d: &'a Delivery,
    failure: &'a Failure,
    entry_id: &'a str,
    consumer: &'a str,
    failed_at: f64,
) -> Vec<Field<'a>> {
    let mut out = Parts::from_delivery(d, 1).fields();
    let text = |s: &'a str| Cow::Borrowed(s.as_bytes());
    let owned = |s: String| Cow::Owned(s.into_bytes());
    out.push((Cow::Borrowed(b"entry_id"), text(entry_id)));
    out.push((Cow::Borrowed(b"source"), text(&d.queue)));
    out.push((Cow::Borrowed(b"attempts"), owned(d.attempt.to_string())));
    out.push((Cow::Borrowed(b"error_type"), text(&failure.error_type)));
    out.push((
        Cow::Borrowed(b"error_message"),
        text(&failure.error_message),
    ));
    out.push((
        Cow::Borrowed(b"failed_at"),
        owned(format!("{failed_at:.6}")),
    ));
    out.push((Cow::Borrowed(b"worker_id"), text(&failure.worker_id)));
    out.push((Cow::Borrowed(b"consumer"), text(consumer)));
    out.push((
        Cow::Borrowed(b"poison_pill"),
        Cow::Borrowed(if failure.poison_pill {
            b"true"
        } else {
            b"false"
        }),
    ));
    out
}

/// A header value as bytes: one type byte, then the value.
///
/// `s` UTF-8 string, `b` bytes, `i` decimal integer, `f` float (shortest
/// round-trip form, `inf`/`NaN` included), `T`/`F` booleans, `n` None,
/// `a` array and `t` table (netstring lists of encoded values; a table
/// alternates names and values). Nothing is lost, order is kept.
pub fn encode_header(value: &HeaderValue) -> Vec<u8> {
    match value {
        HeaderValue::Null => b"n".to_vec(),
        HeaderValue::Bool(true) => b"T".to_vec(),
        HeaderValue::Bool(false) => b"F".to_vec(),
        HeaderValue::Int(i) => format!("i{i}").into_bytes(),
        HeaderValue::Float(f) => format!("f{f:?}").into_bytes(),
        HeaderValue::Str(s) => tagged(b's', s.as_bytes()),
        HeaderValue::Bytes(b) => tagged(b'b', b),
        HeaderValue::Array(items) => {
            let mut out = vec![b'a'];
            for item in items {
                push_netstring(&mut out, &encode_header(item));
            }
            out
        }
        HeaderValue::Table(table) => {
            let mut out = vec![b't'];
            for (k, v) in table {
                push_netstring(&mut out, k.as_bytes());
                push_netstring(&mut out, &encode_header(v));
            }
            out
        }
    }
}

fn tagged(tag: u8, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + value.len());
    out.push(tag);
    out.extend_from_slice(value);
    out
}

/// Decode [`encode_header`]'s form; anything unrecognised is kept as text
/// (or bytes when it is not UTF-8).
pub fn decode_header(raw: &[u8]) -> HeaderValue {
    let Some((&tag, rest)) = raw.split_first() else {
        return HeaderValue::Str(String::new());
    };
    let text = || std::str::from_utf8(rest).ok();
    let decoded = match tag {
        b'n' if rest.is_empty() => Some(HeaderValue::Null),
        b'T' if rest.is_empty() => Some(HeaderValue::Bool(true)),
        b'F' if rest.is_empty() => Some(HeaderValue::Bool(false)),
        b'i' => text().and_then(|t| t.parse().ok()).map(HeaderValue::Int),
        b'f' => text().and_then(|t| t.parse().ok()).map(HeaderValue::Float),
        b's' => text().map(|t| HeaderValue::Str(t.to_string())),
        b'b' => Some(HeaderValue::Bytes(Bytes::copy_from_slice(rest))),
        b'a' => split_netstrings(rest)
            .map(|items| HeaderValue::Array(items.into_iter().map(decode_header).collect())),
        b't' => split_netstrings(rest).and_then(|items| {
            if items.len() % 2 != 0 {
                return None;
            }
            let mut table = Vec::with_capacity(items.len() / 2);
            for pair in items.chunks(2) {
                let name = std::str::from_utf8(pair[0]).ok()?.to_string();
                table.push((name, decode_header(pair[1])));
            }
            Some(HeaderValue::Table(table))
        }),
        _ => None,
    };
    decoded.unwrap_or_else(|| raw_value(raw))
}

/// A field value of unknown meaning: text when it is UTF-8, else bytes.
fn raw_value(raw: &[u8]) -> HeaderValue {
    match std::str::from_utf8(raw) {
        Ok(s) => HeaderValue::Str(s.to_string()),
        Err(_) => HeaderValue::Bytes(Bytes::copy_from_slice(raw)),
    }
}

pub(crate) fn push_netstring(out: &mut Vec<u8>, item: &[u8]) {
    out.extend_from_slice(item.len().to_string().as_bytes());
    out.push(b':');
    out.extend_from_slice(item);
    out.push(b',');
}

/// Split `<len>:<bytes>,<len>:<bytes>,...`; `None` when malformed.
pub(crate) fn split_netstrings(mut raw: &[u8]) -> Option<Vec<&[u8]>> {
    let mut out = Vec::new();
    while !raw.is_empty() {
        let colon = raw.iter().position(|&b| b == b':')?;
        let len: usize = std::str::from_utf8(&raw[..colon]).ok()?.parse().ok()?;
        let start = colon + 1;
        let end = start.checked_add(len)?;
        if raw.get(end) != Some(&b',') {
            return None;
        }
        out.push(&raw[start..end]);
        raw = &raw[end + 1..];
    }
    Some(out)
}

/// A sorted-set member for a delayed message: a unique tag, then the fields.
pub(crate) fn delayed_member(fields: &[Field<'_>]) -> Vec<u8> {
    let size: usize = fields.iter().map(|(k, v)| k.len() + v.len() + 16).sum();
    let mut out = Vec::with_capacity(size + 24);
    let tag: u128 = rand::random();
    push_netstring(&mut out, format!("{tag:032x}").as_bytes());
    for (k, v) in fields {
        push_netstring(&mut out, k);
        push_netstring(&mut out, v);
    }
    out
}

/// The raw fields of one entry, as read (slices of the read buffer).
pub(crate) type RawFields = Vec<(Bytes, Bytes)>;

/// What an entry holds beyond its payload.
pub(crate) struct Decoded {
    pub id: Option<String>,
    pub body: Bytes,
    pub attempt: u32,
    pub headers: Headers,
    pub correlation_id: Option<String>,
    pub content_type: Option<String>,
    pub reply_to: Option<String>,
    pub routing_key: Option<String>,
    pub priority: Option<u8>,
    /// Fields not part of the layout (kept for dead letters).
    pub extra: Vec<(String, Bytes)>,
}

fn utf8(v: Bytes) -> Option<String> {
    std::str::from_utf8(&v).ok().map(str::to_string)
}

/// Read an entry's fields (see the module docs for the layout).
pub(crate) fn decode_fields(fields: RawFields) -> Decoded {
    let mut d = Decoded {
        id: None,
        body: Bytes::new(),
        attempt: 1,
        headers: Vec::new(),
        correlation_id: None,
        content_type: None,
        reply_to: None,
        routing_key: None,
        priority: None,
        extra: Vec::new(),
    };
    let mut body: Option<Bytes> = None;
    let mut data: Option<Bytes> = None;
    let mut others: Vec<(Bytes, Bytes)> = Vec::new();
    for (name, value) in fields {
        match name.as_ref() {
            b"body" if body.is_none() => body = Some(value),
            b"data" if data.is_none() => data = Some(value),
            b"id" if d.id.is_none() => d.id = utf8(value),
            b"attempt" => {
                d.attempt = std::str::from_utf8(&value)
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(1u32)
                    .max(1)
            }
            [b'h', b':', rest @ ..] => {
                let name = String::from_utf8_lossy(rest).into_owned();
                d.headers.push((name, decode_header(&value)));
            }
            b"p:correlation_id" => d.correlation_id = utf8(value),
            b"p:content_type" => d.content_type = utf8(value),
            b"p:reply_to" => d.reply_to = utf8(value),
            b"p:routing_key" => d.routing_key = utf8(value),
            b"p:priority" => {
                d.priority = std::str::from_utf8(&value)
                    .ok()
                    .and_then(|s| s.parse().ok())
            }
            _ => others.push((name, value)),
        }
    }
    d.body = match (body, data) {
        (Some(b), data) => {
            if let Some(v) = data {
                others.push((Bytes::from_static(b"data"), v));
            }
            b
        }
        (None, Some(v)) => v,
        (None, None) => {
            let mut map = serde_json::Map::new();
            for (k, v) in &others {
                map.insert(
                    String::from_utf8_lossy(k).into_owned(),
                    serde_json::Value::String(String::from_utf8_lossy(v).into_owned()),
                );
            }
            Bytes::from(serde_json::Value::Object(map).to_string())
        }
    };
    for (k, v) in others {
        let name = String::from_utf8_lossy(&k).into_owned();
        d.headers.push((name.clone(), raw_value(&v)));
        d.extra.push((name, v));
    }
    d
}

/// Build the delivery for an entry.
pub(crate) fn delivery(
    entry_id: String,
    part: u16,
    fields: RawFields,
    delivery_count: u32,
    queue: &Arc<str>,
    received_at: f64,
) -> Delivery {
    let d = decode_fields(fields);
    let attempt = d.attempt.saturating_add(delivery_count.saturating_sub(1));
    Delivery {
        id: d.id.unwrap_or_else(|| entry_id.clone()),
        body: d.body,
        headers: d.headers,
        attempt,
        queue: queue.clone(),
        routing_key: d.routing_key,
        correlation_id: d.correlation_id,
        content_type: d.content_type,
        reply_to: d.reply_to,
        priority: d.priority,
        received_at,
        redelivered: attempt > 1 || delivery_count > 1,
        receipt: Receipt::new(StreamReceipt(entry_id, part)),
    }
}

/// Fields a dead-letter entry adds to the message's own: the failure's
/// description, not the message.
pub(crate) const DEAD_LETTER_FIELDS: [&str; 9] = [
    "source",
    "attempts",
    "error_type",
    "error_message",
    "failed_at",
    "worker_id",
    "poison_pill",
    "entry_id",
    "consumer",
];

/// Read a dead-letter entry back.
pub(crate) fn dead_letter_from_fields(entry_id: &str, fields: RawFields) -> DeadLetter {
    let mut d = decode_fields(fields);
    let mut take = |name: &str| -> String {
        match d.extra.iter().position(|(k, _)| k == name) {
            Some(i) => String::from_utf8_lossy(&d.extra.remove(i).1).into_owned(),
            None => String::new(),
        }
    };
    let source = take("source");
    let attempts = take("attempts").parse().unwrap_or(1);
    let error_type = take("error_type");
    let error_message = take("error_message");
    let failed_at = take("failed_at").parse().unwrap_or(0.0);
    let worker_id = take("worker_id");
    let poison_pill = take("poison_pill") == "true";
    let _ = take("entry_id");
    let _ = take("consumer");
    d.headers
        .retain(|(k, _)| !DEAD_LETTER_FIELDS.contains(&k.as_str()));
    DeadLetter {
        original_id: d.id.unwrap_or_else(|| entry_id.to_string()),
        body: d.body,
        headers: d.headers,
        source_queue: source,
        attempts,
        error_type,
        error_message,
        failed_at,
        worker_id,
        poison_pill,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owned(fields: Vec<Field<'_>>) -> RawFields {
        fields
            .into_iter()
            .map(|(k, v)| (Bytes::from(k.into_owned()), Bytes::from(v.into_owned())))
            .collect()
    }

    fn raw(pairs: &[(&'static [u8], &'static [u8])]) -> RawFields {
        pairs
            .iter()
            .map(|(k, v)| (Bytes::from_static(k), Bytes::from_static(v)))
            .collect()
    }

    #[test]
    fn headers_round_trip_with_types() {
        let values = vec![
            HeaderValue::Null,
            HeaderValue::Bool(true),
            HeaderValue::Bool(false),
            HeaderValue::Int(-42),
            HeaderValue::Float(0.1),
            HeaderValue::Float(f64::INFINITY),
            HeaderValue::Str("héllo:,".into()),
            HeaderValue::Str(String::new()),
            HeaderValue::Bytes(Bytes::from_static(b"\xff\x00,:")),
            HeaderValue::Array(vec![HeaderValue::Int(1), HeaderValue::Str("x".into())]),
            HeaderValue::Table(vec![
                ("b".into(), HeaderValue::Bytes(Bytes::from_static(b"\x80"))),
                ("a".into(), HeaderValue::Array(vec![])),
            ]),
        ];
        for v in values {
            assert_eq!(decode_header(&encode_header(&v)), v);
        }
        assert!(
            matches!(decode_header(&encode_header(&HeaderValue::Float(f64::NAN))),
            HeaderValue::Float(f) if f.is_nan())
        );
    }

    #[test]
    fn outgoing_round_trips_through_fields() {
        let mut out = Outgoing::new(Bytes::from_static(b"\x00\xffbinary"));
        out.headers = vec![("k".into(), HeaderValue::Int(7))];
        out.correlation_id = Some("c1".into());
        out.priority = Some(3);
        out.attempt = 4;
        let fields = owned(Parts::from_outgoing(&out, Some("m-1")).fields());
        let queue: Arc<str> = Arc::from("s");
        let d = delivery("5-0".into(), 0, fields, 2, &queue, 0.0);
        assert_eq!(d.id, "m-1");
        assert_eq!(&d.body[..], b"\x00\xffbinary");
        assert_eq!(d.attempt, 5);
        assert_eq!(d.headers, vec![("k".to_string(), HeaderValue::Int(7))]);
        assert_eq!(d.correlation_id.as_deref(), Some("c1"));
        assert_eq!(d.priority, Some(3));
        assert!(d.redelivered);
        assert_eq!(d.receipt.get(), Some(&StreamReceipt("5-0".into(), 0)));
    }

    #[test]
    fn third_party_entries() {
        let queue: Arc<str> = Arc::from("s");
        let d = delivery(
            "1-1".into(),
            0,
            raw(&[(b"data", b"{\"a\":1}")]),
            1,
            &queue,
            0.0,
        );
        assert_eq!(d.id, "1-1");
        assert_eq!(&d.body[..], b"{\"a\":1}");
        assert_eq!(d.attempt, 1);
        assert!(!d.redelivered);
        let d = delivery(
            "1-2".into(),
            0,
            raw(&[(b"name", b"x"), (b"raw", b"\xff")]),
            1,
            &queue,
            0.0,
        );
        let body: serde_json::Value = serde_json::from_slice(&d.body).unwrap();
        assert_eq!(body["name"], "x");
        assert_eq!(
            d.headers[0],
            ("name".to_string(), HeaderValue::Str("x".into()))
        );
        assert_eq!(
            d.headers[1],
            (
                "raw".to_string(),
                HeaderValue::Bytes(Bytes::from_static(b"\xff"))
            )
        );
    }

    #[test]
    fn netstrings_and_delayed_members() {
        let fields: Vec<Field<'_>> = vec![
            (Cow::Borrowed(b"body"), Cow::Borrowed(b"a,b:c\x00")),
            (Cow::Borrowed(b"id"), Cow::Borrowed(b"")),
        ];
        let m = delayed_member(&fields);
        let parts = split_netstrings(&m).unwrap();
        assert_eq!(parts.len(), 5);
        assert_eq!(parts[1..], [&b"body"[..], b"a,b:c\x00", b"id", b""]);
        assert!(split_netstrings(b"3:ab,").is_none());
        assert!(split_netstrings(b"99999999999999999999999:").is_none());
    }

    #[test]
    fn dead_letters_read_back() {
        let queue: Arc<str> = Arc::from("s");
        let mut d = delivery("1-1".into(), 0, raw(&[(b"body", b"x")]), 3, &queue, 0.0);
        d.headers.push(("h".into(), HeaderValue::Bool(true)));
        let failure = Failure {
            error_type: "ValueError".into(),
            error_message: "bad".into(),
            worker_id: Arc::from("w"),
            poison_pill: true,
        };
        let fields = owned(dead_letter_fields(&d, &failure, "1-1", "c", 12.5));
        let dl = dead_letter_from_fields("9-9", fields);
        assert_eq!(dl.original_id, "1-1");
        assert_eq!(dl.attempts, 3);
        assert_eq!(dl.error_type, "ValueError");
        assert_eq!(dl.error_message, "bad");
        assert_eq!(dl.source_queue, "s");
        assert_eq!(dl.worker_id, "w");
        assert!(dl.poison_pill);
        assert_eq!(dl.failed_at, 12.5);
        assert_eq!(dl.headers, vec![("h".to_string(), HeaderValue::Bool(true))]);
    }

    #[test]
    fn stream_ids() {
        let id = StreamId::parse("1700000000000-12").unwrap();
        assert_eq!(id.to_string(), "1700000000000-12");
        assert!(StreamId::parse("x-1").is_none());
        assert!(StreamId::parse("12").is_none());
        let max = StreamId::parse("18446744073709551615-0").unwrap();
        assert_eq!(max.ms, u64::MAX);
        for bad in [
            "-1",
            "1-",
            "1-2-3",
            "18446744073709551616-0",
            "1- 2",
            "1-+2",
        ] {
            assert!(StreamId::parse(bad).is_none(), "{bad}");
        }
    }
}
