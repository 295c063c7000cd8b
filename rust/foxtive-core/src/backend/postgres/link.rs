//! The connection to PostgreSQL and its health.
//!
//! A backend has two links: one for claims, probes, lease renewals and
//! publishes, one for settlements, so the server works on a batch's acks
//! while it claims the next batch (tokio-postgres pipelines the statements
//! of each). Both LISTEN on the queue's channel, whose notifications wake
//! idle receivers. No
//! statement needs a transaction of its own (each is one atomic statement),
//! so the connection is shared freely.
//!
//! A lost connection is replaced by the next caller that needs one, keeping
//! to the [`ReconnectStrategy`]: after a failure nobody tries again before
//! its delay has passed. Leases are rows, not sessions: a job claimed over a
//! connection that died is still leased to this backend and is settled over
//! the next connection.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_postgres::{AsyncMessage, Client, NoTls, Statement};

use super::config::Dsn;
use super::schema::{self, CHANNEL_SQL};
use super::{fetch, lease, settle};
use crate::backend::BackendState;
use crate::policy::ReconnectStrategy;
use crate::redact::scrub;
use crate::{Error, Result};

/// Connection numbers, unique in the process (a backend has two links).
static NEXT_GEN: AtomicU64 = AtomicU64::new(1);

/// Statements prepared once per connection: each use is one round trip.
pub(crate) struct Statements {
    pub claim: Statement,
    pub probe: Statement,
    pub ack: Statement,
    /// The ack when finished jobs are kept (moved to `finished_jobs`).
    pub finish: Statement,
    /// The retention step (delete expired `finished_jobs`).
    pub expire: Statement,
    pub reschedule: Statement,
    pub dead_letter: Statement,
    pub renew: Statement,
    pub insert: Statement,
    pub notify: Statement,
}

/// A live connection.
pub(crate) struct Conn {
    pub gen: u64,
    pub client: Client,
    pub stmts: Statements,
    /// This queue's NOTIFY channel.
    pub channel: String,
}

pub(crate) struct Link {
    config: tokio_postgres::Config,
    /// The DSN with its password replaced by `***`.
    pub url: String,
    secrets: Vec<String>,
    schema: String,
    queue: String,
    strategy: ReconnectStrategy,
    current: Mutex<Option<Arc<Conn>>>,
    connecting: tokio::sync::Mutex<()>,
    retry_at: Mutex<Option<Instant>>,
    migrated: AtomicBool,
    /// Ever failed or connected: the next attempt counts as a reconnection.
    tried: AtomicBool,
    reconnect_attempts: AtomicU64,
    consecutive_failures: AtomicU32,
    pub closed: AtomicBool,
    pub closing: Notify,
    /// Woken by a NOTIFY on the queue's channel, and when the connection ends.
    pub wake: Arc<Notify>,
}

/// A tokio-postgres error as text: the server's message when it sent one.
pub(crate) fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => e.to_string(),
    }
}

/// True when the error means the connection is gone (or the server is going
/// away), so a new connection may succeed where this one failed.
pub(crate) fn is_connection_error(e: &tokio_postgres::Error) -> bool {
    match e.as_db_error() {
        // Class 08: connection exception; 57P0x: admin shutdown,
        // crash shutdown, cannot connect now (pg_terminate_backend is 57P01).
        Some(db) => {
            let code = db.code().code();
            code.starts_with("08") || code.starts_with("57P")
        }
        None => true,
    }
}

impl Link {
    /// A link to `dsn`; `wake` is notified by NOTIFYs on the queue's channel
    /// and when the connection ends (shared by a backend's links).
    pub fn new(
        dsn: &Dsn,
        schema: &str,
        queue: &str,
        strategy: ReconnectStrategy,
        wake: Arc<Notify>,
    ) -> Self {
        Link {
            config: dsn.config.clone(),
            url: dsn.redacted.clone(),
            secrets: dsn.secrets.clone(),
            schema: schema.to_string(),
            queue: queue.to_string(),
            strategy,
            current: Mutex::new(None),
            connecting: tokio::sync::Mutex::new(()),
            retry_at: Mutex::new(None),
            migrated: AtomicBool::new(false),
            tried: AtomicBool::new(false),
            reconnect_attempts: AtomicU64::new(0),
            consecutive_failures: AtomicU32::new(0),
            closed: AtomicBool::new(false),
            closing: Notify::new(),
            wake,
        }
    }

    /// A PostgreSQL error as a core error, scrubbed and classified.
    pub fn error(&self, context: &str, e: &tokio_postgres::Error) -> Error {
        let text = scrub(
            format!("{context} ({}): {}", self.url, describe(e)),
            &self.secrets,
        );
        if is_connection_error(e) {
            Error::ConnectionLost(text)
        } else {
            Error::Backend(text)
        }
    }

    /// Forget connection `gen` after a connection error, so the next caller
    /// opens a new one.
    pub fn lost(&self, gen: u64) {
        let mut current = self.current.lock();
        if current.as_ref().is_some_and(|c| c.gen == gen) {
            *current = None;
        }
    }

    fn live(&self) -> Option<Arc<Conn>> {
        self.current
            .lock()
            .as_ref()
            .filter(|c| !c.client.is_closed())
            .cloned()
    }

    /// The live connection, or a new one (waiting out the reconnect delay
    /// after a failure; a close cuts the wait short).
    pub async fn conn(&self) -> Result<Arc<Conn>> {
        if let Some(c) = self.live() {
            return Ok(c);
        }
        crate::backend::unless_closed(&self.closing, &self.closed, self.reconnect()).await
    }

    async fn reconnect(&self) -> Result<Arc<Conn>> {
        let _turn = self.connecting.lock().await;
        if let Some(c) = self.live() {
            return Ok(c);
        }
        let retry_at = *self.retry_at.lock();
        if let Some(at) = retry_at {
            tokio::time::sleep_until(at).await;
        }
        if self.tried.swap(true, Ordering::AcqRel) {
            self.reconnect_attempts.fetch_add(1, Ordering::Relaxed);
        }
        match self.open().await {
            Ok(conn) => {
                let conn = Arc::new(conn);
                *self.current.lock() = Some(conn.clone());
                *self.retry_at.lock() = None;
                if self.consecutive_failures.swap(0, Ordering::AcqRel) > 0 {
                    tracing::info!(queue = %self.queue, url = %self.url, "reconnected to PostgreSQL");
                }
                Ok(conn)
            }
            Err(e) => {
                let failures = self.consecutive_failures.fetch_add(1, Ordering::AcqRel) + 1;
                *self.retry_at.lock() = Some(Instant::now() + self.strategy.delay(failures));
                tracing::warn!(queue = %self.queue, error = %e, failures, "PostgreSQL connection failed");
                Err(e)
            }
        }
    }

    async fn open(&self) -> Result<Conn> {
        let (mut client, mut connection) = self
            .config
            .connect(NoTls)
            .await
            .map_err(|e| self.error("connect", &e))?;
        let wake = self.wake.clone();
        let queue = self.queue.clone();
        // Drive the connection: replies go to their callers, notifications wake
        // idle receivers; when it ends they wake too, and find it gone.
        tokio::spawn(async move {
            loop {
                match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                    Some(Ok(AsyncMessage::Notification(_))) => wake.notify_waiters(),
                    Some(Ok(_)) => {}
                    Some(Err(e)) => {
                        tracing::debug!(queue = %queue, error = %describe(&e), "PostgreSQL connection ended");
                        break;
                    }
                    None => break,
                }
            }
            wake.notify_waiters();
        });
        if !self.migrated.load(Ordering::Acquire) {
            let before = schema::migrate(&mut client, &self.schema).await?;
            if before < schema::latest_version() {
                tracing::info!(schema = %self.schema, from = before, to = schema::latest_version(), "foxtive schema migrated");
            }
            self.migrated.store(true, Ordering::Release);
        }
        let channel: String = client
            .query_one(CHANNEL_SQL, &[&self.schema, &self.queue])
            .await
            .map_err(|e| self.error("channel", &e))?
            .get(0);
        client
            .batch_execute(&format!("LISTEN {}", schema::quote_ident(&channel)))
            .await
            .map_err(|e| self.error("LISTEN", &e))?;
        let s = &self.schema;
        let prepare = |sql: String| {
            let client = &client;
            async move { client.prepare(&sql).await }
        };
        let stmts = async {
            Ok::<_, tokio_postgres::Error>(Statements {
                claim: prepare(fetch::claim_sql(s)).await?,
                probe: prepare(fetch::probe_sql(s)).await?,
                ack: prepare(settle::ack_sql(s)).await?,
                finish: prepare(schema::finish_sql(s)).await?,
                expire: prepare(schema::expire_finished_sql(s)).await?,
                reschedule: prepare(settle::reschedule_sql(s)).await?,
                dead_letter: prepare(settle::dead_letter_sql(s)).await?,
                renew: prepare(lease::renew_sql(s)).await?,
                insert: prepare(schema::insert_sql(s, schema::Placeholders::Dollar)).await?,
                notify: prepare("SELECT pg_notify($1, '')".to_string()).await?,
            })
        }
        .await
        .map_err(|e| self.error("prepare", &e))?;
        Ok(Conn {
            gen: NEXT_GEN.fetch_add(1, Ordering::Relaxed),
            client,
            stmts,
            channel,
        })
    }

    /// Used again after close (a publish, a new pool run): allow connecting.
    pub fn reopen(&self) {
        self.closed.store(false, Ordering::Release);
    }

    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.closing.notify_waiters();
        self.wake.notify_waiters();
        // Dropping the client ends the connection task (Terminate is sent).
        *self.current.lock() = None;
    }

    pub fn state(&self) -> BackendState {
        if self.closed.load(Ordering::Acquire) {
            BackendState::Closed
        } else if self.consecutive_failures.load(Ordering::Acquire) > 0
            || (self.tried.load(Ordering::Acquire) && self.live().is_none())
        {
            BackendState::Reconnecting
        } else {
            BackendState::Connected
        }
    }

    pub fn reconnect_attempts(&self) -> u64 {
        self.reconnect_attempts.load(Ordering::Relaxed)
    }

    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures.load(Ordering::Relaxed)
    }
}
