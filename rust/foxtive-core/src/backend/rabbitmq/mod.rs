//! The RabbitMQ backend, on lapin.
//!
//! A backend holds three channels: *consume* (qos + one consumer, manual
//! acks), *publish* (publisher confirms; retry copies, dead letters,
//! `publish`) and *admin* (declarations, whose failures close the channel
//! they run on), on a connection shared with the process's other backends
//! that connect the same way ([`shared`]). Together they form a [`Link`];
//! every link has an epoch, and a delivery tag is only ever acknowledged on
//! the link (epoch) it came from. When the connection or the consume channel
//! dies, the link is rebuilt in the background with the
//! [`ReconnectStrategy`](crate::policy::ReconnectStrategy) (on the same
//! connection when only the channel died), and settlements for the dead
//! epoch are dropped: the broker has already requeued those deliveries.
//!
//! Delayed retries wait in the broker, in one TTL queue per delay bucket
//! (`{retry_queue_prefix}.{ms}`) that dead-letters back to the main queue,
//! so a long delay never holds back a short one. Buckets expire when unused.

pub mod acks;
mod codec;
pub mod config;
pub mod dlq;
pub mod fields;
pub mod frames;
mod link;
pub mod nodes;
mod settle;
mod shared;
mod stats;
pub mod topology;

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use lapin::options::BasicCancelOptions;
use lapin::types::ShortString;
use lapin::uri::AMQPUri;
use lapin::BasicProperties;
use parking_lot::RwLock;
use tokio::sync::{watch, Notify};

pub use self::codec::AmqpReceipt;

/// `amqp://` / `amqps://`; built by its Python class from its typed config.
pub const KIND: super::registry::Kind = super::registry::Kind {
    name: "rabbitmq",
    type_name: "RabbitMqBackend",
    schemes: &["amqp", "amqps"],
    open: None,
};
pub use self::config::{QueueType, RabbitMqConfig};
use self::link::{BatchEnd, Link};
use self::nodes::parse_nodes;
use super::{Backend, BackendState, QueueStats, SettleItem};
use crate::message::{set_header, Delivery, HeaderValue, Outgoing};
use crate::{Error, Result};

/// Header carrying the attempt number on retry copies.
pub const ATTEMPT_HEADER: &str = "x-foxtive-attempt";
/// A link that stayed up this long proved healthy, even with nothing to do:
/// the reconnect backoff starts again from its first delay.
const HEALTHY_AFTER: Duration = Duration::from_secs(10);
/// How long `publish` waits for a lost connection to come back.
const PUBLISH_RECONNECT_WAIT: Duration = Duration::from_secs(30);

const STATE_CONNECTED: u8 = 0;
const STATE_RECONNECTING: u8 = 1;
const STATE_CLOSED: u8 = 2;

/// Round a delay to its bucket: milliseconds with two significant digits
/// (at most ±5 % off, and a bounded number of queues). `None` means no delay.
pub fn delay_bucket_ms(delay: Duration) -> Option<u64> {
    let ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
    // Sub-millisecond delays round to nothing.
    let ms = if ms == 0 && delay >= Duration::from_micros(500) {
        1
    } else {
        ms
    };
    if ms == 0 {
        return None;
    }
    // No TTL above ~49 days: the broker caps x-message-ttl at 2^32-1 ms.
    let ms = ms.min(u64::from(u32::MAX) / 2);
    let mut scale = 1u64;
    while ms / scale >= 100 {
        scale *= 10;
    }
    Some(((ms + scale / 2) / scale) * scale)
}

/// Where a prepared message goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Target {
    Main,
    Bucket(u64),
    DeadLetters,
}

/// A message ready for `basic.publish` on the default exchange.
struct Prepared {
    target: Target,
    properties: BasicProperties,
    body: Bytes,
}

struct Shared {
    config: RabbitMqConfig,
    name: Arc<str>,
    /// The broker nodes; connections go round them (the node the last
    /// connection was on is kept by the shared connection's hub).
    nodes: Vec<AMQPUri>,
    redacted_url: String,
    /// Secrets to scrub from any error text.
    secrets: Vec<String>,
    retry_prefix: String,
    dlq_name: String,
    link: RwLock<Option<Arc<Link>>>,
    next_epoch: AtomicU64,
    link_changed: watch::Sender<u64>,
    state: AtomicU8,
    reconnecting: AtomicBool,
    reconnect_attempts: AtomicU64,
    consecutive_failures: AtomicU32,
    closed: AtomicBool,
    stopped: AtomicBool,
    connect_lock: tokio::sync::Mutex<()>,
    closing: Notify,
}

/// The RabbitMQ backend. Cheap to share: clones see the same connection.
#[derive(Clone)]
pub struct RabbitMqBackend {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for RabbitMqBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RabbitMqBackend")
            .field("url", &self.shared.redacted_url)
            .field("queue", &self.shared.config.queue_name)
            .finish()
    }
}

impl RabbitMqBackend {
    /// Check the settings and the URL; nothing is connected yet.
    pub fn new(url: &str, config: RabbitMqConfig) -> Result<Self> {
        Self::with_urls(&[url], config)
    }

    /// Like [`RabbitMqBackend::new`] with several nodes (each URL may also
    /// list several hosts, comma-separated): connections go round them,
    /// starting from a random one, the node just lost tried last.
    pub fn with_urls(urls: &[&str], config: RabbitMqConfig) -> Result<Self> {
        config.validate()?;
        let parsed = parse_nodes(urls)?;
        let mut uris = parsed.uris;
        for uri in &mut uris {
            if let Some(hb) = config.heartbeat {
                uri.query.heartbeat = Some(hb);
            }
            // frame_max is left to the broker (unless the URL sets it): a
            // smaller one makes the broker send content headers bigger than
            // lapin accepts, and lapin drops the whole connection for it.
        }
        let redacted_url = parsed.redacted;
        let secrets = parsed.secrets;
        let retry_prefix = config.retry_prefix();
        let dlq_name = config.dlq_name();
        Ok(RabbitMqBackend {
            shared: Arc::new(Shared {
                name: Arc::from(config.queue_name.as_str()),
                config,
                nodes: uris,
                redacted_url,
                secrets,
                retry_prefix,
                dlq_name,
                link: RwLock::new(None),
                next_epoch: AtomicU64::new(1),
                link_changed: watch::channel(0).0,
                state: AtomicU8::new(STATE_CLOSED),
                reconnecting: AtomicBool::new(false),
                reconnect_attempts: AtomicU64::new(0),
                consecutive_failures: AtomicU32::new(0),
                closed: AtomicBool::new(false),
                stopped: AtomicBool::new(false),
                connect_lock: tokio::sync::Mutex::new(()),
                closing: Notify::new(),
            }),
        })
    }

    pub fn config(&self) -> &RabbitMqConfig {
        &self.shared.config
    }

    /// The URL with its password replaced by `***`.
    pub fn redacted_url(&self) -> &str {
        &self.shared.redacted_url
    }

    /// Reconnection attempts made since the backend was created.
    pub fn reconnect_attempts(&self) -> u64 {
        self.shared.reconnect_attempts.load(Ordering::Relaxed)
    }

    /// Failed reconnection attempts since the last success.
    pub fn consecutive_failures(&self) -> u32 {
        self.shared.consecutive_failures.load(Ordering::Relaxed)
    }

    /// The epoch of the current link (0 before the first connection); it
    /// grows by one with every reconnection.
    pub fn epoch(&self) -> u64 {
        self.shared.current().map_or(0, |l| l.epoch)
    }

    /// The dead-letter queue's name.
    pub fn dead_letter_queue(&self) -> &str {
        &self.shared.dlq_name
    }

    /// The name of the delay-bucket queue a retry after `delay` waits in.
    pub fn retry_queue_for(&self, delay: Duration) -> Option<String> {
        delay_bucket_ms(delay).map(|ms| self.shared.bucket_name(ms))
    }

    /// Force the current connection closed, as a broker failure would
    /// (for tests of the reconnect path). The connection is shared with the
    /// process's other backends on the same broker and settings: they
    /// reconnect too.
    pub async fn break_connection(&self) -> Result<()> {
        if let Some(link) = self.shared.current() {
            link.conn
                .close(
                    320,
                    ShortString::from("foxtive: connection broken on request"),
                )
                .await
                .map_err(|e| self.shared.lapin_err("close", &e))?;
        }
        Ok(())
    }
}

impl Shared {
    fn current(&self) -> Option<Arc<Link>> {
        self.link.read().clone()
    }

    fn bucket_name(&self, ms: u64) -> String {
        format!("{}.{ms}", self.retry_prefix)
    }

    /// Whether `queue` is one of this backend's delay buckets.
    fn is_bucket(&self, queue: &str) -> bool {
        queue
            .strip_prefix(self.retry_prefix.as_str())
            .and_then(|rest| rest.strip_prefix('.'))
            .is_some_and(|ms| !ms.is_empty() && ms.bytes().all(|b| b.is_ascii_digit()))
    }

    fn scrub(&self, text: String) -> String {
        crate::redact::scrub(text, &self.secrets)
    }

    fn lapin_err(&self, what: &str, e: &lapin::Error) -> Error {
        let text = self.scrub(format!("{what} on {}: {e}", self.redacted_url));
        if e.is_io_error() || e.is_amqp_hard_error() || e.is_runtime_shutdown_error() {
            Error::ConnectionLost(text)
        } else {
            Error::Backend(text)
        }
    }

    fn set_state(&self, state: u8) {
        self.state.store(state, Ordering::Release);
    }
}

fn new_message_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

#[async_trait]
impl Backend for RabbitMqBackend {
    fn name(&self) -> &str {
        &self.shared.name
    }

    async fn connect(&self) -> Result<()> {
        let s = &self.shared;
        s.closed.store(false, Ordering::Release);
        s.stopped.store(false, Ordering::Release);
        let _guard = s.connect_lock.lock().await;
        if let Some(link) = s.current() {
            if link.alive() && !link.cancelled.load(Ordering::Acquire) {
                return Ok(());
            }
        }
        let link = s.build_link(true).await?;
        if s.install(link).is_none() {
            return Err(Error::Shutdown);
        }
        Ok(())
    }

    async fn receive(&self, max: usize, wait: Duration) -> Result<Vec<Delivery>> {
        let s = &self.shared;
        let deadline = tokio::time::Instant::now() + wait;
        let mut raw = Vec::with_capacity(max.min(4096));
        loop {
            let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
            let link = match s.live_link(remaining).await {
                Ok(link) => link,
                Err(Error::Shutdown) => return Err(Error::Shutdown),
                // Still reconnecting: nothing to hand out yet.
                Err(_) => return Ok(Vec::new()),
            };
            let Some(consumer) = link.consumer.as_ref() else {
                return Ok(Vec::new());
            };
            if link.cancelled.load(Ordering::Acquire) {
                return Ok(Vec::new());
            }
            if !link.proved.load(Ordering::Relaxed) && link.born.elapsed() >= HEALTHY_AFTER {
                s.note_healthy(&link);
            }
            let gathered = tokio::time::timeout_at(
                deadline,
                Shared::next_batch(consumer, max, &mut raw, true),
            )
            .await;
            let end = match gathered {
                Err(_) => return Ok(Vec::new()),
                Ok(end) => end,
            };
            match end {
                BatchEnd::Open => {}
                BatchEnd::Cancelled => {
                    if !link.cancelled.load(Ordering::Acquire) {
                        s.link_failed(link.epoch, "the broker cancelled the consumer");
                    }
                }
                BatchEnd::Failed(why) => s.link_failed(link.epoch, &s.scrub(why)),
            }
            if raw.is_empty() {
                if tokio::time::Instant::now() >= deadline {
                    return Ok(Vec::new());
                }
                continue;
            }
            s.note_healthy(&link);
            let received_at = crate::clock::unix_now();
            return Ok(raw
                .drain(..)
                .map(|d| s.to_delivery(&link, d, received_at))
                .collect());
        }
    }

    async fn settle(&self, batch: Vec<SettleItem>) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        self.shared.settle_batch(batch).await
    }

    async fn publish(&self, messages: Vec<Outgoing>) -> Result<Vec<String>> {
        let s = &self.shared;
        if messages.iter().any(|m| m.dedup.is_some()) {
            return Err(Error::Config(
                "dedup_key: RabbitMQ keeps no state to deduplicate with (an App \
                 deduplicates through its Redis result store: results='redis://...')"
                    .to_string(),
            ));
        }
        if !s.config.has_priorities() && messages.iter().any(|m| m.priority.is_some()) {
            return Err(Error::Config(format!(
                "priority: queue {:?} has no priorities (RabbitMQ would ignore them); \
                 declare it with RabbitMqConsumerConfig(max_priority=10)",
                s.config.queue_name
            )));
        }
        if s.closed.load(Ordering::Acquire) || s.current().is_none() {
            // Publishing on its own (no pool running, or after it closed the
            // backend): connect without consuming.
            let _guard = s.connect_lock.lock().await;
            if s.closed.load(Ordering::Acquire) || s.current().is_none() {
                s.stopped.store(true, Ordering::Release);
                s.closed.store(false, Ordering::Release);
                let link = s.build_link(false).await?;
                if s.install(link).is_none() {
                    return Err(Error::Shutdown);
                }
            }
        }
        let link = s.live_link(PUBLISH_RECONNECT_WAIT).await?;
        let frame_max = link.conn.configuration().frame_max() as usize;
        let mut ids = Vec::with_capacity(messages.len());
        let mut prepared = Vec::with_capacity(messages.len());
        for mut out in messages {
            let id = out.message_id.take().unwrap_or_else(new_message_id);
            let needed = self::frames::header_frame_len(&out, &id);
            if frame_max > 0 && needed > frame_max {
                // Sent anyway, the broker would close the shared connection.
                return Err(Error::Backend(format!(
                    "publish: headers and properties need about {needed} bytes in one frame; \
                     the broker allows {frame_max} (frame_max): make the headers smaller \
                     (put large data in the body)"
                )));
            }
            if out.attempt > 1 {
                set_header(
                    &mut out.headers,
                    ATTEMPT_HEADER,
                    HeaderValue::Int(i64::from(out.attempt)),
                );
            }
            let target = out
                .delay
                .and_then(delay_bucket_ms)
                .map_or(Target::Main, Target::Bucket);
            prepared.push(Prepared {
                target,
                properties: s.properties_for(&out, &id, None),
                body: out.body,
            });
            ids.push(id);
        }
        for r in s.publish_confirmed(&link, prepared).await {
            r?;
        }
        Ok(ids)
    }

    async fn stop_receiving(&self) -> Result<()> {
        let s = &self.shared;
        s.stopped.store(true, Ordering::Release);
        let Some(link) = s.current() else {
            return Ok(());
        };
        if link.cancelled.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        let Some(consumer) = link.consumer.as_ref() else {
            return Ok(());
        };
        if !link.alive() {
            return Ok(());
        }
        if let Err(e) = link
            .consume
            .basic_cancel(
                ShortString::from(s.config.consumer_tag.as_str()),
                BasicCancelOptions::default(),
            )
            .await
        {
            let err = s.lapin_err("basic.cancel", &e);
            s.link_failed(link.epoch, &err.to_string());
            return Err(err);
        }
        // Deliveries that arrived before the cancel and were never handed
        // out go straight back to the queue.
        let mut left = Vec::new();
        let _ = Shared::next_batch(consumer, usize::MAX, &mut left, false).await;
        let tags: Vec<u64> = left.iter().map(|d| d.delivery_tag).collect();
        if !tags.is_empty() {
            tracing::debug!(queue = %s.name, n = tags.len(), "requeueing buffered deliveries");
            s.requeue_tags(&link, tags).await?;
        }
        Ok(())
    }

    async fn close(&self) -> Result<()> {
        let s = &self.shared;
        s.closed.store(true, Ordering::Release);
        s.closing.notify_waiters();
        s.set_state(STATE_CLOSED);
        let link = s.link.write().take();
        if let Some(link) = link {
            link.dead.store(true, Ordering::Release);
            // Only this backend's channels: other backends may share the
            // connection, which closes with its last user.
            link.close_channels("foxtive: closing").await;
            let conn = link.conn.clone();
            drop(link);
            self::shared::AmqpConn::release(conn).await;
        }
        Ok(())
    }

    fn state(&self) -> BackendState {
        match self.shared.state.load(Ordering::Acquire) {
            STATE_CONNECTED => BackendState::Connected,
            STATE_RECONNECTING => BackendState::Reconnecting,
            _ => BackendState::Closed,
        }
    }

    fn reconnect_attempts(&self) -> u64 {
        RabbitMqBackend::reconnect_attempts(self)
    }

    fn consecutive_failures(&self) -> u32 {
        RabbitMqBackend::consecutive_failures(self)
    }

    async fn queue_stats(&self) -> Result<Option<QueueStats>> {
        self.stats().await.map(Some)
    }

    /// Not drained while reconnecting (messages may be waiting on the broker);
    /// otherwise unknown without a round trip.
    fn is_drained(&self) -> Option<bool> {
        match self.state() {
            BackendState::Reconnecting => Some(false),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_bounded_and_close() {
        assert_eq!(delay_bucket_ms(Duration::ZERO), None);
        assert_eq!(delay_bucket_ms(Duration::from_micros(100)), None);
        assert_eq!(delay_bucket_ms(Duration::from_micros(700)), Some(1));
        assert_eq!(delay_bucket_ms(Duration::from_millis(57)), Some(57));
        assert_eq!(delay_bucket_ms(Duration::from_millis(500)), Some(500));
        assert_eq!(delay_bucket_ms(Duration::from_millis(1234)), Some(1200));
        assert_eq!(delay_bucket_ms(Duration::from_millis(1250)), Some(1300));
        assert_eq!(delay_bucket_ms(Duration::from_secs(20)), Some(20_000));
        for ms in [3u64, 999, 12_345, 987_654, 3_600_000] {
            let b = delay_bucket_ms(Duration::from_millis(ms)).unwrap();
            let err = (b as f64 - ms as f64).abs() / ms as f64;
            assert!(err <= 0.05, "{ms} -> {b}");
        }
        assert!(delay_bucket_ms(Duration::from_secs(u64::MAX / 4)).is_some());
    }

    #[test]
    fn url_errors_never_show_the_password() {
        let err =
            RabbitMqBackend::new("amqp://u:hunter2@[bad", RabbitMqConfig::new("q")).unwrap_err();
        let text = err.to_string();
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.contains("url"), "{text}");
    }

    #[test]
    fn debug_is_redacted() {
        let b = RabbitMqBackend::new(
            "amqp://u:hunter2@localhost:5672/%2f",
            RabbitMqConfig::new("q"),
        )
        .unwrap();
        let text = format!("{b:?}");
        assert!(!text.contains("hunter2"), "{text}");
        let encoded = RabbitMqBackend::new("amqp://u:p%40ss@h/", RabbitMqConfig::new("q")).unwrap();
        assert_eq!(encoded.shared.scrub("p%40ss or p@ss".into()), "*** or ***");
        assert_eq!(b.shared.scrub("x hunter2 y".into()), "x *** y");
    }
}
