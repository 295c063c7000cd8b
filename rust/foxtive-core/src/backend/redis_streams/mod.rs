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

pub mod codec;
mod config;
pub mod dlq;
mod link;
mod reader;
mod reply;
mod resp;
mod scripts;

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

use super::{Backend, BackendState, SettleItem};
use crate::dlq::DeadLetter;
use crate::message::{Delivery, Failure, Outgoing, Settlement};
use crate::{Error, Result};
pub use codec::StreamReceipt;
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

/// What a settle batch turns into.
#[derive(Default)]
struct Plan<'a> {
    acks: Vec<&'a str>,
    /// Immediate copies: (original entry id, stream key, fields).
    copies: Vec<(&'a str, &'a str, Vec<Field<'a>>)>,
    /// Delayed retry copies: (original entry id, delay ms, member).
    delayed: Vec<(&'a str, u64, Vec<u8>)>,
    /// Handed back at shutdown: (entry id, delivery count).
    release: Vec<(String, u32)>,
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

    // ------------------------------------------------------------ reading

    /// Turn read entries into deliveries: deleted ones are acked away,
    /// poison pills go to the dead-letter stream, the rest are held.
    /// `counted`: look up delivery counts (for entries delivered before).
    async fn admit(&self, entries: Vec<RawEntry>, counted: bool) -> Vec<Delivery> {
        let counts: HashMap<String, u32> = if counted {
            self.delivery_counts(&entries).await
        } else {
            HashMap::new()
        };
        let received_at = crate::clock::unix_now();
        let mut out = Vec::with_capacity(entries.len());
        let mut gone: Vec<String> = Vec::new();
        let mut poison: Vec<(Delivery, u32)> = Vec::new();
        {
            let mut held = self.held.lock();
            for entry in entries {
                let Some(key) = StreamId::parse(&entry.id) else {
                    continue;
                };
                let Some(fields) = entry.fields else {
                    gone.push(entry.id);
                    continue;
                };
                if counted && held.contains_key(&key) {
                    // Already in a handler here (a late heartbeat let it go idle).
                    continue;
                }
                let count = counts.get(&entry.id).copied().unwrap_or(1).max(1);
                let d = codec::delivery(entry.id, fields, count, &self.queue, received_at);
                if count > self.cfg.max_deliveries {
                    poison.push((d, count));
                    continue;
                }
                held.insert(key, count);
                out.push(d);
            }
        }
        if !gone.is_empty() {
            let ids: Vec<&str> = gone.iter().map(String::as_str).collect();
            if let Err(e) = self.ack(&ids).await {
                tracing::warn!(stream = %self.queue, error = %e, "could not ack deleted pending entries");
            }
        }
        if !poison.is_empty() {
            self.dead_letter_poison(poison).await;
        }
        if !out.is_empty() {
            self.touch();
        }
        out
    }

    /// Delivery counts from the pending list, one pipelined XPENDING per entry.
    /// Delivery counts from the pending list, one pipelined XPENDING per
    /// entry. When Redis cannot say, the entries go out counted as first
    /// deliveries rather than wait for a reclaim.
    async fn delivery_counts(&self, entries: &[RawEntry]) -> HashMap<String, u32> {
        let mut out = HashMap::with_capacity(entries.len());
        let Ok((gen, mut conn)) = self.link.writer().await else {
            return out;
        };
        let mut pipe = redis::pipe();
        for e in entries {
            pipe.cmd("XPENDING")
                .arg(&self.cfg.stream_name)
                .arg(&self.cfg.group_name)
                .arg(&e.id)
                .arg(&e.id)
                .arg(1);
        }
        let replies: Vec<Value> = match pipe.query_async(&mut conn).await {
            Ok(r) => r,
            Err(e) => {
                let err = self.link.error("XPENDING", &e);
                tracing::warn!(stream = %self.queue, error = %err,
                    "delivery counts unavailable; entries go out as first deliveries");
                if err.is_connection() {
                    self.link.lost(gen, &err);
                }
                return out;
            }
        };
        for reply in replies {
            let Ok(rows) = reply::pending_rows(reply) else {
                continue;
            };
            for row in rows {
                if row.consumer == self.cfg.consumer_name {
                    out.insert(row.id, row.deliveries);
                }
            }
        }
        out
    }

    async fn dead_letter_poison(&self, poison: Vec<(Delivery, u32)>) {
        let worker: Arc<str> = Arc::from(self.cfg.consumer_name.as_str());
        let items: Vec<SettleItem> = poison
            .into_iter()
            .map(|(d, count)| {
                tracing::warn!(stream = %self.queue, id = %d.id, deliveries = count,
                    "poison pill: delivered too often without being settled; dead-lettering it");
                let failure = Failure {
                    error_type: "PoisonPill".to_string(),
                    error_message: format!(
                        "delivered {count} times without being settled (max_deliveries={}); \
                         its handler probably crashed or hung the worker",
                        self.cfg.max_deliveries
                    ),
                    worker_id: worker.clone(),
                    poison_pill: true,
                };
                (Arc::new(d), Settlement::DeadLetter(failure))
            })
            .collect();
        if let Err(e) = self.settle(items).await {
            tracing::warn!(stream = %self.queue, error = %e,
                "could not dead-letter poison pills; they stay pending");
        }
    }

    // ----------------------------------------------------------- settling

    /// XACK (and XDEL) entries, pipelined.
    async fn ack(&self, ids: &[&str]) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let cfg = &self.cfg;
        self.with_writer("XACK", OP_RETRY_WINDOW, |mut conn| {
            let mut pipe = redis::pipe();
            for chunk in ids.chunks(IDS_PER_COMMAND) {
                pipe.cmd("XACK")
                    .arg(&cfg.stream_name)
                    .arg(&cfg.group_name)
                    .arg(chunk)
                    .ignore();
                if cfg.delete_on_ack {
                    pipe.cmd("XDEL").arg(&cfg.stream_name).arg(chunk).ignore();
                }
            }
            async move { pipe.query_async::<()>(&mut conn).await }
        })
        .await
    }

    fn xadd<'a>(&self, pipe: &mut redis::Pipeline, key: &str, fields: &[Field<'a>], trim: bool) {
        let cmd = pipe.cmd("XADD").arg(key);
        if let (true, Some(n)) = (trim, self.cfg.maxlen) {
            cmd.arg("MAXLEN").arg("~").arg(n);
        }
        cmd.arg("*");
        for (k, v) in fields {
            cmd.arg(&**k).arg(&**v);
        }
    }

    /// Store delayed members (delay ms, member) in one script run.
    async fn schedule(&self, items: &[(u64, &[u8])], window: Duration) -> Result<()> {
        if items.is_empty() {
            return Ok(());
        }
        self.with_writer("schedule delayed", window, |mut conn| {
            let mut inv = self.scripts.schedule.key(&self.cfg.delayed_key);
            for (delay, member) in items {
                inv.arg(*delay).arg(*member);
            }
            async move { inv.invoke_async::<Value>(&mut conn).await.map(|_| ()) }
        })
        .await?;
        self.timer_wake.notify_one();
        Ok(())
    }

    async fn settle(&self, batch: Vec<SettleItem>) -> Result<()> {
        let running = !self.stopped();
        let failed_at = crate::clock::unix_now();
        let mut plan = Plan::default();
        {
            let mut held = self.held.lock();
            let mut again = self.ready.lock();
            for (d, settlement) in &batch {
                let Some(StreamReceipt(entry_id)) = d.receipt.get() else {
                    continue;
                };
                let Some(key) = StreamId::parse(entry_id) else {
                    continue;
                };
                if let Settlement::Requeue = settlement {
                    if running {
                        // Still ours and still heartbeated: hand it out again.
                        let mut copy = (**d).clone();
                        copy.redelivered = true;
                        // Its handler had it: the next delivery is the next attempt.
                        copy.attempt = copy.attempt.saturating_add(1);
                        again.push_back(copy);
                    } else {
                        let count = held.remove(&key).unwrap_or(1);
                        plan.release.push((entry_id.clone(), count));
                    }
                    continue;
                }
                held.remove(&key);
                match settlement {
                    Settlement::Ack => plan.acks.push(entry_id),
                    Settlement::Retry {
                        delay,
                        count_attempt,
                    } => {
                        let attempt = if *count_attempt {
                            d.attempt.saturating_add(1)
                        } else {
                            d.attempt
                        };
                        let fields = Parts::from_delivery(d, attempt).fields();
                        let ms = delay.as_millis().min(u64::MAX as u128) as u64;
                        if ms == 0 {
                            plan.copies.push((entry_id, &self.cfg.stream_name, fields));
                        } else {
                            plan.delayed
                                .push((entry_id, ms, codec::delayed_member(&fields)));
                        }
                    }
                    Settlement::DeadLetter(failure) => {
                        let fields = codec::dead_letter_fields(
                            d,
                            failure,
                            entry_id,
                            &self.cfg.consumer_name,
                            failed_at,
                        );
                        plan.copies
                            .push((entry_id, &self.cfg.dead_letter_stream, fields));
                    }
                    Settlement::Requeue => {}
                }
            }
        }
        let result = self.apply(&mut plan).await;
        if !plan.release.is_empty() {
            // Handed to the engine: a hand-back is the next attempt.
            self.release(&plan.release, true).await;
        }
        self.touch();
        result
    }

    /// Store copies first, then ack what is safe to ack.
    async fn apply(&self, plan: &mut Plan<'_>) -> Result<()> {
        let mut first_error: Option<Error> = None;
        if !plan.copies.is_empty() {
            let copies = &plan.copies;
            let stored = self
                .with_writer("store copies", OP_RETRY_WINDOW, |mut conn| {
                    let mut pipe = redis::pipe();
                    pipe.ignore_errors();
                    for (_, key, fields) in copies {
                        let trim = *key == self.cfg.stream_name;
                        self.xadd(&mut pipe, key, fields, trim);
                    }
                    async move { pipe.query_async::<Vec<Value>>(&mut conn).await }
                })
                .await;
            match stored {
                Ok(replies) => {
                    for ((entry_id, key, _), reply) in copies.iter().zip(replies) {
                        if let Value::ServerError(e) = reply {
                            tracing::warn!(stream = %self.queue, entry = %entry_id, target = %key,
                                error = %self.link.scrub(format!("{e:?}")),
                                "could not store a copy; the original stays pending");
                        } else {
                            plan.acks.push(entry_id);
                        }
                    }
                }
                Err(e) => first_error = Some(e),
            }
        }
        if !plan.delayed.is_empty() {
            let items: Vec<(u64, &[u8])> = plan
                .delayed
                .iter()
                .map(|(_, ms, m)| (*ms, m.as_slice()))
                .collect();
            match self.schedule(&items, OP_RETRY_WINDOW).await {
                Ok(()) => plan.acks.extend(plan.delayed.iter().map(|(id, _, _)| *id)),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        if let Err(e) = self.ack(&plan.acks).await {
            first_error.get_or_insert(e);
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Hand entries back at shutdown: still pending, but with a large idle
    /// time so peers reclaim them at once. `tried` says whether a handler
    /// had them: if not (read ahead, never handed out) their delivery count
    /// is undone; if so it stands, and the next delivery is the next attempt
    /// (redelivered, as on RabbitMQ).
    async fn release(&self, entries: &[(String, u32)], tried: bool) {
        if entries.is_empty() {
            return;
        }
        let cfg = &self.cfg;
        let res = self
            .with_writer("release pending", SHUTDOWN_STEP, |mut conn| {
                let mut pipe = redis::pipe();
                for (id, count) in entries {
                    pipe.cmd("XCLAIM")
                        .arg(&cfg.stream_name)
                        .arg(&cfg.group_name)
                        .arg(&cfg.consumer_name)
                        .arg(0)
                        .arg(id)
                        .arg("IDLE")
                        .arg(RELEASED_IDLE_MS)
                        .arg("RETRYCOUNT")
                        .arg(if tried {
                            *count
                        } else {
                            count.saturating_sub(1)
                        })
                        .arg("JUSTID")
                        .ignore();
                }
                async move { pipe.query_async::<()>(&mut conn).await }
            })
            .await;
        match res {
            Ok(()) => tracing::info!(stream = %self.queue, count = entries.len(),
                "unfinished entries handed back for other consumers to take over"),
            Err(e) => tracing::warn!(stream = %self.queue, error = %e,
                "could not hand back unfinished entries; peers reclaim them after claim_idle"),
        }
    }

    // ------------------------------------------------------------ publish

    async fn publish(&self, messages: Vec<Outgoing>) -> Result<Vec<String>> {
        let mut ids: Vec<Option<String>> = Vec::with_capacity(messages.len());
        let mut now_fields: Vec<(usize, Vec<Field<'_>>)> = Vec::new();
        let mut delayed: Vec<(u64, Vec<u8>)> = Vec::new();
        let generated: Vec<Option<String>> = messages
            .iter()
            .map(|m| match (&m.message_id, m.delay) {
                (None, Some(d)) if !d.is_zero() => Some(format!("{:032x}", rand::random::<u128>())),
                _ => None,
            })
            .collect();
        for (i, m) in messages.iter().enumerate() {
            let id = m.message_id.as_deref().or(generated[i].as_deref());
            let fields = Parts::from_outgoing(m, id).fields();
            match m.delay {
                Some(d) if !d.is_zero() => {
                    delayed.push((
                        d.as_millis().min(u64::MAX as u128) as u64,
                        codec::delayed_member(&fields),
                    ));
                    ids.push(id.map(str::to_string));
                }
                _ => {
                    ids.push(m.message_id.clone());
                    now_fields.push((i, fields));
                }
            }
        }
        for chunk in now_fields.chunks(10_000) {
            let replies = self
                .with_writer("XADD", PUBLISH_RETRY_WINDOW, |mut conn| {
                    let mut pipe = redis::pipe();
                    for (_, fields) in chunk {
                        self.xadd(&mut pipe, &self.cfg.stream_name, fields, true);
                    }
                    async move { pipe.query_async::<Vec<Value>>(&mut conn).await }
                })
                .await?;
            for ((i, _), reply) in chunk.iter().zip(replies) {
                if ids[*i].is_none() {
                    ids[*i] = reply::string(reply);
                }
            }
        }
        let items: Vec<(u64, &[u8])> = delayed.iter().map(|(ms, m)| (*ms, m.as_slice())).collect();
        for chunk in items.chunks(1000) {
            self.schedule(chunk, PUBLISH_RETRY_WINDOW).await?;
        }
        self.touch();
        ids.into_iter()
            .map(|id| id.ok_or_else(|| Error::Backend("XADD returned no entry id".to_string())))
            .collect()
    }

    // -------------------------------------------------- background duties

    /// Move due delayed messages; returns how long until the next is due.
    async fn move_due(&self) -> Duration {
        let Ok((gen, mut conn)) = self.link.writer().await else {
            return MOVER_POLL;
        };
        loop {
            let maxlen = self.cfg.maxlen.map(|n| n.to_string()).unwrap_or_default();
            let res = self
                .scripts
                .move_due
                .key(&self.cfg.delayed_key)
                .key(&self.cfg.stream_name)
                .arg(MOVE_LIMIT)
                .arg(maxlen)
                .invoke_async::<(i64, i64)>(&mut conn)
                .await;
            match res {
                Ok((moved, wait)) => {
                    if moved > 0 {
                        self.touch();
                    }
                    if moved as usize >= MOVE_LIMIT {
                        continue;
                    }
                    return match u64::try_from(wait) {
                        Ok(ms) => Duration::from_millis(ms).min(MOVER_POLL),
                        Err(_) => MOVER_POLL,
                    };
                }
                Err(e) => {
                    let err = self.link.error("move delayed", &e);
                    if err.is_connection() {
                        self.link.lost(gen, &err);
                    } else {
                        tracing::warn!(stream = %self.queue, error = %err, "moving delayed messages failed");
                    }
                    return Duration::from_secs(1);
                }
            }
        }
    }

    /// Reset the idle time of the entries this consumer holds.
    async fn heartbeat(&self) {
        let ids: Vec<String> = self.held.lock().keys().map(|k| k.to_string()).collect();
        if ids.is_empty() {
            return;
        }
        let Ok((gen, mut conn)) = self.link.writer().await else {
            return;
        };
        for chunk in ids.chunks(IDS_PER_COMMAND) {
            let res = self
                .scripts
                .heartbeat
                .key(&self.cfg.stream_name)
                .arg(&self.cfg.group_name)
                .arg(&self.cfg.consumer_name)
                .arg(chunk)
                .invoke_async::<Value>(&mut conn)
                .await;
            if let Err(e) = res {
                let err = self.link.error("heartbeat", &e);
                if err.is_connection() {
                    self.link.lost(gen, &err);
                } else {
                    tracing::warn!(stream = %self.queue, error = %err, "heartbeat failed");
                }
                return;
            }
        }
    }

    /// Is there anything left for this group (ready, pending or delayed)?
    async fn probe(&self) {
        let activity = self.activity.load(Ordering::Acquire);
        let at = Instant::now();
        let Ok((gen, mut conn)) = self.link.writer().await else {
            return;
        };
        let res = self
            .scripts
            .probe
            .key(&self.cfg.stream_name)
            .key(&self.cfg.delayed_key)
            .arg(&self.cfg.group_name)
            .invoke_async::<(i64, i64, i64)>(&mut conn)
            .await;
        match res {
            Ok((delayed, pending, undelivered)) => {
                let local = self.held.lock().is_empty() && self.ready.lock().is_empty();
                *self.probe.lock() = Some(Probe {
                    at,
                    activity,
                    drained: local && delayed == 0 && pending == 0 && undelivered == 0,
                });
            }
            Err(e) => {
                let err = self.link.error("probe", &e);
                if err.is_connection() {
                    self.link.lost(gen, &err);
                } else {
                    tracing::warn!(stream = %self.queue, error = %err, "drain probe failed");
                }
            }
        }
    }

    fn is_drained(&self) -> bool {
        if !self.probe_wanted.swap(true, Ordering::AcqRel) {
            self.timer_wake.notify_one();
        }
        match *self.probe.lock() {
            Some(p) => {
                p.drained
                    && p.at.elapsed() < PROBE_FRESH
                    && p.activity == self.activity.load(Ordering::Acquire)
            }
            None => false,
        }
    }

    /// Entries pending for this consumer: (id, delivery count).
    async fn own_pending(&self) -> Result<Vec<(String, u32)>> {
        let cfg = &self.cfg;
        let reply = self
            .with_writer("XPENDING", SHUTDOWN_STEP, |mut conn| async move {
                redis::cmd("XPENDING")
                    .arg(&cfg.stream_name)
                    .arg(&cfg.group_name)
                    .arg("-")
                    .arg("+")
                    .arg(100_000)
                    .arg(&cfg.consumer_name)
                    .query_async::<Value>(&mut conn)
                    .await
            })
            .await?;
        Ok(reply::pending_rows(reply)?
            .into_iter()
            .map(|r| (r.id, r.deliveries))
            .collect())
    }
}

/// The background task: moves due delayed messages, heartbeats held
/// entries, probes for `is_drained`. Holds only a weak reference.
async fn duties(weak: Weak<Inner>, wake: Arc<Notify>, mut stop: watch::Receiver<bool>) {
    let mut next_move = Instant::now();
    let mut next_beat = Instant::now();
    let mut next_probe = Instant::now();
    loop {
        let notified = wake.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        {
            let Some(inner) = weak.upgrade() else {
                return;
            };
            let now = Instant::now();
            if now >= next_move {
                next_move = now + inner.move_due().await;
            }
            if now >= next_beat {
                inner.heartbeat().await;
                next_beat = now + inner.cfg.heartbeat_interval();
            }
            if now >= next_probe && inner.probe_wanted.swap(false, Ordering::AcqRel) {
                inner.probe().await;
                next_probe = now + PROBE_GAP;
            }
        }
        let until = next_move.min(next_beat);
        tokio::select! {
            _ = tokio::time::sleep_until(until) => {}
            _ = &mut notified => {
                // A schedule or a probe request: look again now.
                next_move = next_move.min(Instant::now());
                if Instant::now() < next_probe {
                    tokio::time::sleep_until(next_probe).await;
                }
            }
            _ = stop.changed() => {}
        }
        if *stop.borrow() {
            return;
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
            let task = tokio::spawn(duties(Arc::downgrade(inner), inner.timer_wake.clone(), rx));
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

    fn is_drained(&self) -> Option<bool> {
        Some(self.inner.is_drained())
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
