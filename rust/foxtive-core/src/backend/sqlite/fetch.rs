//! Claiming jobs: one `UPDATE ... RETURNING` per batch, in a `BEGIN
//! IMMEDIATE` transaction.
//!
//! IMMEDIATE takes the write lock at BEGIN (waiting up to `busy_timeout`
//! for it), so the claim never starts as a reader and fails to upgrade with
//! SQLITE_BUSY_SNAPSHOT, which `busy_timeout` does not retry. The claim
//! counts the attempt (`attempts + 1`) in the same statement that leases the
//! row: the attempt is durable before any handler runs, and a worker that
//! dies mid-job leaves a lease that expires into the next attempt.

use std::sync::Arc;

use rusqlite::{Connection, TransactionBehavior};

use super::row;
use crate::message::Delivery;

/// The claim: lease up to ?4 due rows of queue ?1 (due: `run_at <= ?2`)
/// until ?3, counting the attempt: the highest priority first (none counts
/// as 0), then the oldest due. See `schema::PRIORITY_INDEX` for its plan.
/// Returns the columns of [`row::delivery`].
const CLAIM: &str = "UPDATE foxtive_jobs SET attempts = attempts + 1, locked_until = ?3, \
     run_at = ?3 WHERE id IN (SELECT id FROM foxtive_jobs INDEXED BY foxtive_jobs_next \
     WHERE queue = ?1 AND run_at <= ?2 \
     ORDER BY coalesce(priority, 0) DESC, run_at, id LIMIT ?4) RETURNING id, message_id, body, headers, correlation_id, \
     content_type, reply_to, priority, routing_key, attempts";

/// When the next job of the queue can be claimed (a new job, a retry, or an
/// expired lease), or `None` when the queue is empty. A plain read: in WAL
/// mode it never waits for writers, so idle workers poll without taking the
/// write lock from the busy ones.
pub fn next_due(conn: &Connection, queue: &str) -> rusqlite::Result<Option<f64>> {
    conn.prepare_cached("SELECT min(run_at) FROM foxtive_jobs WHERE queue = ?1")?
        .query_row([queue], |r| r.get(0))
}

/// Claim up to `max` due jobs, leased until `now + lease`. Returned highest
/// priority first, then in id (publish) order.
pub fn claim(
    conn: &mut Connection,
    queue: &Arc<str>,
    max: usize,
    now: f64,
    lease: f64,
) -> rusqlite::Result<Vec<Delivery>> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut out = Vec::with_capacity(max.min(1024));
    {
        let mut stmt = tx.prepare_cached(CLAIM)?;
        let limit = i64::try_from(max).unwrap_or(i64::MAX);
        let mut rows = stmt.query(rusqlite::params![&**queue, now, now + lease, limit])?;
        while let Some(r) = rows.next()? {
            out.push(row::delivery(r, queue, now)?);
        }
    }
    tx.commit()?;
    // RETURNING gives no order; hand jobs out by priority, then oldest first.
    out.sort_unstable_by_key(|d| {
        (
            std::cmp::Reverse(d.priority.unwrap_or(0)),
            row::row_id(d).unwrap_or(i64::MAX),
        )
    });
    Ok(out)
}
