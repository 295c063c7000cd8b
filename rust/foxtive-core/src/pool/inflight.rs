//! A delivery handed to a worker and not yet settled.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crate::message::Delivery;

#[derive(Debug)]
pub struct InFlight {
    pub delivery: Arc<Delivery>,
    /// Index of the worker it was assigned to.
    pub worker: usize,
    /// The half-open circuit breaker's probe.
    pub probe: bool,
    /// When it was admitted (for the processing-duration histogram).
    pub admitted: Instant,
    settled: AtomicBool,
}

impl InFlight {
    pub fn new(delivery: Delivery, worker: usize) -> Self {
        InFlight {
            delivery: Arc::new(delivery),
            worker,
            probe: false,
            admitted: Instant::now(),
            settled: AtomicBool::new(false),
        }
    }

    pub fn probe(delivery: Delivery, worker: usize) -> Self {
        InFlight {
            probe: true,
            ..InFlight::new(delivery, worker)
        }
    }

    /// Claim the one settlement. True for the first caller only.
    pub fn claim(&self) -> bool {
        !self.settled.swap(true, Ordering::AcqRel)
    }

    pub fn is_settled(&self) -> bool {
        self.settled.load(Ordering::Acquire)
    }
}
