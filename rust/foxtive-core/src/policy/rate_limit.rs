//! Rate limiting on governor (GCRA): admission waits for a permit; it never
//! fails a message for being early.

use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::DefaultClock;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter as Governor};

use crate::{Error, Result};

pub struct RateLimiter {
    limiter: Governor<NotKeyed, InMemoryState, DefaultClock>,
    burst: u32,
    per_second: f64,
}

impl std::fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiter")
            .field("per_second", &self.per_second)
            .field("burst", &self.burst)
            .finish()
    }
}

impl RateLimiter {
    pub fn new(per_second: f64, burst: u32) -> Result<Self> {
        if !per_second.is_finite() || per_second <= 0.0 {
            return Err(Error::Config(format!(
                "per_second: must be a number > 0, got {per_second}"
            )));
        }
        let burst_nz = NonZeroU32::new(burst)
            .ok_or_else(|| Error::Config("burst: must be >= 1".to_string()))?;
        let period = Duration::try_from_secs_f64(1.0 / per_second)
            .ok()
            .filter(|p| !p.is_zero())
            .ok_or_else(|| Error::Config(format!("per_second: {per_second} is out of range")))?;
        let quota = Quota::with_period(period)
            .ok_or_else(|| Error::Config(format!("per_second: {per_second} is out of range")))?
            .allow_burst(burst_nz);
        Ok(RateLimiter {
            limiter: Governor::direct(quota),
            burst,
            per_second,
        })
    }

    pub fn burst(&self) -> u32 {
        self.burst
    }

    /// Wait for one permit.
    pub async fn until_ready(&self) {
        self.limiter.until_ready().await;
    }
}
