//! Settings of the Redis Streams backend, validated once.

use std::time::Duration;

use crate::policy::ReconnectStrategy;
use crate::redis_url::{hash_tag, slot_of, SLOTS};
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
    /// Talk to a Redis Cluster (also implied by a `redis+cluster://` URL):
    /// every key of the queue carries one hash tag (see [`Self::layout`]).
    pub cluster: bool,
    /// One logical queue over this many streams, each with its own hash tag
    /// (so, on a cluster, spread over the masters); consumers read them all.
    pub partitions: u16,
    /// Publishes, retry and dead-letter copies wait (`WAIT`) until this many
    /// replicas have them before they count as done; 0: no waiting.
    pub wait_replicas: u32,
    /// How long one `WAIT` may take; fewer replicas by then is an error.
    pub wait_timeout: Duration,
}

/// Most partitions of one queue.
pub const MAX_PARTITIONS: u16 = 1024;

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
            cluster: false,
            partitions: 1,
            wait_replicas: 0,
            wait_timeout: Duration::from_secs(1),
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
        if !(1..=MAX_PARTITIONS).contains(&self.partitions) {
            return Err(Error::Config(format!(
                "partitions: must be between 1 and {MAX_PARTITIONS}, got {}",
                self.partitions
            )));
        }
        if self.wait_replicas > 64 {
            return Err(Error::Config(format!(
                "wait_replicas: must be between 0 and 64, got {}",
                self.wait_replicas
            )));
        }
        if self.wait_timeout.is_zero() || self.wait_timeout > Duration::from_secs(60) {
            return Err(Error::Config(format!(
                "wait_timeout: must be > 0 and <= 60 seconds, got {}",
                self.wait_timeout.as_secs_f64()
            )));
        }
        self.layout().map(|_| ())
    }

    /// The streams this queue uses, one config per partition, with the
    /// keys each one touches (stream, delayed set, dead-letter stream,
    /// dedup keys `<stream>:dedup:*`) all in one hash slot:
    ///
    /// * one partition, not a cluster: the names as configured
    ///   (`orders`, `orders:delayed`, `orders:dlq`);
    /// * one partition on a cluster: the stream name wrapped in a hash tag
    ///   unless it has one (`{orders}`, `{orders}:delayed`, `{orders}:dlq`);
    /// * `partitions = N`: partition `i` is `{orders:p<i>}` (or
    ///   `{orders:p<i>.<k>}`, the first `k` whose slot falls in the `i`-th
    ///   of `N` equal slot ranges, so that partitions spread over masters
    ///   that own contiguous ranges), with `:delayed` / `:dlq` after it.
    ///
    /// A dead-letter stream or delayed set given explicitly must share the
    /// stream's slot on a cluster, and cannot be given with partitions.
    pub fn layout(&self) -> Result<Vec<RedisStreamConfig>> {
        let derived_dlq = self.dead_letter_stream == format!("{}:dlq", self.stream_name);
        let derived_delayed = self.delayed_key == format!("{}:delayed", self.stream_name);
        let with_stream = |stream: String| {
            let mut c = self.clone();
            if derived_dlq {
                c.dead_letter_stream = format!("{stream}:dlq");
            }
            if derived_delayed {
                c.delayed_key = format!("{stream}:delayed");
            }
            c.stream_name = stream;
            c.partitions = 1;
            c
        };
        if self.partitions <= 1 {
            if !self.cluster {
                return Ok(vec![self.clone()]);
            }
            let stream = if hash_tag(&self.stream_name).is_some() {
                self.stream_name.clone()
            } else {
                format!("{{{}}}", self.stream_name)
            };
            let c = with_stream(stream);
            let slot = slot_of(&c.stream_name);
            for (name, key) in [
                ("dead_letter_stream", &c.dead_letter_stream),
                ("delayed_key", &c.delayed_key),
            ] {
                if slot_of(key) != slot {
                    return Err(Error::Config(format!(
                        "{name}: {key:?} is in another hash slot than the stream {:?} \
                         (Redis Cluster runs a queue's scripts on one shard); leave it \
                         to its default or give it the stream's hash tag",
                        c.stream_name
                    )));
                }
            }
            return Ok(vec![c]);
        }
        if !derived_dlq {
            return Err(Error::Config(
                "dead_letter_stream: cannot be set with partitions > 1 (each partition \
                 has its own, <partition stream>:dlq)"
                    .to_string(),
            ));
        }
        if !derived_delayed {
            return Err(Error::Config(
                "delayed_key: cannot be set with partitions > 1".to_string(),
            ));
        }
        Ok((0..self.partitions)
            .map(|i| with_stream(partition_stream(&self.stream_name, i, self.partitions)))
            .collect())
    }

    /// Time between two heartbeats of the entries this consumer holds: well
    /// under `claim_idle`, so no peer mistakes a live entry for an orphan.
    pub(crate) fn heartbeat_interval(&self) -> Duration {
        (self.claim_idle / 3).max(Duration::from_millis(30))
    }
}

/// `cfg` with the URL's `partitions`, `wait_replicas`, `wait_timeout`
/// (seconds) and `cluster` query parameters applied; a value the config
/// sets differently (not to its default) is an error.
pub(crate) fn with_url_params(mut cfg: RedisStreamConfig, url: &str) -> Result<RedisStreamConfig> {
    let defaults = RedisStreamConfig::default();
    for (key, value) in crate::redact::query_pairs(url) {
        let bad = |allowed: &str| {
            Error::Config(format!(
                "{key}: the URL's ?{key}= must be {allowed}, got {value:?}"
            ))
        };
        let clash = || {
            Error::Config(format!(
                "{key}: given in the URL and in the config, differently"
            ))
        };
        match key.as_str() {
            "partitions" => {
                let n: u16 = value.parse().map_err(|_| bad("a whole number >= 1"))?;
                if cfg.partitions != defaults.partitions && cfg.partitions != n {
                    return Err(clash());
                }
                cfg.partitions = n;
            }
            "wait_replicas" => {
                let n: u32 = value.parse().map_err(|_| bad("a whole number >= 0"))?;
                if cfg.wait_replicas != defaults.wait_replicas && cfg.wait_replicas != n {
                    return Err(clash());
                }
                cfg.wait_replicas = n;
            }
            "wait_timeout" => {
                let secs: f64 = value.parse().map_err(|_| bad("a number of seconds"))?;
                if !(secs.is_finite() && secs > 0.0 && secs <= 60.0) {
                    return Err(bad("a number of seconds in (0, 60]"));
                }
                let t = Duration::from_secs_f64(secs);
                if cfg.wait_timeout != defaults.wait_timeout && cfg.wait_timeout != t {
                    return Err(clash());
                }
                cfg.wait_timeout = t;
            }
            "cluster" => match value.to_ascii_lowercase().as_str() {
                "1" | "true" | "yes" => cfg.cluster = true,
                "0" | "false" | "no" => {}
                _ => return Err(bad("true or false")),
            },
            _ => {}
        }
    }
    Ok(cfg)
}

/// The stream key of partition `i` of `n` (see [`RedisStreamConfig::layout`]).
pub fn partition_stream(name: &str, i: u16, n: u16) -> String {
    let base: String = name.chars().filter(|c| *c != '{' && *c != '}').collect();
    let n = u32::from(n.max(1));
    let lo = u32::from(SLOTS) * u32::from(i) / n;
    let hi = u32::from(SLOTS) * (u32::from(i) + 1) / n;
    // About n tries on average; the bound only keeps a loop finite.
    for k in 0..1_000_000u32 {
        let tag = if k == 0 {
            format!("{base}:p{i}")
        } else {
            format!("{base}:p{i}.{k}")
        };
        let slot = u32::from(slot_of(&tag));
        if (lo..hi).contains(&slot) {
            return format!("{{{tag}}}");
        }
    }
    format!("{{{base}:p{i}}}")
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
    fn every_key_of_a_queue_shares_one_slot() {
        let mut c = RedisStreamConfig::new("orders", "g");
        assert_eq!(c.layout().unwrap()[0].stream_name, "orders");
        c.cluster = true;
        let one = c.layout().unwrap();
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].stream_name, "{orders}");
        assert_eq!(one[0].dead_letter_stream, "{orders}:dlq");
        assert_eq!(one[0].delayed_key, "{orders}:delayed");
        c.partitions = 4;
        let parts = c.layout().unwrap();
        assert_eq!(parts.len(), 4);
        let mut slots = Vec::new();
        for (i, p) in parts.iter().enumerate() {
            let slot = slot_of(&p.stream_name);
            for key in [
                &p.dead_letter_stream,
                &p.delayed_key,
                &format!("{}:dedup:some-key", p.stream_name),
            ] {
                assert_eq!(slot_of(key), slot, "{key}");
            }
            // Partition i sits in the i-th quarter of the slot space.
            assert_eq!(
                usize::from(slot) * 4 / usize::from(SLOTS),
                i,
                "{}",
                p.stream_name
            );
            slots.push(slot);
        }
        slots.dedup();
        assert_eq!(slots.len(), 4);
        // An explicit dead-letter stream in another slot is refused.
        let mut c = RedisStreamConfig::new("orders", "g");
        c.cluster = true;
        c.dead_letter_stream = "elsewhere".to_string();
        assert!(
            matches!(c.validate(), Err(Error::Config(m)) if m.starts_with("dead_letter_stream"))
        );
        c.dead_letter_stream = "{orders}:dead".to_string();
        c.validate().unwrap();
        c.partitions = 2;
        assert!(
            matches!(c.validate(), Err(Error::Config(m)) if m.starts_with("dead_letter_stream"))
        );
    }

    #[test]
    fn url_parameters_set_the_cluster_fields() {
        let c = RedisStreamConfig::new("q", "g");
        let got = with_url_params(
            c.clone(),
            "redis+cluster://h:7000?partitions=4&wait_replicas=1&wait_timeout=0.5",
        )
        .unwrap();
        assert_eq!(got.partitions, 4);
        assert_eq!(got.wait_replicas, 1);
        assert_eq!(got.wait_timeout, Duration::from_millis(500));
        let mut two = c.clone();
        two.partitions = 2;
        assert!(matches!(
            with_url_params(two, "redis://h?partitions=4"),
            Err(Error::Config(m)) if m.starts_with("partitions")
        ));
        assert!(matches!(
            with_url_params(c, "redis://h?wait_replicas=x"),
            Err(Error::Config(m)) if m.starts_with("wait_replicas")
        ));
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
            (
                "partitions",
                RedisStreamConfig {
                    partitions: 0,
                    ..Default::default()
                },
            ),
            (
                "wait_timeout",
                RedisStreamConfig {
                    wait_timeout: Duration::ZERO,
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
