//! Pure decisions, no I/O: how long to wait, whether to try again.

pub mod backoff;
pub mod circuit_breaker;
pub mod poison_pill;
pub mod rate_limit;
pub mod reconnect;
pub mod retry;

pub use backoff::Backoff;
pub use circuit_breaker::{Admission, BreakerConfig, BreakerState, CircuitBreaker, Verdict};
pub use poison_pill::PoisonPillTracker;
pub use rate_limit::{RateLimitConfig, RateLimiter};
pub use reconnect::ReconnectStrategy;
pub use retry::{FailureKind, RetryInfo, RetryPolicy};
