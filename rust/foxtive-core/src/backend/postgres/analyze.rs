//! When to ANALYZE the jobs table: the planner's statistics of it.
//!
//! A jobs table filled since its last `ANALYZE` (a fresh table a bulk
//! publish filled has never been analyzed) leads the planner to a plan
//! for the claim that reads the whole queue: ~200 ms a batch of 256 on
//! 100,000 rows instead of ~8 ms. Autovacuum mends it within
//! `autovacuum_naptime` (a minute by default), and never where autovacuum
//! is off. So a claim slower than [`SLOW_CLAIM`] asks the server whether
//! the statistics are stale and, when they are, analyzes the table: at
//! most once per [`RECHECK`] per backend, on a task of its own (claims do
//! not wait for it).

use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

use super::link::{describe, is_connection_error, Link};
use super::schema::quote_ident;

/// A claim taking longer than this makes the backend look at the statistics.
pub(crate) const SLOW_CLAIM: Duration = Duration::from_millis(50);
/// The least time between two looks.
const RECHECK: Duration = Duration::from_secs(300);

/// True when the jobs table of `$1` (the schema) was never analyzed, or
/// more of it changed since than half its live rows (and at least 1,000).
fn stale_sql() -> &'static str {
    "SELECT coalesce(last_analyze, last_autoanalyze) IS NULL \
       OR n_mod_since_analyze > greatest(1000, n_live_tup / 2) \
     FROM pg_stat_user_tables WHERE schemaname = $1 AND relname = 'jobs'"
}

/// When this backend last looked at the statistics.
#[derive(Default)]
pub(crate) struct SlowClaims {
    looked: Mutex<Option<Instant>>,
}

impl SlowClaims {
    /// After a claim that took `took`: whether to look now (a slow claim
    /// and no look within [`RECHECK`]); a yes counts as the look.
    pub(crate) fn should_look(&self, took: Duration) -> bool {
        if took < SLOW_CLAIM {
            return false;
        }
        let mut looked = self.looked.lock();
        let now = Instant::now();
        if looked.is_some_and(|at| now.duration_since(at) < RECHECK) {
            return false;
        }
        *looked = Some(now);
        true
    }

    /// The look failed: let the next slow claim look again.
    pub(crate) fn forget(&self) {
        *self.looked.lock() = None;
    }
}

/// Analyze `schema`'s jobs table if its statistics are stale, on the
/// settlements connection (the claims one is busy claiming). False when
/// the look itself failed (no connection, a connection lost under it: it
/// is dropped, so the next look connects anew); a failed ANALYZE (no
/// privilege) is logged and counts as done. Never raised: the claims go
/// on with the plan they have.
pub(crate) async fn analyze_if_stale(link: &Link, schema: &str, queue: &str) -> bool {
    let conn = match link.conn().await {
        Ok(conn) => conn,
        Err(e) => {
            tracing::debug!(queue = %queue, error = %e, "jobs statistics: no connection");
            return false;
        }
    };
    let failed = |e: &tokio_postgres::Error, what: &str| {
        if is_connection_error(e) || conn.client.is_closed() {
            link.lost(conn.gen);
        }
        tracing::debug!(queue = %queue, error = %describe(e), "jobs statistics: {what}");
        false
    };
    let stale = match conn.client.query_opt(stale_sql(), &[&schema]).await {
        Ok(Some(row)) => matches!(row.try_get::<_, Option<bool>>(0), Ok(Some(true))),
        Ok(None) => false,
        Err(e) => return failed(&e, "could not read pg_stat_user_tables"),
    };
    if !stale {
        return true;
    }
    let started = Instant::now();
    let sql = format!("ANALYZE {}.jobs", quote_ident(schema));
    match conn.client.batch_execute(&sql).await {
        Ok(()) => tracing::info!(queue = %queue, took_ms = started.elapsed().as_millis() as u64,
                                 "jobs table analyzed: its statistics were stale and claims slow"),
        Err(e) if is_connection_error(&e) || conn.client.is_closed() => {
            return failed(&e, "connection lost during ANALYZE");
        }
        Err(e) => tracing::warn!(queue = %queue, error = %describe(&e),
                                 "jobs table: claims are slow and its statistics stale, \
                                  but ANALYZE failed (run it, or let autovacuum)"),
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_slow_claim_looks_once_per_recheck() {
        let s = SlowClaims::default();
        assert!(!s.should_look(Duration::from_millis(5)));
        assert!(s.should_look(SLOW_CLAIM));
        assert!(!s.should_look(Duration::from_secs(1)));
        tokio::time::advance(RECHECK).await;
        assert!(s.should_look(Duration::from_secs(1)));
        s.forget();
        assert!(s.should_look(SLOW_CLAIM));
    }
}
