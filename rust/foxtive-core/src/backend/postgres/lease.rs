//! Lease renewal: while a handler runs, its job's lease is extended from a
//! tokio task every `lease_timeout / 3`, so a handler that holds the GIL for
//! a long time (or just runs long) does not lose its job to another worker.
//! A worker that dies stops renewing, and its jobs come back after at most
//! `lease_timeout`.

use std::sync::Weak;
use std::time::Duration;

use super::schema::quote_ident;
use super::Inner;

/// `$1` ids, `$2` attempts, `$3` lease in seconds. Only rows still leased
/// under this claim are extended.
pub(crate) fn renew_sql(schema: &str) -> String {
    format!(
        "UPDATE {}.jobs j SET locked_until = now() + make_interval(secs => $3), \
           run_at = now() + make_interval(secs => $3) \
         FROM unnest($1::int8[], $2::int4[]) AS s(id, att) \
         WHERE j.id = s.id AND j.attempts = s.att AND j.locked_until IS NOT NULL",
        quote_ident(schema)
    )
}

/// How often leases are renewed.
pub(crate) fn renew_every(lease: Duration) -> Duration {
    (lease / 3).max(Duration::from_millis(30))
}

/// The renewal task; ends when the backend is dropped or closed.
pub(crate) async fn renew_loop(weak: Weak<Inner>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(inner) = weak.upgrade() else {
            return;
        };
        if inner.link.closed.load(std::sync::atomic::Ordering::Acquire) {
            return;
        }
        inner.renew_leases().await;
    }
}
