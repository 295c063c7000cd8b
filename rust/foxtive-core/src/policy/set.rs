//! The composed policies of an engine, one list per hook point.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Admit, FailureCtx, Policy, Refusal, Verdict};
use crate::message::{Delivery, Settlement};

/// Policies in the order they were composed, and per hook the ones that use it.
#[derive(Default)]
pub struct PolicySet {
    all: Vec<Arc<dyn Policy>>,
    admit: Vec<Arc<dyn Policy>>,
    pace: Vec<Arc<dyn Policy>>,
    before: Vec<Arc<dyn Policy>>,
    start: Vec<Arc<dyn Policy>>,
    after: Vec<Arc<dyn Policy>>,
    on_failure: Vec<Arc<dyn Policy>>,
}

impl std::fmt::Debug for PolicySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.all.iter().map(|p| p.name()))
            .finish()
    }
}

/// The outcome of the `admit` hooks: how many to fetch, and which policies
/// granted a probe (bit i: the i-th admit policy).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admitted {
    Fetch { want: usize, probes: u64 },
    Wait(Duration),
}

impl PolicySet {
    pub fn new(policies: impl IntoIterator<Item = Arc<dyn Policy>>) -> Self {
        let mut set = PolicySet::default();
        for p in policies {
            set.push(p);
        }
        set
    }

    /// Add a policy after those already there.
    pub fn push(&mut self, policy: Arc<dyn Policy>) {
        let hooks = policy.hooks();
        for (used, list) in [
            (hooks.admit, &mut self.admit),
            (hooks.pace, &mut self.pace),
            (hooks.before, &mut self.before),
            (hooks.start, &mut self.start),
            (hooks.after, &mut self.after),
            (hooks.on_failure, &mut self.on_failure),
        ] {
            if used {
                list.push(policy.clone());
            }
        }
        self.all.push(policy);
    }

    pub fn len(&self) -> usize {
        self.all.len()
    }

    pub fn is_empty(&self) -> bool {
        self.all.is_empty()
    }

    /// The first policy of type `T`.
    pub fn find<T: Policy>(&self) -> Option<&T> {
        self.all.iter().find_map(|p| p.as_any().downcast_ref::<T>())
    }

    /// Ask every `admit` policy; the smallest allowance wins, any wait wins
    /// over everything (probes already granted are freed).
    pub fn admit(&self, mut want: usize, now: Instant) -> Admitted {
        let mut probes = 0u64;
        for (i, p) in self.admit.iter().enumerate() {
            match p.admit(now) {
                Admit::Allow(n) => want = want.min(n),
                Admit::Probe => {
                    probes |= 1 << i.min(63);
                    want = want.min(1);
                }
                Admit::Wait(pause) => {
                    self.unadmit(probes, now);
                    return Admitted::Wait(pause);
                }
            }
        }
        Admitted::Fetch { want, probes }
    }

    /// Free the probes `admit` granted.
    pub fn unadmit(&self, probes: u64, now: Instant) {
        if probes == 0 {
            return;
        }
        for (i, p) in self.admit.iter().enumerate() {
            if probes & (1 << i.min(63)) != 0 {
                p.unadmit(now);
            }
        }
    }

    pub fn paces(&self) -> bool {
        !self.pace.is_empty()
    }

    /// Wait for every pacing policy's permit.
    pub async fn pace(&self) {
        for p in &self.pace {
            p.pace().await;
        }
    }

    /// The first refusal of a `before` policy.
    pub fn before(&self, delivery: &Delivery, now: Instant) -> Option<Refusal> {
        self.before.iter().find_map(|p| p.before(delivery, now))
    }

    pub fn screens_start(&self) -> bool {
        !self.start.is_empty()
    }

    /// The longest hand-back delay any `start` policy asks for.
    pub fn start(&self, probe: bool, now: Instant) -> Option<Duration> {
        self.start.iter().filter_map(|p| p.start(probe, now)).max()
    }

    pub fn observes(&self) -> bool {
        !self.after.is_empty()
    }

    pub fn after(&self, delivery: &Delivery, probe: bool, verdict: Verdict, now: Instant) {
        for p in &self.after {
            p.after(delivery, probe, verdict, now);
        }
    }

    /// Run the `on_failure` policies in order; what none decided is a dead letter.
    pub fn on_failure(&self, failure: &mut FailureCtx<'_>, now: Instant) -> Settlement {
        for p in &self.on_failure {
            p.on_failure(failure, now);
        }
        match failure.settlement.take() {
            Some(s) => s,
            None => Settlement::DeadLetter(crate::message::Failure {
                error_type: failure.error_type.to_string(),
                error_message: failure.error_message.to_string(),
                worker_id: failure.worker_id.clone(),
                poison_pill: failure.poison_pill,
            }),
        }
    }
}
