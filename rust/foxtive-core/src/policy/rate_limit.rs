//! Rate limiting: admission waits for a permit; it never fails a message for
//! being early. Local limits use governor (GCRA, in process). A shared limit
//! runs the same GCRA in Redis, one Lua call per permit, with the server's
//! clock, so every process and machine draws from one budget.

use std::any::Any;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use governor::clock::DefaultClock;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter as Governor};

use super::ReconnectStrategy;
use super::{Admit, Hooks, Pace, Policy};
use crate::backend::redis_streams::link::Link;
use crate::redact::{query_pairs, redact_url};
use crate::redis_url::is_cluster_url;
use crate::{Error, Result};

type Local = Governor<NotKeyed, InMemoryState, DefaultClock>;

/// How long asking the shared bucket for a permit may take (connecting
/// included) before the permit falls back to the local limit: a permit must
/// not hang on a Redis that is away.
const PERMIT_TIMEOUT: Duration = Duration::from_secs(2);

/// GCRA over one key. ARGV: emission interval (µs), burst. Returns the
/// microseconds to wait: 0 when the permit was granted.
const GCRA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tolerance = interval * (tonumber(ARGV[2]) - 1)
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local wait = tat - tolerance - now
if wait > 0 then return wait end
local ttl = math.ceil((tat + interval - now) / 1000) + 1000
redis.call('SET', KEYS[1], tostring(tat + interval), 'PX', ttl)
return 0
"#;

/// What a pool's rate limit is.
#[derive(Clone, PartialEq)]
pub struct RateLimitConfig {
    pub per_second: f64,
    pub burst: u32,
    /// `(redis_url, key)` to share the limit through Redis.
    pub shared: Option<(String, String)>,
}

// By hand: the shared URL may hold a password.
impl std::fmt::Debug for RateLimitConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimitConfig")
            .field("per_second", &self.per_second)
            .field("burst", &self.burst)
            .field(
                "shared",
                &self.shared.as_ref().map(|(u, k)| (redact_url(u), k)),
            )
            .finish()
    }
}

struct Shared {
    /// The process's command connection to that Redis, shared with the
    /// Redis Streams backends on it (one connection, one reconnect gate).
    link: Link,
    key: String,
    url: String,
    script: redis::Script,
    interval_us: u64,
}

pub struct RateLimiter {
    local: Local,
    shared: Option<Shared>,
    burst: u32,
    per_second: f64,
    waits: Waits,
}

/// Admissions that had to wait for their permit, and how long they waited
/// in all: a pool slowed by its limit shows it here, not as a mystery.
#[derive(Debug, Default)]
struct Waits {
    count: AtomicU64,
    micros: AtomicU64,
}

/// What [`RateLimiter::waits`] reports.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimitWaits {
    /// Permits that were not free at once.
    pub waits: u64,
    /// Seconds spent waiting for them, in all.
    pub wait_seconds: f64,
}

impl std::fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiter")
            .field("per_second", &self.per_second)
            .field("burst", &self.burst)
            .field("shared", &self.shared.as_ref().map(|s| (&s.url, &s.key)))
            .finish()
    }
}

impl RateLimiter {
    pub fn from_config(config: &RateLimitConfig) -> Result<Self> {
        match &config.shared {
            None => Self::new(config.per_second, config.burst),
            Some((url, key)) => Self::shared(config.per_second, config.burst, url, key),
        }
    }

    /// A limit for this process alone.
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
            local: Governor::direct(quota),
            shared: None,
            burst,
            per_second,
            waits: Waits::default(),
        })
    }

    /// A limit shared by everything that uses the same Redis `key`. While
    /// Redis cannot be reached, the process falls back to the same limit
    /// locally (logged), so work slows down rather than stops or floods.
    pub fn shared(per_second: f64, burst: u32, redis_url: &str, key: &str) -> Result<Self> {
        let mut limiter = Self::new(per_second, burst)?;
        // Any Redis URL, cluster ones included: the bucket is one key, so
        // it lives on one shard whatever its slot.
        // `?cluster=true` on a node's URL, as the backend reads it.
        let cluster = is_cluster_url(redis_url)
            || query_pairs(redis_url).iter().any(|(k, v)| {
                k == "cluster" && matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes")
            });
        // The backends' default strategy, so that it shares their connection.
        let link = Link::named(
            redis_url,
            ReconnectStrategy::default(),
            cluster,
            "redis_url",
        )?;
        if key.is_empty() {
            return Err(Error::Config("key: must be a non-empty string".to_string()));
        }
        limiter.shared = Some(Shared {
            url: link.url.clone(),
            link,
            key: key.to_string(),
            script: redis::Script::new(GCRA),
            interval_us: ((1_000_000.0 / per_second).round() as u64).max(1),
        });
        Ok(limiter)
    }

    pub fn burst(&self) -> u32 {
        self.burst
    }

    pub fn is_shared(&self) -> bool {
        self.shared.is_some()
    }

    /// Admissions that waited for a permit, and the time they waited.
    pub fn waits(&self) -> RateLimitWaits {
        RateLimitWaits {
            waits: self.waits.count.load(Ordering::Relaxed),
            wait_seconds: self.waits.micros.load(Ordering::Relaxed) as f64 / 1e6,
        }
    }

    fn waited(&self, since: Instant) {
        self.waits.count.fetch_add(1, Ordering::Relaxed);
        let us = u64::try_from(since.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.waits.micros.fetch_add(us, Ordering::Relaxed);
    }

    /// Wait for one permit.
    pub async fn until_ready(&self) {
        let Some(shared) = &self.shared else {
            // A free permit is taken at once and is not a wait.
            if self.local.check().is_ok() {
                return;
            }
            let since = Instant::now();
            self.local.until_ready().await;
            self.waited(since);
            return;
        };
        let since = Instant::now();
        let mut waited = false;
        loop {
            match shared.try_acquire(self.burst).await {
                Ok(Duration::ZERO) => break,
                Ok(wait) => {
                    waited = true;
                    tokio::time::sleep(wait).await
                }
                Err(e) => {
                    tracing::warn!(redis = %shared.url, error = %e,
                        "shared rate limit unavailable; limiting locally");
                    if self.local.check().is_err() {
                        self.local.until_ready().await;
                        waited = true;
                    }
                    break;
                }
            }
        }
        if waited {
            self.waited(since);
        }
    }
}

/// The limiter as an engine policy: a fetch asks for at most a burst, and
/// every received delivery waits for its permit before it is admitted.
impl Policy for RateLimiter {
    fn name(&self) -> &'static str {
        "rate_limit"
    }

    fn hooks(&self) -> Hooks {
        Hooks {
            admit: true,
            pace: true,
            ..Hooks::default()
        }
    }

    fn admit(&self, _now: std::time::Instant) -> Admit {
        Admit::Allow(self.burst as usize)
    }

    fn pace(&self) -> Pace<'_> {
        Box::pin(self.until_ready())
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

impl Shared {
    async fn try_acquire(&self, burst: u32) -> Result<Duration> {
        let failed = |what: String| Error::Backend(format!("redis {}: {what}", self.url));
        let ask = async {
            let (gen, mut conn) = self.link.writer().await?;
            let reply: std::result::Result<u64, _> = self
                .script
                .key(&self.key)
                .arg(self.interval_us)
                .arg(burst)
                .invoke_async(&mut conn)
                .await;
            reply.map_err(|e| {
                let err = self.link.error("rate limit", &e);
                if err.is_connection() {
                    // Reconnected by whoever uses it next, after the delay.
                    self.link.lost(gen, &err);
                }
                failed(format!("{:?}", e.kind()))
            })
        };
        let wait_us = tokio::time::timeout(PERMIT_TIMEOUT, ask)
            .await
            .map_err(|_| failed(format!("no answer within {}s", PERMIT_TIMEOUT.as_secs())))??;
        Ok(Duration::from_micros(wait_us))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn counts_the_admissions_that_waited_and_for_how_long() {
        let limiter = RateLimiter::new(20.0, 2).unwrap();
        limiter.until_ready().await;
        limiter.until_ready().await;
        assert_eq!(limiter.waits().waits, 0, "a burst's permits are free");
        limiter.until_ready().await;
        limiter.until_ready().await;
        let w = limiter.waits();
        assert_eq!(w.waits, 2);
        // Two permits at 20/s after the burst: about 50 ms each.
        assert!(w.wait_seconds > 0.02, "{w:?}");
    }
}
