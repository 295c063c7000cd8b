//! Settling claimed jobs: one statement per kind of outcome in a batch.
//!
//! Every statement names each row by (id, attempts at claim): a settlement
//! that arrives after its lease ran out and the row was claimed again (by
//! this or another worker) matches nothing, so each claim is settled at
//! most once.
//!
//! * Ack: DELETE (or, with `keep_finished`, a move to `finished_jobs`).
//! * Retry: `run_at = now + delay`, lease dropped; the attempt was counted
//!   at claim, so the next claim is the next attempt. A retry that does not
//!   count (open circuit) gives the attempt back. Nothing waits in order: a
//!   1 h delay holds back no other row.
//! * Requeue (handed back at shutdown): due now, lease dropped; delivered
//!   before, so it comes back `redelivered` as the next attempt.
//! * Dead letter: moved to `dead_letters` by one statement (DELETE ...
//!   RETURNING feeding an INSERT), so it is in exactly one table.

use std::sync::Arc;

use tokio_postgres::types::ToSql;

use super::fetch::claim_of;
use super::link::Conn;
use super::schema::quote_ident;
use crate::backend::SettleItem;
use crate::message::Settlement;

/// `$1` ids, `$2` attempts.
pub(crate) fn ack_sql(schema: &str) -> String {
    format!(
        "DELETE FROM {}.jobs j USING unnest($1::int8[], $2::int4[]) AS s(id, att) \
         WHERE j.id = s.id AND j.attempts = s.att",
        quote_ident(schema)
    )
}

/// `$1` ids, `$2` attempts, `$3` delays in seconds, `$4` attempts given back.
pub(crate) fn reschedule_sql(schema: &str) -> String {
    format!(
        "UPDATE {}.jobs j SET run_at = now() + make_interval(secs => s.d), locked_until = NULL, \
           attempts = j.attempts - s.undo \
         FROM unnest($1::int8[], $2::int4[], $3::float8[], $4::int4[]) AS s(id, att, d, undo) \
         WHERE j.id = s.id AND j.attempts = s.att",
        quote_ident(schema)
    )
}

/// `$1` ids, `$2` attempts, `$3` error types, `$4` error messages,
/// `$5` worker ids, `$6` poison-pill flags, `$7` failure times (unix s).
pub(crate) fn dead_letter_sql(schema: &str) -> String {
    let s = quote_ident(schema);
    format!(
        "WITH f AS (SELECT * FROM unnest($1::int8[], $2::int4[], $3::text[], $4::text[], \
             $5::text[], $6::bool[], $7::float8[]) AS f(id, att, et, em, w, pp, fa)), \
         d AS (DELETE FROM {s}.jobs j USING f WHERE j.id = f.id AND j.attempts = f.att \
             RETURNING j.id, j.queue, j.message_id, j.body, j.headers, j.attempts, \
             f.et, f.em, f.w, f.pp, f.fa) \
         INSERT INTO {s}.dead_letters (queue, message_id, body, headers, attempts, \
             error_type, error_message, worker_id, poison_pill, failed_at) \
         SELECT queue, message_id, body, headers, attempts, et, em, w, pp, to_timestamp(fa) \
         FROM d ORDER BY id"
    )
}

/// A settle batch sorted by statement.
#[derive(Default)]
pub(crate) struct Plan {
    pub ack: (Vec<i64>, Vec<i32>),
    /// ids, attempts, delay s, attempts given back.
    pub reschedule: (Vec<i64>, Vec<i32>, Vec<f64>, Vec<i32>),
    pub dead: DeadRows,
    /// Some row is due again at once: wake idle workers.
    pub wake: bool,
    /// Every claim settled by this batch.
    pub claims: Vec<i64>,
    /// Acked rows move to `finished_jobs` (`keep_finished` > 0).
    pub keep: bool,
}

#[derive(Default)]
pub(crate) struct DeadRows {
    pub id: Vec<i64>,
    pub att: Vec<i32>,
    pub error_type: Vec<String>,
    pub error_message: Vec<String>,
    pub worker: Vec<String>,
    pub poison: Vec<bool>,
    pub failed_at: Vec<f64>,
}

impl Plan {
    pub fn of(batch: &[SettleItem]) -> Plan {
        let mut plan = Plan::default();
        for (delivery, settlement) in batch {
            let Some((id, att)) = claim_of(delivery) else {
                continue;
            };
            plan.claims.push(id);
            match settlement {
                Settlement::Ack => {
                    plan.ack.0.push(id);
                    plan.ack.1.push(att);
                }
                Settlement::Retry {
                    delay,
                    count_attempt,
                } => {
                    let r = &mut plan.reschedule;
                    r.0.push(id);
                    r.1.push(att);
                    r.2.push(delay.as_secs_f64());
                    r.3.push(i32::from(!*count_attempt));
                    plan.wake |= delay.as_millis() < 50;
                }
                Settlement::Requeue => {
                    let r = &mut plan.reschedule;
                    r.0.push(id);
                    r.1.push(att);
                    r.2.push(0.0);
                    r.3.push(0);
                    plan.wake = true;
                }
                Settlement::DeadLetter(f) => {
                    let d = &mut plan.dead;
                    d.id.push(id);
                    d.att.push(att);
                    d.error_type.push(f.error_type.clone());
                    d.error_message.push(f.error_message.clone());
                    d.worker.push(f.worker_id.to_string());
                    d.poison.push(f.poison_pill);
                    d.failed_at.push(crate::clock::unix_now());
                }
            }
        }
        plan
    }

    /// Run the plan's statements (pipelined on the one connection).
    /// `channel` is the queue's, NOTIFYed when a row is due again at once.
    pub async fn apply(
        &self,
        conn: &Arc<Conn>,
        channel: &str,
    ) -> std::result::Result<(), tokio_postgres::Error> {
        let c = &conn.client;
        let s = &conn.stmts;
        let ack = async {
            if self.ack.0.is_empty() {
                return Ok(0);
            }
            let stmt = if self.keep { &s.finish } else { &s.ack };
            c.execute(stmt, &[&self.ack.0, &self.ack.1]).await
        };
        let r = &self.reschedule;
        let reschedule = async {
            if r.0.is_empty() {
                return Ok(0);
            }
            c.execute(&s.reschedule, &[&r.0, &r.1, &r.2, &r.3]).await
        };
        let d = &self.dead;
        let dead = async {
            if d.id.is_empty() {
                return Ok(0);
            }
            let params: [&(dyn ToSql + Sync); 7] = [
                &d.id,
                &d.att,
                &d.error_type,
                &d.error_message,
                &d.worker,
                &d.poison,
                &d.failed_at,
            ];
            c.execute(&s.dead_letter, &params).await
        };
        let (a, b, e) = tokio::join!(ack, reschedule, dead);
        a?;
        b?;
        e?;
        if self.wake {
            // Workers of other processes sleep until a NOTIFY or their poll.
            c.execute(&s.notify, &[&channel]).await?;
        }
        Ok(())
    }
}
