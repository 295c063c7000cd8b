//! Lease renewal: while handlers run, the rows this backend handed out and
//! has not settled get `locked_until` (and `run_at`) pushed to `now +
//! lease_timeout` every `lease_timeout / 3`, from a tokio task. It needs no
//! GIL, so a Python handler that holds the GIL for minutes keeps its lease;
//! only a dead (or frozen) process stops renewing, and its rows come back.
//!
//! The same task runs the retention duty when finished jobs are kept
//! (`keep_finished`): expired rows of `foxtive_finished_jobs` are deleted in
//! batches of [`schema::EXPIRE_BATCH`].

use std::sync::{Arc, Weak};
use std::time::Duration;

use rusqlite::Connection;
use tokio::sync::watch;
use tokio::time::Instant;

use super::{row, schema, Inner};

/// Extend the lease of rows still locked (a row settled meanwhile is
/// deleted or unlocked and is left alone).
const RENEW: &str = "UPDATE foxtive_jobs SET locked_until = ?2, run_at = ?2 \
     WHERE id IN (SELECT value FROM json_each(?1)) AND locked_until IS NOT NULL";

pub fn renew(conn: &Connection, ids: &[i64], until: f64) -> rusqlite::Result<usize> {
    // One statement, autocommit: a single UPDATE is its own transaction.
    conn.prepare_cached(RENEW)?
        .execute(rusqlite::params![row::id_list(ids), until])
}

/// The renewal loop; holds only a weak reference, ends when told or when
/// the backend is gone. With `keep_finished` it also runs the retention
/// duty, a few times per `keep_finished` (at most every 10 s).
pub async fn run(weak: Weak<Inner>, mut stop: watch::Receiver<bool>) {
    let mut next_renew = Instant::now();
    loop {
        let (every, expire) = match weak.upgrade() {
            Some(inner) => (
                inner.cfg.lease_timeout / 3,
                expire_every(inner.cfg.keep_finished),
            ),
            None => return,
        };
        if next_renew <= Instant::now() {
            next_renew = Instant::now() + every;
        }
        let wake = expire.map_or(next_renew, |e| next_renew.min(Instant::now() + e));
        tokio::select! {
            _ = tokio::time::sleep_until(wake) => {}
            _ = stop.changed() => {}
        }
        if *stop.borrow() {
            return;
        }
        let Some(inner) = weak.upgrade() else {
            return;
        };
        if Instant::now() >= next_renew {
            renew_held(&inner).await;
        }
        if expire.is_some() {
            expire_finished(&inner, EXPIRE_BATCHES_PER_ROUND).await;
        }
    }
}

/// How often the retention duty runs (`None`: nothing is kept).
fn expire_every(keep: Duration) -> Option<Duration> {
    (!keep.is_zero()).then(|| (keep / 4).clamp(Duration::from_millis(100), Duration::from_secs(10)))
}

/// Most retention statements per round: a backlog is worked off over
/// several rounds.
const EXPIRE_BATCHES_PER_ROUND: usize = 20;

/// Delete this queue's finished jobs older than `keep_finished`,
/// [`schema::EXPIRE_BATCH`] rows per statement, each its own short write
/// transaction taken through the backend's connection mutex, so claims and
/// settlements of this process (and other processes, on the file lock) get
/// in between two statements. Returns the rows deleted.
pub(crate) async fn expire_finished(inner: &Arc<Inner>, max_batches: usize) -> usize {
    let keep = inner.cfg.keep_finished.as_secs_f64();
    let mut deleted = 0;
    for _ in 0..max_batches {
        let queue = inner.queue.clone();
        let res = inner
            .with_conn("retention", move |conn| {
                conn.prepare_cached(schema::EXPIRE_FINISHED)?
                    .execute(rusqlite::params![
                        &*queue,
                        crate::clock::unix_now() - keep,
                        schema::EXPIRE_BATCH
                    ])
            })
            .await;
        match res {
            Ok(n) => {
                deleted += n;
                if (n as i64) < schema::EXPIRE_BATCH {
                    break;
                }
            }
            Err(e) => {
                tracing::warn!(queue = %inner.queue, error = %e,
                    "sqlite: could not delete expired finished jobs; trying again later");
                break;
            }
        }
    }
    deleted
}

async fn renew_held(inner: &Arc<Inner>) {
    let ids: Vec<i64> = inner.held.lock().iter().copied().collect();
    if ids.is_empty() {
        return;
    }
    let lease = inner.cfg.lease_timeout.as_secs_f64();
    let res = inner
        .with_conn("renew leases", move |conn| {
            renew(conn, &ids, crate::clock::unix_now() + lease)
        })
        .await;
    if let Err(e) = res {
        tracing::warn!(queue = %inner.queue, error = %e,
            "sqlite: could not renew leases; jobs whose lease ends come back to another worker");
    }
}
