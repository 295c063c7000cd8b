//! SQLite: durable queues in one file, no server.
//!
//! * Jobs are rows of `foxtive_jobs` (layout and index in [`schema`]);
//!   several processes share one file in WAL mode, each waiting up to
//!   `busy_timeout` for the single write lock.
//! * `receive` claims a batch in one `UPDATE ... RETURNING` inside `BEGIN
//!   IMMEDIATE` ([`fetch`]); the claim counts the attempt and leases the
//!   rows for `lease_timeout`. Leases are renewed from a tokio task while
//!   handlers run ([`lease`]); a dead worker's rows come back when their
//!   lease ends, as the next attempt.
//! * `settle` applies a whole batch in one transaction ([`settle`]): acks
//!   are one DELETE, retries stay in the table with a later `run_at`, dead
//!   letters move to `foxtive_dead_letters` ([`dlq`]).
//! * Every SQLite call runs on tokio's blocking pool, never on the async
//!   workers, through one connection per file in the process (shared by
//!   every queue on it, [`shared`]) behind a mutex: in-process callers queue
//!   on the mutex (fair, no sleeping), other processes on SQLite's lock.
//! * With `keep_finished`, acked jobs move to `foxtive_finished_jobs` and
//!   the lease task deletes them once expired, 1,000 rows per short write
//!   transaction ([`lease`]).
//! * Idle receivers poll with back-off up to `poll_max` and are woken at
//!   once by this process's publishes, retries and hand-backs.

mod config;
pub(crate) mod db;
pub mod dedup;
pub mod dlq;
mod fetch;
mod lease;
pub mod row;
pub mod schema;
mod settle;
mod shared;
mod stats;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use rusqlite::{Connection, TransactionBehavior};
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::options::Options;
use super::registry::{Kind, Opened};
use super::{Backend, BackendState, QueueStats, SettleItem};
use crate::clock::unix_now;
use crate::dlq::DeadLetter;
use crate::message::{Delivery, Outgoing};
use crate::{Error, Result};

pub use config::{
    path_from_url, SqliteConfig, DEFAULT_BUSY_TIMEOUT, DEFAULT_POLL_MAX, OPTIONS, POLL_MIN,
};
pub use db::migrate_path;
pub use dlq::SqliteDeadLetters;

/// `sqlite:///rel.db` / `sqlite:////abs.db`: opened by the core from the URL
/// and the options in [`OPTIONS`].
pub const KIND: Kind = Kind {
    name: "sqlite",
    type_name: "SqliteBackend",
    schemes: &["sqlite"],
    open: Some(open),
};

fn open(url: &str, queue: &str, options: Options) -> Result<Opened> {
    let cfg = SqliteConfig::from_options(path_from_url(url)?, queue, options)?;
    let backend = Arc::new(SqliteBackend::new(cfg)?);
    Ok(Opened {
        dead_letters: Some(Arc::new(backend.dead_letter_store())),
        backend,
    })
}

/// How long `close` waits for the renewal task.
const SHUTDOWN_STEP: Duration = Duration::from_secs(3);

/// The SQLite backend.
pub struct SqliteBackend {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    cfg: SqliteConfig,
    queue: Arc<str>,
    /// The file's shared connection slot while this backend is open (taken
    /// on first use, let go at close): every write goes through it.
    conn: Mutex<Option<shared::Slot>>,
    /// A second connection for `is_drained`, which is synchronous: a WAL
    /// read that never waits for the writer.
    probe: Mutex<Option<Connection>>,
    /// Rows handed out and not settled yet: their leases are renewed.
    held: Mutex<HashSet<i64>>,
    /// Publishes, retries and hand-backs of this process; close and stop.
    wake: Notify,
    stopped: AtomicBool,
    closed: AtomicBool,
    /// The current idle poll pause (backs off to `poll_max`).
    idle_pause: Mutex<Duration>,
    renewer: Mutex<Option<(JoinHandle<()>, watch::Sender<bool>)>>,
    failures: AtomicU32,
    /// Rows claimed for a receive that was dropped before it got them:
    /// handed back at close.
    orphans: Mutex<Vec<i64>>,
}

/// Between a claim on the blocking pool and the receive waiting for it.
#[derive(Default)]
struct Handoff {
    /// The receive was dropped: a claim finishing now gives its rows back.
    abandoned: bool,
    /// Rows claimed and not yet taken by the receive.
    claimed: Vec<i64>,
}

/// Marks the handoff abandoned if the receive is dropped mid-claim.
struct HandoffGuard {
    inner: Arc<Inner>,
    handoff: Arc<Mutex<Handoff>>,
}

impl HandoffGuard {
    /// The receive got the claim's result: nothing to give back.
    fn received(self) {
        self.handoff.lock().claimed.clear();
    }
}

impl Drop for HandoffGuard {
    fn drop(&mut self) {
        let mut h = self.handoff.lock();
        h.abandoned = true;
        let ids = std::mem::take(&mut h.claimed);
        drop(h);
        if !ids.is_empty() {
            self.inner.orphans.lock().extend(ids);
        }
    }
}

impl SqliteBackend {
    pub fn new(cfg: SqliteConfig) -> Result<Self> {
        cfg.validate()?;
        Ok(SqliteBackend {
            inner: Arc::new(Inner {
                queue: Arc::from(cfg.queue.as_str()),
                conn: Mutex::new(None),
                probe: Mutex::new(None),
                held: Mutex::new(HashSet::new()),
                wake: Notify::new(),
                stopped: AtomicBool::new(false),
                closed: AtomicBool::new(false),
                idle_pause: Mutex::new(POLL_MIN),
                renewer: Mutex::new(None),
                failures: AtomicU32::new(0),
                orphans: Mutex::new(Vec::new()),
                cfg,
            }),
        })
    }

    pub fn config(&self) -> &SqliteConfig {
        &self.inner.cfg
    }

    /// Rows delivered by this backend and not settled yet.
    pub fn held(&self) -> usize {
        self.inner.held.lock().len()
    }

    /// Up to `limit` dead letters of this queue, oldest first.
    pub async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>> {
        let stored = self.dead_letter_store().read(limit).await?;
        Ok(stored.into_iter().map(|s| s.record).collect())
    }
}

impl Inner {
    /// The file's connection slot, shared with the other backends of this
    /// process on the same file.
    fn slot(&self) -> shared::Slot {
        self.conn
            .lock()
            .get_or_insert_with(|| shared::slot(&self.cfg.path, self.cfg.busy_timeout))
            .clone()
    }

    /// Run `f` on the connection, on the blocking pool, opening the file
    /// first if needed.
    pub(crate) async fn with_conn<T, F>(self: &Arc<Self>, what: &'static str, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let inner = self.clone();
        let slot = self.slot();
        let res = tokio::task::spawn_blocking(move || {
            let mut guard = slot.lock();
            if guard.is_none() {
                *guard = Some(db::open(&inner.cfg.path, inner.cfg.busy_timeout)?);
            }
            let Some(conn) = guard.as_mut() else {
                return Err(Error::Backend("sqlite: no connection".into()));
            };
            f(conn).map_err(|e| db::error(what, &inner.cfg.path, e))
        })
        .await
        .unwrap_or_else(|e| Err(Error::Backend(format!("sqlite {what}: task failed: {e}"))));
        match &res {
            Ok(_) => self.failures.store(0, Ordering::Relaxed),
            Err(e) if e.is_connection() => {
                self.failures.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {}
        }
        res
    }

    fn shut(&self) -> bool {
        self.stopped.load(Ordering::Acquire) || self.closed.load(Ordering::Acquire)
    }

    /// The pause before the next idle poll; doubles up to `poll_max`.
    fn next_pause(&self) -> Duration {
        let mut pause = self.idle_pause.lock();
        let now = *pause;
        *pause = (now * 2).min(self.cfg.poll_max);
        now
    }

    fn busy(&self) {
        *self.idle_pause.lock() = POLL_MIN;
    }

    async fn receive(self: &Arc<Self>, max: usize, wait: Duration) -> Result<Vec<Delivery>> {
        let deadline = Instant::now() + wait;
        let max = max.max(1);
        let lease = self.cfg.lease_timeout.as_secs_f64();
        loop {
            // Register before looking, so a publish in between is not missed.
            let notified = self.wake.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.shut() {
                return Err(Error::Shutdown);
            }
            let queue = self.queue.clone();
            // The claim runs on the blocking pool and commits even if this
            // future is dropped meanwhile (a pool stopping drops its
            // receive): the handoff gives such a batch back instead of
            // leaving it leased until `lease_timeout`.
            let handoff = Arc::new(Mutex::new(Handoff::default()));
            let guard = HandoffGuard {
                inner: self.clone(),
                handoff: handoff.clone(),
            };
            let claimed = self
                .with_conn("claim", move |conn| {
                    let now = unix_now();
                    match fetch::next_due(conn, &queue)? {
                        Some(due) if due <= now => {
                            let batch = fetch::claim(conn, &queue, max, now, lease)?;
                            let ids: Vec<i64> = batch.iter().filter_map(row::row_id).collect();
                            let mut h = handoff.lock();
                            if h.abandoned {
                                drop(h);
                                conn.prepare_cached(settle::RELEASE)?
                                    .execute(rusqlite::params![row::id_list(&ids), now])?;
                                return Ok((Vec::new(), None));
                            }
                            h.claimed = ids;
                            Ok((batch, None))
                        }
                        due => Ok((Vec::new(), due)),
                    }
                })
                .await;
            guard.received();
            let (batch, next_due) = claimed?;
            if !batch.is_empty() {
                let mut held = self.held.lock();
                held.extend(batch.iter().filter_map(row::row_id));
                drop(held);
                self.busy();
                return Ok(batch);
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(batch);
            }
            let mut pause = self.next_pause().min(deadline - now);
            if let Some(due) = next_due {
                let until = (due - unix_now()).max(0.0);
                pause = pause.min(Duration::from_secs_f64(until.min(3600.0)));
            }
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = &mut notified => self.busy(),
            }
        }
    }

    async fn settle(self: &Arc<Self>, batch: Vec<SettleItem>) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        // Stop renewing first: if the transaction fails, the leases run out
        // and the rows come back rather than staying held forever.
        {
            let mut held = self.held.lock();
            for (d, _) in &batch {
                if let Some(id) = row::row_id(d) {
                    held.remove(&id);
                }
            }
        }
        let keep = !self.cfg.keep_finished.is_zero();
        let frees = self
            .with_conn("settle", move |conn| {
                let now = unix_now();
                let mut plan = settle::Plan::of(&batch, now);
                plan.keep = keep;
                settle::apply(conn, &plan, now)?;
                Ok(plan.frees_jobs())
            })
            .await?;
        if frees {
            self.wake.notify_waiters();
        }
        Ok(())
    }

    async fn publish(self: &Arc<Self>, messages: Vec<Outgoing>) -> Result<Vec<String>> {
        if messages.is_empty() {
            return Ok(Vec::new());
        }
        let queue = self.queue.clone();
        let ids = self
            .with_conn("publish", move |conn| {
                let now = unix_now();
                // One transaction, one prepared INSERT run per row: SQLite
                // runs a prepared statement in a few µs, as fast as a
                // multi-row VALUES, with no 32k-parameter limit and the one
                // INSERT text the Python transactional enqueue uses too.
                let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
                let mut ids = Vec::with_capacity(messages.len());
                {
                    let mut stmt = tx.prepare_cached(schema::INSERT_JOB)?;
                    for m in &messages {
                        let (params, id) = row::insert_params(&queue, m, now);
                        if let Some(d) = &m.dedup {
                            // The key and the job commit together, or neither.
                            let ttl = d.ttl.as_secs_f64();
                            if let Some(holder) = dedup::claim(&tx, &queue, &d.key, &id, ttl, now)?
                            {
                                ids.push(holder);
                                continue;
                            }
                        }
                        stmt.execute(rusqlite::params_from_iter(params))?;
                        ids.push(id);
                    }
                }
                tx.commit()?;
                Ok(ids)
            })
            .await?;
        self.wake.notify_waiters();
        Ok(ids)
    }

    /// Unlock rows this backend still holds (due now, attempt kept),
    /// including batches claimed for a receive that was dropped.
    async fn hand_back(self: &Arc<Self>) {
        let mut ids: Vec<i64> = self.held.lock().drain().collect();
        ids.append(&mut self.orphans.lock());
        if ids.is_empty() {
            return;
        }
        let n = ids.len();
        let res = self
            .with_conn("hand back", move |conn| {
                conn.prepare_cached(settle::RELEASE)?
                    .execute(rusqlite::params![row::id_list(&ids), unix_now()])
            })
            .await;
        match res {
            Ok(_) => tracing::info!(queue = %self.queue, count = n,
                "sqlite: unfinished jobs handed back"),
            Err(e) => tracing::warn!(queue = %self.queue, error = %e,
                "sqlite: could not hand back unfinished jobs; they come back when their lease ends"),
        }
    }

    fn is_drained(&self) -> Option<bool> {
        if !self.held.lock().is_empty() {
            return Some(false);
        }
        let mut guard = self.probe.try_lock()?;
        if guard.is_none() {
            *guard = db::open_reader(&self.cfg.path).ok();
        }
        let conn = guard.as_ref()?;
        let waiting = conn
            .prepare_cached("SELECT EXISTS (SELECT 1 FROM foxtive_jobs WHERE queue = ?1)")
            .and_then(|mut s| s.query_row([&*self.queue], |r| r.get::<_, bool>(0)));
        match waiting {
            Ok(w) => Some(!w),
            Err(_) => None,
        }
    }
}

#[async_trait]
impl Backend for SqliteBackend {
    fn name(&self) -> &str {
        &self.inner.queue
    }

    async fn connect(&self) -> Result<()> {
        let inner = &self.inner;
        inner.closed.store(false, Ordering::Release);
        inner.stopped.store(false, Ordering::Release);
        inner.with_conn("open", |_| Ok(())).await?;
        let mut renewer = inner.renewer.lock();
        if renewer.is_none() {
            let (tx, rx) = watch::channel(false);
            let task = tokio::spawn(lease::run(Arc::downgrade(inner), rx));
            *renewer = Some((task, tx));
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
        self.inner.stopped.store(true, Ordering::Release);
        self.inner.wake.notify_waiters();
        Ok(())
    }

    async fn close(&self) -> Result<()> {
        let inner = &self.inner;
        inner.closed.store(true, Ordering::Release);
        inner.wake.notify_waiters();
        let renewer = inner.renewer.lock().take();
        if let Some((task, stop)) = renewer {
            stop.send_replace(true);
            if tokio::time::timeout(SHUTDOWN_STEP, task).await.is_err() {
                tracing::warn!(queue = %inner.queue, "sqlite: lease renewal did not stop in time");
            }
        }
        inner.hand_back().await;
        // Let go of the file's connection: the last backend out closes it
        // (and the last connection out checkpoints the WAL); a later
        // publish or connect takes it again.
        let closing = inner.clone();
        let _ = tokio::task::spawn_blocking(move || {
            let slot = closing.conn.lock().take();
            drop(slot);
            closing.probe.lock().take();
        })
        .await;
        Ok(())
    }

    fn state(&self) -> BackendState {
        if self.inner.closed.load(Ordering::Acquire) {
            BackendState::Closed
        } else if self.inner.failures.load(Ordering::Relaxed) > 0 {
            BackendState::Reconnecting
        } else {
            BackendState::Connected
        }
    }

    fn is_drained(&self) -> Option<bool> {
        self.inner.is_drained()
    }

    fn consecutive_failures(&self) -> u32 {
        self.inner.failures.load(Ordering::Relaxed)
    }

    async fn queue_stats(&self) -> Result<Option<QueueStats>> {
        self.stats().await.map(Some)
    }
}

impl std::fmt::Debug for SqliteBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteBackend")
            .field("path", &self.inner.cfg.path)
            .field("queue", &self.inner.queue)
            .finish()
    }
}
