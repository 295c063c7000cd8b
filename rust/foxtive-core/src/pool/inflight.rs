//! A delivery handed to a worker and not yet settled.

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
    /// The one settlement, once made: setting it is the claim, so whoever
    /// asks later (the runner's `dispatch`) reads the outcome rather than
    /// inferring it from counters.
    settled: OnceLock<Settlement>,
}

impl InFlight {
    pub fn new(delivery: Delivery, worker: usize) -> Self {
        InFlight {
            delivery: Arc::new(delivery),
            worker,
            probe: false,
            admitted: Instant::now(),
            settled: OnceLock::new(),
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
        // Settlements other than a dead letter clone without allocating.
        let mut won = false;
        self.settled.get_or_init(|| {
            won = true;
            settlement.clone()
        });
        won
    }

    pub fn is_settled(&self) -> bool {
        self.settled.get().is_some()
    }

    /// How it was settled, once it was.
    pub fn settlement(&self) -> Option<&Settlement> {
        self.settled.get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Receipt;
    use bytes::Bytes;

    #[test]
    fn the_first_settlement_wins_and_is_kept() {
        let d = Delivery::new("m", Bytes::new(), Arc::from("q"), Receipt::Seq(1));
        let inflight = InFlight::new(d, 0);
        assert!(inflight.settlement().is_none());
        assert!(inflight.claim(&Settlement::Ack));
        assert!(!inflight.claim(&Settlement::Requeue));
        assert_eq!(inflight.settlement(), Some(&Settlement::Ack));
    }
}
