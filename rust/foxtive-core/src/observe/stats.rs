//! The counters `pool.stats()` reports.

use std::sync::atomic::{AtomicU64, Ordering};

/// Add to a hot-path counter (no ordering with anything else is needed).
pub fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StatsSnapshot {
    pub received: u64,
    /// Successes only.
    pub processed: u64,
    /// Failed attempts, whatever followed them.
    pub failed: u64,
    pub retried: u64,
    pub dead_lettered: u64,
    /// Handed back unfinished (shutdown, open breaker).
    pub requeued: u64,
}
