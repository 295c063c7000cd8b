//! Live values of a running engine: what is in flight, per worker, and the
//! engine's state. The engine counts straight into these atomics (they are
//! its own counters, not copies), and the metrics read them: the metrics
//! hold no reference to the engine, so there is no cycle between the two.

use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crate::backend::{Backend, BackendState};
use crate::policy::{BreakerState, CircuitBreaker, PolicySet, RateLimitWaits, RateLimiter};

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

/// What one engine run shows while it lasts.
pub struct Live {
    state: AtomicU8,
    /// Messages admitted and not settled yet.
    pub in_flight: AtomicUsize,
    /// The same, per worker (indexed like the engine's workers).
    pub loads: Vec<AtomicUsize>,
    backend: Arc<dyn Backend>,
    policies: Arc<PolicySet>,
}

impl std::fmt::Debug for Live {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Live")
            .field("state", &self.state())
            .field("in_flight", &self.in_flight())
            .field("backend", &self.backend.name())
            .finish()
    }
}

impl Live {
    pub fn new(workers: usize, backend: Arc<dyn Backend>, policies: Arc<PolicySet>) -> Self {
        Live {
            state: AtomicU8::new(EngineState::Created as u8),
            in_flight: AtomicUsize::new(0),
            loads: (0..workers).map(|_| AtomicUsize::new(0)).collect(),
            backend,
            policies,
        }
    }

    pub fn state(&self) -> EngineState {
        EngineState::from_u8(self.state.load(Ordering::Acquire))
    }

    pub fn set_state(&self, state: EngineState) {
        self.state.store(state as u8, Ordering::Release);
    }

    /// Move from `from` to `to`; false if the state was not `from`.
    pub fn transition(&self, from: EngineState, to: EngineState) -> bool {
        self.state
            .compare_exchange(from as u8, to as u8, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    pub fn load(&self, worker: usize) -> usize {
        self.loads
            .get(worker)
            .map_or(0, |l| l.load(Ordering::Acquire))
    }

    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    pub fn backend_state(&self) -> BackendState {
        self.backend.state()
    }

    /// The circuit breaker's state and transition count, if there is one.
    pub fn breaker_state(&self) -> Option<(BreakerState, u64)> {
        self.policies
            .find::<CircuitBreaker>()
            .map(|b| (b.state(Instant::now()), b.transitions()))
    }

    /// The rate limit's waits, if the pool has a limit.
    pub fn rate_limit_waits(&self) -> Option<RateLimitWaits> {
        self.policies.find::<RateLimiter>().map(|r| r.waits())
    }
}
