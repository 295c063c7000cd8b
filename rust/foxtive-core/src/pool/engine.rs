//! The engine: one backend, many workers, one admission loop.
//!
//! ```text
//! backend.receive ─► admission (pool + worker limits, strategy, policies) ─► lanes ─► handlers
//! handlers ─► settle / fail (settle-once, capacity released) ─► settle queue ─► backend.settle
//! ```
//! Only the fetch task raises the in-flight counts, so it never admits more
//! than the limits allow; any thread lowers them when it settles.
//!
//! The engine is split by concept: admission in `fetch.rs`, settlement in
//! `settle.rs`, stopping in `drain.rs`, the caller-driven runs in `runner.rs`.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

use super::strategy::Picker;
use super::{EngineConfig, Lane};
use crate::backend::{Backend, SettleItem};
use crate::observe::{EngineState, Live, Metrics, StatsSnapshot};
use crate::policy::{
    BreakerState, CircuitBreaker, MaxDeliveries, PoisonPillTracker, Policy, PolicySet, RateLimiter,
    RetryPolicy,
};
use crate::{Error, Result};

pub struct Engine {
    pub(super) config: EngineConfig,
    pub(super) policies: Arc<PolicySet>,
    pub(super) backend: Arc<dyn Backend>,
    pub(super) lanes: Vec<Lane>,
    pub(super) picker: Picker,
    /// State, in-flight and per-worker counts, shared with the metrics.
    pub(super) live: Arc<Live>,
    pub(super) capacity_freed: Notify,
    pub(super) metrics: Arc<Metrics>,
    pub(super) settle_queue: Mutex<Vec<SettleItem>>,
    /// Messages acknowledged in batches, kept until the settle task has
    /// taken their settlements, so that it frees them: they were allocated
    /// on the runtime's thread, and freeing them on the handler's (when its
    /// last reference goes) cost that thread a contended `free` each.
    pub(super) retired: Mutex<Vec<Arc<super::InFlight>>>,
    pub(super) settle_wake: Notify,
    pub(super) stop_fetch: watch::Sender<bool>,
    pub(super) stop_settle: watch::Sender<bool>,
    pub(super) tasks: Mutex<Vec<JoinHandle<()>>>,
    /// When the latest delayed retry this engine sent comes due: until then
    /// a backend that cannot count what waits in the broker is not idle.
    pub(super) retry_due: Mutex<Option<Instant>>,
}

/// The engine's policies, in the order their hooks run: the breaker and the
/// rate limit admit; the delivery limit and the extras screen; the retry
/// policy, last, decides the failures nothing else decided. A new policy is
/// one line here (or an entry in `extra`).
pub fn compose_policies(config: &EngineConfig, extra: Vec<Arc<dyn Policy>>) -> Result<PolicySet> {
    let mut set = PolicySet::default();
    if let Some(breaker) = config.breaker {
        set.push(Arc::new(CircuitBreaker::new(breaker)));
    }
    if let Some(limit) = &config.rate_limit {
        set.push(Arc::new(RateLimiter::from_config(limit)?));
    }
    set.push(Arc::new(MaxDeliveries {
        max: config.max_deliveries(),
    }));
    if let Some((max, window)) = config.poison {
        let capacity = crate::policy::poison_pill::DEFAULT_CAPACITY;
        set.push(Arc::new(PoisonPillTracker::new(max, window, capacity)?));
    }
    for policy in extra {
        set.push(policy);
    }
    set.push(Arc::new(config.retry));
    Ok(set)
}

impl Engine {
    pub fn new(config: EngineConfig, backend: Arc<dyn Backend>) -> Result<Arc<Self>> {
        let ids: Vec<Arc<str>> = config.workers.iter().map(|w| w.id.clone()).collect();
        let metrics = Metrics::new(&config.pool, &ids);
        Self::with_policies(config, backend, metrics, Vec::new())
    }

    /// An engine that records into `metrics`, which outlive it (a pool's
    /// counters accumulate across its runs). Metrics made for other worker
    /// ids are replaced by fresh ones.
    pub fn with_metrics(
        config: EngineConfig,
        backend: Arc<dyn Backend>,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<Self>> {
        Self::with_policies(config, backend, metrics, Vec::new())
    }

    /// As [`Engine::with_metrics`], with policies beyond those the config
    /// names (run after the built-in screens, before the retry decision).
    pub fn with_policies(
        config: EngineConfig,
        backend: Arc<dyn Backend>,
        metrics: Arc<Metrics>,
        extra: Vec<Arc<dyn Policy>>,
    ) -> Result<Arc<Self>> {
        config.validate()?;
        let same_workers = metrics.worker_ids().count() == config.workers.len()
            && metrics
                .worker_ids()
                .zip(&config.workers)
                .all(|(a, b)| **a == *b.id);
        let metrics = if same_workers {
            metrics
        } else {
            let ids: Vec<Arc<str>> = config.workers.iter().map(|w| w.id.clone()).collect();
            Metrics::new(&config.pool, &ids)
        };
        let lanes = config
            .lanes
            .iter()
            .map(|&evented| {
                if evented {
                    Lane::evented().map_err(|e| Error::Backend(format!("wake-up socket: {e}")))
                } else {
                    Ok(Lane::blocking())
                }
            })
            .collect::<Result<Vec<_>>>()?;
        let policies = Arc::new(compose_policies(&config, extra)?);
        let live = Arc::new(Live::new(
            config.workers.len(),
            backend.clone(),
            policies.clone(),
        ));
        metrics.attach(live.clone());
        Ok(Arc::new(Engine {
            metrics,
            policies,
            live,
            picker: Picker::new(config.strategy),
            config,
            backend,
            lanes,
            capacity_freed: Notify::new(),
            settle_queue: Mutex::new(Vec::new()),
            retired: Mutex::new(Vec::new()),
            settle_wake: Notify::new(),
            stop_fetch: watch::channel(false).0,
            stop_settle: watch::channel(false).0,
            tasks: Mutex::new(Vec::new()),
            retry_due: Mutex::new(None),
        }))
    }

    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    pub fn policies(&self) -> &PolicySet {
        &self.policies
    }

    pub fn lane(&self, index: usize) -> Option<&Lane> {
        self.lanes.get(index)
    }

    pub fn state(&self) -> EngineState {
        self.live.state()
    }

    pub fn in_flight(&self) -> usize {
        self.live.in_flight()
    }

    pub fn worker_loads(&self) -> Vec<(Arc<str>, usize)> {
        self.config
            .workers
            .iter()
            .enumerate()
            .map(|(i, w)| (w.id.clone(), self.live.load(i)))
            .collect()
    }

    pub fn worker_id(&self, index: usize) -> Option<&Arc<str>> {
        self.config.workers.get(index).map(|w| &w.id)
    }

    /// Counters of the pool (across runs, when the metrics are shared).
    pub fn stats(&self) -> StatsSnapshot {
        self.metrics.snapshot()
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    pub fn retry_policy(&self) -> &RetryPolicy {
        &self.config.retry
    }

    /// The circuit breaker's state and transition count, if there is one.
    pub fn breaker_state(&self) -> Option<(BreakerState, u64)> {
        self.live.breaker_state()
    }

    /// The rate limit's waits (count, seconds), if there is a limit.
    pub fn rate_limit_waits(&self) -> Option<crate::policy::RateLimitWaits> {
        self.live.rate_limit_waits()
    }

    /// Connect the backend and start the fetch and settle tasks. Must be
    /// called inside the tokio runtime.
    pub async fn start(self: &Arc<Self>) -> Result<()> {
        if !self
            .live
            .transition(EngineState::Created, EngineState::Running)
        {
            return Err(Error::Config(
                "pool: already started; build a new pool to run again".to_string(),
            ));
        }
        if let Err(e) = self.backend.connect().await {
            self.live.set_state(EngineState::Stopped);
            return Err(e);
        }
        let fetch = tokio::spawn(self.clone().fetch_loop());
        let settle = tokio::spawn(self.clone().settle_loop());
        self.tasks.lock().extend([fetch, settle]);
        Ok(())
    }

    /// Free capacity: what the pool may still admit, and what the workers may.
    pub(super) fn free_capacity(&self) -> usize {
        let pool_free = self
            .config
            .concurrency_limit
            .saturating_sub(self.live.in_flight.load(Ordering::Acquire));
        let workers_free: usize = self
            .config
            .workers
            .iter()
            .zip(&self.live.loads)
            .map(|(w, load)| w.limit.saturating_sub(load.load(Ordering::Acquire)))
            .fold(0usize, |a, b| a.saturating_add(b));
        pool_free.min(workers_free)
    }

    /// Count a message against its worker and the pool.
    pub(super) fn take_capacity(&self, worker: usize) {
        if let Some(load) = self.live.loads.get(worker) {
            load.fetch_add(1, Ordering::AcqRel);
        }
        self.live.in_flight.fetch_add(1, Ordering::AcqRel);
    }
}

/// The metrics outlive the engine: they stop showing its live values when
/// it goes (unless a newer engine took over).
impl Drop for Engine {
    fn drop(&mut self) {
        self.metrics.detach(&self.live);
    }
}

/// Pause after a failed receive before trying again (the backend reconnects).
pub(super) const RECEIVE_ERROR_PAUSE: Duration = Duration::from_millis(200);
/// How long one receive call may wait before the loop looks around again.
pub(super) const RECEIVE_WAIT: Duration = Duration::from_millis(500);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{BreakerConfig, MaxAge, RateLimitConfig};
    use crate::pool::{Strategy, WorkerSpec};

    #[test]
    fn policies_compose_in_hook_order_with_retry_last() {
        let config = EngineConfig {
            pool: Arc::from("p"),
            concurrency_limit: 1,
            workers: vec![WorkerSpec {
                id: Arc::from("w"),
                limit: 1,
                lane: 0,
            }],
            strategy: Strategy::RoundRobin,
            retry: RetryPolicy::default(),
            lanes: vec![false],
            batch_size: 1,
            breaker: Some(BreakerConfig::new(3, Duration::from_secs(1), 1).unwrap()),
            rate_limit: Some(RateLimitConfig {
                per_second: 10.0,
                burst: 2,
                shared: None,
            }),
            poison: Some((3, Duration::from_secs(60))),
            dead_letter_store: None,
        };
        let age: Arc<dyn Policy> = Arc::new(MaxAge::new(Duration::from_secs(5)).unwrap());
        let set = compose_policies(&config, vec![age]).unwrap();
        assert_eq!(
            format!("{set:?}"),
            r#"["circuit_breaker", "rate_limit", "max_deliveries", "poison_pill", "max_age", "retry"]"#
        );
        assert!(set.find::<CircuitBreaker>().is_some());
        assert_eq!(set.find::<MaxDeliveries>().map(|m| m.max), Some(6));
        // The breaker is closed, the limiter caps a fetch at its burst.
        assert_eq!(
            set.admit(100, Instant::now()),
            crate::policy::Admitted::Fetch { want: 2, probes: 0 }
        );
    }
}
