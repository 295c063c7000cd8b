//! How a message is laid out in NATS, and back.
//!
//! | on the wire                | meaning                                          |
//! |----------------------------|--------------------------------------------------|
//! | payload                    | the body, untouched                              |
//! | `Nats-Msg-Id`              | the message id (JetStream dedups on it)          |
//! | `x-foxtive-message-id`     | the message id when `Nats-Msg-Id` carries another dedup key (a replay, a dead letter) |
//! | `Content-Type`             | `content_type`                                   |
//! | `x-foxtive-correlation-id`, `x-foxtive-reply-to`, `x-foxtive-routing-key`, `x-foxtive-priority` | the other properties |
//! | any other header           | a header: its text as sent                       |
//! | `x-foxtive-typed`          | space-separated names of the headers whose values are not plain text (ints, floats, bools, bytes, nested values, text with line breaks): each such value is base64 of the Redis Streams typed form ([`encode_header`]) |
//!
//! Messages published by other clients work too: every header is a `str`,
//! and without `Nats-Msg-Id` the id is `<stream>:<stream sequence>`.
//! The attempt is the delivery count from the message's ack subject.

use async_nats::header::{HeaderMap, HeaderName, HeaderValue as NatsValue};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use bytes::Bytes;

use crate::backend::redis_streams::{decode_header, encode_header};
use crate::message::{Delivery, HeaderValue, Headers, Outgoing, PackedReceipt, Receipt};
use crate::{Error, Result};

pub const MSG_ID: &str = "Nats-Msg-Id";
pub const FOXTIVE_ID: &str = "x-foxtive-message-id";
pub const TYPED: &str = "x-foxtive-typed";
/// Unix milliseconds at which a delayed message is due (delay stream only).
pub const DUE: &str = "x-foxtive-due-ms";
const CONTENT_TYPE: &str = "Content-Type";
const CORRELATION_ID: &str = "x-foxtive-correlation-id";
const REPLY_TO: &str = "x-foxtive-reply-to";
const ROUTING_KEY: &str = "x-foxtive-routing-key";
const PRIORITY: &str = "x-foxtive-priority";

/// Headers that are the message's id or properties, not its headers.
fn is_envelope(name: &str) -> bool {
    [
        MSG_ID,
        FOXTIVE_ID,
        TYPED,
        DUE,
        CONTENT_TYPE,
        CORRELATION_ID,
        REPLY_TO,
        ROUTING_KEY,
        PRIORITY,
    ]
    .iter()
    .any(|e| e.eq_ignore_ascii_case(name))
}

/// A NATS delivery's receipt, kept inline in the delivery (no allocation):
/// the stream sequence and the delivery count it was handed out with. Its
/// ack subject stays in the backend's `held` map, where settling finds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NatsReceipt {
    pub stream_seq: u64,
    pub delivered: u32,
}

impl PackedReceipt for NatsReceipt {
    fn pack(self) -> [u64; 2] {
        [self.stream_seq, u64::from(self.delivered)]
    }
    fn unpack(words: [u64; 2]) -> Self {
        NatsReceipt {
            stream_seq: words[0],
            delivered: u32::try_from(words[1]).unwrap_or(u32::MAX),
        }
    }
}

/// What a JetStream ack subject says about its message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AckInfo {
    pub delivered: u32,
    pub stream_seq: u64,
}

/// Parse `$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>`
/// (and the form with domain and account hash after `ACK`), without
/// collecting the tokens (once per delivery).
pub fn ack_info(reply: &str) -> Option<AckInfo> {
    let mut tokens = reply.split('.');
    if tokens.next()? != "$JS" || tokens.next()? != "ACK" {
        return None;
    }
    // Nine tokens in all, or more with the domain and account hash (the
    // fields then start two later).
    let count = reply.bytes().filter(|&b| b == b'.').count() + 1;
    if count < 9 {
        return None;
    }
    let skip = if count == 9 { 2 } else { 4 };
    let mut fields = tokens.skip(skip);
    let delivered: u64 = fields.next()?.parse().ok()?;
    let stream_seq: u64 = fields.next()?.parse().ok()?;
    Some(AckInfo {
        delivered: u32::try_from(delivered).unwrap_or(u32::MAX),
        stream_seq,
    })
}

fn header_name(name: &str) -> Result<HeaderName> {
    name.parse::<HeaderName>().map_err(|_| {
        Error::Config(format!(
            "header {name:?}: NATS header names are printable ASCII without ':' or spaces"
        ))
    })
}

fn text_value(s: &str) -> Option<NatsValue> {
    s.parse::<NatsValue>().ok()
}

/// Write `headers` (and the typed list) into `map`.
pub fn put_headers(map: &mut HeaderMap, headers: &Headers) -> Result<()> {
    let mut typed: Vec<&str> = Vec::new();
    for (name, value) in headers {
        if is_envelope(name) {
            continue;
        }
        let plain = match value {
            HeaderValue::Str(s) => text_value(s),
            _ => None,
        };
        if plain.is_none() && !typed.contains(&name.as_str()) {
            typed.push(name);
        }
    }
    for (name, value) in headers {
        if is_envelope(name) {
            continue;
        }
        let key = header_name(name)?;
        let v = if typed.contains(&name.as_str()) {
            NatsValue::from(B64.encode(encode_header(value)))
        } else {
            match value {
                HeaderValue::Str(s) => NatsValue::from(s.as_str()),
                _ => continue,
            }
        };
        map.append(key, v);
    }
    if !typed.is_empty() {
        map.insert(TYPED, typed.join(" "));
    }
    Ok(())
}

/// The headers of `out` for publishing under `dedup` (the `Nats-Msg-Id`).
pub fn outgoing_headers(out: &Outgoing, id: &str, dedup: &str) -> Result<HeaderMap> {
    let mut map = HeaderMap::new();
    put_headers(&mut map, &out.headers)?;
    map.insert(MSG_ID, dedup);
    if dedup != id {
        map.insert(FOXTIVE_ID, property(FOXTIVE_ID, id)?);
    }
    let props = [
        (CONTENT_TYPE, &out.content_type),
        (CORRELATION_ID, &out.correlation_id),
        (REPLY_TO, &out.reply_to),
        (ROUTING_KEY, &out.routing_key),
    ];
    for (name, value) in props {
        if let Some(v) = value {
            map.insert(name, property(name, v)?);
        }
    }
    if let Some(p) = out.priority {
        map.insert(PRIORITY, p.to_string());
    }
    Ok(map)
}

fn property(name: &str, value: &str) -> Result<NatsValue> {
    text_value(value).ok_or_else(|| Error::Config(format!("{name}: must not contain line breaks")))
}

/// The headers of a received message, typed values decoded.
pub fn read_headers(map: Option<&HeaderMap>) -> Headers {
    let Some(map) = map else {
        return Vec::new();
    };
    let typed: Vec<&str> = map
        .get(TYPED)
        .map(|v| v.as_str().split(' ').collect())
        .unwrap_or_default();
    let mut out = Vec::new();
    for (name, values) in map.iter() {
        let name = name.as_ref();
        if is_envelope(name) {
            continue;
        }
        let is_typed = typed.contains(&name);
        for v in values {
            let value = if is_typed {
                match B64.decode(v.as_str()) {
                    Ok(raw) => decode_header(&raw),
                    Err(_) => HeaderValue::Str(v.as_str().to_string()),
                }
            } else {
                HeaderValue::Str(v.as_str().to_string())
            };
            out.push((name.to_string(), value));
        }
    }
    out
}

fn get<'a>(map: Option<&'a HeaderMap>, name: &str) -> Option<&'a str> {
    map?.get(name).map(|v| v.as_str())
}

/// The message id a message carries (`x-foxtive-message-id`, else
/// `Nats-Msg-Id`), if any.
pub fn message_id(map: Option<&HeaderMap>) -> Option<String> {
    get(map, FOXTIVE_ID)
        .or_else(|| get(map, MSG_ID))
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

/// `<stream>:<stream sequence>`: the id of a message published without one.
fn stream_id(stream: &str, seq: u64) -> String {
    use std::fmt::Write as _;
    let mut id = String::with_capacity(stream.len() + 21);
    id.push_str(stream);
    id.push(':');
    let _ = write!(id, "{seq}");
    id
}

/// Build the delivery of a JetStream message.
pub fn delivery(
    msg: &async_nats::Message,
    info: AckInfo,
    stream: &str,
    queue: &std::sync::Arc<str>,
    received_at: f64,
) -> Delivery {
    let map = msg.headers.as_ref();
    let id = message_id(map).unwrap_or_else(|| stream_id(stream, info.stream_seq));
    let text = |name: &str| get(map, name).map(str::to_string);
    Delivery {
        id,
        body: Bytes::clone(&msg.payload),
        headers: read_headers(map),
        attempt: info.delivered.max(1),
        queue: queue.clone(),
        routing_key: text(ROUTING_KEY),
        correlation_id: text(CORRELATION_ID),
        content_type: text(CONTENT_TYPE),
        reply_to: text(REPLY_TO),
        priority: get(map, PRIORITY).and_then(|p| p.parse().ok()),
        received_at,
        redelivered: info.delivered > 1,
        receipt: Receipt::packed(NatsReceipt {
            stream_seq: info.stream_seq,
            delivered: info.delivered,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ack_subjects_give_delivery_count_and_sequence() {
        assert_eq!(
            ack_info("$JS.ACK.S.C.3.17.9.1700000000000000000.4"),
            Some(AckInfo {
                delivered: 3,
                stream_seq: 17
            })
        );
        assert_eq!(
            ack_info("$JS.ACK.dom.hash.S.C.2.5.9.1700000000000000000.0.tok"),
            Some(AckInfo {
                delivered: 2,
                stream_seq: 5
            })
        );
        assert_eq!(ack_info("_INBOX.x"), None);
        assert_eq!(ack_info("$JS.ACK.S.C.x.17.9.1.4"), None);
        assert_eq!(ack_info("$JS.ACK.S.C.3.17.9.1"), None);
        assert_eq!(stream_id("S", 42), "S:42");
        let r = NatsReceipt {
            stream_seq: u64::MAX,
            delivered: 7,
        };
        assert_eq!(NatsReceipt::unpack(r.pack()), r);
    }

    #[test]
    fn headers_round_trip_with_their_types() {
        let headers: Headers = vec![
            ("tenant".into(), HeaderValue::Str("acme".into())),
            ("n".into(), HeaderValue::Int(-7)),
            ("f".into(), HeaderValue::Float(0.5)),
            ("b".into(), HeaderValue::Bool(true)),
            ("multi".into(), HeaderValue::Str("line\none".into())),
            (
                "raw".into(),
                HeaderValue::Bytes(Bytes::from_static(b"\x00\xff")),
            ),
            ("rep".into(), HeaderValue::Str("1".into())),
            ("rep".into(), HeaderValue::Str("2".into())),
        ];
        let mut map = HeaderMap::new();
        put_headers(&mut map, &headers).unwrap();
        assert_eq!(map.get("tenant").map(|v| v.as_str()), Some("acme"));
        let mut back = read_headers(Some(&map));
        back.sort_by(|a, b| a.0.cmp(&b.0));
        let mut want = headers.clone();
        want.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(back, want);
        assert!(put_headers(&mut map, &vec![("a b".into(), HeaderValue::Null)]).is_err());
    }
}
