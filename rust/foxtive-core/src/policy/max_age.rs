//! An age limit: a message older than `max_age` is dead-lettered untried
//! (a price quote or a one-time code is worthless once stale, and running
//! it late does harm).
//!
//! The age is the time from when the publisher stamped the message (the
//! `x-foxtive-published-at` header: Unix seconds, integer, float or digits)
//! to when the core received it. A message without the stamp has no known
//! age and is let through.

use std::any::Any;
use std::time::{Duration, Instant};

use super::{Hooks, Policy, Refusal};
use crate::message::{header, Delivery, HeaderValue};
use crate::{Error, Result};

/// The header holding the publish time, in Unix seconds.
pub const PUBLISHED_AT: &str = "x-foxtive-published-at";

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MaxAge {
    max_age: Duration,
}

impl MaxAge {
    pub fn new(max_age: Duration) -> Result<Self> {
        if max_age.is_zero() {
            return Err(Error::Config("max_age: must be > 0 seconds".to_string()));
        }
        Ok(MaxAge { max_age })
    }

    /// How old the delivery was when received, if it says when it was published.
    pub fn age(delivery: &Delivery) -> Option<Duration> {
        let published = match header(&delivery.headers, PUBLISHED_AT)? {
            HeaderValue::Float(f) => *f,
            HeaderValue::Int(i) => *i as f64,
            other => other.as_u64()? as f64,
        };
        Duration::try_from_secs_f64(delivery.received_at - published).ok()
    }
}

impl Policy for MaxAge {
    fn name(&self) -> &'static str {
        "max_age"
    }

    fn hooks(&self) -> Hooks {
        Hooks {
            before: true,
            ..Hooks::default()
        }
    }

    fn before(&self, delivery: &Delivery, _now: Instant) -> Option<Refusal> {
        let age = Self::age(delivery)?;
        (age > self.max_age).then(|| Refusal {
            error_type: "MaxAge",
            message: format!(
                "{:.3}s old when received (max_age {}s)",
                age.as_secs_f64(),
                self.max_age.as_secs_f64()
            ),
            poison_pill: false,
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

    fn stamped(published_secs_ago: Option<f64>) -> Delivery {
        let mut d = Delivery::new(
            "m",
            Bytes::from_static(b"x"),
            Arc::from("q"),
            Receipt::packed(LocalReceipt(1)),
        );
        if let Some(ago) = published_secs_ago {
            d.headers.push((
                PUBLISHED_AT.to_string(),
                HeaderValue::Float(d.received_at - ago),
            ));
        }
        d
    }

    #[test]
    fn refuses_only_messages_older_than_the_limit() {
        let p = MaxAge::new(Duration::from_secs(60)).unwrap();
        let now = Instant::now();
        assert_eq!(p.before(&stamped(Some(5.0)), now), None);
        assert_eq!(p.before(&stamped(None), now), None);
        let refusal = p.before(&stamped(Some(120.0)), now).unwrap();
        assert_eq!(refusal.error_type, "MaxAge");
        assert!(!refusal.poison_pill);
        // A stamp from the future (clock skew) is not an age.
        assert_eq!(p.before(&stamped(Some(-30.0)), now), None);
    }

    #[test]
    fn reads_integer_and_text_stamps() {
        let mut d = stamped(None);
        d.headers.push((
            PUBLISHED_AT.to_string(),
            HeaderValue::Str(format!("{}", d.received_at as u64 - 100)),
        ));
        let age = MaxAge::age(&d).unwrap();
        assert!(age >= Duration::from_secs(100) && age < Duration::from_secs(102));
        assert!(MaxAge::new(Duration::ZERO).is_err());
    }
}
