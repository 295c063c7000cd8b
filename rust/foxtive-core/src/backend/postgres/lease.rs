//! Lease renewal: while a handler runs, its job's lease is extended from a
//! tokio task every `lease_timeout / 3`, so a handler that holds the GIL for
//! a long time (or just runs long) does not lose its job to another worker.
//! A worker that dies stops renewing, and its jobs come back after at most
//! `lease_timeout`.
//!
//! The same task runs the retention duty when finished jobs are kept
//! (`keep_finished`): it deletes the expired ones in small batches
//! ([`Inner::expire_finished`]).

use std::sync::Weak;
use std::time::Duration;

use tokio::time::Instant;

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

/// How often the retention duty runs for `keep_finished` (`None`: jobs
/// are deleted at the ack, there is nothing to expire): a few times per
/// `keep_finished`, at most every 10 s, so a kept job is gone at most
/// `keep_finished` + 10 s after it finished.
pub(crate) fn expire_every(keep: Duration) -> Option<Duration> {
    (!keep.is_zero()).then(|| (keep / 4).clamp(Duration::from_millis(100), Duration::from_secs(10)))
}

/// Most retention statements per round: a large backlog (keep_finished
/// just lowered) is worked off over several rounds, never in one long burst.
const EXPIRE_BATCHES_PER_ROUND: usize = 20;

/// The renewal task; ends when the backend is dropped or closed. Renews
/// every `every` and, with `expire`, runs the retention duty that often.
pub(crate) async fn renew_loop(weak: Weak<Inner>, every: Duration, expire: Option<Duration>) {
    let step = expire.map_or(every, |e| e.min(every));
    let mut tick = tokio::time::interval(step);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    let mut next_renew = Instant::now() + every;
    loop {
        tick.tick().await;
        let Some(inner) = weak.upgrade() else {
            return;
        };
        if inner.link.is_closed() {
            return;
        }
        if Instant::now() >= next_renew {
            next_renew = Instant::now() + every;
            inner.renew_leases().await;
        }
        if expire.is_some() {
            inner.expire_finished(EXPIRE_BATCHES_PER_ROUND).await;
        }
    }
}
