//! Redis Streams: consumer groups that never strand a message.
//!
//! * The group is created at `0` with MKSTREAM, so entries added before the
//!   first worker are delivered; a deleted stream or group (NOGROUP) is
//!   recreated and reading goes on.
//! * On start the consumer re-reads its own pending entries (ID `0`), then
//!   reads new ones (`>`). Every entry of a batch is delivered. New entries
//!   come over a connection of the reader's own, parsed without copying
//!   bodies (see `resp.rs`); while a full batch is handed out the next one is
//!   already requested, but never more than the pool asked room for.
//! * Acks are pipelined per settle batch: `XACK` and, with `delete_on_ack`,
//!   `XDEL` (Redis 7.0 has no XACKDEL).
//! * Entries this consumer holds get a heartbeat (their idle time is reset)
//!   from a Rust task that never needs the GIL, so a busy handler does not
//!   look dead. Entries idle longer than `claim_idle` in any consumer are
//!   taken over with XAUTOCLAIM every `claim_interval`; the pending list's
//!   delivery count feeds `attempt`, and an entry delivered more than
//!   `max_deliveries` times is a poison pill: it goes to the dead-letter
//!   stream with the reason instead of to a handler.
//! * Delayed messages (retries, delayed publishes) wait in a sorted set keyed
//!   by due time; a Lua script moves due ones into the stream atomically,
//!   run by whichever worker gets there first. A retry's original is acked
//!   only after its copy is stored.
//! * At shutdown, entries not finished stay pending; their idle time is set
//!   high so that peers take them over at their next reclaim.
//!
//! * On a Redis Cluster (`redis+cluster://`, or `cluster`), every key of a
//!   queue carries one hash tag so its scripts run on one shard, and
//!   `partitions` spreads one queue over several streams (see
//!   [`RedisStreamConfig::layout`] and [`partitions`]); `wait_replicas`
//!   makes writes wait for replicas (`WAIT`) before they count as done.
//!
//! The entry layout is described in [`codec`].

mod admit;
pub mod codec;
mod commands;
mod config;
mod dedup;
mod direct;
pub mod dlq;
mod duties;
// The rate limiter's shared bucket uses the command connection too.
pub(crate) mod link;
mod partitions;
mod publish;
mod reader;
mod reply;
pub(crate) mod resp;
mod scripts;
mod settle;
mod shared;
mod stats;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use redis::{RedisError, Value};
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::{Backend, BackendState, QueueStats, SettleItem};
use crate::dlq::DeadLetter;
use crate::message::{Delivery, Failure, Outgoing, Settlement};
use crate::redis_url::Conn;
use crate::{Error, Result};
pub use codec::StreamReceipt;

/// `redis://`, `rediss://`, `unix://`, `redis+unix://`, `redis+cluster://`,
/// `rediss+cluster://`; built by its Python class from its typed config.
pub const KIND: super::registry::Kind = super::registry::Kind {
    name: "redis",
    type_name: "RedisStreamBackend",
    schemes: &[
        "redis",
        "rediss",
        "unix",
        "redis+unix",
        "redis+cluster",
        "rediss+cluster",
    ],
    open: None,
};
use codec::{Field, Parts, StreamId};
use link::Link;
use reply::RawEntry;
use scripts::Scripts;

pub use codec::{decode_header, encode_header};
pub use commands::{RedisCommands, DIRECT_CLIENT_NAME};
pub use config::{
    default_claim_interval, default_consumer_name, partition_stream, RedisStreamConfig,
};
pub use direct::Address as DirectAddress;
pub use publish::MarkNew;
pub use resp::{take_frame as take_resp_frame, Frame as RespFrame};

/// How long settlements keep retrying through a connection loss.
const OP_RETRY_WINDOW: Duration = Duration::from_secs(15);
/// How long a publish may retry: a caller waiting on it should hear soon.
const PUBLISH_RETRY_WINDOW: Duration = Duration::from_secs(2);
/// How long shutdown steps may try (single attempts, then give up).
const SHUTDOWN_STEP: Duration = Duration::from_secs(3);
/// Longest pause of the delayed-message mover when nothing is due sooner
/// (another process may add a message due earlier).
const MOVER_POLL: Duration = Duration::from_millis(250);
/// Most delayed messages moved by one script run.
const MOVE_LIMIT: usize = 500;
/// Ids per XACK / XDEL / XCLAIM command.
const IDS_PER_COMMAND: usize = 1000;
/// A drain probe older than this is not trusted.
const PROBE_FRESH: Duration = Duration::from_millis(150);
/// Shortest time between two drain probes.
const PROBE_GAP: Duration = Duration::from_millis(20);
/// Idle time given to entries handed back at shutdown: any peer's
/// `claim_idle` is shorter, so they are reclaimed at the peer's next look.
const RELEASED_IDLE_MS: u64 = 7 * 24 * 3600 * 1000;
/// Reads of new entries kept in flight while full batches are handed out.
const READ_AHEAD: usize = 2;
/// Extra time over BLOCK before a read is considered lost.
const READ_MARGIN: Duration = Duration::from_secs(5);

/// The Redis Streams backend: one stream, or one per partition.
pub struct RedisStreamBackend {
    /// Partition 0 (the only one without partitions).
    inner: Arc<Inner>,
    /// Partitions 1.. (they share `inner`'s command connection).
    rest: Vec<Arc<Inner>>,
    /// Round robin of publishes and of the partition read first.
    next: AtomicUsize,
    /// The configuration as given (URL parameters applied).
    config: RedisStreamConfig,
    /// What makes this backend's Redis the one of another URL (see
    /// [`Self::same_redis`]): the key of its shared command connection.
    server: shared::Key,
    /// Result records, "pending" marks and direct publishes on this Redis.
    commands: Arc<RedisCommands>,
}

#[derive(Clone, Copy)]
struct Probe {
    at: Instant,
    activity: u64,
    drained: bool,
}

struct Inner {
    /// This partition's configuration: its own keys (see `layout`).
    cfg: RedisStreamConfig,
    /// The logical queue name (`message.queue`), the same for every partition.
    queue: Arc<str>,
    /// Which partition (0 without partitions): carried in receipts.
    part: u16,
    link: Arc<Link>,
    scripts: Scripts,
    reader: tokio::sync::Mutex<reader::Reader>,
    /// Entries delivered and not settled yet → their delivery count.
    held: Mutex<HashMap<StreamId, u32>>,
    /// Held entries waiting to be handed out: the rest of a read larger
    /// than the engine asked for, and entries requeued while running.
    ready: Mutex<VecDeque<Delivery>>,
    stopped: AtomicBool,
    timer: Mutex<Option<(JoinHandle<()>, watch::Sender<bool>)>>,
    timer_wake: Arc<Notify>,
    probe_wanted: AtomicBool,
    probe: Mutex<Option<Probe>>,
    /// Bumped by every local change (delivery, settlement, publish), so a
    /// drain probe taken before it is not trusted.
    activity: AtomicU64,
}
impl RedisStreamBackend {
    /// A backend for `url` (`redis://`, `rediss://` or `unix://`). Nothing is
    /// connected until [`Backend::connect`] or the first publish.
    ///
    /// `?partitions=N`, `?wait_replicas=N` and `?wait_timeout=SECONDS` in the
    /// URL set those fields (a config that sets one differently is an
    /// error); a `redis+cluster://` URL implies `cluster`.
    pub fn new(url: &str, cfg: RedisStreamConfig) -> Result<Self> {
        let mut cfg = config::with_url_params(cfg, url)?;
        cfg.cluster |= crate::redis_url::is_cluster_url(url);
        cfg.validate()?;
        let link = Arc::new(Link::new(url, cfg.reconnect, cfg.cluster)?);
        let server = shared::Key::new(url, cfg.cluster, &format!("{:?}", cfg.reconnect));
        let queue: Arc<str> = Arc::from(cfg.stream_name.as_str());
        let mut parts = cfg
            .layout()?
            .into_iter()
            .enumerate()
            .map(|(i, c)| Arc::new(Inner::new(c, queue.clone(), i as u16, link.clone())));
        let inner = parts
            .next()
            .ok_or_else(|| Error::Config("partitions: must be >= 1".to_string()))?;
        Ok(RedisStreamBackend {
            inner,
            rest: parts.collect(),
            next: AtomicUsize::new(0),
            commands: Arc::new(RedisCommands::on(link.clone(), url, cfg.cluster)),
            config: cfg,
            server,
        })
    }

    /// Every partition, in order.
    fn parts(&self) -> impl Iterator<Item = &Arc<Inner>> {
        std::iter::once(&self.inner).chain(self.rest.iter())
    }

    /// The stream keys read and written, one per partition.
    pub fn stream_keys(&self) -> Vec<String> {
        self.parts().map(|p| p.cfg.stream_name.clone()).collect()
    }

    /// The dead-letter stream keys, one per partition.
    pub fn dead_letter_keys(&self) -> Vec<String> {
        self.parts()
            .map(|p| p.cfg.dead_letter_stream.clone())
            .collect()
    }
}

impl Inner {
    fn new(cfg: RedisStreamConfig, queue: Arc<str>, part: u16, link: Arc<Link>) -> Self {
        Inner {
            queue,
            part,
            link,
            scripts: Scripts::new(),
            reader: tokio::sync::Mutex::new(reader::Reader::new()),
            held: Mutex::new(HashMap::new()),
            ready: Mutex::new(VecDeque::new()),
            stopped: AtomicBool::new(false),
            timer: Mutex::new(None),
            timer_wake: Arc::new(Notify::new()),
            probe_wanted: AtomicBool::new(false),
            probe: Mutex::new(None),
            activity: AtomicU64::new(0),
            cfg,
        }
    }
}

impl RedisStreamBackend {
    /// The configuration as given (keys before the layout: see [`Self::stream_keys`]).
    pub fn config(&self) -> &RedisStreamConfig {
        &self.config
    }

    /// The URL with its password replaced by `***`.
    pub fn url(&self) -> &str {
        &self.inner.link.url
    }

    pub fn reconnect_attempts(&self) -> u64 {
        self.inner.link.reconnect_attempts()
    }

    pub fn consecutive_failures(&self) -> u32 {
        self.inner.link.consecutive_failures()
    }

    /// Entries delivered by this backend and not settled yet.
    pub fn held(&self) -> usize {
        self.parts().map(|p| p.held.lock().len()).sum()
    }

    /// Read up to `limit` dead letters from the dead-letter stream(s),
    /// oldest first within each partition.
    pub async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>> {
        let mut out = Vec::new();
        for part in self.parts() {
            if out.len() >= limit.max(1) {
                break;
            }
            out.extend(part.dead_letters(limit.max(1) - out.len()).await?);
        }
        Ok(out)
    }
}

impl Inner {
    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>> {
        let inner = self;
        let key = inner.cfg.dead_letter_stream.clone();
        let reply = inner
            .with_writer("XRANGE dead letters", SHUTDOWN_STEP, |mut conn| {
                let key = key.clone();
                async move {
                    redis::cmd("XRANGE")
                        .arg(&key)
                        .arg("-")
                        .arg("+")
                        .arg("COUNT")
                        .arg(limit.max(1))
                        .query_async::<Value>(&mut conn)
                        .await
                }
            })
            .await?;
        Ok(reply::entries(reply)?
            .into_iter()
            .filter_map(|e| Some(codec::dead_letter_from_fields(&e.id, e.fields?)))
            .collect())
    }
}

impl Inner {
    fn stopped(&self) -> bool {
        self.stopped.load(Ordering::Acquire)
    }

    fn touch(&self) {
        self.activity.fetch_add(1, Ordering::AcqRel);
    }

    /// Run `op` on the command connection (see [`Link::with_writer`]).
    async fn with_writer<T, F, Fut>(&self, what: &str, window: Duration, op: F) -> Result<T>
    where
        F: FnMut(Conn) -> Fut,
        Fut: std::future::Future<Output = std::result::Result<T, RedisError>>,
    {
        self.link.with_writer(what, window, op).await
    }

    /// After writes to this partition's keys over `conn`: wait until
    /// `wait_replicas` replicas have them (`WAIT` on the master of the
    /// partition's slot, over the connection the writes used). Fewer by
    /// `wait_timeout` is an error: the writes are done on the master but
    /// would be lost if it failed now, so the caller must not count them.
    async fn replicated(&self, conn: &mut Conn) -> std::result::Result<(), RedisError> {
        let want = self.cfg.wait_replicas;
        if want == 0 {
            return Ok(());
        }
        let got = conn
            .wait_replicas(&self.cfg.stream_name, want, self.cfg.wait_timeout)
            .await?;
        if got < want {
            return Err(RedisError::from((
                redis::ErrorKind::Client,
                "not enough replicas",
                format!(
                    "WAIT: {got} of wait_replicas={want} replica(s) acknowledged within {}s; \
                     the write is on the master only and could be lost in a failover",
                    self.cfg.wait_timeout.as_secs_f64()
                ),
            )));
        }
        Ok(())
    }

    fn xgroup_create(&self) -> redis::Cmd {
        let mut cmd = redis::cmd("XGROUP");
        cmd.arg("CREATE")
            .arg(&self.cfg.stream_name)
            .arg(&self.cfg.group_name)
            .arg("0")
            .arg("MKSTREAM");
        cmd
    }

    /// `XGROUP CREATE <stream> <group> 0 MKSTREAM`; an existing group is fine.
    async fn create_group(&self, conn: &mut Conn) -> std::result::Result<(), RedisError> {
        match self.xgroup_create().query_async::<Value>(conn).await {
            Ok(_) => Ok(()),
            Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
            Err(e) => Err(e),
        }
    }
}

#[async_trait]
impl Backend for RedisStreamBackend {
    fn name(&self) -> &str {
        &self.inner.queue
    }

    async fn connect(&self) -> Result<()> {
        for part in self.parts() {
            part.connect().await?;
        }
        Ok(())
    }

    async fn receive(&self, max: usize, wait: Duration) -> Result<Vec<Delivery>> {
        if self.rest.is_empty() {
            return self.inner.receive(max, wait).await;
        }
        self.receive_partitions(max, wait).await
    }

    async fn settle(&self, batch: Vec<SettleItem>) -> Result<()> {
        if self.rest.is_empty() {
            return self.inner.settle(batch).await;
        }
        self.settle_partitions(batch).await
    }

    async fn publish(&self, messages: Vec<Outgoing>) -> Result<Vec<String>> {
        if self.rest.is_empty() {
            return self.inner.publish(messages).await;
        }
        self.publish_partitions(messages).await
    }

    async fn stop_receiving(&self) -> Result<()> {
        for part in self.parts() {
            part.stop_receiving().await;
        }
        Ok(())
    }

    async fn close(&self) -> Result<()> {
        for part in self.parts() {
            part.close().await;
        }
        self.inner.link.close();
        self.commands.close_direct();
        Ok(())
    }

    fn state(&self) -> BackendState {
        self.inner.link.state()
    }

    async fn queue_stats(&self) -> Result<Option<QueueStats>> {
        self.stats().await.map(Some)
    }

    fn is_drained(&self) -> Option<bool> {
        // Every partition is asked (each keeps its own probe fresh).
        let drained: Vec<bool> = self.parts().map(|p| p.is_drained()).collect();
        Some(drained.into_iter().all(|d| d))
    }

    // Through the trait too: the Python base class and a ResilientBackend
    // around this one read the counters as `dyn Backend`.
    fn reconnect_attempts(&self) -> u64 {
        self.inner.link.reconnect_attempts()
    }

    fn consecutive_failures(&self) -> u32 {
        self.inner.link.consecutive_failures()
    }
}

impl Inner {
    async fn connect(self: &Arc<Self>) -> Result<()> {
        let inner = self;
        inner.link.open_again();
        inner.stopped.store(false, Ordering::Release);
        {
            let mut rd = inner.reader.lock().await;
            *rd = reader::Reader::new();
        }
        inner
            .with_writer("XGROUP CREATE", Duration::ZERO, |mut conn| async move {
                match inner.xgroup_create().query_async::<Value>(&mut conn).await {
                    Err(e) if e.code() != Some("BUSYGROUP") => Err(e),
                    _ => Ok(()),
                }
            })
            .await?;
        let mut timer = inner.timer.lock();
        if timer.is_none() {
            let (tx, rx) = watch::channel(false);
            let task = tokio::spawn(duties::duties(
                Arc::downgrade(inner),
                inner.timer_wake.clone(),
                rx,
            ));
            *timer = Some((task, tx));
        }
        Ok(())
    }

    async fn stop_receiving(&self) {
        let inner = self;
        inner.stopped.store(true, Ordering::Release);
        // Free any blocked read on the server side.
        if let Ok(mut rd) = inner.reader.try_lock() {
            // What a read-ahead took is pending here: close hands it back.
            rd.conn = None;
        }
        let waiting: Vec<Delivery> = inner.ready.lock().drain(..).collect();
        if !waiting.is_empty() {
            let release: Vec<(String, u32)> = {
                let mut held = inner.held.lock();
                waiting
                    .iter()
                    .filter_map(|d| {
                        let StreamReceipt(id, _) = d.receipt.get()?;
                        let count = StreamId::parse(id)
                            .and_then(|k| held.remove(&k))
                            .unwrap_or(1);
                        Some((id.clone(), count))
                    })
                    .collect()
            };
            inner.release(&release, false).await;
        }
    }

    async fn close(&self) {
        let inner = self;
        inner.stopped.store(true, Ordering::Release);
        let timer = inner.timer.lock().take();
        if let Some((task, stop)) = timer {
            stop.send_replace(true);
            if tokio::time::timeout(SHUTDOWN_STEP, task).await.is_err() {
                tracing::warn!(stream = %inner.queue, "background task did not stop in time");
            }
        }
        inner.reader.lock().await.conn = None;
        inner.ready.lock().clear();
        inner.held.lock().clear();
        // Everything still pending for this consumer goes back: entries in
        // handlers that never settled, read ahead and not handed out, or
        // read by a request whose reply was lost.
        match inner.own_pending().await {
            Ok(pending) if pending.is_empty() => {
                let cfg = &inner.cfg;
                let _ = inner
                    .with_writer(
                        "XGROUP DELCONSUMER",
                        Duration::ZERO,
                        |mut conn| async move {
                            redis::cmd("XGROUP")
                                .arg("DELCONSUMER")
                                .arg(&cfg.stream_name)
                                .arg(&cfg.group_name)
                                .arg(&cfg.consumer_name)
                                .query_async::<Value>(&mut conn)
                                .await
                        },
                    )
                    .await;
            }
            Ok(pending) => inner.release(&pending, true).await,
            Err(e) => {
                tracing::warn!(stream = %inner.queue, error = %e,
                    "could not list pending entries at close; peers reclaim them after claim_idle");
            }
        }
    }
}

impl std::fmt::Debug for RedisStreamBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStreamBackend")
            .field("url", &self.inner.link.url)
            .field("stream", &self.inner.cfg.stream_name)
            .field("partitions", &self.config.partitions)
            .field("group", &self.inner.cfg.group_name)
            .field("consumer", &self.inner.cfg.consumer_name)
            .finish()
    }
}
