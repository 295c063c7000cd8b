//! The engine: one backend, many workers, one admission loop.
//!
//! ```text
//! backend.receive ─► admission (pool + worker limits, strategy) ─► lanes ─► handlers
//! handlers ─► settle / fail (settle-once, capacity released) ─► settle queue ─► backend.settle
//! ```
//! Only the fetch task raises the in-flight counts, so it never admits more
//! than the limits allow; any thread lowers them when it settles.

use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

use super::strategy::Picker;
use super::{InFlight, Lane, Strategy};
use crate::backend::{Backend, SettleItem};
use crate::dlq::{DeadLetter, DeadLetterStore};
use crate::message::{Delivery, Failure, Settlement};
use crate::observe::{stats, Metrics, StatsSnapshot};
use crate::policy::{
    Admission, BreakerConfig, BreakerState, CircuitBreaker, FailureKind, PoisonPillTracker,
    RateLimitConfig, RateLimiter, RetryInfo, RetryPolicy, Verdict,
};
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

impl EngineConfig {
    /// A delivered more often than this was never settled by a handler (it
    /// crashed the worker, or was handed back): a poison pill.
    pub fn max_deliveries(&self) -> u32 {
        let retries = self.retry.max_retries.saturating_add(1);
        let poison = self.poison.map_or(DEFAULT_MAX_DELIVERIES, |(n, _)| n);
        retries.max(poison)
    }
}

/// Deliveries beyond the retry budget tolerated before a message counts as a
/// poison pill when no tracker says otherwise (`PoisonPillTracker()`'s default).
pub const DEFAULT_MAX_DELIVERIES: u32 = 10;

impl EngineConfig {
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineState {
    Created = 0,
    Running = 1,
    Draining = 2,
    Stopped = 3,
}

impl EngineState {
    fn from_u8(v: u8) -> Self {
        match v {
            0 => EngineState::Created,
            1 => EngineState::Running,
            2 => EngineState::Draining,
            _ => EngineState::Stopped,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            EngineState::Created => "created",
            EngineState::Running => "running",
            EngineState::Draining => "draining",
            EngineState::Stopped => "stopped",
        }
    }
}

struct WorkerSlot {
    spec: WorkerSpec,
    load: AtomicUsize,
}

pub struct Engine {
    config: EngineConfig,
    breaker: Option<CircuitBreaker>,
    limiter: Option<RateLimiter>,
    poison: Option<PoisonPillTracker>,
    backend: Arc<dyn Backend>,
    workers: Vec<WorkerSlot>,
    lanes: Vec<Lane>,
    picker: Picker,
    in_flight: AtomicUsize,
    capacity_freed: Notify,
    metrics: Arc<Metrics>,
    settle_queue: Mutex<Vec<SettleItem>>,
    settle_wake: Notify,
    state: AtomicU8,
    stop_fetch: watch::Sender<bool>,
    stop_settle: watch::Sender<bool>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// When the latest delayed retry this engine sent comes due: until then
    /// a backend that cannot count what waits in the broker is not idle.
    retry_due: Mutex<Option<Instant>>,
}

/// The workers of the dead letters a batch still carries.
fn dead_letter_workers(batch: &[SettleItem]) -> Vec<Arc<str>> {
    batch
        .iter()
        .filter_map(|(_, s)| match s {
            Settlement::DeadLetter(f) => Some(f.worker_id.clone()),
            _ => None,
        })
        .collect()
}

/// Pause after a failed receive before trying again (the backend reconnects).
const RECEIVE_ERROR_PAUSE: Duration = Duration::from_millis(200);
/// How long one receive call may wait before the loop looks around again.
const RECEIVE_WAIT: Duration = Duration::from_millis(500);
/// How long a message whose dead letter could not be stored waits in the
/// broker before it comes back (to fail, and be stored, again).
const DEAD_LETTER_STORE_RETRY: Duration = Duration::from_secs(5);

impl Engine {
    pub fn new(config: EngineConfig, backend: Arc<dyn Backend>) -> Result<Arc<Self>> {
        let ids: Vec<Arc<str>> = config.workers.iter().map(|w| w.id.clone()).collect();
        let metrics = Metrics::new(&config.pool, &ids);
        Self::with_metrics(config, backend, metrics)
    }

    /// An engine that records into `metrics`, which outlive it (a pool's
    /// counters accumulate across its runs). Metrics made for other worker
    /// ids are replaced by fresh ones.
    pub fn with_metrics(
        config: EngineConfig,
        backend: Arc<dyn Backend>,
        metrics: Arc<Metrics>,
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
        let workers = config
            .workers
            .iter()
            .map(|spec| WorkerSlot {
                spec: spec.clone(),
                load: AtomicUsize::new(0),
            })
            .collect();
        let breaker = config.breaker.map(CircuitBreaker::new);
        let limiter = match &config.rate_limit {
            Some(limit) => Some(RateLimiter::from_config(limit)?),
            None => None,
        };
        let poison = match config.poison {
            Some((max, window)) => Some(PoisonPillTracker::new(
                max,
                window,
                crate::policy::poison_pill::DEFAULT_CAPACITY,
            )?),
            None => None,
        };
        let engine = Arc::new(Engine {
            metrics,
            breaker,
            limiter,
            poison,
            picker: Picker::new(config.strategy),
            config,
            backend,
            workers,
            lanes,
            in_flight: AtomicUsize::new(0),
            capacity_freed: Notify::new(),

            settle_queue: Mutex::new(Vec::new()),
            settle_wake: Notify::new(),
            state: AtomicU8::new(EngineState::Created as u8),
            stop_fetch: watch::channel(false).0,
            stop_settle: watch::channel(false).0,
            tasks: Mutex::new(Vec::new()),
            retry_due: Mutex::new(None),
        });
        engine.metrics.attach(&engine);
        Ok(engine)
    }

    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    pub fn lane(&self, index: usize) -> Option<&Lane> {
        self.lanes.get(index)
    }

    pub fn state(&self) -> EngineState {
        EngineState::from_u8(self.state.load(Ordering::Acquire))
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    pub fn worker_loads(&self) -> Vec<(Arc<str>, usize)> {
        self.workers
            .iter()
            .map(|w| (w.spec.id.clone(), w.load.load(Ordering::Relaxed)))
            .collect()
    }

    pub fn worker_id(&self, index: usize) -> Option<&Arc<str>> {
        self.workers.get(index).map(|w| &w.spec.id)
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

    /// Connect the backend and start the fetch and settle tasks. Must be
    /// called inside the tokio runtime.
    pub async fn start(self: &Arc<Self>) -> Result<()> {
        if self
            .state
            .compare_exchange(
                EngineState::Created as u8,
                EngineState::Running as u8,
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_err()
        {
            return Err(Error::Config(
                "pool: already started; build a new pool to run again".to_string(),
            ));
        }
        if let Err(e) = self.backend.connect().await {
            self.state
                .store(EngineState::Stopped as u8, Ordering::Release);
            return Err(e);
        }
        let fetch = tokio::spawn(self.clone().fetch_loop());
        let settle = tokio::spawn(self.clone().settle_loop());
        self.tasks.lock().extend([fetch, settle]);
        Ok(())
    }

    /// Free capacity: what the pool may still admit, and what the workers may.
    fn free_capacity(&self) -> usize {
        let pool_free = self
            .config
            .concurrency_limit
            .saturating_sub(self.in_flight.load(Ordering::Acquire));
        let workers_free: usize = self
            .workers
            .iter()
            .map(|w| w.spec.limit.saturating_sub(w.load.load(Ordering::Acquire)))
            .fold(0usize, |a, b| a.saturating_add(b));
        pool_free.min(workers_free)
    }

    async fn fetch_loop(self: Arc<Self>) {
        let mut stop = self.stop_fetch.subscribe();
        let mut loads: Vec<usize> = vec![0; self.workers.len()];
        let limits: Vec<usize> = self.workers.iter().map(|w| w.spec.limit).collect();
        let mut per_lane: Vec<Vec<Arc<InFlight>>> = self.lanes.iter().map(|_| Vec::new()).collect();
        loop {
            if *stop.borrow() {
                break;
            }
            // Wait for room: register first so a release in between is seen.
            let freed = self.capacity_freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            let free = self.free_capacity();
            if free == 0 {
                tokio::select! {
                    _ = &mut freed => {}
                    _ = stop.changed() => {}
                }
                continue;
            }
            let mut want = free.min(self.config.batch_size);
            let mut probe = false;
            if let Some(breaker) = &self.breaker {
                match breaker.admit(Instant::now()) {
                    Admission::Allow => {}
                    Admission::Probe => {
                        probe = true;
                        want = 1;
                    }
                    Admission::Wait(pause) => {
                        tokio::select! {
                            _ = tokio::time::sleep(pause) => {}
                            _ = stop.changed() => break,
                        }
                        continue;
                    }
                }
            }
            if let Some(limiter) = &self.limiter {
                want = want.min(limiter.burst() as usize);
            }
            let received = tokio::select! {
                r = self.backend.receive(want, RECEIVE_WAIT) => r,
                _ = stop.changed() => {
                    self.release_probe(probe);
                    break;
                }
            };
            let batch = match received {
                Ok(batch) => batch,
                Err(Error::Shutdown) => {
                    self.release_probe(probe);
                    break;
                }
                Err(e) => {
                    self.release_probe(probe);
                    tracing::warn!(pool = %self.config.pool, error = %e, "receive failed; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(RECEIVE_ERROR_PAUSE) => {}
                        _ = stop.changed() => break,
                    }
                    continue;
                }
            };
            if batch.is_empty() {
                self.release_probe(probe);
                continue;
            }
            stats::add(&self.metrics.received, batch.len() as u64);
            for (i, w) in self.workers.iter().enumerate() {
                loads[i] = w.load.load(Ordering::Acquire);
            }
            let max_deliveries = self.config.max_deliveries();
            let mut stopped = false;
            for delivery in batch {
                if let Some(limiter) = &self.limiter {
                    if !stopped {
                        tokio::select! {
                            _ = limiter.until_ready() => {}
                            _ = stop.changed() => stopped = true,
                        }
                    }
                }
                // The capacity check above guarantees a worker with room.
                let worker = self.picker.pick(&loads, &limits).unwrap_or(0);
                loads[worker] += 1;
                self.workers[worker].load.fetch_add(1, Ordering::AcqRel);
                self.in_flight.fetch_add(1, Ordering::AcqRel);
                let lane = self.workers[worker].spec.lane;
                let poisoned = delivery.attempt > max_deliveries;
                let inflight = Arc::new(if probe {
                    InFlight::probe(delivery, worker)
                } else {
                    InFlight::new(delivery, worker)
                });
                if stopped {
                    let _ = self.settle_with(&inflight, Settlement::Requeue, Verdict::Neutral);
                } else if poisoned {
                    // Delivered more often than any handler outcome allows: it
                    // keeps killing or stalling its worker. Never run it again.
                    let failure = self.failure(
                        &inflight,
                        "PoisonPill",
                        &format!(
                            "delivered {} times without being settled (limit {max_deliveries})",
                            inflight.delivery.attempt
                        ),
                        true,
                    );
                    let _ = self.settle_with(
                        &inflight,
                        Settlement::DeadLetter(failure),
                        Verdict::Neutral,
                    );
                } else {
                    per_lane[lane].push(inflight);
                }
            }
            for (lane, items) in self.lanes.iter().zip(per_lane.iter_mut()) {
                if !items.is_empty() {
                    lane.push_many(items.drain(..));
                }
            }
        }
        if let Err(e) = self.backend.stop_receiving().await {
            tracing::warn!(pool = %self.config.pool, error = %e, "stopping the consumer failed");
        }
    }

    async fn settle_loop(self: Arc<Self>) {
        let mut stop = self.stop_settle.subscribe();
        loop {
            let wake = self.settle_wake.notified();
            tokio::pin!(wake);
            wake.as_mut().enable();
            let batch = std::mem::take(&mut *self.settle_queue.lock());
            if batch.is_empty() {
                if *stop.borrow() {
                    break;
                }
                tokio::select! {
                    _ = &mut wake => {}
                    _ = stop.changed() => {}
                }
                continue;
            }
            if let Err(e) = self.apply_settlements(batch).await {
                tracing::warn!(pool = %self.config.pool, error = %e,
                    "settling failed; the broker will redeliver what was not settled");
            }
        }
    }

    /// Hand a batch to its stores and the backend; dead letters are counted
    /// once the backend has them.
    async fn apply_settlements(&self, batch: Vec<SettleItem>) -> Result<()> {
        let batch = self.divert_dead_letters(batch).await;
        let dead = dead_letter_workers(&batch);
        self.backend.settle(batch).await?;
        self.count_dead_letters(&dead);
        Ok(())
    }

    /// Count dead letters once they are stored: the store or the backend
    /// said so. A message whose dead letter could not be written goes back
    /// to the broker and is counted when a later attempt stores it.
    fn count_dead_letters(&self, workers: &[Arc<str>]) {
        for id in workers {
            if let Some(w) = self.metrics_of(id) {
                stats::add(&w.dead_lettered, 1);
            }
        }
    }

    /// The counters of the worker with this id.
    fn metrics_of(&self, id: &Arc<str>) -> Option<&crate::observe::metrics::WorkerMetrics> {
        let index = self.workers.iter().position(|w| w.spec.id == *id)?;
        self.metrics.worker(index)
    }

    /// With a dead-letter store, put the batch's dead letters there (one
    /// call): the backend then acks those the store kept, and keeps those it
    /// could not, handing them back later (uncounted) rather than acking them
    /// or dropping them. The rest of the batch is settled as usual.
    async fn divert_dead_letters(&self, mut batch: Vec<SettleItem>) -> Vec<SettleItem> {
        let Some(store) = &self.config.dead_letter_store else {
            return batch;
        };
        let records: Vec<DeadLetter> = batch
            .iter()
            .filter_map(|(delivery, settlement)| match settlement {
                Settlement::DeadLetter(failure) => {
                    Some(DeadLetter::from_delivery(delivery, failure))
                }
                _ => None,
            })
            .collect();
        if records.is_empty() {
            return batch;
        }
        let n = records.len();
        let instead = match store.put(records).await {
            Ok(()) => {
                self.count_dead_letters(&dead_letter_workers(&batch));
                Settlement::Ack
            }
            Err(e) => {
                tracing::error!(pool = %self.config.pool, store = store.name(), error = %e,
                    messages = n,
                    "cannot store dead letters; the messages stay in the broker and come back in {}s",
                    DEAD_LETTER_STORE_RETRY.as_secs());
                Settlement::Retry {
                    delay: DEAD_LETTER_STORE_RETRY,
                    count_attempt: false,
                }
            }
        };
        for item in &mut batch {
            if let Settlement::DeadLetter(failure) = &item.1 {
                if matches!(instead, Settlement::Retry { .. }) {
                    // Back to the broker, not dead-lettered (yet).
                    if let Some(w) = self.metrics_of(&failure.worker_id) {
                        stats::add(&w.requeued, 1);
                    }
                }
                item.1 = instead.clone();
            }
        }
        batch
    }

    /// Release the capacity a settled message held.
    fn release(&self, inflight: &InFlight) {
        if let Some(w) = self.workers.get(inflight.worker) {
            w.load.fetch_sub(1, Ordering::AcqRel);
        }
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.capacity_freed.notify_one();
    }

    fn count(&self, inflight: &InFlight, settlement: &Settlement, now: Instant) {
        let Some(w) = self.metrics.worker(inflight.worker) else {
            return;
        };
        let counter = match settlement {
            Settlement::Ack => &w.success,
            Settlement::Retry {
                count_attempt: true,
                ..
            } => &w.retried,
            Settlement::Retry { .. } | Settlement::Requeue => &w.requeued,
            // Counted once stored (count_dead_letters); a message handed in
            // by the user (pool.dispatch) reaches no store: counted now.
            Settlement::DeadLetter(_) if inflight.delivery.receipt.is_local() => &w.dead_lettered,
            Settlement::DeadLetter(_) => {
                w.duration
                    .observe(now.saturating_duration_since(inflight.admitted));
                return;
            }
        };
        stats::add(counter, 1);
        if !matches!(settlement, Settlement::Requeue) {
            w.duration
                .observe(now.saturating_duration_since(inflight.admitted));
        }
    }

    fn enqueue(&self, items: impl IntoIterator<Item = SettleItem>) {
        let mut any = false;
        {
            let mut q = self.settle_queue.lock();
            for item in items {
                // Messages handed in by the user (pool.dispatch) belong to no broker.
                if !item.0.receipt.is_local() {
                    q.push(item);
                    any = true;
                }
            }
        }
        if any {
            self.settle_wake.notify_one();
        }
    }

    /// Settle one message. The first settlement wins; later ones fail with
    /// [`Error::AlreadySettled`] and never reach the backend.
    pub fn settle(&self, inflight: &Arc<InFlight>, settlement: Settlement) -> Result<()> {
        let verdict = match settlement {
            Settlement::Ack => Verdict::Success,
            _ => Verdict::Neutral,
        };
        self.settle_with(inflight, settlement, verdict)
    }

    fn settle_with(
        &self,
        inflight: &Arc<InFlight>,
        settlement: Settlement,
        verdict: Verdict,
    ) -> Result<()> {
        if !inflight.claim() {
            return Err(Error::AlreadySettled);
        }
        self.observe(inflight, verdict);
        self.release(inflight);
        let now = Instant::now();
        self.count(inflight, &settlement, now);
        if let Settlement::Retry { delay, .. } = &settlement {
            self.note_retry_due(now + *delay);
        }
        self.enqueue([(inflight.delivery.clone(), settlement)]);
        Ok(())
    }

    fn note_retry_due(&self, due: Instant) {
        let mut latest = self.retry_due.lock();
        if latest.is_none_or(|t| t < due) {
            *latest = Some(due);
        }
    }

    /// Tell the breaker and the poison-pill tracker how a message ended.
    fn observe(&self, inflight: &InFlight, verdict: Verdict) {
        if let Some(breaker) = &self.breaker {
            breaker.record(verdict, inflight.probe, Instant::now());
        }
        if verdict == Verdict::Success {
            if let Some(poison) = &self.poison {
                poison.record_success(&inflight.delivery);
            }
        }
    }

    fn release_probe(&self, probe: bool) {
        if probe {
            if let Some(breaker) = &self.breaker {
                breaker.record(Verdict::Neutral, true, Instant::now());
            }
        }
    }

    /// Acknowledge every message not settled yet; returns how many were.
    pub fn ack_many<'a>(&self, items: impl IntoIterator<Item = &'a Arc<InFlight>>) -> usize {
        let mut claimed = Vec::new();
        let observing = self.breaker.is_some() || self.poison.is_some();
        let now = Instant::now();
        for inflight in items {
            if inflight.claim() {
                if observing {
                    self.observe(inflight, Verdict::Success);
                }
                self.release(inflight);
                self.count(inflight, &Settlement::Ack, now);
                claimed.push((inflight.delivery.clone(), Settlement::Ack));
            }
        }
        let n = claimed.len();
        self.enqueue(claimed);
        n
    }

    /// Drop from a batch the messages an open breaker must not let start:
    /// they go back to the broker, delayed until it half-opens, uncounted.
    pub fn screen(&self, items: Vec<Arc<InFlight>>) -> Vec<Arc<InFlight>> {
        let Some(breaker) = &self.breaker else {
            return items;
        };
        let now = Instant::now();
        if breaker.state(now) == BreakerState::Closed {
            return items;
        }
        let delay = breaker.remaining_open(now).max(Duration::from_millis(100));
        items
            .into_iter()
            .filter(|inflight| {
                if breaker.allows(inflight.probe, now) {
                    return true;
                }
                let _ = self.settle_with(
                    inflight,
                    Settlement::Retry {
                        delay,
                        count_attempt: false,
                    },
                    Verdict::Neutral,
                );
                false
            })
            .collect()
    }

    /// The circuit breaker's state and transition count, if there is one.
    pub fn breaker_state(&self) -> Option<(BreakerState, u64)> {
        self.breaker
            .as_ref()
            .map(|b| (b.state(Instant::now()), b.transitions()))
    }

    fn failure(
        &self,
        inflight: &InFlight,
        error_type: &str,
        message: &str,
        poison_pill: bool,
    ) -> Failure {
        Failure {
            error_type: error_type.to_string(),
            error_message: message.to_string(),
            worker_id: self
                .worker_id(inflight.worker)
                .cloned()
                .unwrap_or_else(|| Arc::from("")),
            poison_pill,
        }
    }

    /// What the failure policy would do with this message now.
    pub fn retry_info(&self, inflight: &InFlight) -> RetryInfo {
        self.config.retry.info(inflight.delivery.attempt, false)
    }

    /// Run the failure policy for a failed attempt and settle accordingly.
    pub fn fail(
        &self,
        inflight: &Arc<InFlight>,
        kind: FailureKind,
        error_type: &str,
        error_message: &str,
    ) -> Result<Settlement> {
        if inflight.is_settled() {
            return Err(Error::AlreadySettled);
        }
        let worker_id = self
            .worker_id(inflight.worker)
            .cloned()
            .unwrap_or_else(|| Arc::from(""));
        let poison_pill = self
            .poison
            .as_ref()
            .is_some_and(|p| p.record_failure(&inflight.delivery, Instant::now()));
        let settlement = self.config.retry.decide(
            inflight.delivery.attempt,
            kind,
            error_type,
            error_message,
            &worker_id,
            poison_pill,
        );
        self.settle_with(inflight, settlement.clone(), Verdict::Failure)?;
        if let Some(w) = self.metrics.worker(inflight.worker) {
            w.record_error(error_type);
        }
        Ok(settlement)
    }

    /// Dead-letter a message on the handler's request.
    pub fn dead_letter(
        &self,
        inflight: &Arc<InFlight>,
        error_type: &str,
        reason: &str,
    ) -> Result<()> {
        let worker_id = self
            .worker_id(inflight.worker)
            .cloned()
            .unwrap_or_else(|| Arc::from(""));
        self.settle(
            inflight,
            Settlement::DeadLetter(Failure {
                error_type: error_type.to_string(),
                error_message: reason.to_string(),
                worker_id,
                poison_pill: false,
            }),
        )
    }

    /// Explicit retry: bounded by the policy's `max_retries` like any other,
    /// so a handler that always retries still ends in the dead-letter queue.
    pub fn retry(&self, inflight: &Arc<InFlight>, delay: Option<Duration>) -> Result<Settlement> {
        let kind = match delay {
            Some(d) => FailureKind::RetryAfter(d),
            None => FailureKind::Transient,
        };
        let worker_id = self
            .worker_id(inflight.worker)
            .cloned()
            .unwrap_or_else(|| Arc::from(""));
        let settlement = self.config.retry.decide(
            inflight.delivery.attempt,
            kind,
            "Retry",
            "retry requested by the handler; retries exhausted",
            &worker_id,
            false,
        );
        self.settle(inflight, settlement.clone())?;
        Ok(settlement)
    }

    /// Adopt a message the user hands in (`pool.dispatch`): it counts against
    /// the worker's load like any other, and its settlement reaches no broker.
    pub fn adopt(&self, delivery: Delivery) -> Arc<InFlight> {
        let loads: Vec<usize> = self
            .workers
            .iter()
            .map(|w| w.load.load(Ordering::Acquire))
            .collect();
        // Limits are not enforced on hand-delivered messages: pretend there is room.
        let limits: Vec<usize> = vec![usize::MAX; loads.len()];
        let worker = self.picker.pick(&loads, &limits).unwrap_or(0);
        self.workers[worker].load.fetch_add(1, Ordering::AcqRel);
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        stats::add(&self.metrics.received, 1);
        Arc::new(InFlight::new(delivery, worker))
    }

    /// Begin a graceful stop: no new deliveries; messages admitted but not yet
    /// handed to a handler go straight back to the broker.
    pub async fn begin_drain(&self) {
        let _ = self.state.compare_exchange(
            EngineState::Running as u8,
            EngineState::Draining as u8,
            Ordering::AcqRel,
            Ordering::Acquire,
        );
        self.stop_fetch.send_replace(true);
        // The fetch task is the first task; wait for it so nothing is pushed after.
        let fetch = {
            let mut tasks = self.tasks.lock();
            if tasks.is_empty() {
                None
            } else {
                Some(tasks.remove(0))
            }
        };
        if let Some(handle) = fetch {
            let _ = handle.await;
        }
        for lane in &self.lanes {
            let left = lane.take_all();
            for inflight in &left {
                let _ = self.settle(inflight, Settlement::Requeue);
            }
            lane.close();
        }
    }

    /// Finish the stop: flush settlements, close the backend.
    pub async fn finish(&self) -> Result<()> {
        if self.state() == EngineState::Running {
            self.begin_drain().await;
        }
        self.stop_settle.send_replace(true);
        self.settle_wake.notify_one();
        let tasks: Vec<_> = self.tasks.lock().drain(..).collect();
        for handle in tasks {
            let _ = handle.await;
        }
        // The settle task is gone: flush anything settled after it stopped.
        let late = std::mem::take(&mut *self.settle_queue.lock());
        if !late.is_empty() {
            self.apply_settlements(late).await?;
        }
        let closed = self.backend.close().await;
        stats::add(&self.metrics.reconnects, self.backend.reconnect_attempts());
        self.state
            .store(EngineState::Stopped as u8, Ordering::Release);
        closed
    }

    /// True when nothing is in flight and the backend has nothing waiting.
    /// A backend that cannot tell (`None`) is not idle while a delayed retry
    /// this engine sent has yet to come due (`run_until_idle` promises to
    /// run retries that come due).
    pub fn is_idle(&self) -> Option<bool> {
        if self.in_flight() > 0 || !self.settle_queue.lock().is_empty() {
            return Some(false);
        }
        let drained = self.backend.is_drained();
        if drained.is_none() && self.retry_due.lock().is_some_and(|t| t > Instant::now()) {
            return Some(false);
        }
        drained
    }
}
