//! Settings of the Redis Streams backend, validated once.

use std::time::Duration;

use crate::policy::ReconnectStrategy;
use crate::{Error, Result};

/// How a Redis Streams consumer reads, reclaims, trims and dead-letters.
#[derive(Debug, Clone, PartialEq)]
pub struct RedisStreamConfig {
    pub stream_name: String,
    pub group_name: String,
    /// Unique per process: a second process with the same name would share
    /// (and re-read) this one's pending entries.
    pub consumer_name: String,
    /// XREADGROUP COUNT: most entries read in one round trip.
    pub batch_size: usize,
    /// XREADGROUP BLOCK: longest wait for a new entry in one read.
    pub block: Duration,
    /// Entries pending longer than this in any consumer are taken over.
    pub claim_idle: Duration,
    /// How often this consumer looks for entries to take over.
    pub claim_interval: Duration,
    /// Approximate stream length cap applied on every XADD (`MAXLEN ~`).
    pub maxlen: Option<u64>,
    /// XDEL entries once acknowledged, so the stream does not grow.
    pub delete_on_ack: bool,
    pub dead_letter_stream: String,
    /// Sorted set holding delayed messages (retries, delayed publishes).
    pub delayed_key: String,
    /// An entry delivered more often than this without being settled is a
    /// poison pill: it goes to the dead-letter stream instead of a handler.
    pub max_deliveries: u32,
    pub reconnect: ReconnectStrategy,
}

/// Longest `claim_interval` chosen by default.
const DEFAULT_CLAIM_INTERVAL_CAP: Duration = Duration::from_secs(15);
/// Shortest `claim_idle` / `claim_interval` accepted: below this, reclaim
/// would fight the heartbeat that keeps live entries fresh.
const MIN_CLAIM: Duration = Duration::from_millis(100);

impl Default for RedisStreamConfig {
    fn default() -> Self {
        RedisStreamConfig::new("worker_stream", "worker_group")
    }
}

impl RedisStreamConfig {
    /// Defaults for a stream and group; everything else derived from them.
    pub fn new(stream_name: &str, group_name: &str) -> Self {
        let claim_idle = Duration::from_secs(60);
        RedisStreamConfig {
            stream_name: stream_name.to_string(),
            group_name: group_name.to_string(),
            consumer_name: default_consumer_name(),
            batch_size: 100,
            block: Duration::from_millis(1000),
            claim_idle,
            claim_interval: default_claim_interval(claim_idle),
            maxlen: None,
            delete_on_ack: true,
            dead_letter_stream: format!("{stream_name}:dlq"),
            delayed_key: format!("{stream_name}:delayed"),
            max_deliveries: 10,
            reconnect: ReconnectStrategy::default(),
        }
    }

    /// Check every setting; the error names the setting and what is allowed.
    pub fn validate(&self) -> Result<()> {
        let non_empty = |name: &str, value: &str| {
            if value.is_empty() {
                Err(Error::Config(format!("{name}: must be a non-empty string")))
            } else {
                Ok(())
            }
        };
        non_empty("stream_name", &self.stream_name)?;
        non_empty("group_name", &self.group_name)?;
        non_empty("consumer_name", &self.consumer_name)?;
        non_empty("dead_letter_stream", &self.dead_letter_stream)?;
        non_empty("delayed_key", &self.delayed_key)?;
        if self.dead_letter_stream == self.stream_name {
            return Err(Error::Config(
                "dead_letter_stream: must differ from stream_name".to_string(),
            ));
        }
        if self.delayed_key == self.stream_name || self.delayed_key == self.dead_letter_stream {
            return Err(Error::Config(
                "delayed_key: must differ from stream_name and dead_letter_stream".to_string(),
            ));
        }
        if !(1..=100_000).contains(&self.batch_size) {
            return Err(Error::Config(format!(
                "batch_size: must be between 1 and 100000, got {}",
                self.batch_size
            )));
        }
        if self.block > Duration::from_secs(3600) {
            return Err(Error::Config(format!(
                "block_ms: must be between 0 and 3600000, got {}",
                self.block.as_millis()
            )));
        }
        if self.claim_idle < MIN_CLAIM {
            return Err(Error::Config(format!(
                "claim_idle: must be >= {} seconds, got {}",
                MIN_CLAIM.as_secs_f64(),
                self.claim_idle.as_secs_f64()
            )));
        }
        if self.claim_interval < MIN_CLAIM {
            return Err(Error::Config(format!(
                "claim_interval: must be >= {} seconds, got {}",
                MIN_CLAIM.as_secs_f64(),
                self.claim_interval.as_secs_f64()
            )));
        }
        if self.maxlen == Some(0) {
            return Err(Error::Config(
                "maxlen: must be >= 1 (or None for no trimming)".to_string(),
            ));
        }
        if self.max_deliveries == 0 {
            return Err(Error::Config("max_deliveries: must be >= 1".to_string()));
        }
        Ok(())
    }

    /// Time between two heartbeats of the entries this consumer holds: well
    /// under `claim_idle`, so no peer mistakes a live entry for an orphan.
    pub(crate) fn heartbeat_interval(&self) -> Duration {
        (self.claim_idle / 3).max(Duration::from_millis(30))
    }
}

/// `claim_idle / 4`, capped at 15 s, at least 100 ms.
pub fn default_claim_interval(claim_idle: Duration) -> Duration {
    (claim_idle / 4).clamp(MIN_CLAIM, DEFAULT_CLAIM_INTERVAL_CAP)
}

/// `host-pid-random`: unique per process, readable in `XINFO CONSUMERS`.
pub fn default_consumer_name() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_string())
                .filter(|h| !h.is_empty())
        })
        .unwrap_or_else(|| "host".to_string());
    let tag: u32 = rand::random();
    format!("{host}-{}-{tag:08x}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_derived() {
        let c = RedisStreamConfig::default();
        c.validate().unwrap();
        assert_eq!(c.dead_letter_stream, "worker_stream:dlq");
        assert_eq!(c.claim_interval, Duration::from_secs(15));
        assert_eq!(
            default_claim_interval(Duration::from_secs(2)),
            Duration::from_millis(500)
        );
        assert_ne!(default_consumer_name(), default_consumer_name());
    }

    #[test]
    fn bad_values_name_the_setting() {
        let cases = [
            (
                "batch_size",
                RedisStreamConfig {
                    batch_size: 0,
                    ..Default::default()
                },
            ),
            (
                "claim_idle",
                RedisStreamConfig {
                    claim_idle: Duration::from_millis(1),
                    ..Default::default()
                },
            ),
            (
                "dead_letter_stream",
                RedisStreamConfig {
                    dead_letter_stream: "worker_stream".to_string(),
                    ..Default::default()
                },
            ),
            (
                "maxlen",
                RedisStreamConfig {
                    maxlen: Some(0),
                    ..Default::default()
                },
            ),
            (
                "max_deliveries",
                RedisStreamConfig {
                    max_deliveries: 0,
                    ..Default::default()
                },
            ),
        ];
        for (name, c) in cases {
            assert!(
                matches!(c.validate(), Err(Error::Config(m)) if m.starts_with(name)),
                "{name}"
            );
        }
    }
}
