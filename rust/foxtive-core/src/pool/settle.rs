//! Settlement: each message is settled once (the first settlement wins),
//! its capacity released, its outcome counted and told to the policies;
//! the settle task hands the queued settlements to the stores and the
//! backend in batches.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Engine, InFlight};
use crate::backend::SettleItem;
use crate::dlq::DeadLetter;
use crate::message::{Failure, Settlement};
use crate::observe::metrics::WorkerMetrics;
use crate::observe::stats;
use crate::policy::{FailureCtx, FailureKind, RetryInfo, Verdict};
use crate::{Error, Result};

/// How long a message whose dead letter could not be stored waits in the
/// broker before it comes back (to fail, and be stored, again).
const DEAD_LETTER_STORE_RETRY: Duration = Duration::from_secs(5);

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

impl Engine {
    /// Settle one message. The first settlement wins; later ones fail with
    /// [`Error::AlreadySettled`] and never reach the backend.
    pub fn settle(&self, inflight: &Arc<InFlight>, settlement: Settlement) -> Result<()> {
        let verdict = match settlement {
            Settlement::Ack => Verdict::Success,
            _ => Verdict::Neutral,
        };
        self.settle_with(inflight, settlement, verdict)
    }

    pub(super) fn settle_with(
        &self,
        inflight: &Arc<InFlight>,
        settlement: Settlement,
        verdict: Verdict,
    ) -> Result<()> {
        if !inflight.claim(&settlement) {
            return Err(Error::AlreadySettled);
        }
        let now = Instant::now();
        self.policies
            .after(&inflight.delivery, inflight.probe, verdict, now);
        self.release(inflight);
        self.count(inflight, &settlement, now);
        if let Settlement::Retry { delay, .. } = &settlement {
            self.note_retry_due(now + *delay);
        }
        self.enqueue([(inflight.delivery.clone(), settlement)]);
        Ok(())
    }

    /// Acknowledge every message not settled yet; returns how many were.
    ///
    /// The handler side's hot path (one call per batch of successes): room
    /// goes back once per run of one worker's messages and the fetch task
    /// is woken once, and the messages are retired to the settle task,
    /// which frees them on its own thread (see [`Engine::retired`]).
    pub fn ack_many<'a>(&self, items: impl IntoIterator<Item = &'a Arc<InFlight>>) -> usize {
        let items = items.into_iter();
        let mut claimed = Vec::with_capacity(items.size_hint().0);
        let mut retired = Vec::with_capacity(items.size_hint().0);
        let observing = self.policies.observes();
        let now = Instant::now();
        let mut acked = 0;
        // (worker, messages) of the current run of one worker's messages.
        let mut run: Option<(usize, usize)> = None;
        for inflight in items {
            if !inflight.claim(&Settlement::Ack) {
                continue;
            }
            acked += 1;
            if observing {
                self.policies
                    .after(&inflight.delivery, inflight.probe, Verdict::Success, now);
            }
            run = match run {
                Some((worker, n)) if worker == inflight.worker => Some((worker, n + 1)),
                other => {
                    if let Some((worker, n)) = other {
                        self.release_n(worker, n);
                    }
                    Some((inflight.worker, 1))
                }
            };
            self.count(inflight, &Settlement::Ack, now);
            // Messages handed in by the user (pool.dispatch) belong to no broker.
            if !inflight.delivery.receipt.is_local() {
                claimed.push((inflight.delivery.clone(), Settlement::Ack));
                retired.push(inflight.clone());
            }
        }
        if let Some((worker, n)) = run {
            self.release_n(worker, n);
            self.capacity_freed.notify_one();
        }
        self.push_settlements(claimed, retired);
        acked
    }

    /// Drop from a batch the messages a `start` policy (an open breaker)
    /// must not let start: they go back to the broker, delayed, uncounted.
    pub fn screen(&self, items: Vec<Arc<InFlight>>) -> Vec<Arc<InFlight>> {
        if !self.policies.screens_start() {
            return items;
        }
        let now = Instant::now();
        items
            .into_iter()
            .filter(|inflight| {
                let Some(delay) = self.policies.start(inflight.probe, now) else {
                    return true;
                };
                let back = Settlement::Retry {
                    delay,
                    count_attempt: false,
                };
                let _ = self.settle_with(inflight, back, Verdict::Neutral);
                false
            })
            .collect()
    }

    /// What the failure policy would do with this message now.
    pub fn retry_info(&self, inflight: &InFlight) -> RetryInfo {
        self.config.retry.info(inflight.delivery.attempt, false)
    }

    /// Run the failure policies for a failed attempt and settle accordingly.
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
        let worker_id = self.worker_id_or_empty(inflight.worker);
        let mut failure = FailureCtx {
            delivery: &inflight.delivery,
            kind,
            error_type,
            error_message,
            worker_id: &worker_id,
            poison_pill: false,
            settlement: None,
        };
        let settlement = self.policies.on_failure(&mut failure, Instant::now());
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
        let failure = Failure {
            error_type: error_type.to_string(),
            error_message: reason.to_string(),
            worker_id: self.worker_id_or_empty(inflight.worker),
            poison_pill: false,
        };
        self.settle(inflight, Settlement::DeadLetter(failure))
    }

    /// Explicit retry: bounded by the policy's `max_retries` like any other,
    /// so a handler that always retries still ends in the dead-letter queue.
    pub fn retry(&self, inflight: &Arc<InFlight>, delay: Option<Duration>) -> Result<Settlement> {
        let kind = match delay {
            Some(d) => FailureKind::RetryAfter(d),
            None => FailureKind::Transient,
        };
        let settlement = self.config.retry.decide(
            inflight.delivery.attempt,
            kind,
            "Retry",
            "retry requested by the handler; retries exhausted",
            &self.worker_id_or_empty(inflight.worker),
            false,
        );
        self.settle(inflight, settlement.clone())?;
        Ok(settlement)
    }

    pub(super) fn worker_id_or_empty(&self, worker: usize) -> Arc<str> {
        self.worker_id(worker)
            .cloned()
            .unwrap_or_else(|| Arc::from(""))
    }

    /// Release the capacity a settled message held.
    fn release(&self, inflight: &InFlight) {
        self.release_n(inflight.worker, 1);
        self.capacity_freed.notify_one();
    }

    /// Release the capacity `n` settled messages of one worker held (the
    /// caller wakes the fetch task).
    fn release_n(&self, worker: usize, n: usize) {
        if let Some(load) = self.live.loads.get(worker) {
            load.fetch_sub(n, Ordering::AcqRel);
        }
        self.live.in_flight.fetch_sub(n, Ordering::AcqRel);
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
        // Messages handed in by the user (pool.dispatch) belong to no broker.
        let claimed = items
            .into_iter()
            .filter(|item| !item.0.receipt.is_local())
            .collect();
        self.push_settlements(claimed, Vec::new());
    }

    /// Queue `claimed` (broker messages only) for the settle task and wake
    /// it; `retired` are the messages it frees once they are settled (see
    /// [`Engine::retired`]).
    fn push_settlements(&self, mut claimed: Vec<SettleItem>, mut retired: Vec<Arc<InFlight>>) {
        if claimed.is_empty() {
            return;
        }
        {
            let mut q = self.settle_queue.lock();
            if q.is_empty() {
                *q = claimed;
            } else {
                q.append(&mut claimed);
            }
        }
        if !retired.is_empty() {
            self.retired.lock().append(&mut retired);
        }
        self.settle_wake.notify_one();
    }

    fn note_retry_due(&self, due: Instant) {
        let mut latest = self.retry_due.lock();
        if latest.is_none_or(|t| t < due) {
            *latest = Some(due);
        }
    }

    pub(super) async fn settle_loop(self: Arc<Self>) {
        let mut stop = self.stop_settle.subscribe();
        loop {
            let wake = self.settle_wake.notified();
            tokio::pin!(wake);
            wake.as_mut().enable();
            let batch = std::mem::take(&mut *self.settle_queue.lock());
            // Freed here, on this thread, once settled (see `retired`).
            let retired = std::mem::take(&mut *self.retired.lock());
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
            drop(retired);
        }
    }

    /// Hand a batch to its stores and the backend; dead letters are counted
    /// once the backend has them.
    pub(super) async fn apply_settlements(&self, batch: Vec<SettleItem>) -> Result<()> {
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
    fn metrics_of(&self, id: &Arc<str>) -> Option<&WorkerMetrics> {
        let index = self.config.workers.iter().position(|w| w.id == *id)?;
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
}
