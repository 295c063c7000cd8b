//! The queue's counts in one statement, each a range scan of `jobs_due
//! (queue, run_at, id)`: a claimed row has `run_at = locked_until` (its
//! lease end), so "due now" is `run_at <= now()` (an expired lease is due
//! again), "delayed" a later `run_at` with no lease, "in progress" a later
//! one with a lease. Dead letters: `dead_letters_queue (queue, id)`.
//! Consumers: sessions listening for the queue's notifications are not
//! told apart from other listeners, so `None`.

use super::schema::quote_ident;
use super::PostgresBackend;
use crate::backend::queue_stats::count;
use crate::backend::QueueStats;
use crate::Result;

fn counts_sql(schema: &str) -> String {
    let s = quote_ident(schema);
    format!(
        "SELECT \
         (SELECT count(*) FROM {s}.jobs WHERE queue = $1 AND run_at <= now()), \
         (SELECT count(*) FROM {s}.jobs WHERE queue = $1 AND run_at > now() AND locked_until IS NULL), \
         (SELECT count(*) FROM {s}.jobs WHERE queue = $1 AND run_at > now() AND locked_until IS NOT NULL), \
         (SELECT count(*) FROM {s}.dead_letters WHERE queue = $1)"
    )
}

impl PostgresBackend {
    pub async fn stats(&self) -> Result<QueueStats> {
        let inner = &self.inner;
        inner.reopen();
        let conn = inner.link.conn().await?;
        let sql = counts_sql(&inner.cfg.schema);
        let row = conn
            .client
            .query_one(&sql, &[&&*inner.queue])
            .await
            .map_err(|e| inner.failed(&conn, "queue stats", &e))?;
        let get = |i: usize| -> Option<u64> { row.try_get::<_, i64>(i).ok().and_then(count) };
        Ok(QueueStats {
            ready: get(0),
            delayed: get(1),
            in_progress: get(2),
            dead: get(3),
            consumers: None,
        })
    }
}
