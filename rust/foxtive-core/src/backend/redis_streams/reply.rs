//! Reading stream replies (RESP2 arrays or RESP3 maps) without copying bodies.

use bytes::Bytes;
use redis::Value;

use super::codec::RawFields;
use super::resp::Frame;
use crate::{Error, Result};

/// One entry as read: its id and fields (`None` when the entry was deleted
/// while it was pending).
pub(crate) struct RawEntry {
    pub id: String,
    pub fields: Option<RawFields>,
}

fn bad(what: &str) -> Error {
    Error::Backend(format!("unexpected reply shape from Redis ({what})"))
}

pub(crate) fn bytes(v: Value) -> Option<Vec<u8>> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.into_bytes()),
        Value::VerbatimString { text, .. } => Some(text.into_bytes()),
        Value::Int(i) => Some(i.to_string().into_bytes()),
        Value::Okay => Some(b"OK".to_vec()),
        _ => None,
    }
}

pub(crate) fn string(v: Value) -> Option<String> {
    bytes(v).and_then(|b| String::from_utf8(b).ok())
}

pub(crate) fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(i) => Some(*i),
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        Value::SimpleString(s) => s.parse().ok(),
        _ => None,
    }
}

/// The items of an array-like reply (`Nil` is empty).
pub(crate) fn items(v: Value) -> Option<Vec<Value>> {
    match v {
        Value::Array(items) | Value::Set(items) => Some(items),
        Value::Nil => Some(Vec::new()),
        Value::Map(pairs) => Some(pairs.into_iter().flat_map(|(k, v)| [k, v]).collect()),
        Value::Attribute { data, .. } => items(*data),
        _ => None,
    }
}

fn fields(v: Value) -> Result<Option<RawFields>> {
    if matches!(v, Value::Nil) {
        return Ok(None);
    }
    let flat = items(v).ok_or_else(|| bad("entry fields"))?;
    let mut out = Vec::with_capacity(flat.len() / 2);
    let mut it = flat.into_iter();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        out.push((
            Bytes::from(bytes(k).ok_or_else(|| bad("field name"))?),
            Bytes::from(bytes(v).unwrap_or_default()),
        ));
    }
    Ok(Some(out))
}

/// `[[id, [field, value, ...]], ...]`.
pub(crate) fn entries(v: Value) -> Result<Vec<RawEntry>> {
    let list = items(v).ok_or_else(|| bad("entry list"))?;
    let mut out = Vec::with_capacity(list.len());
    for entry in list {
        let mut parts = items(entry).ok_or_else(|| bad("entry"))?.into_iter();
        let id = parts
            .next()
            .and_then(string)
            .ok_or_else(|| bad("entry id"))?;
        let fields = match parts.next() {
            Some(f) => fields(f)?,
            None => None,
        };
        out.push(RawEntry { id, fields });
    }
    Ok(out)
}

/// XREADGROUP/XREAD on one stream: `[[stream, entries]]`, a map, or nil.
pub(crate) fn read_reply(v: Value) -> Result<Vec<RawEntry>> {
    match v {
        Value::Nil => Ok(Vec::new()),
        Value::Map(pairs) => match pairs.into_iter().next() {
            Some((_, list)) => entries(list),
            None => Ok(Vec::new()),
        },
        other => {
            let streams = items(other).ok_or_else(|| bad("read"))?;
            match streams.into_iter().next() {
                Some(stream) => {
                    let mut pair = items(stream).ok_or_else(|| bad("read stream"))?.into_iter();
                    let _name = pair.next();
                    match pair.next() {
                        Some(list) => entries(list),
                        None => Ok(Vec::new()),
                    }
                }
                None => Ok(Vec::new()),
            }
        }
    }
}

/// How many entries a read reply holds, without taking it apart.
pub(crate) fn read_len(v: &Value) -> usize {
    let list = match v {
        Value::Array(streams) => match streams.first() {
            Some(Value::Array(pair)) => pair.get(1),
            _ => None,
        },
        Value::Map(pairs) => pairs.first().map(|(_, list)| list),
        _ => None,
    };
    match list {
        Some(Value::Array(entries)) => entries.len(),
        _ => 0,
    }
}

/// How many entries a read reply (as frames) holds.
pub(crate) fn frame_read_len(f: &Frame) -> usize {
    match f {
        Frame::Array(streams) => match streams.first() {
            Some(Frame::Array(pair)) => match pair.get(1) {
                Some(Frame::Array(entries)) => entries.len(),
                _ => 0,
            },
            _ => 0,
        },
        _ => 0,
    }
}

/// XREADGROUP on one stream, as frames: `[[stream, [[id, [f, v, ...]], ...]]]`.
/// Field names and values stay slices of the read buffer.
pub(crate) fn frame_read_reply(f: Frame) -> Result<Vec<RawEntry>> {
    let Some(stream) = f
        .into_items()
        .ok_or_else(|| bad("read"))?
        .into_iter()
        .next()
    else {
        return Ok(Vec::new());
    };
    let Some(list) = stream
        .into_items()
        .ok_or_else(|| bad("read stream"))?
        .into_iter()
        .nth(1)
    else {
        return Ok(Vec::new());
    };
    let list = list.into_items().ok_or_else(|| bad("entry list"))?;
    let mut out = Vec::with_capacity(list.len());
    for entry in list {
        let mut parts = entry.into_items().ok_or_else(|| bad("entry"))?.into_iter();
        let id = parts
            .next()
            .and_then(Frame::into_bytes)
            .and_then(|b| String::from_utf8(b.to_vec()).ok())
            .ok_or_else(|| bad("entry id"))?;
        let fields = match parts.next() {
            Some(Frame::Array(flat)) => {
                let mut fields = Vec::with_capacity(flat.len() / 2);
                let mut it = flat.into_iter();
                while let (Some(k), Some(v)) = (it.next(), it.next()) {
                    let k = k.into_bytes().ok_or_else(|| bad("field name"))?;
                    fields.push((k, v.into_bytes().unwrap_or_default()));
                }
                Some(fields)
            }
            _ => None,
        };
        out.push(RawEntry { id, fields });
    }
    Ok(out)
}

/// XAUTOCLAIM: `[next cursor, entries, deleted ids]` (the last since Redis 7).
pub(crate) fn autoclaim_reply(v: Value) -> Result<(String, Vec<RawEntry>, Vec<String>)> {
    let mut parts = items(v).ok_or_else(|| bad("xautoclaim"))?.into_iter();
    let next = parts
        .next()
        .and_then(string)
        .ok_or_else(|| bad("xautoclaim cursor"))?;
    let claimed = match parts.next() {
        Some(list) => entries(list)?,
        None => Vec::new(),
    };
    let deleted = match parts.next() {
        Some(list) => items(list)
            .unwrap_or_default()
            .into_iter()
            .filter_map(string)
            .collect(),
        None => Vec::new(),
    };
    Ok((next, claimed, deleted))
}

/// One row of extended XPENDING: id, consumer, idle ms, delivery count.
pub(crate) struct PendingRow {
    pub id: String,
    pub consumer: String,
    pub deliveries: u32,
}

pub(crate) fn pending_rows(v: Value) -> Result<Vec<PendingRow>> {
    let rows = items(v).ok_or_else(|| bad("xpending"))?;
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let mut cols = items(row).ok_or_else(|| bad("xpending row"))?.into_iter();
        let id = cols
            .next()
            .and_then(string)
            .ok_or_else(|| bad("xpending id"))?;
        let consumer = cols.next().and_then(string).unwrap_or_default();
        let _idle = cols.next();
        let deliveries = cols
            .next()
            .as_ref()
            .and_then(int)
            .map_or(1, |n| n.clamp(0, u32::MAX as i64) as u32);
        out.push(PendingRow {
            id,
            consumer,
            deliveries,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &[u8]) -> Value {
        Value::BulkString(s.to_vec())
    }

    fn resp2_again() -> Value {
        let entry = |id: &[u8]| {
            Value::Array(vec![
                bulk(id),
                Value::Array(vec![bulk(b"body"), bulk(b"x")]),
            ])
        };
        Value::Array(vec![Value::Array(vec![
            bulk(b"s"),
            Value::Array(vec![entry(b"1-1"), entry(b"1-2")]),
        ])])
    }

    #[test]
    fn reads_resp2_and_resp3_shapes() {
        let entry = Value::Array(vec![
            bulk(b"1-1"),
            Value::Array(vec![bulk(b"body"), bulk(b"\xff")]),
        ]);
        let deleted = Value::Array(vec![bulk(b"1-2"), Value::Nil]);
        let resp2 = Value::Array(vec![Value::Array(vec![
            bulk(b"s"),
            Value::Array(vec![entry.clone(), deleted.clone()]),
        ])]);
        let got = read_reply(resp2).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].id, "1-1");
        assert_eq!(&got[0].fields.as_ref().unwrap()[0].1[..], b"\xff");
        assert!(got[1].fields.is_none());
        let resp3 = Value::Map(vec![(bulk(b"s"), Value::Array(vec![entry]))]);
        assert_eq!(read_len(&resp2_again()), 2);
        assert_eq!(read_len(&resp3), 1);
        assert_eq!(read_len(&Value::Nil), 0);
        assert_eq!(read_reply(resp3).unwrap().len(), 1);
        assert!(read_reply(Value::Nil).unwrap().is_empty());
        assert!(read_reply(Value::Int(3)).is_err());
    }

    #[test]
    fn reads_frames_without_copying() {
        let mut buf = bytes::BytesMut::from(
            &b"*1\r\n*2\r\n$1\r\ns\r\n*2\r\n*2\r\n$3\r\n1-1\r\n*2\r\n$4\r\nbody\r\n$2\r\n\xff\x00\r\n*2\r\n$3\r\n1-2\r\n*-1\r\n"[..],
        );
        let frame = super::super::resp::take_frame(&mut buf).unwrap().unwrap();
        assert_eq!(frame_read_len(&frame), 2);
        let got = frame_read_reply(frame).unwrap();
        assert_eq!(got[0].id, "1-1");
        assert_eq!(&got[0].fields.as_ref().unwrap()[0].1[..], b"\xff\x00");
        assert!(got[1].fields.is_none(), "deleted while pending");
        assert!(frame_read_reply(Frame::Nil).unwrap().is_empty());
        assert!(frame_read_reply(Frame::Int(1)).is_err());
    }

    #[test]
    fn autoclaim_and_pending() {
        let v = Value::Array(vec![
            bulk(b"0-0"),
            Value::Array(vec![]),
            Value::Array(vec![bulk(b"3-3")]),
        ]);
        let (next, claimed, deleted) = autoclaim_reply(v).unwrap();
        assert_eq!(next, "0-0");
        assert!(claimed.is_empty());
        assert_eq!(deleted, vec!["3-3".to_string()]);
        let rows = pending_rows(Value::Array(vec![Value::Array(vec![
            bulk(b"1-1"),
            bulk(b"c"),
            Value::Int(10),
            Value::Int(4),
        ])]))
        .unwrap();
        assert_eq!(rows[0].deliveries, 4);
        assert_eq!(rows[0].consumer, "c");
    }
}
