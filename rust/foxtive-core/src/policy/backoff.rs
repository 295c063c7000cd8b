//! Exponential backoff with optional jitter, safe at any attempt number.

use std::time::Duration;

use rand::Rng;

use crate::{Error, Result};

/// `delay(n) = min(max, initial × multiplier^(n−1))` for the n-th retry.
/// With jitter the delay is drawn uniformly from `[delay/2, delay]`
/// ("equal jitter"): retries of a burst spread out, and the delay never
/// exceeds `max`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    multiplier: f64,
    jitter: bool,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration, multiplier: f64, jitter: bool) -> Result<Self> {
        if max < initial {
            return Err(Error::Config(format!(
                "max_backoff: must be >= initial_backoff ({}s), got {}s",
                initial.as_secs_f64(),
                max.as_secs_f64()
            )));
        }
        if !multiplier.is_finite() || multiplier < 1.0 {
            return Err(Error::Config(format!(
                "backoff_multiplier: must be a finite number >= 1.0, got {multiplier}"
            )));
        }
        Ok(Backoff {
            initial,
            max,
            multiplier,
            jitter,
        })
    }

    pub fn initial(&self) -> Duration {
        self.initial
    }
    pub fn max(&self) -> Duration {
        self.max
    }
    pub fn multiplier(&self) -> f64 {
        self.multiplier
    }
    pub fn jitter(&self) -> bool {
        self.jitter
    }

    /// The delay before retry number `retry` (1 = the first retry), without jitter.
    pub fn base_delay(&self, retry: u32) -> Duration {
        let exponent = retry.saturating_sub(1).min(i32::MAX as u32) as i32;
        let factor = self.multiplier.powi(exponent);
        let secs = self.initial.as_secs_f64() * factor;
        if !secs.is_finite() || secs >= self.max.as_secs_f64() {
            self.max
        } else {
            Duration::from_secs_f64(secs.max(0.0))
        }
    }

    /// The delay before retry number `retry`, with jitter if enabled.
    pub fn delay(&self, retry: u32) -> Duration {
        let base = self.base_delay(retry);
        if !self.jitter || base.is_zero() {
            return base;
        }
        let half = base / 2;
        let spread = (base - half).as_nanos() as u64;
        half + Duration::from_nanos(rand::rng().random_range(0..=spread))
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(60),
            multiplier: 2.0,
            jitter: true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    #[test]
    fn doubles_then_caps() {
        let b = Backoff::new(secs(1.0), secs(60.0), 2.0, false).unwrap();
        assert_eq!(b.delay(1), secs(1.0));
        assert_eq!(b.delay(2), secs(2.0));
        assert_eq!(b.delay(3), secs(4.0));
        assert_eq!(b.delay(7), secs(60.0));
    }

    #[test]
    fn never_overflows_or_panics() {
        let b = Backoff::new(secs(1.0), secs(60.0), 10.0, true).unwrap();
        for n in [0, 1, 64, 1000, u32::MAX] {
            assert!(b.delay(n) <= secs(60.0));
        }
    }

    #[test]
    fn jitter_stays_within_half_and_full() {
        let b = Backoff::new(secs(1.0), secs(60.0), 2.0, true).unwrap();
        for _ in 0..1000 {
            let d = b.delay(3);
            assert!(d >= secs(2.0) && d <= secs(4.0), "{d:?}");
        }
    }

    #[test]
    fn rejects_bad_settings() {
        assert!(Backoff::new(secs(2.0), secs(1.0), 2.0, false).is_err());
        assert!(Backoff::new(secs(1.0), secs(2.0), 0.5, false).is_err());
        assert!(Backoff::new(secs(1.0), secs(2.0), f64::NAN, false).is_err());
    }
}
