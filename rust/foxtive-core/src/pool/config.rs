//! What an engine is built from, and the checks it must pass.

use std::sync::Arc;
use std::time::Duration;

use super::Strategy;
use crate::dlq::DeadLetterStore;
use crate::policy::{BreakerConfig, RateLimitConfig, RetryPolicy};
use crate::{Error, Result};

/// A worker as the engine sees it.
#[derive(Debug, Clone)]
pub struct WorkerSpec {
    pub id: Arc<str>,
    /// Most messages in flight for this worker (its own cap, under the pool's).
    pub limit: usize,
    /// Index of the lane its messages go to.
    pub lane: usize,
}

#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub pool: Arc<str>,
    pub concurrency_limit: usize,
    pub workers: Vec<WorkerSpec>,
    pub strategy: Strategy,
    pub retry: RetryPolicy,
    /// Lanes to create; `true` makes an evented lane (event loop), `false` a blocking one.
    pub lanes: Vec<bool>,
    /// Most deliveries asked of the backend at once.
    pub batch_size: usize,
    /// Stop calling handlers while they keep failing.
    pub breaker: Option<BreakerConfig>,
    /// Messages per second and burst, optionally shared through Redis.
    pub rate_limit: Option<RateLimitConfig>,
    /// Failures per message within a window before it is a poison pill.
    pub poison: Option<(u32, Duration)>,
    /// Where dead letters go instead of the backend's own dead-letter queue.
    pub dead_letter_store: Option<Arc<dyn DeadLetterStore>>,
}

/// Deliveries beyond the retry budget tolerated before a message counts as a
/// poison pill when no tracker says otherwise (`PoisonPillTracker()`'s default).
pub const DEFAULT_MAX_DELIVERIES: u32 = 10;

impl EngineConfig {
    /// A delivered more often than this was never settled by a handler (it
    /// crashed the worker, or was handed back): a poison pill.
    pub fn max_deliveries(&self) -> u32 {
        let retries = self.retry.max_retries.saturating_add(1);
        let poison = self.poison.map_or(DEFAULT_MAX_DELIVERIES, |(n, _)| n);
        retries.max(poison)
    }

    pub fn validate(&self) -> Result<()> {
        if self.concurrency_limit == 0 {
            return Err(Error::Config("concurrency_limit: must be >= 1".to_string()));
        }
        if self.workers.is_empty() {
            return Err(Error::Config(
                "workers: a pool needs at least one worker (add_worker / add_workers)".to_string(),
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for w in &self.workers {
            if !seen.insert(&w.id) {
                return Err(Error::Config(format!(
                    "worker id: {:?} is used twice; ids must be unique within a pool",
                    &*w.id
                )));
            }
            if w.limit == 0 {
                return Err(Error::Config(format!(
                    "concurrency: worker {:?} must allow at least 1 message",
                    &*w.id
                )));
            }
            if w.lane >= self.lanes.len() {
                return Err(Error::Config(format!(
                    "lane: worker {:?} names lane {} of {}",
                    &*w.id,
                    w.lane,
                    self.lanes.len()
                )));
            }
        }
        if self.batch_size == 0 {
            return Err(Error::Config("batch_size: must be >= 1".to_string()));
        }
        Ok(())
    }
}
