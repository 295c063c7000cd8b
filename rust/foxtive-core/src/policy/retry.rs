//! The failure policy: retry with backoff, then dead-letter.

use std::any::Any;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Backoff, FailureCtx, Hooks, Policy};
use crate::message::{Failure, Settlement};

/// How a handler failed, as classified by the caller.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FailureKind {
    /// An ordinary exception: retry while attempts remain.
    Transient,
    /// `PermanentError` (or `should_retry` said no): straight to the dead-letter queue.
    Permanent,
    /// `RetryableError(delay=...)`: retry after this delay while attempts remain.
    RetryAfter(Duration),
}

/// What the policy knows about a failed attempt; handed to `Worker.should_retry`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryInfo {
    pub attempt: u32,
    pub max_retries: u32,
    pub next_delay: Duration,
    pub exhausted: bool,
    pub poison_pill: bool,
}

/// `max_retries` counts retries after the first attempt: with 3 there are at
/// most 4 attempts, then the message is dead-lettered.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    pub max_retries: u32,
    pub backoff: Backoff,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_retries: 5,
            backoff: Backoff::default(),
        }
    }
}

impl RetryPolicy {
    pub fn info(&self, attempt: u32, poison_pill: bool) -> RetryInfo {
        RetryInfo {
            attempt,
            max_retries: self.max_retries,
            next_delay: self.backoff.delay(attempt),
            exhausted: attempt > self.max_retries,
            poison_pill,
        }
    }

    /// Decide how a failed attempt ends.
    pub fn decide(
        &self,
        attempt: u32,
        kind: FailureKind,
        error_type: &str,
        error_message: &str,
        worker_id: &Arc<str>,
        poison_pill: bool,
    ) -> Settlement {
        let exhausted = attempt > self.max_retries;
        let failure = || Failure {
            error_type: error_type.to_string(),
            error_message: error_message.to_string(),
            worker_id: worker_id.clone(),
            poison_pill,
        };
        match kind {
            _ if poison_pill || exhausted => Settlement::DeadLetter(failure()),
            FailureKind::Permanent => Settlement::DeadLetter(failure()),
            FailureKind::Transient => Settlement::Retry {
                delay: self.backoff.delay(attempt),
                count_attempt: true,
            },
            FailureKind::RetryAfter(delay) => Settlement::Retry {
                delay,
                count_attempt: true,
            },
        }
    }
}

/// The retry policy decides whatever failure no policy before it decided;
/// the engine composes it last.
impl Policy for RetryPolicy {
    fn name(&self) -> &'static str {
        "retry"
    }

    fn hooks(&self) -> Hooks {
        Hooks {
            on_failure: true,
            ..Hooks::default()
        }
    }

    fn on_failure(&self, f: &mut FailureCtx<'_>, _now: Instant) {
        if f.settlement.is_none() {
            f.settlement = Some(self.decide(
                f.delivery.attempt,
                f.kind,
                f.error_type,
                f.error_message,
                f.worker_id,
                f.poison_pill,
            ));
        }
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(max_retries: u32) -> RetryPolicy {
        RetryPolicy {
            max_retries,
            backoff: Backoff::new(
                Duration::from_millis(10),
                Duration::from_secs(1),
                2.0,
                false,
            )
            .unwrap(),
        }
    }

    #[test]
    fn max_retries_three_means_four_attempts() {
        let p = policy(3);
        let w: Arc<str> = Arc::from("w");
        for attempt in 1..=3 {
            assert!(matches!(
                p.decide(attempt, FailureKind::Transient, "E", "boom", &w, false),
                Settlement::Retry {
                    count_attempt: true,
                    ..
                }
            ));
        }
        assert!(matches!(
            p.decide(4, FailureKind::Transient, "E", "boom", &w, false),
            Settlement::DeadLetter(_)
        ));
    }

    #[test]
    fn permanent_and_poison_skip_retries() {
        let p = policy(3);
        let w: Arc<str> = Arc::from("w");
        assert!(matches!(
            p.decide(1, FailureKind::Permanent, "E", "", &w, false),
            Settlement::DeadLetter(_)
        ));
        match p.decide(1, FailureKind::Transient, "E", "", &w, true) {
            Settlement::DeadLetter(f) => assert!(f.poison_pill),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn explicit_delay_is_used() {
        let p = policy(3);
        let w: Arc<str> = Arc::from("w");
        assert_eq!(
            p.decide(
                1,
                FailureKind::RetryAfter(Duration::from_secs(7)),
                "E",
                "",
                &w,
                false
            ),
            Settlement::Retry {
                delay: Duration::from_secs(7),
                count_attempt: true
            }
        );
    }

    #[test]
    fn info_reports_exhaustion() {
        let p = policy(2);
        assert!(!p.info(2, false).exhausted);
        assert!(p.info(3, false).exhausted);
        assert_eq!(p.info(1, false).next_delay, Duration::from_millis(10));
    }
}
