//! Lease renewal: while handlers run, the rows this backend handed out and
//! has not settled get `locked_until` (and `run_at`) pushed to `now +
//! lease_timeout` every `lease_timeout / 3`, from a tokio task. It needs no
//! GIL, so a Python handler that holds the GIL for minutes keeps its lease;
//! only a dead (or frozen) process stops renewing, and its rows come back.

use std::sync::{Arc, Weak};

use rusqlite::Connection;
use tokio::sync::watch;

use super::{row, Inner};

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
/// the backend is gone.
pub async fn run(weak: Weak<Inner>, mut stop: watch::Receiver<bool>) {
    loop {
        let every = match weak.upgrade() {
            Some(inner) => inner.cfg.lease_timeout / 3,
            None => return,
        };
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.changed() => {}
        }
        if *stop.borrow() {
            return;
        }
        let Some(inner) = weak.upgrade() else {
            return;
        };
        renew_held(&inner).await;
    }
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
