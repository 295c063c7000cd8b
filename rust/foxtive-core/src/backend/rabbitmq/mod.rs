//! The RabbitMQ backend, on lapin.
//!
//! One connection holds three channels: *consume* (qos + one consumer,
//! manual acks), *publish* (publisher confirms; retry copies, dead letters,
//! `publish`) and *admin* (declarations, whose failures close the channel
//! they run on). Together they form a [`Link`]; every link has an epoch, and
//! a delivery tag is only ever acknowledged on the link (epoch) it came from.
//! When the connection or the consume channel dies, the link is rebuilt in
//! the background with the [`ReconnectStrategy`](crate::policy::ReconnectStrategy),
//! and settlements for the dead epoch are dropped: the broker has already
//! requeued those deliveries.
//!
//! Delayed retries wait in the broker, in one TTL queue per delay bucket
//! (`{retry_queue_prefix}.{ms}`) that dead-letters back to the main queue,
//! so a long delay never holds back a short one. Buckets expire when unused.

pub mod acks;
pub mod config;
pub mod dlq;
pub mod fields;
pub mod frames;
pub mod nodes;
pub mod topology;

use std::collections::HashMap;
use std::future::poll_fn;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use futures_core::Stream;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions,
    BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions, ExchangeDeclareOptions,
    QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{FieldTable, LongString, ShortString};
use lapin::uri::AMQPUri;
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, Consumer,
    ExchangeKind,
};
use parking_lot::{Mutex, RwLock};
use tokio::sync::{watch, Notify};

use self::acks::AckTracker;
pub use self::config::{QueueType, RabbitMqConfig};
use self::fields::{headers_from_table, strip_own_deaths, table_from_headers};
use self::nodes::parse_nodes;
use self::topology::{
    builtin_exchange_type, mismatch_text, refusal, Probe, Refusal, MAX_DECLARE_PROBES,
};
use super::{Backend, BackendState, SettleItem};
use crate::message::{
    header, set_header, Delivery, Failure, HeaderValue, Outgoing, Receipt, Settlement,
};
use crate::{Error, Result};

/// Header carrying the attempt number on retry copies.
pub const ATTEMPT_HEADER: &str = "x-foxtive-attempt";
/// Quorum queues count redeliveries in this header.
const DELIVERY_COUNT_HEADER: &str = "x-delivery-count";
/// A link that stayed up this long proved healthy, even with nothing to do:
/// the reconnect backoff starts again from its first delay.
const HEALTHY_AFTER: Duration = Duration::from_secs(10);
/// How long `publish` waits for a lost connection to come back.
const PUBLISH_RECONNECT_WAIT: Duration = Duration::from_secs(30);
/// Dead-letter error texts are cut to this many bytes (headers share one frame).
const MAX_ERROR_TEXT: usize = 8 * 1024;
/// Unused delay buckets disappear after twice their delay plus this.
const BUCKET_EXPIRY_MARGIN_MS: u64 = 60_000;

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

/// One connection and its channels, valid for one epoch.
struct Link {
    epoch: u64,
    conn: Connection,
    consume: Channel,
    consumer: Option<Mutex<Consumer>>,
    publish: tokio::sync::Mutex<Channel>,
    admin: tokio::sync::Mutex<Channel>,
    acks: tokio::sync::Mutex<AckTracker>,
    /// Properties beyond the ones a `Delivery` carries (timestamp, type,
    /// app_id…), kept by delivery tag only for messages that have them, so
    /// that retry and dead-letter copies keep them too.
    extras: Mutex<HashMap<u64, BasicProperties>>,
    /// Queue name → when this link last declared it.
    declared: Mutex<HashMap<String, Instant>>,
    dead: AtomicBool,
    cancelled: AtomicBool,
    /// When the link was built, and whether it has since proved healthy
    /// (delivered, settled or published something, or stayed up for
    /// [`HEALTHY_AFTER`]). A link that dies before proving itself counts as
    /// a failed attempt, so that a broker dropping every new connection is
    /// retried with backoff rather than in a tight loop.
    born: Instant,
    proved: AtomicBool,
}

impl Link {
    fn alive(&self) -> bool {
        !self.dead.load(Ordering::Acquire)
            && self.conn.status().connected()
            && self.consume.status().connected()
    }
}

/// What `Link::poll_batch` ended with.
enum BatchEnd {
    /// Deliveries gathered (maybe none); the consumer goes on.
    Open,
    /// The consumer was cancelled (by us or by the broker).
    Cancelled,
    /// The channel or connection failed.
    Failed(String),
}

struct Shared {
    config: RabbitMqConfig,
    name: Arc<str>,
    /// The broker nodes; connections go round them.
    nodes: Vec<AMQPUri>,
    next_node: AtomicUsize,
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
    /// starting from a random one.
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
        let first = rand::random::<u32>() as usize % uris.len();
        let retry_prefix = config.retry_prefix();
        let dlq_name = config.dlq_name();
        Ok(RabbitMqBackend {
            shared: Arc::new(Shared {
                name: Arc::from(config.queue_name.as_str()),
                config,
                nodes: uris,
                next_node: AtomicUsize::new(first),
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
    /// (for tests of the reconnect path).
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
        let mut text = text;
        for secret in &self.secrets {
            if text.contains(secret.as_str()) {
                text = text.replace(secret.as_str(), "***");
            }
        }
        text
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

    // ------------------------------------------------------------ connecting

    async fn open_channel(&self, conn: &Connection, what: &str) -> Result<Channel> {
        conn.create_channel()
            .await
            .map_err(|e| self.lapin_err(&format!("opening the {what} channel"), &e))
    }

    /// Build a link on the first node that answers, trying each node once.
    /// `close` interrupts it at once (a broker that accepts TCP and never
    /// answers must not hold a shutdown back).
    async fn build_link(&self, consume: bool) -> Result<Link> {
        let closing = self.closing.notified();
        tokio::pin!(closing);
        closing.as_mut().enable();
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::Shutdown);
        }
        tokio::select! {
            built = self.try_nodes(consume) => built,
            _ = &mut closing => Err(Error::Shutdown),
        }
    }

    /// Go round the nodes, from the one after the last tried, each within
    /// `connect_timeout`.
    async fn try_nodes(&self, consume: bool) -> Result<Link> {
        let n = self.nodes.len();
        let timeout = self.config.connect_timeout;
        let mut last = None;
        for _ in 0..n {
            let uri = &self.nodes[self.next_node.fetch_add(1, Ordering::Relaxed) % n];
            let node = format!("{}:{}", uri.authority.host, uri.authority.port);
            let err = match tokio::time::timeout(timeout, self.build_link_on(uri, consume)).await {
                Ok(Ok(link)) => return Ok(link),
                Ok(Err(e)) => e,
                Err(_) => Error::ConnectionLost(format!(
                    "connecting to {node} ({}) timed out after {}s (connect_timeout); \
                     is this the AMQP port of a running broker?",
                    self.redacted_url,
                    timeout.as_secs_f64()
                )),
            };
            if n > 1 {
                tracing::warn!(queue = %self.name, node = %node, error = %err,
                    "RabbitMQ node did not answer; trying the next one");
            }
            last = Some(err);
        }
        Err(last.unwrap_or_else(|| Error::Config("url: no broker node".to_string())))
    }

    async fn build_link_on(&self, uri: &AMQPUri, consume: bool) -> Result<Link> {
        let mut props = ConnectionProperties::default();
        if let Some(name) = &self.config.connection_name {
            props = props.with_connection_name(LongString::from(name.as_bytes().to_vec()));
        }
        let conn = Connection::connect_uri(uri.clone(), props)
            .await
            .map_err(|e| self.lapin_err("connecting", &e))?;
        let admin = self.open_channel(&conn, "admin").await?;
        let publish = self.open_channel(&conn, "publish").await?;
        publish
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| self.lapin_err("enabling publisher confirms", &e))?;
        let consume_ch = self.open_channel(&conn, "consume").await?;
        let link = Link {
            epoch: self.next_epoch.fetch_add(1, Ordering::AcqRel),
            conn,
            consume: consume_ch,
            consumer: None,
            publish: tokio::sync::Mutex::new(publish),
            admin: tokio::sync::Mutex::new(admin),
            acks: tokio::sync::Mutex::new(AckTracker::default()),
            extras: Mutex::new(HashMap::new()),
            declared: Mutex::new(HashMap::new()),
            dead: AtomicBool::new(false),
            cancelled: AtomicBool::new(!consume),
            born: Instant::now(),
            proved: AtomicBool::new(false),
        };
        self.declare_topology(&link).await?;
        if !consume {
            return Ok(link);
        }
        link.consume
            .basic_qos(self.config.prefetch_count, BasicQosOptions::default())
            .await
            .map_err(|e| self.lapin_err("basic.qos", &e))?;
        let consumer = link
            .consume
            .basic_consume(
                ShortString::from(self.config.queue_name.as_str()),
                ShortString::from(self.config.consumer_tag.as_str()),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| {
                self.lapin_err(
                    &format!("consuming from queue {:?}", self.config.queue_name),
                    &e,
                )
            })?;
        Ok(Link {
            consumer: Some(Mutex::new(consumer)),
            ..link
        })
    }

    async fn declare_topology(&self, link: &Link) -> Result<()> {
        let queue = self.config.queue_name.clone();
        if self.config.declare {
            let args = self.config.declare_arguments();
            self.ensure_queue(link, &queue, self.config.durable, &args, &[])
                .await?;
        }
        if let Some(exchange) = &self.config.exchange {
            let mut admin = link.admin.lock().await;
            let kind = match self.config.exchange_type.as_str() {
                "topic" => ExchangeKind::Topic,
                "fanout" => ExchangeKind::Fanout,
                "headers" => ExchangeKind::Headers,
                _ => ExchangeKind::Direct,
            };
            let name = ShortString::from(exchange.as_str());
            let asked = self.config.exchange_type.as_str();
            if let Some(builtin) = builtin_exchange_type(exchange) {
                // Predeclared exchanges cannot be declared; their name says their type.
                if builtin != asked {
                    return Err(Error::Config(format!(
                        "exchange '{exchange}' exists as {builtin}, config asks for {asked}"
                    )));
                }
            } else {
                let opts = ExchangeDeclareOptions {
                    durable: true,
                    ..Default::default()
                };
                let declared = admin
                    .exchange_declare(name.clone(), kind, opts, FieldTable::default())
                    .await;
                if let Err(e) = declared {
                    *admin = self.open_channel(&link.conn, "admin").await?;
                    match refusal(&e) {
                        Refusal::Inequivalent(diff) if diff.arg == "type" => {
                            return Err(Error::Config(mismatch_text("exchange", exchange, &diff)))
                        }
                        // It exists, declared by someone else with another
                        // durability or arguments, or we may not configure
                        // it: bind to it as it is.
                        Refusal::Inequivalent(_) | Refusal::AccessRefused => {}
                        Refusal::Other => {
                            return Err(
                                self.lapin_err(&format!("declaring exchange {exchange:?}"), &e)
                            )
                        }
                    }
                }
            }
            admin
                .queue_bind(
                    ShortString::from(queue.as_str()),
                    name,
                    ShortString::from(self.config.binding_key()),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(|e| {
                    self.lapin_err(&format!("binding {queue:?} to exchange {exchange:?}"), &e)
                })?;
        }
        Ok(())
    }

    /// Make sure `name` exists with `durable` and `args`. An existing queue
    /// keeps the arguments nobody asked foxtive for (read back from the
    /// broker's refusals and declared back as they are); one that
    /// contradicts what was asked is a `Config` error naming the queue and
    /// the difference, except for the arguments in `flexible`, where the
    /// existing value is taken.
    async fn ensure_queue(
        &self,
        link: &Link,
        name: &str,
        durable: bool,
        args: &crate::message::Headers,
        flexible: &[&str],
    ) -> Result<()> {
        let mut admin = link.admin.lock().await;
        if !admin.status().connected() {
            *admin = self.open_channel(&link.conn, "admin").await?;
        }
        let mut probe = Probe::new(durable, args);
        for _ in 0..MAX_DECLARE_PROBES {
            let opts = QueueDeclareOptions {
                durable: probe.durable,
                auto_delete: probe.auto_delete,
                ..Default::default()
            };
            let declared = admin
                .queue_declare(
                    ShortString::from(name),
                    opts,
                    table_from_headers(&probe.args),
                )
                .await;
            let e = match declared {
                Ok(_) => {
                    link.declared
                        .lock()
                        .insert(name.to_string(), Instant::now());
                    return Ok(());
                }
                Err(e) => e,
            };
            // A refused declaration closes the channel (the broker's close
            // may not be reflected in its status yet: open a new one anyway).
            if link.conn.status().connected() {
                *admin = self.open_channel(&link.conn, "admin").await?;
            }
            match refusal(&e) {
                Refusal::Inequivalent(diff) => probe.adopt(name, &diff, args, flexible)?,
                Refusal::AccessRefused => {
                    // Without `configure` permission an existing queue can
                    // still be used; it just cannot be checked.
                    let passive = QueueDeclareOptions {
                        passive: true,
                        ..Default::default()
                    };
                    admin
                        .queue_declare(ShortString::from(name), passive, FieldTable::default())
                        .await
                        .map_err(|_| self.lapin_err(&format!("declaring queue {name:?}"), &e))?;
                    tracing::warn!(queue = %name, "no configure permission: using the existing queue without checking its arguments");
                    link.declared
                        .lock()
                        .insert(name.to_string(), Instant::now());
                    return Ok(());
                }
                Refusal::Other => {
                    return Err(self.lapin_err(&format!("declaring queue {name:?}"), &e))
                }
            }
        }
        Err(Error::Backend(format!(
            "declaring queue {name:?}: it differs in more than {MAX_DECLARE_PROBES} arguments"
        )))
    }

    async fn ensure_target(&self, link: &Link, target: Target) -> Result<()> {
        match target {
            Target::Main => {
                if !self.config.declare
                    || link.declared.lock().contains_key(&self.config.queue_name)
                {
                    return Ok(());
                }
                let args = self.config.declare_arguments();
                self.ensure_queue(
                    link,
                    &self.config.queue_name,
                    self.config.durable,
                    &args,
                    &[],
                )
                .await
            }
            Target::DeadLetters => {
                if link.declared.lock().contains_key(&self.dlq_name) {
                    return Ok(());
                }
                // Nobody configured the dead-letter queue's durability: one
                // made elsewhere is used as it is.
                self.ensure_queue(link, &self.dlq_name, true, &Vec::new(), &["durable"])
                    .await
            }
            Target::Bucket(ms) => {
                let name = self.bucket_name(ms);
                let expires = ms.saturating_mul(2).saturating_add(BUCKET_EXPIRY_MARGIN_MS);
                // Redeclaring resets the expiry clock; do it often enough that
                // a bucket never expires with a message inside (the last
                // declare is at most (expires - ttl) / 2 old at publish time).
                let refresh = Duration::from_millis((expires - ms) / 2);
                let fresh = link
                    .declared
                    .lock()
                    .get(&name)
                    .is_some_and(|at| at.elapsed() < refresh);
                if fresh {
                    return Ok(());
                }
                let to_int = |v: u64| HeaderValue::Int(i64::try_from(v).unwrap_or(i64::MAX));
                let args = vec![
                    ("x-message-ttl".to_string(), to_int(ms)),
                    ("x-expires".to_string(), to_int(expires)),
                    (
                        "x-dead-letter-exchange".to_string(),
                        HeaderValue::Str(String::new()),
                    ),
                    (
                        "x-dead-letter-routing-key".to_string(),
                        HeaderValue::Str(self.config.queue_name.clone()),
                    ),
                ];
                // A bucket left by another version with another expiry is
                // used as it is rather than refused.
                self.ensure_queue(link, &name, true, &args, &["x-expires"])
                    .await
            }
        }
    }

    fn install(&self, link: Link) -> Option<Arc<Link>> {
        let link = Arc::new(link);
        if self.closed.load(Ordering::Acquire) {
            return None;
        }
        let old = self.link.write().replace(link.clone());
        self.set_state(STATE_CONNECTED);
        self.link_changed.send_replace(link.epoch);
        if let Some(old) = old {
            old.dead.store(true, Ordering::Release);
            close_link_later(old);
        }
        Some(link)
    }

    /// The link of `epoch` failed: rebuild it in the background.
    fn link_failed(self: &Arc<Self>, epoch: u64, why: &str) {
        if self.closed.load(Ordering::Acquire) {
            return;
        }
        if let Some(link) = self.current() {
            if link.epoch != epoch {
                return; // already replaced
            }
            if !link.dead.swap(true, Ordering::AcqRel) {
                self.count_death(&link);
            }
        }
        self.set_state(STATE_RECONNECTING);
        if self.reconnecting.swap(true, Ordering::AcqRel) {
            return;
        }
        tracing::warn!(queue = %self.name, epoch, reason = %why, "RabbitMQ link lost; reconnecting");
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn(self.clone().reconnect_loop());
            }
            Err(_) => self.reconnecting.store(false, Ordering::Release),
        }
    }

    /// The link did something useful: the reconnect backoff starts over.
    fn note_healthy(&self, link: &Link) {
        if !link.proved.swap(true, Ordering::AcqRel) {
            self.consecutive_failures.store(0, Ordering::Relaxed);
        }
    }

    /// A link died: unless it proved healthy first, that is one more failure
    /// in a row, and the next attempt waits for it.
    fn count_death(&self, link: &Link) {
        if link.born.elapsed() >= HEALTHY_AFTER {
            self.note_healthy(link);
        }
        if !link.proved.load(Ordering::Acquire) {
            let failures = self
                .consecutive_failures
                .fetch_add(1, Ordering::Relaxed)
                .saturating_add(1);
            tracing::warn!(queue = %self.name, epoch = link.epoch, failures,
                "RabbitMQ link died before doing any work; backing off");
        }
    }

    /// Wait `delay`, or less if the backend is closed meanwhile.
    async fn pause(&self, delay: Duration) {
        let closing = self.closing.notified();
        tokio::pin!(closing);
        closing.as_mut().enable();
        if self.closed.load(Ordering::Acquire) {
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = &mut closing => {}
        }
    }

    async fn reconnect_loop(self: Arc<Self>) {
        // Links that died before proving healthy are failures too.
        let owed = self.consecutive_failures.load(Ordering::Relaxed);
        if owed > 0 {
            self.pause(self.config.reconnect.delay(owed)).await;
        }
        loop {
            if self.closed.load(Ordering::Acquire) {
                break;
            }
            self.reconnect_attempts.fetch_add(1, Ordering::Relaxed);
            let built = {
                let _guard = self.connect_lock.lock().await;
                if self.current().is_some_and(|l| l.alive()) {
                    // Someone else (connect) got there first.
                    break;
                }
                let consume = !self.stopped.load(Ordering::Acquire);
                match self.build_link(consume).await {
                    Ok(link) => self.install(link).is_some(),
                    Err(e) => {
                        tracing::warn!(queue = %self.name, error = %e, "reconnecting failed");
                        false
                    }
                }
            };
            if built {
                // consecutive_failures is reset once the link proves healthy.
                tracing::info!(queue = %self.name, "RabbitMQ link rebuilt");
                break;
            }
            let failures = self
                .consecutive_failures
                .fetch_add(1, Ordering::Relaxed)
                .saturating_add(1);
            self.pause(self.config.reconnect.delay(failures)).await;
        }
        self.reconnecting.store(false, Ordering::Release);
        // A failure reported while we were finishing would have been ignored.
        if !self.closed.load(Ordering::Acquire) {
            if let Some(link) = self.current() {
                if !link.alive() {
                    self.link_failed(link.epoch, "link died while reconnecting");
                }
            }
        }
    }

    /// The live link, waiting up to `wait` for a reconnection.
    async fn live_link(self: &Arc<Self>, wait: Duration) -> Result<Arc<Link>> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut changed = self.link_changed.subscribe();
        loop {
            if self.closed.load(Ordering::Acquire) {
                return Err(Error::Shutdown);
            }
            match self.current() {
                Some(link) if link.alive() => return Ok(link),
                Some(link) => self.link_failed(link.epoch, "connection or channel closed"),
                None => self.link_failed(0, "not connected"),
            }
            let closing = self.closing.notified();
            tokio::select! {
                r = tokio::time::timeout_at(deadline, changed.changed()) => {
                    if r.is_err() {
                        return Err(Error::ConnectionLost(format!(
                            "not connected to {} (reconnecting)",
                            self.redacted_url
                        )));
                    }
                }
                _ = closing => {}
            }
        }
    }

    // ------------------------------------------------------------- receiving

    fn to_delivery(&self, link: &Link, d: lapin::message::Delivery, received_at: f64) -> Delivery {
        let props = &d.properties;
        let mut headers = props
            .headers()
            .as_ref()
            .map(headers_from_table)
            .unwrap_or_default();
        // A retry that waited in a delay bucket was dead-lettered back by
        // the broker: that is foxtive's machinery, not the handler's business.
        if !headers.is_empty() {
            strip_own_deaths(&mut headers, |q| self.is_bucket(q));
        }
        let tag = d.delivery_tag;
        let carried = header(&headers, ATTEMPT_HEADER)
            .and_then(HeaderValue::as_u64)
            .unwrap_or(1)
            .max(1);
        // Quorum queues count deliveries; a classic queue only says
        // "redelivered", which means at least one delivery before this one.
        let redeliveries = header(&headers, DELIVERY_COUNT_HEADER)
            .and_then(HeaderValue::as_u64)
            .unwrap_or(0)
            .max(u64::from(d.redelivered));
        let attempt = u32::try_from(carried.saturating_add(redeliveries)).unwrap_or(u32::MAX);
        let id = match props.message_id() {
            Some(id) => id.as_str().to_string(),
            None => format!("{}:{}:{tag}", self.config.consumer_tag, link.epoch),
        };
        if has_extras(props) {
            let mut extras = props.clone();
            extras = extras.with_headers(FieldTable::default());
            link.extras.lock().insert(tag, extras);
        }
        let short = |s: &Option<ShortString>| s.as_ref().map(|v| v.as_str().to_string());
        Delivery {
            id,
            body: Bytes::from(d.data),
            headers,
            attempt,
            queue: self.name.clone(),
            routing_key: if d.routing_key.as_str().is_empty() {
                None
            } else {
                Some(d.routing_key.as_str().to_string())
            },
            correlation_id: short(props.correlation_id()),
            content_type: short(props.content_type()),
            reply_to: short(props.reply_to()),
            priority: *props.priority(),
            received_at,
            redelivered: d.redelivered,
            receipt: Receipt::Amqp {
                delivery_tag: tag,
                epoch: link.epoch,
            },
        }
    }

    /// Gather up to `max` deliveries already buffered; pending when none is.
    async fn next_batch(
        consumer: &Mutex<Consumer>,
        max: usize,
        out: &mut Vec<lapin::message::Delivery>,
        wait_for_first: bool,
    ) -> BatchEnd {
        poll_fn(|cx| {
            let mut consumer = consumer.lock();
            loop {
                if out.len() >= max {
                    return Poll::Ready(BatchEnd::Open);
                }
                match Pin::new(&mut *consumer).poll_next(cx) {
                    Poll::Ready(Some(Ok(d))) => out.push(d),
                    Poll::Ready(Some(Err(e))) => {
                        return Poll::Ready(BatchEnd::Failed(e.to_string()))
                    }
                    Poll::Ready(None) => return Poll::Ready(BatchEnd::Cancelled),
                    Poll::Pending => {
                        return if out.is_empty() && wait_for_first {
                            Poll::Pending
                        } else {
                            Poll::Ready(BatchEnd::Open)
                        };
                    }
                }
            }
        })
        .await
    }

    // -------------------------------------------------------------- settling

    /// Send acks for `tags` on `link`: one `multiple` frame for the run that
    /// joins the settled floor, single frames for the rest.
    async fn ack_tags(self: &Arc<Self>, link: &Link, tags: Vec<u64>) -> Result<()> {
        let mut tracker = link.acks.lock().await;
        let frames = tracker.plan(tags);
        for frame in frames {
            let sent = link
                .consume
                .basic_ack(
                    frame.tag,
                    BasicAckOptions {
                        multiple: frame.multiple,
                    },
                )
                .await;
            if let Err(e) = sent {
                drop(tracker);
                let err = self.lapin_err("basic.ack", &e);
                self.link_failed(link.epoch, &err.to_string());
                return Err(err);
            }
        }
        self.note_healthy(link);
        Ok(())
    }

    async fn requeue_tags(self: &Arc<Self>, link: &Link, tags: Vec<u64>) -> Result<()> {
        let mut tracker = link.acks.lock().await;
        tracker.settled_elsewhere(tags.iter().copied());
        for tag in tags {
            let sent = link
                .consume
                .basic_nack(
                    tag,
                    BasicNackOptions {
                        multiple: false,
                        requeue: true,
                    },
                )
                .await;
            if let Err(e) = sent {
                drop(tracker);
                let err = self.lapin_err("basic.nack", &e);
                self.link_failed(link.epoch, &err.to_string());
                return Err(err);
            }
        }
        Ok(())
    }

    fn properties_for(
        &self,
        out: &Outgoing,
        id: &str,
        extras: Option<BasicProperties>,
    ) -> BasicProperties {
        let mut props = extras.unwrap_or_default();
        // A per-message expiry would cut a retry short, or drop a dead letter.
        if props.expiration().is_some() {
            props = strip_expiration(props);
        }
        props = props
            .with_delivery_mode(2)
            .with_message_id(ShortString::from(id));
        if let Some(v) = &out.correlation_id {
            props = props.with_correlation_id(ShortString::from(v.as_str()));
        }
        if let Some(v) = &out.content_type {
            props = props.with_content_type(ShortString::from(v.as_str()));
        }
        if let Some(v) = &out.reply_to {
            props = props.with_reply_to(ShortString::from(v.as_str()));
        }
        if let Some(p) = out.priority {
            props = props.with_priority(p);
        }
        if !out.headers.is_empty() {
            props = props.with_headers(table_from_headers(&out.headers));
        }
        props
    }

    fn retry_copy(
        &self,
        link: &Link,
        d: &Delivery,
        delay: Duration,
        count_attempt: bool,
    ) -> Prepared {
        let mut out = d.to_outgoing();
        out.headers.retain(|(k, _)| k != DELIVERY_COUNT_HEADER);
        let next = if count_attempt {
            d.attempt.saturating_add(1)
        } else {
            d.attempt
        };
        set_header(
            &mut out.headers,
            ATTEMPT_HEADER,
            HeaderValue::Int(i64::from(next)),
        );
        let extras = self.take_extras(link, d);
        Prepared {
            target: delay_bucket_ms(delay).map_or(Target::Main, Target::Bucket),
            properties: self.properties_for(&out, &d.id, extras),
            body: out.body,
        }
    }

    fn dead_letter_copy(&self, link: &Link, d: &Delivery, failure: &Failure) -> Prepared {
        let mut out = d.to_outgoing();
        let mut text = failure.error_message.clone();
        if text.len() > MAX_ERROR_TEXT {
            let mut cut = MAX_ERROR_TEXT;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            text.truncate(cut);
        }
        let h = &mut out.headers;
        set_header(
            h,
            "x-foxtive-error-type",
            HeaderValue::Str(failure.error_type.clone()),
        );
        set_header(h, "x-foxtive-error", HeaderValue::Str(text));
        set_header(
            h,
            "x-foxtive-attempts",
            HeaderValue::Int(i64::from(d.attempt)),
        );
        set_header(
            h,
            "x-foxtive-failed-at",
            HeaderValue::Float(crate::clock::unix_now()),
        );
        set_header(
            h,
            "x-foxtive-worker",
            HeaderValue::Str(failure.worker_id.to_string()),
        );
        set_header(
            h,
            "x-foxtive-poison-pill",
            HeaderValue::Bool(failure.poison_pill),
        );
        set_header(
            h,
            "x-foxtive-source-queue",
            HeaderValue::Str(d.queue.to_string()),
        );
        let extras = self.take_extras(link, d);
        Prepared {
            target: Target::DeadLetters,
            properties: self.properties_for(&out, &d.id, extras),
            body: out.body,
        }
    }

    fn take_extras(&self, link: &Link, d: &Delivery) -> Option<BasicProperties> {
        let Receipt::Amqp { delivery_tag, .. } = d.receipt else {
            return None;
        };
        let extras = link.extras.lock();
        if extras.is_empty() {
            None
        } else {
            extras.get(&delivery_tag).cloned()
        }
    }

    fn target_queue(&self, target: Target) -> String {
        match target {
            Target::Main => self.config.queue_name.clone(),
            Target::Bucket(ms) => self.bucket_name(ms),
            Target::DeadLetters => self.dlq_name.clone(),
        }
    }

    /// Publish persistently and wait for the broker's confirms. One result
    /// per message: `Ok` only when the broker confirmed it and it was routed.
    async fn publish_confirmed(&self, link: &Link, messages: Vec<Prepared>) -> Vec<Result<()>> {
        let mut results: Vec<Result<()>> = Vec::with_capacity(messages.len());
        // Declare each target once.
        let mut targets: Vec<Target> = messages.iter().map(|m| m.target).collect();
        targets.sort_by_key(|t| match t {
            Target::Main => 0,
            Target::DeadLetters => 1,
            Target::Bucket(ms) => 2 + *ms,
        });
        targets.dedup();
        let mut failed_targets: HashMap<Target, String> = HashMap::new();
        for t in targets {
            if let Err(e) = self.ensure_target(link, t).await {
                failed_targets.insert(t, e.to_string());
            }
        }
        let channel = {
            let mut ch = link.publish.lock().await;
            if !ch.status().connected() && link.conn.status().connected() {
                match self.open_channel(&link.conn, "publish").await {
                    Ok(new) => {
                        if new
                            .confirm_select(ConfirmSelectOptions::default())
                            .await
                            .is_ok()
                        {
                            *ch = new;
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "reopening the publish channel failed"),
                }
            }
            ch.clone()
        };
        let mut pending = Vec::with_capacity(messages.len());
        for m in messages {
            if let Some(why) = failed_targets.get(&m.target) {
                pending.push(Err(Error::Backend(why.clone())));
                continue;
            }
            let queue = self.target_queue(m.target);
            let sent = channel
                .basic_publish(
                    ShortString::from(""),
                    ShortString::from(queue.as_str()),
                    BasicPublishOptions {
                        mandatory: true,
                        immediate: false,
                    },
                    &m.body,
                    m.properties,
                )
                .await;
            pending.push(
                sent.map_err(|e| self.lapin_err(&format!("publishing to {queue:?}"), &e))
                    .map(|c| (c, queue)),
            );
        }
        for p in pending {
            results.push(match p {
                Err(e) => Err(e),
                Ok((confirm, queue)) => match confirm.await {
                    Ok(Confirmation::Ack(None)) | Ok(Confirmation::NotRequested) => Ok(()),
                    Ok(Confirmation::Ack(Some(_))) => Err(Error::Backend(format!(
                        "publishing to {queue:?}: unroutable (no such queue); the broker returned it"
                    ))),
                    Ok(Confirmation::Nack(_)) => Err(Error::Backend(format!(
                        "publishing to {queue:?}: the broker refused to store it (nack)"
                    ))),
                    Err(e) => Err(self.lapin_err(&format!("publishing to {queue:?}"), &e)),
                },
            });
        }
        if results.iter().any(Result::is_ok) {
            self.note_healthy(link);
        }
        results
    }

    async fn settle_batch(self: &Arc<Self>, batch: Vec<SettleItem>) -> Result<()> {
        let Some(link) = self.current() else {
            return Ok(()); // nothing is acknowledged on a dead link; the broker requeues
        };
        let mut acks = Vec::new();
        let mut requeues = Vec::new();
        let mut copies: Vec<(u64, Prepared)> = Vec::new();
        let mut stale = 0usize;
        for (delivery, settlement) in &batch {
            let Receipt::Amqp {
                delivery_tag,
                epoch,
            } = delivery.receipt
            else {
                continue;
            };
            if epoch != link.epoch {
                stale += 1;
                continue;
            }
            match settlement {
                Settlement::Ack => acks.push(delivery_tag),
                Settlement::Requeue => requeues.push(delivery_tag),
                Settlement::Retry {
                    delay,
                    count_attempt,
                } => copies.push((
                    delivery_tag,
                    self.retry_copy(&link, delivery, *delay, *count_attempt),
                )),
                Settlement::DeadLetter(failure) => copies.push((
                    delivery_tag,
                    self.dead_letter_copy(&link, delivery, failure),
                )),
            }
        }
        if stale > 0 {
            tracing::debug!(queue = %self.name, stale, "dropped settlements of a dead link; the broker redelivers them");
        }
        let mut first_error = None;
        if !acks.is_empty() {
            if let Err(e) = self.ack_tags(&link, acks).await {
                first_error.get_or_insert(e);
            }
        }
        if !requeues.is_empty() {
            if let Err(e) = self.requeue_tags(&link, requeues).await {
                first_error.get_or_insert(e);
            }
        }
        if !copies.is_empty() {
            let (tags, prepared): (Vec<u64>, Vec<Prepared>) = copies.into_iter().unzip();
            let results = self.publish_confirmed(&link, prepared).await;
            let mut stored = Vec::new();
            let mut not_stored = Vec::new();
            for (tag, r) in tags.into_iter().zip(results) {
                match r {
                    Ok(()) => stored.push(tag),
                    Err(e) => {
                        tracing::warn!(queue = %self.name, error = %e,
                            "storing a retry or dead-letter copy failed; the original goes back to the queue");
                        not_stored.push(tag);
                        first_error.get_or_insert(e);
                    }
                }
            }
            if !stored.is_empty() {
                if let Err(e) = self.ack_tags(&link, stored).await {
                    first_error.get_or_insert(e);
                }
            }
            if !not_stored.is_empty() && link.alive() {
                if let Err(e) = self.requeue_tags(&link, not_stored).await {
                    first_error.get_or_insert(e);
                }
            }
        }
        {
            let mut extras = link.extras.lock();
            if !extras.is_empty() {
                for (d, _) in &batch {
                    if let Receipt::Amqp {
                        delivery_tag,
                        epoch,
                    } = d.receipt
                    {
                        if epoch == link.epoch {
                            extras.remove(&delivery_tag);
                        }
                    }
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

fn has_extras(p: &BasicProperties) -> bool {
    p.content_encoding().is_some()
        || p.expiration().is_some()
        || p.timestamp().is_some()
        || p.kind().is_some()
        || p.user_id().is_some()
        || p.app_id().is_some()
        || p.cluster_id().is_some()
}

/// The same properties without `expiration`.
fn strip_expiration(p: BasicProperties) -> BasicProperties {
    let mut out = BasicProperties::default();
    if let Some(v) = p.content_encoding() {
        out = out.with_content_encoding(v.clone());
    }
    if let Some(v) = p.timestamp() {
        out = out.with_timestamp(*v);
    }
    if let Some(v) = p.kind() {
        out = out.with_type(v.clone());
    }
    if let Some(v) = p.user_id() {
        out = out.with_user_id(v.clone());
    }
    if let Some(v) = p.app_id() {
        out = out.with_app_id(v.clone());
    }
    if let Some(v) = p.cluster_id() {
        out = out.with_cluster_id(v.clone());
    }
    out
}

fn close_link_later(link: Arc<Link>) {
    if let Ok(handle) = tokio::runtime::Handle::try_current() {
        handle.spawn(async move {
            if link.conn.status().connected() {
                let _ = link
                    .conn
                    .close(200, ShortString::from("foxtive: replaced"))
                    .await;
            }
        });
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
            if link.conn.status().connected() {
                let _ = link
                    .consume
                    .close(200, ShortString::from("foxtive: closing"))
                    .await;
                let _ = link
                    .conn
                    .close(200, ShortString::from("foxtive: closing"))
                    .await;
            }
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

    use super::nodes::raw_password;

    #[test]
    fn debug_is_redacted() {
        let b = RabbitMqBackend::new(
            "amqp://u:hunter2@localhost:5672/%2f",
            RabbitMqConfig::new("q"),
        )
        .unwrap();
        let text = format!("{b:?}");
        assert!(!text.contains("hunter2"), "{text}");
        assert_eq!(
            raw_password("amqp://u:p%40ss@h/"),
            Some("p%40ss".to_string())
        );
        assert_eq!(b.shared.scrub("x hunter2 y".into()), "x *** y");
    }
}
