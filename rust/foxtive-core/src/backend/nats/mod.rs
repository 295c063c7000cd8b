//! NATS JetStream: a durable pull consumer with explicit acks.
//!
//! * The queue is subject `subject` in stream `stream` (WorkQueue retention
//!   when foxtive creates it), read by the durable pull consumer `durable`
//!   that every worker shares (`declare.rs`).
//! * Pull requests ask for `min(room in the pool, prefetch)` messages and
//!   land on one inbox subscription per backend (`fetch.rs`); the next one
//!   goes out while the last still drains (at most two out, never more
//!   asked for than the pool has room for); the attempt is
//!   the delivery count in the message's ack subject, so it survives crashes
//!   and restarts. A message delivered more than `max_deliver` times is a
//!   poison pill: dead-lettered, not handed out. The consumer's own
//!   `max_deliver` is one more, keeping a delivery for foxtive to do that.
//! * Settling (`settle.rs`): acks are fire-and-forget publishes to the ack
//!   subject, except the last of each settle batch, a double ack (the
//!   server answers once it applied it, and every ack before it on this
//!   connection); retries are `-NAK` with the delay (no head-of-line
//!   blocking: the server times each message); requeues are `-NAK`; dead
//!   letters are published to `dlq_subject` and, once the server acked that
//!   publish, the original is `+TERM`ed.
//! * Publishing sets `Nats-Msg-Id` to the message id (deduplicated within the
//!   stream's duplicate window). A dedup key (`Outgoing::dedup`, any TTL) is
//!   taken in a KV bucket first (`dedup.rs`). A delayed publish waits in a delay stream
//!   (`delay.rs`): NATS 2.9 has no per-message delay, and a NAK with delay
//!   on the queue itself would count as a delivery.
//! * async-nats reconnects by itself; the link (`link.rs`) shows the state.
//! * Idle means the server owes nothing this backend does not hold
//!   (`probe.rs`): a lost connection's pulls come back only after `ack_wait`.
//! * At stop, the pull requests still out are let end, the inbox is
//!   unsubscribed and whatever was pulled and not handed out is handed back
//!   (`-NAK`), as is every delivery not settled at close.

mod codec;
mod config;
mod declare;
mod dedup;
mod delay;
pub mod dlq;
mod fetch;
pub(crate) mod kv;
pub(crate) mod link;
mod probe;
mod publish;
mod seqmap;
mod settle;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use super::options::Options;
use super::registry::{Kind, Opened};
use super::{Backend, BackendState, SettleItem};
use crate::message::{Delivery, Outgoing};
use crate::{Error, Result};
use seqmap::SeqMap;

pub use codec::NatsReceipt;
pub use config::{stream_name_for, NatsConfig};
pub use link::Auth;

/// `nats://` and `tls://`, opened by the core from the URL and its options.
pub const KIND: Kind = Kind {
    name: "nats",
    type_name: "NatsBackend",
    schemes: &["nats", "tls"],
    open: Some(open),
};

/// The options [`open`] takes.
pub const OPTIONS: &[&str] = &[
    "stream",
    "subject",
    "durable",
    "ack_wait",
    "prefetch",
    "declare",
    "dlq_subject",
    "delay_subject",
    "max_deliver",
    "max_ack_pending",
    "token",
    "nkey_file",
    "creds_file",
];

fn open(url: &str, queue: &str, mut options: Options) -> Result<Opened> {
    let subject = options.take_str("subject")?;
    let mut cfg = NatsConfig::for_queue(subject.as_deref().unwrap_or(queue));
    if let Some(v) = options.take_str("stream")? {
        cfg.stream = v;
    }
    if let Some(v) = options.take_str("durable")? {
        cfg.durable = v;
    }
    if let Some(v) = options.take_seconds("ack_wait")? {
        cfg.ack_wait = v;
    }
    if let Some(v) = options.take_u64("prefetch")? {
        cfg.prefetch = usize::try_from(v).unwrap_or(usize::MAX);
    }
    if let Some(v) = options.take_bool("declare")? {
        cfg.declare = v;
    }
    if let Some(v) = options.take_str("dlq_subject")? {
        cfg.dlq_subject = v;
    }
    if let Some(v) = options.take_str("delay_subject")? {
        cfg.delay_subject = v;
    }
    if let Some(v) = options.take_u64("max_deliver")? {
        cfg.max_deliver = u32::try_from(v).unwrap_or(u32::MAX);
    }
    if let Some(v) = options.take_u64("max_ack_pending")? {
        cfg.max_ack_pending = i64::try_from(v).unwrap_or(i64::MAX);
    }
    let auth = Auth::take_from(&mut options)?;
    options.finish("NATS (nats://)", OPTIONS)?;
    let backend = Arc::new(NatsBackend::new(url, cfg, auth)?);
    Ok(Opened {
        dead_letters: Some(Arc::new(backend.dead_letter_store())),
        backend,
    })
}

/// How long settlements wait for the server (double ack, dead-letter publish).
const SETTLE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long shutdown steps may take.
const SHUTDOWN_STEP: Duration = Duration::from_secs(3);

/// A delivery handed out and not settled: where its settlement goes (the
/// subject as the client received it, shared, never copied into a `String`)
/// and the delivery count it was handed out with (`NatsReceipt::delivered`).
pub(crate) struct Held {
    reply: async_nats::Subject,
    delivered: u32,
}

/// The NATS JetStream backend.
pub struct NatsBackend {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    cfg: NatsConfig,
    queue: Arc<str>,
    link: link::Link,
    puller: tokio::sync::Mutex<fetch::Puller>,
    /// Deliveries handed out and not settled, by stream sequence.
    held: Mutex<SeqMap<Held>>,
    /// The last attempt handed out per stream sequence, until it is acked or
    /// dead-lettered (`fetch::attempt_floor`).
    handed: Mutex<SeqMap<u32>>,
    declared: tokio::sync::Mutex<bool>,
    /// The publish-dedup bucket once opened, with the `max_age` it was given.
    dedup: tokio::sync::Mutex<Option<(async_nats::jetstream::kv::Store, Duration)>>,
    /// Held by settlements while they take deliveries out of `held` and send
    /// their acks/NAKs, by the heartbeat while it sends `+WPI`s.
    settling: tokio::sync::RwLock<()>,
    stopped: AtomicBool,
    closed: AtomicBool,
    closing: Notify,
    /// The delayed-message mover and the in-progress heartbeat.
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// What the server last said it still owes (`Backend::is_drained`).
    probes: probe::Probes,
}

impl NatsBackend {
    /// A backend for `url` (`nats://[user:password@|token@]host:port[,host:port]`
    /// or `tls://`). Nothing connects until [`Backend::connect`] or the first
    /// publish.
    pub fn new(url: &str, cfg: NatsConfig, auth: Auth) -> Result<Self> {
        cfg.validate()?;
        let name = format!("foxtive {}", cfg.subject);
        let link = link::Link::new(url, auth, cfg.reconnect, name)?;
        Ok(NatsBackend {
            inner: Arc::new(Inner {
                queue: Arc::from(cfg.subject.as_str()),
                link,
                puller: tokio::sync::Mutex::new(fetch::Puller::default()),
                held: Mutex::new(SeqMap::default()),
                handed: Mutex::new(SeqMap::default()),
                declared: tokio::sync::Mutex::new(false),
                dedup: tokio::sync::Mutex::new(None),
                settling: tokio::sync::RwLock::new(()),
                stopped: AtomicBool::new(false),
                closed: AtomicBool::new(false),
                closing: Notify::new(),
                tasks: Mutex::new(Vec::new()),
                probes: probe::Probes::default(),
                cfg,
            }),
        })
    }

    pub fn config(&self) -> &NatsConfig {
        &self.inner.cfg
    }

    /// The URL with its credentials replaced by `***`.
    pub fn url(&self) -> &str {
        &self.inner.link.url
    }

    /// Deliveries handed out by this backend and not settled yet.
    pub fn held(&self) -> usize {
        self.inner.held.lock().len()
    }

    /// The dead-letter stream of this queue as a store (list, replay, purge).
    pub fn dead_letter_store(&self) -> dlq::NatsDeadLetters {
        dlq::NatsDeadLetters::new(self.inner.clone())
    }
}

impl Inner {
    /// Streams and consumers, once per backend (and again after a close).
    async fn ensure_declared(&self) -> Result<()> {
        let mut done = self.declared.lock().await;
        if *done {
            return Ok(());
        }
        let (_, js) = self.link.conn().await?;
        declare::declare(&js, &self.link, &self.cfg).await?;
        *done = true;
        Ok(())
    }

    fn reopen(&self) {
        self.link.open_again();
        self.closed.store(false, Ordering::Release);
    }
}

#[async_trait]
impl Backend for NatsBackend {
    fn name(&self) -> &str {
        &self.inner.queue
    }

    async fn connect(&self) -> Result<()> {
        let inner = &self.inner;
        inner.reopen();
        inner.stopped.store(false, Ordering::Release);
        inner.probes.bind();
        inner.ensure_declared().await?;
        let mut tasks = inner.tasks.lock();
        if tasks.is_empty() {
            tasks.push(tokio::spawn(delay::run(Arc::downgrade(inner))));
            tasks.push(tokio::spawn(fetch::heartbeat(Arc::downgrade(inner))));
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
        self.inner.reopen();
        self.inner.publish(messages).await
    }

    async fn stop_receiving(&self) -> Result<()> {
        self.inner.stopped.store(true, Ordering::Release);
        self.inner.hand_back_pulled().await;
        Ok(())
    }

    async fn close(&self) -> Result<()> {
        let inner = &self.inner;
        inner.stopped.store(true, Ordering::Release);
        if inner.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        inner.closing.notify_waiters();
        for task in inner.tasks.lock().drain(..) {
            task.abort();
        }
        if !inner.link.is_closed() {
            // What the last pull request brings, then what handlers never settled.
            inner.hand_back_pulled().await;
            inner.hand_back_held().await;
        }
        *inner.puller.lock().await = fetch::Puller::default();
        *inner.declared.lock().await = false;
        *inner.dedup.lock().await = None;
        inner.link.close().await;
        Ok(())
    }

    fn state(&self) -> BackendState {
        self.inner.link.state()
    }

    fn is_drained(&self) -> Option<bool> {
        self.inner.probes.is_drained(&self.inner)
    }

    fn reconnect_attempts(&self) -> u64 {
        self.inner.link.reconnect_attempts()
    }

    fn consecutive_failures(&self) -> u32 {
        self.inner.link.consecutive_failures()
    }
}

impl std::fmt::Debug for NatsBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsBackend")
            .field("url", &self.inner.link.url)
            .field("stream", &self.inner.cfg.stream)
            .field("subject", &self.inner.cfg.subject)
            .field("durable", &self.inner.cfg.durable)
            .finish()
    }
}
