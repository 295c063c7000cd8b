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
//! The entry layout is described in [`codec`].

mod admit;
pub mod codec;
mod config;
mod dedup;
pub mod dlq;
mod duties;
mod link;
mod publish;
mod reader;
mod reply;
mod resp;
mod scripts;
mod settle;
mod stats;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use redis::aio::MultiplexedConnection;
use redis::{RedisError, Value};
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::{Backend, BackendState, QueueStats, SettleItem};
use crate::dlq::DeadLetter;
use crate::message::{Delivery, Failure, Outgoing, Settlement};
use crate::{Error, Result};
pub use codec::StreamReceipt;

/// `redis://`, `rediss://`, `unix://`, `redis+unix://`; built by its Python
/// class from its typed config.
pub const KIND: super::registry::Kind = super::registry::Kind {
    name: "redis",
    type_name: "RedisStreamBackend",
    schemes: &["redis", "rediss", "unix", "redis+unix"],
    open: None,
};
use codec::{Field, Parts, StreamId};
use link::Link;
use reply::RawEntry;
use scripts::Scripts;

pub use codec::{decode_header, encode_header};
pub use config::{default_claim_interval, default_consumer_name, RedisStreamConfig};

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

/// The Redis Streams backend.
pub struct RedisStreamBackend {
    inner: Arc<Inner>,
}

#[derive(Clone, Copy)]
struct Probe {
    at: Instant,
    activity: u64,
    drained: bool,
}

struct Inner {
    cfg: RedisStreamConfig,
    queue: Arc<str>,
    link: Link,
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
    pub fn new(url: &str, cfg: RedisStreamConfig) -> Result<Self> {
        cfg.validate()?;
        let link = Link::new(url, cfg.reconnect)?;
        Ok(RedisStreamBackend {
            inner: Arc::new(Inner {
                queue: Arc::from(cfg.stream_name.as_str()),
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
            }),
        })
    }

    pub fn config(&self) -> &RedisStreamConfig {
        &self.inner.cfg
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
        self.inner.held.lock().len()
    }

    /// Read up to `limit` dead letters from the dead-letter stream, oldest first.
    pub async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>> {
        let inner = &self.inner;
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

    /// Run `op` on the command connection, reconnecting (per the strategy)
    /// through connection losses for up to `window`.
    async fn with_writer<T, F, Fut>(&self, what: &str, window: Duration, mut op: F) -> Result<T>
    where
        F: FnMut(MultiplexedConnection) -> Fut,
        Fut: std::future::Future<Output = std::result::Result<T, RedisError>>,
    {
        let deadline = Instant::now() + window;
        loop {
            let err = match self.link.writer().await {
                Ok((gen, conn)) => match op(conn).await {
                    Ok(v) => return Ok(v),
                    Err(e) => {
                        let err = self.link.error(what, &e);
                        if !err.is_connection() {
                            return Err(err);
                        }
                        self.link.lost(gen, &err);
                        err
                    }
                },
                Err(Error::Shutdown) => return Err(Error::Shutdown),
                Err(e) => e,
            };
            let now = Instant::now();
            if now >= deadline {
                return Err(err);
            }
            let at = self
                .link
                .retry_at()
                .unwrap_or(now)
                .max(now + Duration::from_millis(20))
                .min(deadline);
            tokio::time::sleep_until(at).await;
        }
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
    async fn create_group(
        &self,
        conn: &mut MultiplexedConnection,
    ) -> std::result::Result<(), RedisError> {
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
        let inner = &self.inner;
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

    async fn receive(&self, max: usize, wait: Duration) -> Result<Vec<Delivery>> {
        self.inner.receive(max, wait).await
    }

    async fn settle(&self, batch: Vec<SettleItem>) -> Result<()> {
        self.inner.settle(batch).await
    }

    async fn publish(&self, messages: Vec<Outgoing>) -> Result<Vec<String>> {
        self.inner.publish(messages).await
    }

    async fn stop_receiving(&self) -> Result<()> {
        let inner = &self.inner;
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
                        let StreamReceipt(id) = d.receipt.get()?;
                        let count = StreamId::parse(id)
                            .and_then(|k| held.remove(&k))
                            .unwrap_or(1);
                        Some((id.clone(), count))
                    })
                    .collect()
            };
            inner.release(&release, false).await;
        }
        Ok(())
    }

    async fn close(&self) -> Result<()> {
        let inner = &self.inner;
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
        inner.link.close();
        Ok(())
    }

    fn state(&self) -> BackendState {
        self.inner.link.state()
    }

    async fn queue_stats(&self) -> Result<Option<QueueStats>> {
        self.stats().await.map(Some)
    }

    fn is_drained(&self) -> Option<bool> {
        Some(self.inner.is_drained())
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

impl std::fmt::Debug for RedisStreamBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStreamBackend")
            .field("url", &self.inner.link.url)
            .field("stream", &self.inner.cfg.stream_name)
            .field("group", &self.inner.cfg.group_name)
            .field("consumer", &self.inner.cfg.consumer_name)
            .finish()
    }
}
