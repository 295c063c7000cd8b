//! The circuit breaker: stop calling a failing dependency, probe it, resume.
//!
//! Closed → (failure_threshold consecutive failures) → Open for
//! `reset_timeout` → HalfOpen: one probe at a time; `success_threshold`
//! probe successes close it, one probe failure opens it again. A probe that
//! ends without a verdict (handed back at shutdown) frees the probe slot, so
//! the breaker can never lock itself out.

use std::any::Any;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::{Admit, Hooks, Policy};
use crate::message::Delivery;
use crate::{Error, Result};

/// The shortest delay before a message handed back by an open breaker comes back.
const MIN_HAND_BACK: Duration = Duration::from_millis(100);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }

    /// 0 closed, 1 open, 2 half-open (the metric's encoding).
    pub fn as_gauge(self) -> u8 {
        match self {
            BreakerState::Closed => 0,
            BreakerState::Open => 1,
            BreakerState::HalfOpen => 2,
        }
    }
}

/// What the breaker allows now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Closed: go ahead.
    Allow,
    /// Half-open: this one message is the probe.
    Probe,
    /// Open, or a probe is already out: try again after this long.
    Wait(Duration),
}

/// How an admitted message ended, as far as the breaker cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Success,
    Failure,
    /// Neither (handed back untried): only frees a probe slot.
    Neutral,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BreakerConfig {
    pub failure_threshold: u32,
    pub reset_timeout: Duration,
    pub success_threshold: u32,
}

impl BreakerConfig {
    pub fn new(
        failure_threshold: u32,
        reset_timeout: Duration,
        success_threshold: u32,
    ) -> Result<Self> {
        if failure_threshold == 0 {
            return Err(Error::Config("failure_threshold: must be >= 1".to_string()));
        }
        if success_threshold == 0 {
            return Err(Error::Config("success_threshold: must be >= 1".to_string()));
        }
        Ok(BreakerConfig {
            failure_threshold,
            reset_timeout,
            success_threshold,
        })
    }
}

#[derive(Debug)]
struct Inner {
    state: BreakerState,
    consecutive_failures: u32,
    opened_at: Option<Instant>,
    probe_out: bool,
    probe_successes: u32,
    transitions: u64,
}

#[derive(Debug)]
pub struct CircuitBreaker {
    config: BreakerConfig,
    inner: Mutex<Inner>,
}

impl CircuitBreaker {
    pub fn new(config: BreakerConfig) -> Self {
        CircuitBreaker {
            config,
            inner: Mutex::new(Inner {
                state: BreakerState::Closed,
                consecutive_failures: 0,
                opened_at: None,
                probe_out: false,
                probe_successes: 0,
                transitions: 0,
            }),
        }
    }

    pub fn config(&self) -> &BreakerConfig {
        &self.config
    }

    /// The state, moving Open → HalfOpen once the reset timeout has passed.
    pub fn state(&self, now: Instant) -> BreakerState {
        let mut inner = self.inner.lock();
        self.refresh(&mut inner, now);
        inner.state
    }

    pub fn transitions(&self) -> u64 {
        self.inner.lock().transitions
    }

    fn set(&self, inner: &mut Inner, state: BreakerState, now: Instant) {
        if inner.state != state {
            tracing::info!(
                from = inner.state.as_str(),
                to = state.as_str(),
                "circuit breaker"
            );
            inner.state = state;
            inner.transitions += 1;
        }
        match state {
            BreakerState::Open => {
                inner.opened_at = Some(now);
                inner.probe_out = false;
                inner.probe_successes = 0;
            }
            BreakerState::HalfOpen => {
                inner.probe_out = false;
                inner.probe_successes = 0;
            }
            BreakerState::Closed => {
                inner.consecutive_failures = 0;
                inner.opened_at = None;
                inner.probe_out = false;
            }
        }
    }

    fn refresh(&self, inner: &mut Inner, now: Instant) {
        if inner.state == BreakerState::Open {
            let reopen = inner
                .opened_at
                .map_or(now, |t| t + self.config.reset_timeout);
            if now >= reopen {
                self.set(inner, BreakerState::HalfOpen, now);
            }
        }
    }

    /// May a message be handed to a handler now?
    pub fn admit(&self, now: Instant) -> Admission {
        let mut inner = self.inner.lock();
        self.refresh(&mut inner, now);
        match inner.state {
            BreakerState::Closed => Admission::Allow,
            BreakerState::Open => {
                let reopen = inner
                    .opened_at
                    .map_or(now, |t| t + self.config.reset_timeout);
                Admission::Wait(
                    reopen
                        .saturating_duration_since(now)
                        .max(Duration::from_millis(1)),
                )
            }
            BreakerState::HalfOpen if !inner.probe_out => {
                inner.probe_out = true;
                Admission::Probe
            }
            // A probe is out: check back soon (its verdict changes the state).
            BreakerState::HalfOpen => Admission::Wait(Duration::from_millis(50)),
        }
    }

    /// True if a message admitted earlier may still start (Closed, or it is the probe).
    pub fn allows(&self, probe: bool, now: Instant) -> bool {
        let mut inner = self.inner.lock();
        self.refresh(&mut inner, now);
        match inner.state {
            BreakerState::Closed => true,
            BreakerState::HalfOpen => probe,
            BreakerState::Open => false,
        }
    }

    /// Whether a message admitted earlier must go back untried, and after
    /// how long it should come back: not while closed, nor for the probe.
    pub fn hand_back(&self, probe: bool, now: Instant) -> Option<Duration> {
        let mut inner = self.inner.lock();
        self.refresh(&mut inner, now);
        match inner.state {
            BreakerState::Closed => None,
            BreakerState::HalfOpen if probe => None,
            BreakerState::HalfOpen => Some(MIN_HAND_BACK),
            BreakerState::Open => {
                let left = inner.opened_at.map_or(Duration::ZERO, |t| {
                    (t + self.config.reset_timeout).saturating_duration_since(now)
                });
                Some(left.max(MIN_HAND_BACK))
            }
        }
    }

    /// How long until the breaker half-opens (zero when it is not open).
    pub fn remaining_open(&self, now: Instant) -> Duration {
        let inner = self.inner.lock();
        match (inner.state, inner.opened_at) {
            (BreakerState::Open, Some(t)) => {
                (t + self.config.reset_timeout).saturating_duration_since(now)
            }
            _ => Duration::ZERO,
        }
    }

    /// Record how an admitted message ended.
    pub fn record(&self, verdict: Verdict, probe: bool, now: Instant) {
        let mut inner = self.inner.lock();
        self.refresh(&mut inner, now);
        match (inner.state, verdict) {
            (BreakerState::Closed, Verdict::Success) => inner.consecutive_failures = 0,
            (BreakerState::Closed, Verdict::Failure) => {
                inner.consecutive_failures = inner.consecutive_failures.saturating_add(1);
                if inner.consecutive_failures >= self.config.failure_threshold {
                    self.set(&mut inner, BreakerState::Open, now);
                }
            }
            (BreakerState::HalfOpen, _) if probe => {
                inner.probe_out = false;
                match verdict {
                    Verdict::Success => {
                        inner.probe_successes += 1;
                        if inner.probe_successes >= self.config.success_threshold {
                            self.set(&mut inner, BreakerState::Closed, now);
                        }
                    }
                    Verdict::Failure => self.set(&mut inner, BreakerState::Open, now),
                    Verdict::Neutral => {}
                }
            }
            // Stragglers admitted before the breaker opened say nothing new.
            _ => {}
        }
    }
}

/// The breaker as an engine policy: it admits (or waits, or grants the
/// probe), hands back what an open breaker must not start, and learns from
/// every outcome.
impl Policy for CircuitBreaker {
    fn name(&self) -> &'static str {
        "circuit_breaker"
    }

    fn hooks(&self) -> Hooks {
        Hooks {
            admit: true,
            start: true,
            after: true,
            ..Hooks::default()
        }
    }

    fn admit(&self, now: Instant) -> Admit {
        match CircuitBreaker::admit(self, now) {
            Admission::Allow => Admit::Allow(usize::MAX),
            Admission::Probe => Admit::Probe,
            Admission::Wait(pause) => Admit::Wait(pause),
        }
    }

    fn unadmit(&self, now: Instant) {
        self.record(Verdict::Neutral, true, now);
    }

    fn start(&self, probe: bool, now: Instant) -> Option<Duration> {
        self.hand_back(probe, now)
    }

    fn after(&self, _delivery: &Delivery, probe: bool, verdict: Verdict, now: Instant) {
        self.record(verdict, probe, now);
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker(success_threshold: u32) -> CircuitBreaker {
        CircuitBreaker::new(
            BreakerConfig::new(3, Duration::from_secs(30), success_threshold).unwrap(),
        )
    }

    #[test]
    fn opens_after_consecutive_failures_and_waits() {
        let b = breaker(1);
        let t = Instant::now();
        b.record(Verdict::Failure, false, t);
        b.record(Verdict::Success, false, t);
        b.record(Verdict::Failure, false, t);
        b.record(Verdict::Failure, false, t);
        assert_eq!(b.state(t), BreakerState::Closed);
        b.record(Verdict::Failure, false, t);
        assert_eq!(b.state(t), BreakerState::Open);
        assert_eq!(
            b.admit(t + Duration::from_secs(10)),
            Admission::Wait(Duration::from_secs(20))
        );
        assert!(!b.allows(false, t));
    }

    #[test]
    fn half_open_admits_one_probe_then_closes() {
        let b = breaker(2);
        let t = Instant::now();
        for _ in 0..3 {
            b.record(Verdict::Failure, false, t);
        }
        let later = t + Duration::from_secs(30);
        assert_eq!(b.admit(later), Admission::Probe);
        assert!(matches!(b.admit(later), Admission::Wait(_)));
        b.record(Verdict::Success, true, later);
        assert_eq!(b.state(later), BreakerState::HalfOpen);
        assert_eq!(b.admit(later), Admission::Probe);
        b.record(Verdict::Success, true, later);
        assert_eq!(b.state(later), BreakerState::Closed);
        assert_eq!(b.admit(later), Admission::Allow);
        assert_eq!(b.transitions(), 3);
    }

    #[test]
    fn probe_failure_reopens_and_a_lost_probe_never_locks() {
        let b = breaker(1);
        let t = Instant::now();
        for _ in 0..3 {
            b.record(Verdict::Failure, false, t);
        }
        let later = t + Duration::from_secs(31);
        assert_eq!(b.admit(later), Admission::Probe);
        b.record(Verdict::Neutral, true, later); // cancelled at shutdown
        assert_eq!(b.admit(later), Admission::Probe);
        b.record(Verdict::Failure, true, later);
        assert_eq!(b.state(later), BreakerState::Open);
    }

    #[test]
    fn hands_back_all_but_the_probe_while_not_closed() {
        let b = breaker(1);
        let t = Instant::now();
        assert_eq!(b.hand_back(false, t), None);
        for _ in 0..3 {
            b.record(Verdict::Failure, false, t);
        }
        let soon = t + Duration::from_secs(10);
        assert_eq!(b.hand_back(false, soon), Some(Duration::from_secs(20)));
        let later = t + Duration::from_secs(30);
        assert_eq!(b.hand_back(true, later), None);
        assert_eq!(b.hand_back(false, later), Some(MIN_HAND_BACK));
    }

    #[test]
    fn rejects_zero_thresholds() {
        assert!(BreakerConfig::new(0, Duration::from_secs(1), 1).is_err());
        assert!(BreakerConfig::new(1, Duration::from_secs(1), 0).is_err());
    }
}
