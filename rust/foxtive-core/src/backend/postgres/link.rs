//! A backend's connections to PostgreSQL and their health.
//!
//! A backend has two links: one for claims, probes, lease renewals and
//! publishes, one for settlements, so the server works on a batch's acks
//! while it claims the next batch (tokio-postgres pipelines the statements
//! of each). No statement needs a transaction of its own (each is one
//! atomic statement), so a connection is shared freely: by the backend's
//! tasks, and by every backend of the process on the same database
//! (`shared.rs`), each link being a member of a shared connection. The
//! claims connection LISTENs on the queue's channel, whose notifications
//! wake idle receivers.
//!
//! A lost connection is replaced by the next caller that needs one, keeping
//! to the [`ReconnectStrategy`]: after a failure nobody tries again before
//! its delay has passed. Leases are rows, not sessions: a job claimed over a
//! connection that died is still leased to this backend and is settled over
//! the next connection.
//!
//! [`ReconnectStrategy`]: crate::policy::ReconnectStrategy

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::sync::Notify;

use super::config::Dsn;
use super::schema::CHANNEL_SQL;
use super::shared::{self, Member, Role, Shared};
use crate::backend::BackendState;
use crate::policy::ReconnectStrategy;
use crate::{Error, Result};

pub(crate) use super::shared::Conn;

pub(crate) struct Link {
    shared: Arc<Shared>,
    /// The DSN with its password replaced by `***`.
    pub url: String,
    schema: String,
    queue: String,
    /// This backend's place on the shared connection: its wake-up, whether
    /// it is closed, its channel.
    member: Arc<Member>,
}

/// A tokio-postgres error as text: the server's message when it sent one,
/// else the error with its causes (its own text names only the kind:
/// "error performing TLS handshake", not rustls's reason). Callers scrub it.
pub(crate) fn describe(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!("{} ({})", db.message(), db.code().code());
    }
    let mut text = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        let more = c.to_string();
        if !text.contains(&more) {
            text = format!("{text}: {more}");
        }
        cause = c.source();
    }
    text
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
    /// A link to `dsn` in `role`; `wake` is notified by NOTIFYs on the
    /// queue's channel and when the connection ends (shared by a backend's
    /// links).
    pub fn new(
        dsn: &Dsn,
        schema: &str,
        queue: &str,
        strategy: ReconnectStrategy,
        role: Role,
        wake: Arc<Notify>,
    ) -> Self {
        let shared = shared::shared(dsn, schema, strategy, role);
        let member = Arc::new(Member::new(wake));
        shared.join(member.clone());
        Link {
            shared,
            url: dsn.redacted.clone(),
            schema: schema.to_string(),
            queue: queue.to_string(),
            member,
        }
    }

    /// A PostgreSQL error as a core error, scrubbed and classified.
    pub fn error(&self, context: &str, e: &tokio_postgres::Error) -> Error {
        self.shared.error(context, e)
    }

    /// Forget connection `gen` after a connection error, so the next caller
    /// opens a new one.
    pub fn lost(&self, gen: u64) {
        self.shared.lost(gen);
    }

    pub fn wake(&self) -> &Arc<Notify> {
        &self.member.wake
    }

    pub fn is_closed(&self) -> bool {
        self.member.closed.load(Ordering::Acquire)
    }

    /// `op`, cut short (as [`Error::Shutdown`]) when this link is closed.
    pub async fn unless_closed<T>(
        &self,
        op: impl std::future::Future<Output = Result<T>>,
    ) -> Result<T> {
        crate::backend::unless_closed(&self.member.closing, &self.member.closed, op).await
    }

    /// The live connection, or a new one (waiting out the reconnect delay
    /// after a failure; a close cuts the wait short). On the claims
    /// connection, the queue's channel is LISTENed on before it is handed out.
    pub async fn conn(&self) -> Result<Arc<Conn>> {
        if self.is_closed() {
            // Other backends may keep the connection open: this one is done.
            return Err(Error::Shutdown);
        }
        let conn = match self.shared.live() {
            Some(c) => c,
            None => {
                self.member.tried.store(true, Ordering::Release);
                self.unless_closed(self.shared.reconnect()).await?
            }
        };
        self.member.tried.store(true, Ordering::Release);
        if self.shared.role() == Role::Claims
            && self.member.listened_gen.load(Ordering::Acquire) != conn.gen
        {
            self.unless_closed(self.listen(&conn)).await?;
        }
        Ok(conn)
    }

    async fn listen(&self, conn: &Conn) -> Result<()> {
        let result = async {
            let channel = self.channel(conn).await?;
            self.shared.listen(conn, channel).await
        }
        .await;
        match result {
            Ok(()) => {
                self.member.listened_gen.store(conn.gen, Ordering::Release);
                Ok(())
            }
            Err(e) => {
                if e.is_connection() || conn.client.is_closed() {
                    self.shared.lost(conn.gen);
                }
                Err(e)
            }
        }
    }

    /// The queue's NOTIFY channel (asked of the server once).
    pub async fn channel(&self, conn: &Conn) -> Result<&str> {
        if let Some(c) = self.member.channel.get() {
            return Ok(c);
        }
        let channel: String = conn
            .client
            .query_one(CHANNEL_SQL, &[&self.schema, &self.queue])
            .await
            .map_err(|e| {
                if is_connection_error(&e) || conn.client.is_closed() {
                    self.shared.lost(conn.gen);
                }
                self.error("channel", &e)
            })?
            .get(0);
        Ok(self.member.channel.get_or_init(|| channel))
    }

    /// Used again after close (a publish, a new pool run): allow connecting.
    pub fn reopen(&self) {
        self.shared.reopen(&self.member);
    }

    pub fn close(&self) {
        let unlisten = self.shared.leave(&self.member);
        self.member.closing.notify_waiters();
        self.member.wake.notify_waiters();
        if let (Some(channel), Ok(rt)) = (unlisten, tokio::runtime::Handle::try_current()) {
            // The other queues keep the connection; this one's NOTIFYs stop.
            let shared = self.shared.clone();
            rt.spawn(async move { shared.unlisten(channel).await });
        }
    }

    pub fn state(&self) -> BackendState {
        if self.is_closed() {
            BackendState::Closed
        } else if self.shared.consecutive_failures() > 0
            || (self.member.tried.load(Ordering::Acquire) && self.shared.live().is_none())
        {
            BackendState::Reconnecting
        } else {
            BackendState::Connected
        }
    }

    pub fn reconnect_attempts(&self) -> u64 {
        self.member.attempts()
    }

    pub fn consecutive_failures(&self) -> u32 {
        self.shared.consecutive_failures()
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.shared.remove(&self.member);
    }
}
