//! Admission: the fetch task waits for room, asks the policies, receives a
//! batch and hands each delivery to a worker's lane (or settles it at once
//! when a policy refuses it).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::watch;

use super::engine::{RECEIVE_ERROR_PAUSE, RECEIVE_WAIT};
use super::{Engine, InFlight};
use crate::message::{Delivery, Failure, Settlement};
use crate::observe::stats;
use crate::policy::{Admitted, Verdict};
use crate::Error;

/// What one turn of the loop ends with.
enum Turn {
    Next,
    Stop,
}

/// What the fetch task keeps between turns (no allocation per batch).
struct Scratch {
    loads: Vec<usize>,
    limits: Vec<usize>,
    per_lane: Vec<Vec<Arc<InFlight>>>,
}

impl Engine {
    pub(super) async fn fetch_loop(self: Arc<Self>) {
        let mut stop = self.stop_fetch.subscribe();
        let mut scratch = Scratch {
            loads: vec![0; self.config.workers.len()],
            limits: self.config.workers.iter().map(|w| w.limit).collect(),
            per_lane: self.lanes.iter().map(|_| Vec::new()).collect(),
        };
        while !*stop.borrow() {
            if let Turn::Stop = self.fetch_turn(&mut stop, &mut scratch).await {
                break;
            }
        }
        if let Err(e) = self.backend.stop_receiving().await {
            tracing::warn!(pool = %self.config.pool, error = %e, "stopping the consumer failed");
        }
    }

    /// Wait for room, ask the admit policies, receive and hand off one batch.
    async fn fetch_turn(&self, stop: &mut watch::Receiver<bool>, scratch: &mut Scratch) -> Turn {
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
            return Turn::Next;
        }
        let (want, probes) = match self
            .policies
            .admit(free.min(self.config.batch_size), Instant::now())
        {
            Admitted::Fetch { want, probes } => (want, probes),
            Admitted::Wait(pause) => {
                return tokio::select! {
                    _ = tokio::time::sleep(pause) => Turn::Next,
                    _ = stop.changed() => Turn::Stop,
                };
            }
        };
        let received = tokio::select! {
            r = self.backend.receive(want, RECEIVE_WAIT) => r,
            _ = stop.changed() => Err(Error::Shutdown),
        };
        let batch = match received {
            Ok(batch) if !batch.is_empty() => batch,
            Ok(_) => {
                self.policies.unadmit(probes, Instant::now());
                return Turn::Next;
            }
            Err(Error::Shutdown) => {
                self.policies.unadmit(probes, Instant::now());
                return Turn::Stop;
            }
            Err(e) => {
                self.policies.unadmit(probes, Instant::now());
                tracing::warn!(pool = %self.config.pool, error = %e, "receive failed; retrying");
                return tokio::select! {
                    _ = tokio::time::sleep(RECEIVE_ERROR_PAUSE) => Turn::Next,
                    _ = stop.changed() => Turn::Stop,
                };
            }
        };
        self.hand_off(batch, probes != 0, stop, scratch).await;
        Turn::Next
    }

    /// Pace, assign and screen each delivery of a batch, then push each
    /// lane's share at once. Once stopping, the rest go back untried.
    async fn hand_off(
        &self,
        batch: Vec<Delivery>,
        probe: bool,
        stop: &mut watch::Receiver<bool>,
        scratch: &mut Scratch,
    ) {
        stats::add(&self.metrics.received, batch.len() as u64);
        for (i, load) in self.live.loads.iter().enumerate() {
            scratch.loads[i] = load.load(Ordering::Acquire);
        }
        let mut stopped = false;
        for delivery in batch {
            if self.policies.paces() && !stopped {
                tokio::select! {
                    _ = self.policies.pace() => {}
                    _ = stop.changed() => stopped = true,
                }
            }
            // The capacity check before the fetch guarantees a worker with room.
            let worker = self
                .picker
                .pick(&scratch.loads, &scratch.limits)
                .unwrap_or(0);
            scratch.loads[worker] += 1;
            self.take_capacity(worker);
            let lane = self.config.workers[worker].lane;
            let inflight = Arc::new(if probe {
                InFlight::probe(delivery, worker)
            } else {
                InFlight::new(delivery, worker)
            });
            if stopped {
                let _ = self.settle_with(&inflight, Settlement::Requeue, Verdict::Neutral);
            } else if let Some(refusal) =
                self.policies.before(&inflight.delivery, inflight.admitted)
            {
                // (`admitted` is now: no second clock read per message.)
                // Never run it: straight to the dead-letter queue.
                let failure = Failure {
                    error_type: refusal.error_type.to_string(),
                    error_message: refusal.message,
                    worker_id: self.worker_id_or_empty(worker),
                    poison_pill: refusal.poison_pill,
                };
                let _ =
                    self.settle_with(&inflight, Settlement::DeadLetter(failure), Verdict::Neutral);
            } else {
                scratch.per_lane[lane].push(inflight);
            }
        }
        for (lane, items) in self.lanes.iter().zip(scratch.per_lane.iter_mut()) {
            if !items.is_empty() {
                lane.push_many(items.drain(..));
            }
        }
    }
}
