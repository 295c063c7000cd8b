//! The connection and this backend's channels on it ([`Link`]), and keeping
//! one alive: take the process's shared connection for these settings (see
//! [`super::shared`]) or open it on the first node that answers, open the
//! channels, install the link, notice when it dies and rebuild it in the
//! background with the reconnect strategy, and hand out the live link to
//! whoever waits for one. A link that dies with its channels alone (a
//! consumer the broker cancelled, a channel the broker closed) is rebuilt
//! on the same connection; the other backends on it never notice.

use std::collections::HashMap;
use std::future::poll_fn;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use futures_core::Stream;
use lapin::options::{BasicConsumeOptions, BasicQosOptions, ConfirmSelectOptions};
use lapin::types::{FieldTable, LongString, ShortString};
use lapin::uri::AMQPUri;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, Consumer};
use parking_lot::Mutex;

use super::acks::AckTracker;
use super::nodes::attempt_order;
use super::shared::{self as registry, AmqpConn, Key, Turn};
use super::{Shared, HEALTHY_AFTER, STATE_CONNECTED, STATE_RECONNECTING};
use crate::backend::unless_closed;
use crate::{Error, Result};

/// The (shared) connection and this backend's channels, valid for one epoch.
pub(super) struct Link {
    pub(super) epoch: u64,
    pub(super) conn: Arc<AmqpConn>,
    pub(super) consume: Channel,
    pub(super) consumer: Option<Mutex<Consumer>>,
    pub(super) publish: tokio::sync::Mutex<Channel>,
    pub(super) admin: tokio::sync::Mutex<Channel>,
    pub(super) acks: tokio::sync::Mutex<AckTracker>,
    /// Properties beyond the ones a `Delivery` carries (timestamp, type,
    /// app_id…), kept by delivery tag only for messages that have them, so
    /// that retry and dead-letter copies keep them too.
    pub(super) extras: Mutex<HashMap<u64, BasicProperties>>,
    /// Queue name → when this link last declared it.
    pub(super) declared: Mutex<HashMap<String, Instant>>,
    pub(super) dead: AtomicBool,
    pub(super) cancelled: AtomicBool,
    /// When the link was built, and whether it has since proved healthy
    /// (delivered, settled or published something, or stayed up for
    /// [`HEALTHY_AFTER`]). A link that dies before proving itself counts as
    /// a failed attempt, so that a broker dropping every new connection is
    /// retried with backoff rather than in a tight loop.
    pub(super) born: Instant,
    pub(super) proved: AtomicBool,
}

impl Link {
    pub(super) fn alive(&self) -> bool {
        !self.dead.load(Ordering::Acquire)
            && self.conn.status().connected()
            && self.consume.status().connected()
    }
}

/// What `Link::poll_batch` ended with.
pub(super) enum BatchEnd {
    /// Deliveries gathered (maybe none); the consumer goes on.
    Open,
    /// The consumer was cancelled (by us or by the broker).
    Cancelled,
    /// The channel or connection failed.
    Failed(String),
}

impl Shared {
    pub(super) async fn open_channel(&self, conn: &Connection, what: &str) -> Result<Channel> {
        conn.create_channel()
            .await
            .map_err(|e| self.lapin_err(&format!("opening the {what} channel"), &e))
    }

    /// Build a link: channels on the process's live connection for these
    /// settings, or on a new one opened on the first node that answers.
    /// `close` interrupts it at once (a broker that accepts TCP and never
    /// answers must not hold a shutdown back).
    pub(super) async fn build_link(&self, consume: bool) -> Result<Link> {
        unless_closed(&self.closing, &self.closed, async {
            let conn = self.connection().await?;
            // Declarations count against `connect_timeout` as before; the
            // connection was bounded by it already.
            let timeout = self.config.connect_timeout;
            match tokio::time::timeout(timeout, self.build_link_on(conn, consume)).await {
                Ok(built) => built,
                Err(_) => Err(Error::ConnectionLost(format!(
                    "opening channels and declaring on {} timed out after {}s (connect_timeout)",
                    self.redacted_url,
                    timeout.as_secs_f64()
                ))),
            }
        })
        .await
    }

    /// What makes this backend's connection interchangeable with others'.
    fn connection_key(&self) -> Key {
        Key {
            nodes: self.nodes.clone(),
            connection_name: self.config.connection_name.clone(),
            connect_timeout: self.config.connect_timeout,
            runtime: crate::backend::shared::runtime_here(),
        }
    }

    /// The shared live connection, or a new one if this backend is the
    /// first to need it; an attempt this backend waited for and that failed
    /// is its failure too.
    async fn connection(&self) -> Result<Arc<AmqpConn>> {
        let hub = registry::hub(&self.connection_key());
        let turn = hub.turn().await;
        match turn {
            Turn::Live(conn) => Ok(conn),
            Turn::Failed(e) => Err(e),
            Turn::Open(turn) => match self.try_nodes(hub.last_node()).await {
                Ok((conn, node)) => Ok(hub.opened(conn, node, turn)),
                Err(e) => {
                    hub.failed(&e, turn);
                    Err(e)
                }
            },
        }
    }

    /// Go round the nodes (see [`attempt_order`]: from a random one, the
    /// node `lost` last), each within `connect_timeout`.
    async fn try_nodes(&self, lost: usize) -> Result<(Connection, usize)> {
        let n = self.nodes.len();
        let timeout = self.config.connect_timeout;
        let mut last = None;
        for index in attempt_order(n, rand::random::<u32>() as usize, lost) {
            let uri = &self.nodes[index];
            let node = format!("{}:{}", uri.authority.host, uri.authority.port);
            let err = match tokio::time::timeout(timeout, self.connect_to(uri)).await {
                Ok(Ok(conn)) => return Ok((conn, index)),
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
                    "connecting through this RabbitMQ node failed; trying the next one");
            }
            last = Some(err);
        }
        Err(last.unwrap_or_else(|| Error::Config("url: no broker node".to_string())))
    }

    async fn connect_to(&self, uri: &AMQPUri) -> Result<Connection> {
        let mut props = ConnectionProperties::default();
        if let Some(name) = &self.config.connection_name {
            props = props.with_connection_name(LongString::from(name.as_bytes().to_vec()));
        }
        Connection::connect_uri(uri.clone(), props)
            .await
            .map_err(|e| self.lapin_err("connecting", &e))
    }

    /// This backend's channels on `conn`, its topology declared and (with
    /// `consume`) its consumer started. A failure here closes the channels
    /// opened so far (lapin closes a channel when its last handle goes),
    /// never the connection the other backends use.
    async fn build_link_on(&self, conn: Arc<AmqpConn>, consume: bool) -> Result<Link> {
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

    pub(super) fn install(&self, link: Link) -> Option<Arc<Link>> {
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
    pub(super) fn link_failed(self: &Arc<Self>, epoch: u64, why: &str) {
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
    pub(super) fn note_healthy(&self, link: &Link) {
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
        let sleep = async {
            tokio::time::sleep(delay).await;
            Ok(())
        };
        let _ = unless_closed(&self.closing, &self.closed, sleep).await;
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
    pub(super) async fn live_link(self: &Arc<Self>, wait: Duration) -> Result<Arc<Link>> {
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

    /// Gather up to `max` deliveries already buffered; pending when none is.
    pub(super) async fn next_batch(
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
}

/// Close a replaced link's channels (its unacknowledged deliveries go back
/// to the queue), leaving the connection to the backends still on it.
fn close_link_later(link: Arc<Link>) {
    if let Ok(handle) = tokio::runtime::Handle::try_current() {
        handle.spawn(async move { link.close_channels("foxtive: replaced").await });
    }
}

impl Link {
    /// Close this link's channels; the connection stays up for the others.
    pub(super) async fn close_channels(&self, why: &str) {
        let publish = self.publish.lock().await.clone();
        let admin = self.admin.lock().await.clone();
        for ch in [&self.consume, &publish, &admin] {
            if ch.status().connected() {
                let _ = ch.close(200, ShortString::from(why)).await;
            }
        }
    }
}
