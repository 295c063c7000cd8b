//! Whether the consumer still owes deliveries: what `run_until_idle` needs
//! to know before it calls a quiet queue an empty one.
//!
//! A quiet consumer is not always an empty one. What was pulled on a
//! connection that was lost stays "ack pending" on the server until
//! `ack_wait` runs out and only then comes back; for those seconds nothing
//! arrives, and a pool that judged by silence alone stopped with messages
//! still in the stream. So the backend asks the server (consumer info):
//! messages not yet delivered (`num_pending`), or delivered and not settled
//! beyond what this backend holds (`num_ack_pending`: a lost connection's
//! pulls, another worker's, one pulled and not yet handed out), mean not
//! idle. Anything else is left to the engine's own judgement (no delivery
//! for a while, no retry of its own still to come due), so the probe can
//! only keep a pool running longer, never stop it earlier.
//!
//! `Backend::is_drained` is not async: it answers from the last probe and
//! starts the next one in the background when that is older than
//! [`REFRESH`]. With no probe younger than [`FRESH`] the answer is "not
//! drained": a server that does not answer is not an idle one.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;
use tokio::time::Duration;

use super::Inner;

/// A probe this old is replaced (in the background) at the next question.
const REFRESH: Duration = Duration::from_millis(200);
/// A probe older than this is not believed. Longer than the engine's quiet
/// period plus a refresh, so that a queue that stays empty is seen empty
/// without a gap between two probes.
const FRESH: Duration = Duration::from_secs(2);

#[derive(Default)]
pub(super) struct Probes {
    last: Mutex<Option<Probe>>,
    running: std::sync::atomic::AtomicBool,
    runtime: Mutex<Option<tokio::runtime::Handle>>,
}

#[derive(Clone, Copy)]
struct Probe {
    at: Instant,
    owed: bool,
}

impl Probes {
    /// Remember the runtime the backend runs on (called from `connect`).
    pub(super) fn bind(&self) {
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            *self.runtime.lock() = Some(rt);
        }
    }

    /// `Some(false)` while the server owes deliveries (or was not asked
    /// lately), `None` (let the engine judge) otherwise.
    pub(super) fn is_drained(&self, inner: &Arc<Inner>) -> Option<bool> {
        let last = *self.last.lock();
        let age = last.map(|p| p.at.elapsed());
        if age.is_none_or(|a| a >= REFRESH) {
            self.start(inner);
        }
        match last {
            Some(p) if p.at.elapsed() < FRESH && !p.owed => None,
            _ => Some(false),
        }
    }

    fn start(&self, inner: &Arc<Inner>) {
        // The engine may ask from a thread outside the runtime: the probe
        // runs on the runtime the backend connected on.
        let Some(rt) = self.runtime.lock().clone() else {
            return; // not connected yet: nothing to ask
        };
        if self.running.swap(true, Ordering::AcqRel) {
            return;
        }
        let weak = Arc::downgrade(inner);
        rt.spawn(async move {
            let Some(inner) = weak.upgrade() else { return };
            if let Some(owed) = inner.owed().await {
                *inner.probes.last.lock() = Some(Probe {
                    at: Instant::now(),
                    owed,
                });
            }
            inner.probes.running.store(false, Ordering::Release);
        });
    }
}

impl Inner {
    /// Whether the consumer has deliveries to make or to get back that
    /// this backend does not hold; `None` when the server did not answer.
    async fn owed(&self) -> Option<bool> {
        if self.closed.load(Ordering::Acquire) {
            return None;
        }
        let held_before = self.held.lock().len();
        let (_, js) = self.link.conn().await.ok()?;
        let stream = js.get_stream_no_info(&self.cfg.stream).await.ok()?;
        let info = stream.consumer_info(&self.cfg.durable).await.ok()?;
        // `held` may change while the request travels: a delivery settled
        // meanwhile can still be counted by the server, one handed out
        // meanwhile was pending before. Compare with the larger count, so
        // a delivery in either state is never taken for one owed.
        let held = held_before.max(self.held.lock().len());
        Some(info.num_pending > 0 || info.num_ack_pending > held)
    }
}
