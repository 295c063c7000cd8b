//! How long to wait before reconnecting to a broker.

use std::time::Duration;

use rand::Rng;

use crate::{Error, Result};

/// Reconnect delays. Safe at any failure count: never overflows, never panics.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ReconnectStrategy {
    /// The same delay every time.
    Fixed(Duration),
    /// `min(max, initial × multiplier^(failures−1))`, then ± `jitter` × delay
    /// (jitter 0.1 spreads by ±10 %), never above `max`.
    Exponential {
        initial: Duration,
        max: Duration,
        multiplier: f64,
        jitter: f64,
    },
}

impl Default for ReconnectStrategy {
    fn default() -> Self {
        ReconnectStrategy::Exponential {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(60),
            multiplier: 2.0,
            jitter: 0.1,
        }
    }
}

impl ReconnectStrategy {
    pub fn exponential(
        initial: Duration,
        max: Duration,
        multiplier: f64,
        jitter: f64,
    ) -> Result<Self> {
        if max < initial {
            return Err(Error::Config(format!(
                "max: must be >= initial ({}s), got {}s",
                initial.as_secs_f64(),
                max.as_secs_f64()
            )));
        }
        if !multiplier.is_finite() || multiplier < 1.0 {
            return Err(Error::Config(format!(
                "multiplier: must be a finite number >= 1.0, got {multiplier}"
            )));
        }
        if !jitter.is_finite() || !(0.0..=1.0).contains(&jitter) {
            return Err(Error::Config(format!(
                "jitter: must be between 0.0 and 1.0, got {jitter}"
            )));
        }
        Ok(ReconnectStrategy::Exponential {
            initial,
            max,
            multiplier,
            jitter,
        })
    }

    pub fn fixed(delay: Duration) -> Self {
        ReconnectStrategy::Fixed(delay)
    }

    /// The delay after `failures` consecutive failures (1 = the first).
    pub fn delay(&self, failures: u32) -> Duration {
        match *self {
            ReconnectStrategy::Fixed(d) => d,
            ReconnectStrategy::Exponential {
                initial,
                max,
                multiplier,
                jitter,
            } => {
                let exponent = failures.saturating_sub(1).min(i32::MAX as u32) as i32;
                let secs = initial.as_secs_f64() * multiplier.powi(exponent);
                let base = if !secs.is_finite() || secs >= max.as_secs_f64() {
                    max.as_secs_f64()
                } else {
                    secs.max(0.0)
                };
                let spread = if jitter > 0.0 {
                    rand::rng().random_range(-jitter..=jitter)
                } else {
                    0.0
                };
                let with_jitter = (base * (1.0 + spread)).clamp(0.0, max.as_secs_f64());
                Duration::from_secs_f64(with_jitter)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_and_caps_without_overflow() {
        let s = ReconnectStrategy::exponential(
            Duration::from_secs(1),
            Duration::from_secs(60),
            2.0,
            0.0,
        )
        .unwrap();
        assert_eq!(s.delay(1), Duration::from_secs(1));
        assert_eq!(s.delay(3), Duration::from_secs(4));
        for n in [64, 1000, u32::MAX] {
            assert_eq!(s.delay(n), Duration::from_secs(60));
        }
    }

    #[test]
    fn jitter_stays_in_bounds() {
        let s = ReconnectStrategy::default();
        for _ in 0..1000 {
            let d = s.delay(2).as_secs_f64();
            assert!((1.8..=2.2).contains(&d), "{d}");
            assert!(s.delay(100) <= Duration::from_secs(60));
        }
    }

    #[test]
    fn rejects_bad_settings() {
        let one = Duration::from_secs(1);
        assert!(ReconnectStrategy::exponential(one * 2, one, 2.0, 0.1).is_err());
        assert!(ReconnectStrategy::exponential(one, one, 0.5, 0.1).is_err());
        assert!(ReconnectStrategy::exponential(one, one, 2.0, 1.5).is_err());
    }
}
