//! The queue's counts in one read, each a range scan of `foxtive_jobs_due
//! (queue, run_at)`: a leased row has `run_at = locked_until` (the lease
//! end), so "due now" is `run_at <= now` (an expired lease is due again),
//! "delayed" is a later `run_at` with no lease, "in progress" a later one
//! with a lease. Dead letters: `foxtive_dead_letters_queue (queue, id)`.

use super::SqliteBackend;
use crate::backend::queue_stats::count;
use crate::backend::QueueStats;
use crate::clock::unix_now;
use crate::Result;

const COUNTS: &str = "SELECT \
     (SELECT count(*) FROM foxtive_jobs WHERE queue = ?1 AND run_at <= ?2), \
     (SELECT count(*) FROM foxtive_jobs WHERE queue = ?1 AND run_at > ?2 AND locked_until IS NULL), \
     (SELECT count(*) FROM foxtive_jobs WHERE queue = ?1 AND run_at > ?2 AND locked_until IS NOT NULL), \
     (SELECT count(*) FROM foxtive_dead_letters WHERE queue = ?1)";

impl SqliteBackend {
    pub async fn stats(&self) -> Result<QueueStats> {
        let queue = self.inner.queue.clone();
        let (ready, delayed, in_progress, dead) = self
            .inner
            .with_conn("queue stats", move |conn| {
                conn.prepare_cached(COUNTS)?.query_row(
                    rusqlite::params![&*queue, unix_now()],
                    |r| {
                        Ok((
                            r.get::<_, i64>(0)?,
                            r.get::<_, i64>(1)?,
                            r.get::<_, i64>(2)?,
                            r.get::<_, i64>(3)?,
                        ))
                    },
                )
            })
            .await?;
        Ok(QueueStats {
            ready: count(ready),
            delayed: count(delayed),
            in_progress: count(in_progress),
            dead: count(dead),
            consumers: None,
        })
    }
}
