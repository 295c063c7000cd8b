//! Jobs as rows: an [`Outgoing`] as the parameters of
//! [`schema::INSERT_JOB`](super::schema::INSERT_JOB), and a claimed row as a
//! [`Delivery`]. Headers are stored as the JSON of the dead-letter codec
//! (`[[name, value], ...]`, typed), NULL when there are none.

use std::sync::Arc;

use bytes::Bytes;
/// A SQL value (a parameter of `INSERT_JOB`), for the Python glue.
pub use rusqlite::types::Value as SqlValue;

use crate::dlq::codec::{headers_from_json, headers_to_json};
use crate::message::{Delivery, Headers, Outgoing, PackedReceipt, Receipt};

/// A new message id: 32 hex digits of randomness (the shape of a uuid4
/// without dashes), kept on every retry of the job.
pub fn new_message_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// Headers as stored: NULL for none.
pub fn headers_text(headers: &Headers) -> Option<String> {
    (!headers.is_empty()).then(|| headers_to_json(headers).to_string())
}

/// Stored headers back; an unreadable text (a row written by hand) keeps
/// the job deliverable with no headers rather than stranding it.
pub fn headers_of(text: Option<&str>, row_id: i64) -> Headers {
    let Some(text) = text else {
        return Vec::new();
    };
    match serde_json::from_str(text)
        .map_err(|e| e.to_string())
        .and_then(|v| headers_from_json(&v).map_err(|e| e.to_string()))
    {
        Ok(h) => h,
        Err(e) => {
            tracing::warn!(row = row_id, error = %e, "unreadable headers on a job; delivered without them");
            Vec::new()
        }
    }
}

/// The 11 parameters of `INSERT_JOB` for one message, and its id.
pub fn insert_params(queue: &str, out: &Outgoing, now: f64) -> (Vec<SqlValue>, String) {
    let id = out.message_id.clone().unwrap_or_else(new_message_id);
    let run_at = now + out.delay.map_or(0.0, |d| d.as_secs_f64());
    let text = |v: &Option<String>| v.clone().map_or(SqlValue::Null, SqlValue::Text);
    let params = vec![
        SqlValue::Text(queue.to_string()),
        SqlValue::Text(id.clone()),
        SqlValue::Blob(out.body.to_vec()),
        headers_text(&out.headers).map_or(SqlValue::Null, SqlValue::Text),
        text(&out.correlation_id),
        text(&out.content_type),
        text(&out.reply_to),
        out.priority
            .map_or(SqlValue::Null, |p| SqlValue::Integer(i64::from(p))),
        text(&out.routing_key),
        SqlValue::Real(run_at),
        SqlValue::Real(now),
    ];
    (params, id)
}

/// A claimed row (columns: id, message_id, body, headers, correlation_id,
/// content_type, reply_to, priority, routing_key, attempts) as a delivery. `attempts` was
/// counted by the claim itself, so it is the attempt being made now.
pub fn delivery(
    row: &rusqlite::Row<'_>,
    queue: &Arc<str>,
    received_at: f64,
) -> rusqlite::Result<Delivery> {
    let row_id: i64 = row.get(0)?;
    let headers: Option<String> = row.get(3)?;
    let priority: Option<i64> = row.get(7)?;
    let attempts: i64 = row.get(9)?;
    let attempt = u32::try_from(attempts.max(1)).unwrap_or(u32::MAX);
    Ok(Delivery {
        id: row.get(1)?,
        body: Bytes::from(row.get::<_, Vec<u8>>(2)?),
        headers: headers_of(headers.as_deref(), row_id),
        attempt,
        queue: queue.clone(),
        routing_key: row.get(8)?,
        correlation_id: row.get(4)?,
        content_type: row.get(5)?,
        reply_to: row.get(6)?,
        priority: priority.and_then(|p| u8::try_from(p).ok()),
        received_at,
        redelivered: attempt > 1,
        receipt: Receipt::packed(RowReceipt(row_id)),
    })
}

/// The receipt of a SQLite delivery: the job's row id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RowReceipt(pub i64);

impl PackedReceipt for RowReceipt {
    fn pack(self) -> [u64; 2] {
        [self.0 as u64, 0]
    }
    fn unpack(words: [u64; 2]) -> Self {
        RowReceipt(words[0] as i64)
    }
}

/// The row id behind a delivery of this backend.
pub fn row_id(d: &Delivery) -> Option<i64> {
    d.receipt.unpacked::<RowReceipt>().map(|r| r.0)
}

/// Row ids as the JSON array `json_each(?)` reads: one statement for a whole
/// batch, whatever its size, and one prepared statement for every size.
pub fn id_list(ids: &[i64]) -> String {
    let mut s = String::with_capacity(ids.len() * 8 + 2);
    s.push('[');
    for (i, id) in ids.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        s.push_str(&id.to_string());
    }
    s.push(']');
    s
}
