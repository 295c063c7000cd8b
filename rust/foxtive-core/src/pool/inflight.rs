//! A delivery handed to a worker and not yet settled.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use crate::message::{Delivery, Settlement};

#[derive(Debug)]
pub struct InFlight {
    pub delivery: Arc<Delivery>,
    /// Index of the worker it was assigned to.
    pub worker: usize,
    /// The half-open circuit breaker's probe.
    pub probe: bool,
    /// When it was admitted (for the processing-duration histogram).
    pub admitted: Instant,
    /// The claim: `OPEN`, then `ACKED` or `OTHER` (one compare-and-swap,
    /// as cheap as a flag on the hot path, where nearly everything is an ack).
    settled: AtomicU8,
    /// An `OTHER` settlement itself, kept so whoever asks later (the
    /// runner's `dispatch`) reads the outcome rather than inferring it from
    /// counters.
    other: OnceLock<Box<Settlement>>,
}

const OPEN: u8 = 0;
const ACKED: u8 = 1;
const OTHER: u8 = 2;

static ACK: Settlement = Settlement::Ack;

impl InFlight {
    pub fn new(delivery: Delivery, worker: usize) -> Self {
        InFlight {
            delivery: Arc::new(delivery),
            worker,
            probe: false,
            admitted: Instant::now(),
            settled: AtomicU8::new(OPEN),
            other: OnceLock::new(),
        }
    }

    pub fn probe(delivery: Delivery, worker: usize) -> Self {
        InFlight {
            probe: true,
            ..InFlight::new(delivery, worker)
        }
    }

    /// Claim the one settlement. True for the first caller only.
    pub fn claim(&self, settlement: &Settlement) -> bool {
        let code = match settlement {
            Settlement::Ack => ACKED,
            _ => OTHER,
        };
        let won = self
            .settled
            .compare_exchange(OPEN, code, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        if won && code == OTHER {
            let _ = self.other.set(Box::new(settlement.clone()));
        }
        won
    }

    pub fn is_settled(&self) -> bool {
        self.settled.load(Ordering::Acquire) != OPEN
    }

    /// How it was settled, once it was.
    pub fn settlement(&self) -> Option<&Settlement> {
        match self.settled.load(Ordering::Acquire) {
            OPEN => None,
            ACKED => Some(&ACK),
            // The claimer stores it right after its compare-and-swap.
            _ => Some(self.other.wait()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{LocalReceipt, Receipt};
    use bytes::Bytes;

    #[test]
    fn the_first_settlement_wins_and_is_kept() {
        let d = Delivery::new(
            "m",
            Bytes::new(),
            Arc::from("q"),
            Receipt::packed(LocalReceipt(1)),
        );
        let inflight = InFlight::new(d, 0);
        assert!(inflight.settlement().is_none());
        assert!(inflight.claim(&Settlement::Ack));
        assert!(!inflight.claim(&Settlement::Requeue));
        assert_eq!(inflight.settlement(), Some(&Settlement::Ack));
        let d = Delivery::new(
            "n",
            Bytes::new(),
            Arc::from("q"),
            Receipt::packed(LocalReceipt(2)),
        );
        let inflight = InFlight::new(d, 0);
        assert!(inflight.claim(&Settlement::Requeue));
        assert!(!inflight.claim(&Settlement::Ack));
        assert_eq!(inflight.settlement(), Some(&Settlement::Requeue));
    }
}
