//! Engine policies: pure decisions, no I/O, composed by the engine through
//! one interface ([`Policy`]) with named hook points.
//!
//! ```text
//! admit ─► (receive) ─► pace ─► before ─► lane ─► start ─► handler ─► after
//!                                                               └─► on_failure ─► settlement
//! ```
//! * `admit`: before fetching — may cap the batch, ask for one probe, or say
//!   wait (circuit breaker, rate limit);
//! * `pace`: before each received delivery is admitted (rate limit permits);
//! * `before`: a delivery is admitted — may refuse it straight to the
//!   dead-letter queue (poison pill screen, age limit);
//! * `start`: a handler is about to run it — may hand it back untried, after
//!   a delay (an open breaker);
//! * `after`: how it ended (breaker verdict, poison-pill forgiveness);
//! * `on_failure`: a failed attempt — each policy may mark or decide
//!   the [`FailureCtx`]; the retry policy, composed last, decides what is left.
//!
//! A policy declares the hooks it uses ([`Hooks`]); the engine keeps one list
//! per hook ([`PolicySet`]) and calls only those, so a hook nobody uses costs
//! an empty loop. Adding a policy is one file here and one line where the
//! engine composes them (`pool::engine::compose_policies`), or an entry in
//! the `extra` list handed to `Engine::with_policies`.

pub mod backoff;
pub mod circuit_breaker;
pub mod max_age;
pub mod poison_pill;
pub mod rate_limit;
pub mod reconnect;
pub mod retry;
mod set;

use std::any::Any;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::message::{Delivery, Settlement};

pub use backoff::Backoff;
pub use circuit_breaker::{Admission, BreakerConfig, BreakerState, CircuitBreaker, Verdict};
pub use max_age::MaxAge;
pub use poison_pill::{MaxDeliveries, PoisonPillTracker};
pub use rate_limit::{RateLimitConfig, RateLimitWaits, RateLimiter};
pub use reconnect::ReconnectStrategy;
pub use retry::{FailureKind, RetryInfo, RetryPolicy};
pub use set::{Admitted, PolicySet};

/// The hook points a policy takes part in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Hooks {
    pub admit: bool,
    pub pace: bool,
    pub before: bool,
    pub start: bool,
    pub after: bool,
    pub on_failure: bool,
}

/// What an `admit` hook allows before the next fetch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Fetch at most this many.
    Allow(usize),
    /// Fetch one message: it is this policy's probe (see [`Policy::unadmit`]).
    Probe,
    /// Fetch nothing; look again after this long.
    Wait(Duration),
}

/// A `before` hook's refusal: the delivery is dead-lettered untried.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    /// A bounded label (like an exception class name).
    pub error_type: &'static str,
    pub message: String,
    pub poison_pill: bool,
}

/// A failed attempt, as the `on_failure` hooks see and shape it.
#[derive(Debug)]
pub struct FailureCtx<'a> {
    pub delivery: &'a Delivery,
    pub kind: FailureKind,
    pub error_type: &'a str,
    pub error_message: &'a str,
    pub worker_id: &'a Arc<str>,
    /// Set by the poison-pill tracker: no more retries.
    pub poison_pill: bool,
    /// The decision, once a policy made it; later policies leave it alone.
    pub settlement: Option<Settlement>,
}

/// A pending `pace` permit.
pub type Pace<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

/// One engine policy. Every hook has a do-nothing default; [`Policy::hooks`]
/// says which ones the engine must call.
pub trait Policy: Send + Sync + 'static {
    /// A short name for logs.
    fn name(&self) -> &'static str;

    fn hooks(&self) -> Hooks;

    /// Before a fetch: how many messages may be fetched now.
    fn admit(&self, _now: Instant) -> Admit {
        Admit::Allow(usize::MAX)
    }

    /// The probe this policy granted in `admit` was not used (nothing came,
    /// or the loop stopped): free it.
    fn unadmit(&self, _now: Instant) {}

    /// Wait for a permit for one received delivery.
    fn pace(&self) -> Pace<'_> {
        Box::pin(std::future::ready(()))
    }

    /// A delivery was received: `Some` dead-letters it without running it.
    fn before(&self, _delivery: &Delivery, _now: Instant) -> Option<Refusal> {
        None
    }

    /// A handler is about to run the delivery (`probe`: it is the breaker's
    /// probe): `Some(delay)` hands it back to the broker untried, redelivered
    /// after `delay`.
    fn start(&self, _probe: bool, _now: Instant) -> Option<Duration> {
        None
    }

    /// How a delivery ended, as far as policies care.
    fn after(&self, _delivery: &Delivery, _probe: bool, _verdict: Verdict, _now: Instant) {}

    /// A handler failed: mark or decide the failure.
    fn on_failure(&self, _failure: &mut FailureCtx<'_>, _now: Instant) {}

    /// For finding a policy by type ([`PolicySet::find`]).
    fn as_any(&self) -> &dyn Any;
}
