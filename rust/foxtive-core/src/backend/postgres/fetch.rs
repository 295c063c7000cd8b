//! Claiming due jobs: one statement per batch.
//!
//! `FOR UPDATE SKIP LOCKED` lets any number of workers claim from one queue
//! without waiting on each other; the same statement leases the rows
//! (`locked_until`, and `run_at` moved to the lease end so a leased row
//! leaves the due range of the index) and counts the attempt. A row whose
//! lease ran out (its worker died) is due again, and its next claim counts
//! the next attempt.

use std::sync::Arc;

use bytes::Bytes;
use tokio_postgres::Row;

use super::schema::quote_ident;
use crate::message::{Delivery, PackedReceipt, Receipt};
use crate::{Error, Result};

/// `$1` queue, `$2` most rows, `$3` lease in seconds. Highest priority
/// first (none counts as 0), then oldest due; `schema::MIGRATIONS` 2 has
/// its plan.
pub(crate) fn claim_sql(schema: &str) -> String {
    let s = quote_ident(schema);
    format!(
        "WITH c AS (SELECT id FROM {s}.jobs WHERE queue = $1 AND run_at <= now() \
           AND (locked_until IS NULL OR locked_until < now()) \
           ORDER BY coalesce(priority, 0) DESC, run_at, id LIMIT $2 FOR UPDATE SKIP LOCKED) \
         UPDATE {s}.jobs j SET attempts = j.attempts + 1, \
           locked_until = now() + make_interval(secs => $3), \
           run_at = now() + make_interval(secs => $3) \
         FROM c WHERE j.id = c.id \
         RETURNING j.id, j.message_id, j.body, j.headers, j.correlation_id, j.content_type, \
           j.reply_to, j.routing_key, j.priority, j.attempts"
    )
}

/// Seconds until the queue's next row is due (negative: due now; leased
/// rows count at their lease end), or NULL when the queue has no rows.
/// Served by `jobs_due` (the first index entry of the queue).
pub(crate) fn probe_sql(schema: &str) -> String {
    format!(
        "SELECT extract(epoch FROM min(run_at) - now())::float8 FROM {}.jobs WHERE queue = $1",
        quote_ident(schema)
    )
}

/// A claim: the row id and its `attempts` when claimed. Together they name
/// this claim, so a late settlement cannot touch a later claim of the row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RowReceipt {
    pub id: i64,
    pub attempts: i32,
}

impl PackedReceipt for RowReceipt {
    fn pack(self) -> [u64; 2] {
        [self.id as u64, self.attempts as u32 as u64]
    }
    fn unpack([id, attempts]: [u64; 2]) -> Self {
        RowReceipt {
            id: id as i64,
            attempts: attempts as u32 as i32,
        }
    }
}

/// The claim a delivery of this backend was made from.
pub(crate) fn claim_of(d: &Delivery) -> Option<(i64, i32)> {
    d.receipt
        .unpacked::<RowReceipt>()
        .map(|r| (r.id, r.attempts))
}

/// RETURNING gives no order: hand a batch out highest priority first (a
/// stable sort, so rows of one priority keep the order they came in).
pub(crate) fn in_claim_order(batch: &mut [Delivery]) {
    batch.sort_by_key(|d| std::cmp::Reverse(d.priority.unwrap_or(0)));
}

/// A claimed row as a delivery.
pub(crate) fn delivery(row: &Row, queue: &Arc<str>, received_at: f64) -> Result<Delivery> {
    let bad = |e: tokio_postgres::Error| Error::Backend(format!("jobs row: {e}"));
    let id: i64 = row.try_get(0).map_err(bad)?;
    let attempts: i32 = row.try_get(9).map_err(bad)?;
    let headers: String = row.try_get(3).map_err(bad)?;
    // Rows written by hand may carry headers foxtive cannot read: the job
    // still runs (with none) rather than being stuck or dropped.
    let headers = crate::dlq::codec::headers_from_text(&headers).unwrap_or_else(|e| {
        tracing::warn!(row = id, error = %e, "jobs row: unreadable headers, delivered without");
        Vec::new()
    });
    let body: &[u8] = row.try_get(2).map_err(bad)?;
    let priority: Option<i16> = row.try_get(8).map_err(bad)?;
    let attempt = u32::try_from(attempts.max(1)).unwrap_or(1);
    Ok(Delivery {
        id: row.try_get(1).map_err(bad)?,
        body: Bytes::copy_from_slice(body),
        headers,
        attempt,
        queue: queue.clone(),
        routing_key: row.try_get(7).map_err(bad)?,
        correlation_id: row.try_get(4).map_err(bad)?,
        content_type: row.try_get(5).map_err(bad)?,
        reply_to: row.try_get(6).map_err(bad)?,
        priority: priority.and_then(|p| u8::try_from(p).ok()),
        received_at,
        redelivered: attempt > 1,
        receipt: Receipt::packed(RowReceipt { id, attempts }),
    })
}
