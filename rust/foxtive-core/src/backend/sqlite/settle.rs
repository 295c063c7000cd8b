//! Settling a batch: one `BEGIN IMMEDIATE` transaction for the whole batch.
//!
//! * Ack: `DELETE` of every acked id in one statement (with `keep_finished`,
//!   copied to `foxtive_finished_jobs` first, in the same transaction).
//! * Retry: the row stays and is unlocked with a new `run_at`; its attempt
//!   was counted when it was claimed, so the next claim makes the next
//!   attempt. A retry that must not count (open circuit) takes one back.
//! * Dead letter: `INSERT ... SELECT` of the row into `foxtive_dead_letters`
//!   and its `DELETE`, in the same transaction: never both, never neither.
//! * Requeue (handed back, e.g. at shutdown): unlocked and due now. The
//!   handler may have run, so the next claim is the next attempt and
//!   `redelivered` (the contract's "handed-back work comes back as the next
//!   attempt").
//!
//! If the transaction fails nothing of the batch is applied: the rows stay
//! leased and come back when their lease ends (the backend stops renewing
//! them before it settles).

use rusqlite::{Connection, TransactionBehavior};

use super::row;
use crate::backend::SettleItem;
use crate::message::Settlement;

/// What a settle batch turns into.
#[derive(Default)]
pub struct Plan<'a> {
    pub acks: Vec<i64>,
    /// (row id, run_at, attempts change: 0, or -1 for a retry that does not count)
    pub retries: Vec<(i64, f64, i64)>,
    /// (row id, the failure)
    pub dead: Vec<(i64, &'a crate::message::Failure)>,
    pub requeues: Vec<i64>,
    /// Acked rows are kept in `foxtive_finished_jobs` (`keep_finished` > 0).
    pub keep: bool,
}

impl<'a> Plan<'a> {
    pub fn of(batch: &'a [SettleItem], now: f64) -> Self {
        let mut plan = Plan::default();
        for (d, settlement) in batch {
            let Some(id) = row::row_id(d) else {
                continue;
            };
            match settlement {
                Settlement::Ack => plan.acks.push(id),
                Settlement::Retry {
                    delay,
                    count_attempt,
                } => plan.retries.push((
                    id,
                    now + delay.as_secs_f64(),
                    if *count_attempt { 0 } else { -1 },
                )),
                Settlement::DeadLetter(f) => plan.dead.push((id, f)),
                Settlement::Requeue => plan.requeues.push(id),
            }
        }
        plan
    }

    /// True when jobs become claimable again (idle receivers should look).
    pub fn frees_jobs(&self) -> bool {
        !self.retries.is_empty() || !self.requeues.is_empty()
    }
}

const DELETE: &str = "DELETE FROM foxtive_jobs WHERE id IN (SELECT value FROM json_each(?1))";
const RETRY: &str = "UPDATE foxtive_jobs SET run_at = ?2, locked_until = NULL, \
     attempts = max(attempts + ?3, 0) WHERE id = ?1";
const DEAD: &str = "INSERT INTO foxtive_dead_letters (queue, original_id, body, headers, \
     attempts, error_type, error_message, failed_at, worker_id, poison_pill) \
     SELECT queue, message_id, body, headers, attempts, ?2, ?3, ?4, ?5, ?6 \
     FROM foxtive_jobs WHERE id = ?1";
/// Unlock rows (handed back): due now, attempt kept.
pub const RELEASE: &str = "UPDATE foxtive_jobs SET locked_until = NULL, run_at = ?2 \
     WHERE id IN (SELECT value FROM json_each(?1)) AND locked_until IS NOT NULL";

/// Apply `plan` in one transaction.
pub fn apply(conn: &mut Connection, plan: &Plan<'_>, now: f64) -> rusqlite::Result<()> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    if !plan.retries.is_empty() {
        let mut stmt = tx.prepare_cached(RETRY)?;
        for (id, run_at, change) in &plan.retries {
            stmt.execute(rusqlite::params![id, run_at, change])?;
        }
    }
    if !plan.dead.is_empty() {
        let mut stmt = tx.prepare_cached(DEAD)?;
        for (id, f) in &plan.dead {
            stmt.execute(rusqlite::params![
                id,
                f.error_type,
                f.error_message,
                now,
                &*f.worker_id,
                f.poison_pill
            ])?;
        }
    }
    let gone: Vec<i64> = plan
        .acks
        .iter()
        .copied()
        .chain(plan.dead.iter().map(|d| d.0))
        .collect();
    if plan.keep && !plan.acks.is_empty() {
        tx.prepare_cached(super::schema::FINISH_JOBS)?
            .execute(rusqlite::params![row::id_list(&plan.acks), now])?;
    }
    if !gone.is_empty() {
        tx.prepare_cached(DELETE)?.execute([row::id_list(&gone)])?;
    }
    if !plan.requeues.is_empty() {
        tx.prepare_cached(RELEASE)?
            .execute(rusqlite::params![row::id_list(&plan.requeues), now])?;
    }
    tx.commit()
}
