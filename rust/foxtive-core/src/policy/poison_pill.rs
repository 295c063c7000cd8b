//! Poison pills: messages that keep failing, however often they are retried.
//!
//! Two signals, both bounded:
//! * the delivery count (`Delivery::attempt`, durable: broker delivery
//!   counters and retry headers) catches a message that kills the worker
//!   process itself — it comes back with a higher count every time;
//! * an in-process failure count per stable key (message id, else a hash of
//!   the body) within a time window, evicting the oldest keys past a cap.

use std::any::Any;
use std::collections::{HashMap, VecDeque};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::{FailureCtx, Hooks, Policy, Refusal, Verdict};
use crate::message::Delivery;
use crate::{Error, Result};

/// Keys tracked at most; the oldest go first.
pub const DEFAULT_CAPACITY: usize = 100_000;

#[derive(Debug)]
struct Entry {
    failures: u32,
    first: Instant,
}

#[derive(Debug)]
pub struct PoisonPillTracker {
    max_failures: u32,
    window: Duration,
    capacity: usize,
    inner: Mutex<(HashMap<u64, Entry>, VecDeque<u64>)>,
}

impl PoisonPillTracker {
    pub fn new(max_failures: u32, window: Duration, capacity: usize) -> Result<Self> {
        if max_failures == 0 {
            return Err(Error::Config("max_failures: must be >= 1".to_string()));
        }
        if window.is_zero() {
            return Err(Error::Config(
                "time_window: must be > 0 seconds".to_string(),
            ));
        }
        Ok(PoisonPillTracker {
            max_failures,
            window,
            capacity: capacity.max(1),
            inner: Mutex::new((HashMap::new(), VecDeque::new())),
        })
    }

    pub fn max_failures(&self) -> u32 {
        self.max_failures
    }

    fn key(delivery: &Delivery) -> u64 {
        let mut h = DefaultHasher::new();
        if delivery.id.is_empty() {
            delivery.body.hash(&mut h);
        } else {
            delivery.id.hash(&mut h);
        }
        h.finish()
    }

    /// Record a failure; true when the message is now a poison pill.
    pub fn record_failure(&self, delivery: &Delivery, now: Instant) -> bool {
        let key = Self::key(delivery);
        let mut guard = self.inner.lock();
        let (map, order) = &mut *guard;
        let entry = map.entry(key).or_insert_with(|| {
            order.push_back(key);
            Entry {
                failures: 0,
                first: now,
            }
        });
        if now.saturating_duration_since(entry.first) > self.window {
            entry.failures = 0;
            entry.first = now;
        }
        entry.failures = entry.failures.saturating_add(1);
        let poisoned = entry.failures >= self.max_failures;
        while map.len() > self.capacity {
            match order.pop_front() {
                Some(old) => {
                    map.remove(&old);
                }
                None => break,
            }
        }
        poisoned
    }

    /// A success clears the message's record.
    pub fn record_success(&self, delivery: &Delivery) {
        let mut guard = self.inner.lock();
        if guard.0.is_empty() {
            return;
        }
        let key = Self::key(delivery);
        if guard.0.remove(&key).is_some() {
            guard.1.retain(|k| *k != key);
        }
    }

    pub fn tracked(&self) -> usize {
        self.inner.lock().0.len()
    }
}

/// The tracker as an engine policy: a failure counts against the message
/// (enough of them make it a poison pill: no more retries); a success clears it.
impl Policy for PoisonPillTracker {
    fn name(&self) -> &'static str {
        "poison_pill"
    }

    fn hooks(&self) -> Hooks {
        Hooks {
            after: true,
            on_failure: true,
            ..Hooks::default()
        }
    }

    fn after(&self, delivery: &Delivery, _probe: bool, verdict: Verdict, _now: Instant) {
        if verdict == Verdict::Success {
            self.record_success(delivery);
        }
    }

    fn on_failure(&self, failure: &mut FailureCtx<'_>, now: Instant) {
        if self.record_failure(failure.delivery, now) {
            failure.poison_pill = true;
        }
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// The durable signal: a message delivered more often than any handler
/// outcome allows keeps killing or stalling its worker. It is never run
/// again; it goes to the dead-letter queue as a poison pill.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaxDeliveries {
    pub max: u32,
}

impl Policy for MaxDeliveries {
    fn name(&self) -> &'static str {
        "max_deliveries"
    }

    fn hooks(&self) -> Hooks {
        Hooks {
            before: true,
            ..Hooks::default()
        }
    }

    fn before(&self, delivery: &Delivery, _now: Instant) -> Option<Refusal> {
        if delivery.attempt <= self.max {
            return None;
        }
        Some(Refusal {
            error_type: "PoisonPill",
            message: format!(
                "delivered {} times without being settled (limit {})",
                delivery.attempt, self.max
            ),
            poison_pill: true,
        })
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{LocalReceipt, Receipt};
    use bytes::Bytes;
    use std::sync::Arc;

    fn delivery(id: &str) -> Delivery {
        Delivery::new(
            id,
            Bytes::from_static(b"x"),
            Arc::from("q"),
            Receipt::packed(LocalReceipt(1)),
        )
    }

    #[test]
    fn flags_after_max_failures_and_clears_on_success() {
        let t = PoisonPillTracker::new(3, Duration::from_secs(60), 10).unwrap();
        let now = Instant::now();
        let d = delivery("a");
        assert!(!t.record_failure(&d, now));
        assert!(!t.record_failure(&d, now));
        t.record_success(&d);
        assert!(!t.record_failure(&d, now));
        assert!(!t.record_failure(&d, now));
        assert!(t.record_failure(&d, now));
    }

    #[test]
    fn window_expiry_resets_the_count() {
        let t = PoisonPillTracker::new(2, Duration::from_secs(1), 10).unwrap();
        let now = Instant::now();
        let d = delivery("a");
        assert!(!t.record_failure(&d, now));
        assert!(!t.record_failure(&d, now + Duration::from_secs(5)));
    }

    #[test]
    fn max_deliveries_refuses_beyond_the_limit() {
        let limit = MaxDeliveries { max: 3 };
        let mut d = delivery("a");
        d.attempt = 3;
        assert_eq!(limit.before(&d, Instant::now()), None);
        d.attempt = 4;
        let refusal = limit.before(&d, Instant::now()).unwrap();
        assert!(refusal.poison_pill);
        assert_eq!(refusal.error_type, "PoisonPill");
    }

    #[test]
    fn memory_is_bounded() {
        let t = PoisonPillTracker::new(2, Duration::from_secs(60), 100).unwrap();
        let now = Instant::now();
        for i in 0..1000 {
            t.record_failure(&delivery(&format!("m{i}")), now);
        }
        assert_eq!(t.tracked(), 100);
    }
}
