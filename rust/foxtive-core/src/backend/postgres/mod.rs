//! PostgreSQL: jobs are rows in the user's own database.
//!
//! * Tables live in their own schema (`foxtive` by default), created on first
//!   use and migrated forward (`schema.rs`, `schema_version`).
//! * Fetching claims up to a batch of due rows in one statement
//!   (`FOR UPDATE SKIP LOCKED`), leases them and counts the attempt
//!   (`fetch.rs`). Idle workers sleep until a NOTIFY on the queue's channel
//!   (sent by an insert trigger at commit, so a job enqueued in the caller's
//!   transaction wakes them once it exists), the next due row, or a slow poll.
//! * Leases of rows in handlers are renewed from a tokio task (`lease.rs`);
//!   a dead worker's rows come back after `lease_timeout`.
//! * Settlements are batched, one statement per outcome kind (`settle.rs`);
//!   dead letters move to `dead_letters` (`dlq.rs` reads them back).
//! * A lost connection is replaced by the backend itself (`link.rs`); leases
//!   are rows, so nothing is lost with the connection.
//!
//! * TLS follows the DSN's libpq settings (`sslmode`, default `prefer`;
//!   `sslrootcert`, `sslcert`, `sslkey`): `tls.rs`, through which every
//!   connection is opened.

mod analyze;
mod config;
pub mod dedup;
pub mod dlq;
mod fetch;
mod lease;
mod link;
pub mod publish;
pub mod schema;
mod settle;
mod shared;
mod stats;
mod tls;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::{Backend, BackendState, QueueStats, SettleItem};
use crate::message::{Delivery, Outgoing};
use crate::{Error, Result};
use link::{Conn, Link};
use publish::EnqueueRows;

pub(crate) use config::{parse_dsn, Dsn};
pub use config::{validate_schema, PostgresConfig, DEFAULT_SCHEMA};
pub use fetch::RowReceipt;
pub(crate) use tls::connect;

/// `postgresql://` and `postgres://` (libpq URLs; `?schema=` picks the
/// schema), opened by the core from the URL and its options.
pub const KIND: super::registry::Kind = super::registry::Kind {
    name: "postgres",
    type_name: "PostgresBackend",
    schemes: &["postgresql", "postgres"],
    open: Some(open),
};

/// The options [`open`] takes.
pub const OPTIONS: &[&str] = &["schema", "lease_timeout", "poll_interval", "keep_finished"];

fn open(
    url: &str,
    queue: &str,
    mut options: super::options::Options,
) -> Result<super::registry::Opened> {
    let mut cfg = PostgresConfig::new(queue);
    if let Some(schema) = options.take_str("schema")? {
        cfg.schema = schema;
    }
    if let Some(lease) = options.take_seconds("lease_timeout")? {
        cfg.lease_timeout = lease;
    }
    if let Some(poll) = options.take_seconds("poll_interval")? {
        cfg.poll_interval = poll;
    }
    if let Some(keep) = options.take_seconds("keep_finished")? {
        cfg.keep_finished = keep;
    }
    options.finish("PostgreSQL (postgresql://)", OPTIONS)?;
    let backend = Arc::new(PostgresBackend::new(url, cfg)?);
    Ok(super::registry::Opened {
        dead_letters: Some(Arc::new(backend.dead_letter_store())),
        backend,
    })
}

/// How long settlements keep trying through a connection loss.
const SETTLE_RETRY_WINDOW: Duration = Duration::from_secs(15);
/// How long a publish may keep trying: its caller should hear soon.
const PUBLISH_RETRY_WINDOW: Duration = Duration::from_secs(2);
/// How long the hand-back at close may take.
const SHUTDOWN_STEP: Duration = Duration::from_secs(3);
/// Shortest pause when rows are due but all locked by other workers.
const CONTENDED_PAUSE: Duration = Duration::from_millis(20);
/// Most rows claimed by one statement.
const MAX_BATCH: usize = 10_000;

/// The PostgreSQL backend.
pub struct PostgresBackend {
    inner: Arc<Inner>,
}

#[derive(Clone, Copy)]
struct Probe {
    at: Instant,
    activity: u64,
    drained: bool,
}

pub(crate) struct Inner {
    cfg: PostgresConfig,
    queue: Arc<str>,
    /// Claims, probes, lease renewals, publishes, dead-letter tools.
    pub(crate) link: Link,
    /// Settlements, on a connection of their own (see `link.rs`).
    settler: Link,
    /// Rows claimed by this backend and not settled: id → attempts at claim.
    held: Mutex<HashMap<i64, i32>>,
    stopped: AtomicBool,
    renewer: Mutex<Option<JoinHandle<()>>>,
    probe: Mutex<Option<Probe>>,
    /// Bumped by every local change (claim, settlement, publish), so a drain
    /// probe taken before it is not trusted.
    activity: AtomicU64,
    /// When slow claims last made it look at the table's statistics.
    slow_claims: analyze::SlowClaims,
}

impl PostgresBackend {
    /// A backend for `dsn` (a libpq URL, `postgresql://` or `postgres://`;
    /// `?schema=` names the schema unless `cfg.schema` names another). Nothing
    /// connects until [`Backend::connect`] or the first publish.
    pub fn new(dsn: &str, mut cfg: PostgresConfig) -> Result<Self> {
        let parsed = config::parse_dsn(dsn)?;
        if let Some(from_url) = &parsed.schema {
            if cfg.schema == DEFAULT_SCHEMA {
                cfg.schema = from_url.clone();
            } else if &cfg.schema != from_url {
                return Err(Error::Config(format!(
                    "schema: {:?} given, but the URL says ?schema={from_url}",
                    cfg.schema
                )));
            }
        }
        cfg.validate()?;
        let wake = Arc::new(tokio::sync::Notify::new());
        let link = Link::new(
            &parsed,
            &cfg.schema,
            &cfg.queue,
            cfg.reconnect,
            shared::Role::Claims,
            wake.clone(),
        );
        let settler = Link::new(
            &parsed,
            &cfg.schema,
            &cfg.queue,
            cfg.reconnect,
            shared::Role::Settles,
            wake,
        );
        Ok(PostgresBackend {
            inner: Arc::new(Inner {
                queue: Arc::from(cfg.queue.as_str()),
                link,
                settler,
                held: Mutex::new(HashMap::new()),
                stopped: AtomicBool::new(false),
                renewer: Mutex::new(None),
                probe: Mutex::new(None),
                activity: AtomicU64::new(0),
                slow_claims: analyze::SlowClaims::default(),
                cfg,
            }),
        })
    }

    pub fn config(&self) -> &PostgresConfig {
        &self.inner.cfg
    }

    /// The DSN with its password replaced by `***`.
    pub fn url(&self) -> &str {
        &self.inner.link.url
    }

    /// Rows claimed by this backend and not settled yet.
    pub fn held(&self) -> usize {
        self.inner.held.lock().len()
    }

    /// Connect (creating or migrating the schema) without starting anything.
    pub async fn ensure_schema(&self) -> Result<()> {
        self.inner.reopen();
        self.inner.link.conn().await.map(|_| ())
    }

    /// The dead-letter table of this queue as a store (list, replay, purge).
    pub fn dead_letter_store(&self) -> dlq::PostgresDeadLetters {
        dlq::PostgresDeadLetters::new(self.inner.clone())
    }

    /// Up to `limit` dead letters of this queue, oldest first.
    pub async fn dead_letters(&self, limit: usize) -> Result<Vec<crate::dlq::DeadLetter>> {
        let store = dlq::PostgresDeadLetters::new(self.inner.clone());
        Ok(crate::dlq::DeadLetterStore::list(&store, limit)
            .await?
            .into_iter()
            .map(|s| s.record)
            .collect())
    }
}

impl Inner {
    /// A statement failed on `conn`: forget the connection if it is gone.
    fn failed(&self, conn: &Conn, context: &str, e: &tokio_postgres::Error) -> Error {
        let err = self.link.error(context, e);
        if err.is_connection() || conn.client.is_closed() {
            self.link.lost(conn.gen);
            self.settler.lost(conn.gen);
        }
        err
    }

    /// Used again after close (a publish, a new pool run): allow connecting.
    pub(crate) fn reopen(&self) {
        self.link.reopen();
        self.settler.reopen();
    }

    fn touch(&self) {
        self.activity.fetch_add(1, Ordering::AcqRel);
    }

    fn start_renewer(self: &Arc<Self>) {
        let mut slot = self.renewer.lock();
        if slot.is_none() && !self.link.is_closed() {
            let every = lease::renew_every(self.cfg.lease_timeout);
            let expire = lease::expire_every(self.cfg.keep_finished);
            *slot = Some(tokio::spawn(lease::renew_loop(
                Arc::downgrade(self),
                every,
                expire,
            )));
        }
    }

    fn lease_secs(&self) -> f64 {
        self.cfg.lease_timeout.as_secs_f64()
    }

    async fn claim(&self, max: usize) -> Result<Vec<Delivery>> {
        let conn = self.link.conn().await?;
        let limit = max.clamp(1, MAX_BATCH) as i64;
        let rows = conn
            .client
            .query(
                &conn.stmts.claim,
                &[&&*self.queue, &limit, &self.lease_secs()],
            )
            .await
            .map_err(|e| self.failed(&conn, "claim", &e))?;
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let received_at = crate::clock::unix_now();
        let mut out = Vec::with_capacity(rows.len());
        let mut held = self.held.lock();
        for row in &rows {
            let d = fetch::delivery(row, &self.queue, received_at)?;
            if let Some((id, att)) = fetch::claim_of(&d) {
                held.insert(id, att);
            }
            out.push(d);
        }
        drop(held);
        fetch::in_claim_order(&mut out);
        self.touch();
        Ok(out)
    }

    /// Seconds until the next row of the queue is due (`None`: no rows).
    async fn next_due(&self) -> Result<Option<f64>> {
        let before = self.activity.load(Ordering::Acquire);
        let conn = self.link.conn().await?;
        let next: Option<f64> = conn
            .client
            .query_one(&conn.stmts.probe, &[&&*self.queue])
            .await
            .map_err(|e| self.failed(&conn, "probe", &e))?
            .get(0);
        *self.probe.lock() = Some(Probe {
            at: Instant::now(),
            activity: before,
            drained: next.is_none(),
        });
        Ok(next)
    }

    async fn receive(self: &Arc<Self>, max: usize, wait: Duration) -> Result<Vec<Delivery>> {
        self.start_renewer();
        let deadline = Instant::now() + wait;
        loop {
            if self.link.is_closed() {
                return Err(Error::Shutdown);
            }
            if self.stopped.load(Ordering::Acquire) || max == 0 {
                let _ = self
                    .link
                    .unless_closed(async {
                        tokio::time::sleep_until(deadline).await;
                        Ok(())
                    })
                    .await;
                return Ok(Vec::new());
            }
            // Listen before looking, so a NOTIFY in between is not missed.
            let wake = self.link.wake().clone();
            let notified = wake.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let started = Instant::now();
            let batch = self.claim(max).await?;
            if self.slow_claims.should_look(started.elapsed()) {
                let inner = self.clone();
                tokio::spawn(async move {
                    let (schema, queue) = (&inner.cfg.schema, &inner.queue);
                    if !analyze::analyze_if_stale(&inner.settler, schema, queue).await {
                        inner.slow_claims.forget(); // the next slow claim looks again
                    }
                });
            }
            if !batch.is_empty() {
                return Ok(batch);
            }
            let next = self.next_due().await?;
            let now = Instant::now();
            if now >= deadline {
                return Ok(batch);
            }
            let mut until = deadline.min(now + self.cfg.poll_interval);
            if let Some(secs) = next {
                let pause = if secs > 0.0 {
                    Duration::from_secs_f64(secs.min(3600.0))
                } else {
                    CONTENDED_PAUSE
                };
                until = until.min(now + pause);
            }
            let _ = tokio::time::timeout_at(until, notified).await;
        }
    }

    async fn settle(&self, batch: Vec<SettleItem>) -> Result<()> {
        let mut plan = settle::Plan::of(&batch);
        plan.keep = !self.cfg.keep_finished.is_zero();
        if plan.claims.is_empty() {
            return Ok(());
        }
        let give_up = Instant::now() + SETTLE_RETRY_WINDOW;
        let result = loop {
            let attempt = match self.settler.conn().await {
                Ok(conn) => match self.settler.channel(&conn).await {
                    Ok(channel) => plan
                        .apply(&conn, channel)
                        .await
                        .map_err(|e| self.failed(&conn, "settle", &e)),
                    Err(e) => Err(e),
                },
                Err(e) => Err(e),
            };
            match attempt {
                Err(e) if e.is_connection() && Instant::now() < give_up => continue,
                other => break other,
            }
        };
        {
            // Settled, or left leased: either way no longer renewed here, so a
            // failed settlement comes back after `lease_timeout`.
            let mut held = self.held.lock();
            for id in &plan.claims {
                held.remove(id);
            }
        }
        self.touch();
        if !plan.reschedule.0.is_empty() {
            // A receiver asleep until the lease end it probed (or its poll)
            // looks again now: a short retry is due long before either.
            self.link.wake().notify_waiters();
        }
        if let Err(e) = &result {
            tracing::warn!(queue = %self.queue, error = %e, rows = plan.claims.len(),
                "settlements not applied; the rows come back after lease_timeout");
        }
        result
    }

    async fn publish(&self, messages: Vec<Outgoing>) -> Result<Vec<String>> {
        if messages.is_empty() {
            return Ok(Vec::new());
        }
        // Publishing on its own (no pool running, or after a pool closed us).
        self.reopen();
        if messages.iter().any(|m| m.dedup.is_some()) {
            return self.publish_each(messages).await;
        }
        let rows = EnqueueRows::of(messages);
        let bodies: Vec<&[u8]> = rows.body.iter().map(|b| &b[..]).collect();
        let queue: &str = &self.queue;
        let give_up = Instant::now() + PUBLISH_RETRY_WINDOW;
        loop {
            let conn = match self.link.conn().await {
                Ok(conn) => conn,
                Err(e) if e.is_connection() && Instant::now() < give_up => continue,
                Err(e) => return Err(e),
            };
            let params = rows.params(&queue, &bodies);
            match conn.client.execute(&conn.stmts.insert, &params).await {
                Ok(_) => break,
                Err(e) => {
                    let err = self.failed(&conn, "publish", &e);
                    if !(err.is_connection() && Instant::now() < give_up) {
                        return Err(err);
                    }
                }
            }
        }
        self.touch();
        // Receivers of this backend look again at once (the NOTIFY comes too).
        self.link.wake().notify_waiters();
        Ok(rows.message_id)
    }

    async fn renew_leases(&self) {
        let (ids, atts): (Vec<i64>, Vec<i32>) =
            self.held.lock().iter().map(|(k, v)| (*k, *v)).unzip();
        if ids.is_empty() {
            return;
        }
        let conn = match self.link.conn().await {
            Ok(conn) => conn,
            Err(e) => {
                tracing::warn!(queue = %self.queue, error = %e, "lease renewal: no connection");
                return;
            }
        };
        if let Err(e) = conn
            .client
            .execute(&conn.stmts.renew, &[&ids, &atts, &self.lease_secs()])
            .await
        {
            let err = self.failed(&conn, "renew leases", &e);
            tracing::warn!(queue = %self.queue, error = %err, "lease renewal failed");
        }
    }

    /// The retention duty: delete this queue's finished jobs older than
    /// `keep_finished`, [`schema::EXPIRE_BATCH`] rows per statement, at most
    /// `max_batches` statements (the rest waits for the next round). Each
    /// statement is short and touches only `finished_jobs`, so claims and
    /// settlements pipelined on the same connection wait milliseconds at
    /// most. Returns the rows deleted.
    pub(crate) async fn expire_finished(&self, max_batches: usize) -> u64 {
        let keep = self.cfg.keep_finished.as_secs_f64();
        let mut deleted = 0;
        for _ in 0..max_batches {
            let conn = match self.link.conn().await {
                Ok(conn) => conn,
                Err(e) => {
                    tracing::debug!(queue = %self.queue, error = %e, "retention: no connection");
                    break;
                }
            };
            let res = conn
                .client
                .execute(
                    &conn.stmts.expire,
                    &[&&*self.queue, &keep, &schema::EXPIRE_BATCH],
                )
                .await;
            match res {
                Ok(n) => {
                    deleted += n;
                    if n < schema::EXPIRE_BATCH as u64 {
                        break;
                    }
                }
                Err(e) => {
                    let err = self.failed(&conn, "retention", &e);
                    tracing::warn!(queue = %self.queue, error = %err,
                        "retention: could not delete finished jobs; trying again later");
                    break;
                }
            }
            // Let claims and settlements queued meanwhile go first.
            tokio::task::yield_now().await;
        }
        deleted
    }

    /// Give every held row back (close): due now, next attempt.
    async fn release_held(&self) {
        let held: Vec<(i64, i32)> = self.held.lock().drain().collect();
        if held.is_empty() {
            return;
        }
        let n = held.len();
        let (ids, atts): (Vec<i64>, Vec<i32>) = held.into_iter().unzip();
        let delays = vec![0.0f64; n];
        let undo = vec![0i32; n];
        let step = async {
            let conn = self.link.conn().await?;
            conn.client
                .execute(&conn.stmts.reschedule, &[&ids, &atts, &delays, &undo])
                .await
                .map_err(|e| self.failed(&conn, "release", &e))?;
            let channel = self.link.channel(&conn).await?;
            conn.client
                .execute(&conn.stmts.notify, &[&channel])
                .await
                .map_err(|e| self.failed(&conn, "notify", &e))
        };
        match tokio::time::timeout(SHUTDOWN_STEP, step).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(queue = %self.queue, error = %e, rows = n,
                "could not hand back held rows; they come back after lease_timeout"),
            Err(_) => tracing::warn!(queue = %self.queue, rows = n,
                "handing back held rows timed out; they come back after lease_timeout"),
        }
    }

    fn is_drained(&self) -> Option<bool> {
        if !self.held.lock().is_empty() {
            return Some(false);
        }
        let fresh = self.cfg.poll_interval * 2;
        match *self.probe.lock() {
            Some(p)
                if p.at.elapsed() < fresh
                    && p.activity == self.activity.load(Ordering::Acquire) =>
            {
                Some(p.drained)
            }
            _ => None,
        }
    }
}

#[async_trait]
impl Backend for PostgresBackend {
    fn name(&self) -> &str {
        &self.inner.queue
    }

    async fn connect(&self) -> Result<()> {
        self.inner.stopped.store(false, Ordering::Release);
        self.inner.reopen();
        self.inner.link.conn().await?;
        self.inner.start_renewer();
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
        self.inner.stopped.store(true, Ordering::Release);
        self.inner.link.wake().notify_waiters();
        Ok(())
    }

    async fn close(&self) -> Result<()> {
        let inner = &self.inner;
        inner.stopped.store(true, Ordering::Release);
        if let Some(task) = inner.renewer.lock().take() {
            task.abort();
        }
        if !inner.link.is_closed() {
            inner.release_held().await;
        }
        inner.link.close();
        inner.settler.close();
        Ok(())
    }

    fn state(&self) -> BackendState {
        match (self.inner.link.state(), self.inner.settler.state()) {
            (BackendState::Closed, _) => BackendState::Closed,
            (BackendState::Reconnecting, _) | (_, BackendState::Reconnecting) => {
                BackendState::Reconnecting
            }
            _ => BackendState::Connected,
        }
    }

    fn is_drained(&self) -> Option<bool> {
        self.inner.is_drained()
    }

    async fn queue_stats(&self) -> Result<Option<QueueStats>> {
        self.stats().await.map(Some)
    }

    fn reconnect_attempts(&self) -> u64 {
        self.inner.link.reconnect_attempts() + self.inner.settler.reconnect_attempts()
    }

    fn consecutive_failures(&self) -> u32 {
        self.inner
            .link
            .consecutive_failures()
            .max(self.inner.settler.consecutive_failures())
    }
}

impl std::fmt::Debug for PostgresBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresBackend")
            .field("url", &self.inner.link.url)
            .field("queue", &self.inner.queue)
            .field("schema", &self.inner.cfg.schema)
            .finish()
    }
}
