//! Stopping: no new deliveries, unstarted work handed back, settlements
//! flushed, the backend closed; and knowing when there is nothing left.

use std::time::Instant;

use super::Engine;
use crate::message::Settlement;
use crate::observe::{stats, EngineState};
use crate::Result;

impl Engine {
    /// Begin a graceful stop: no new deliveries; messages admitted but not yet
    /// handed to a handler go straight back to the broker.
    pub async fn begin_drain(&self) {
        self.live
            .transition(EngineState::Running, EngineState::Draining);
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
        self.live.set_state(EngineState::Stopped);
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
