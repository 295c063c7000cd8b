//! The connections to Redis and their health: one multiplexed connection for
//! commands (acks, publishes, scripts), shared by every backend of the
//! process on the same Redis (see [`super::shared`]), and, owned by each
//! reader, one for blocking reads (a blocking XREADGROUP would stall
//! everything queued behind it on a shared connection).
//!
//! Every (re)connection goes through [`Link::writer`], which keeps to the
//! [`ReconnectStrategy`]: after a failure, nobody tries again before the
//! strategy's delay has passed, so an outage costs one attempt per delay,
//! not one per caller (nor one per queue: the gate is the shared one's).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use redis::{ErrorKind, RedisError, ServerErrorKind};
use tokio::time::Instant;

use super::shared::{self, Key, Shared};
use crate::backend::BackendState;
use crate::policy::ReconnectStrategy;
use crate::redact::scrub;
use crate::redis_url::{self, AnyTarget, Conn, RedisClient};
use crate::{Error, Result};

/// How long one connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a command may wait for its reply on the command connection.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

pub(crate) struct Link {
    client: RedisClient,
    /// The URL with its password replaced by `***`.
    pub url: String,
    /// Texts that must never appear in a message (the password, raw and decoded).
    secrets: Vec<String>,
    strategy: ReconnectStrategy,
    key: Key,
    /// The process's command connection to this Redis, joined on first use
    /// (in the runtime that uses it), with its reconnect count at joining.
    shared: OnceLock<(Arc<Shared>, u64)>,
    /// Counted among the shared connection's users: used since the last close.
    using: AtomicBool,
    closed: AtomicBool,
}

/// True when the error means the connection (or the server) is unusable for
/// now, so reconnecting later may help. On a cluster that includes a node
/// being down or failed over (CLUSTERDOWN, TRYAGAIN, MASTERDOWN, a refused
/// connection to one node, READONLY from a demoted master): the cluster
/// client refreshes its slot map on the next connection.
pub(crate) fn is_connection_error(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_cluster_error()
        || matches!(
            e.code(),
            Some("READONLY" | "LOADING" | "CLUSTERDOWN" | "TRYAGAIN")
        )
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_timeout()
        || e.is_unrecoverable_error()
        || matches!(
            e.kind(),
            ErrorKind::Server(
                ServerErrorKind::BusyLoading
                    | ServerErrorKind::TryAgain
                    | ServerErrorKind::MasterDown
                    | ServerErrorKind::ClusterDown
            )
        )
}

impl Link {
    /// `cluster`: `url` names one node of a Redis Cluster (a
    /// `redis+cluster://` URL is a cluster anyway).
    pub fn new(url: &str, strategy: ReconnectStrategy, cluster: bool) -> Result<Self> {
        Self::named(url, strategy, cluster, "url")
    }

    /// [`Link::new`], the URL called `setting` in configuration errors.
    pub fn named(
        url: &str,
        strategy: ReconnectStrategy,
        cluster: bool,
        setting: &str,
    ) -> Result<Self> {
        if url.starts_with("rediss") {
            // rustls has two providers compiled in (ring via lapin, aws-lc via
            // redis) and will not guess: name one, unless the process did.
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        let cluster = cluster || redis_url::is_cluster_url(url);
        let AnyTarget {
            client,
            redacted,
            secrets,
        } = if cluster {
            redis_url::open_cluster(url, setting)?
        } else {
            redis_url::open_any(url, setting)?
        };
        Ok(Link {
            client,
            url: redacted,
            secrets,
            key: Key::new(url, cluster, &format!("{strategy:?}")),
            strategy,
            shared: OnceLock::new(),
            using: AtomicBool::new(false),
            closed: AtomicBool::new(false),
        })
    }

    /// Where and how to connect for the reader's own plain connection
    /// (`None` on a cluster: the reader uses a cluster connection).
    pub fn info(&self) -> Option<&redis::ConnectionInfo> {
        self.client.single_info()
    }

    /// Remove every secret from a text meant for a log or an error.
    pub fn scrub(&self, text: impl Into<String>) -> String {
        scrub(text, &self.secrets)
    }

    /// A Redis error as a core error, scrubbed, classified.
    pub fn error(&self, context: &str, e: &RedisError) -> Error {
        let text = self.scrub(format!("{context} ({}): {e}", self.url));
        if is_connection_error(e) {
            Error::ConnectionLost(text)
        } else {
            Error::Backend(text)
        }
    }

    /// Open a new connection of this link's own (the reader's; the command
    /// connection is opened by [`Link::writer`] only).
    pub async fn open(&self, response_timeout: Duration) -> std::result::Result<Conn, RedisError> {
        self.client.connect(CONNECT_TIMEOUT, response_timeout).await
    }

    /// The shared connection, joined now if not yet.
    fn shared(&self) -> &Arc<Shared> {
        &self
            .shared
            .get_or_init(|| {
                let shared = shared::shared(&self.key);
                let attempts = shared.reconnect_attempts.load(Ordering::Relaxed);
                (shared, attempts)
            })
            .0
    }

    /// The shared connection once joined (`None` before the first use).
    fn joined(&self) -> Option<&Shared> {
        self.shared.get().map(|(s, _)| s.as_ref())
    }

    /// The command connection if there is one, this link counted as its user.
    fn current(&self, shared: &Shared) -> Option<(u64, Conn)> {
        let mut slot = shared.slot.lock();
        if !self.using.swap(true, Ordering::AcqRel) {
            slot.users += 1;
            // Used again after close (a publish, a new pool run): reopen.
            self.closed.store(false, Ordering::Release);
        }
        slot.conn.clone()
    }

    /// No longer a user: the last one to go drops the connection.
    fn leave(&self) {
        let Some(shared) = self.joined() else {
            return;
        };
        let mut slot = shared.slot.lock();
        if self.using.swap(false, Ordering::AcqRel) {
            slot.users = slot.users.saturating_sub(1);
            if slot.users == 0 {
                slot.conn = None;
            }
        }
    }

    /// The command connection and its generation, connecting if needed.
    /// Fails at once while the reconnect delay has not passed.
    pub async fn writer(&self) -> Result<(u64, Conn)> {
        let shared = self.shared();
        if let Some(found) = self.current(shared) {
            return Ok(found);
        }
        let _one_at_a_time = shared.connecting.lock().await;
        if let Some(found) = self.current(shared) {
            return Ok(found);
        }
        if let Some(at) = *shared.retry_at.lock() {
            if Instant::now() < at {
                return Err(Error::ConnectionLost(format!(
                    "reconnecting after {} failed attempt(s); last error: {}",
                    shared.consecutive_failures.load(Ordering::Relaxed),
                    shared.last_error.lock()
                )));
            }
        }
        if shared.consecutive_failures.load(Ordering::Acquire) > 0 {
            shared.reconnect_attempts.fetch_add(1, Ordering::Relaxed);
        }
        match self.open(COMMAND_TIMEOUT).await {
            Ok(conn) => {
                let gen = shared.next_gen.fetch_add(1, Ordering::Relaxed);
                {
                    let mut slot = shared.slot.lock();
                    // Every user closed meanwhile: the caller uses it alone.
                    if slot.users > 0 {
                        slot.conn = Some((gen, conn.clone()));
                    }
                }
                self.succeeded();
                Ok((gen, conn))
            }
            Err(e) => {
                let err = self.error("connect", &e);
                self.failed(&err);
                Err(err)
            }
        }
    }

    /// Run `op` on the command connection, reconnecting (per the strategy)
    /// through connection losses for up to `window`.
    pub async fn with_writer<T, F, Fut>(&self, what: &str, window: Duration, mut op: F) -> Result<T>
    where
        F: FnMut(Conn) -> Fut,
        Fut: std::future::Future<Output = std::result::Result<T, RedisError>>,
    {
        let deadline = Instant::now() + window;
        loop {
            let err = match self.writer().await {
                Ok((gen, conn)) => match op(conn).await {
                    Ok(v) => return Ok(v),
                    Err(e) => {
                        let err = self.error(what, &e);
                        if !err.is_connection() {
                            return Err(err);
                        }
                        self.lost(gen, &err);
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
                .retry_at()
                .unwrap_or(now)
                .max(now + Duration::from_millis(20))
                .min(deadline);
            tokio::time::sleep_until(at).await;
        }
    }

    /// The connection of generation `gen` failed: drop it and count the
    /// failure once (others that used it, in this backend or another one
    /// sharing it, find it already gone).
    pub fn lost(&self, gen: u64, err: &Error) {
        let shared = self.shared();
        let dropped = {
            let mut slot = shared.slot.lock();
            match slot.conn.as_ref() {
                Some((g, _)) if *g == gen => {
                    slot.conn = None;
                    true
                }
                _ => false,
            }
        };
        if dropped {
            self.failed(err);
        }
    }

    fn failed(&self, err: &Error) {
        let shared = self.shared();
        let n = shared
            .consecutive_failures
            .fetch_add(1, Ordering::AcqRel)
            .saturating_add(1);
        let delay = self.strategy.delay(n);
        *shared.retry_at.lock() = Some(Instant::now() + delay);
        *shared.last_error.lock() = match err {
            Error::ConnectionLost(text) | Error::Backend(text) => text.clone(),
            other => other.to_string(),
        };
        if !self.closed.load(Ordering::Acquire) {
            tracing::warn!(url = %self.url, failures = n, retry_in_s = delay.as_secs_f64(),
                error = %err, "Redis connection failed; reconnecting");
        }
    }

    pub fn succeeded(&self) {
        let shared = self.shared();
        if shared.consecutive_failures.swap(0, Ordering::AcqRel) > 0 {
            tracing::info!(url = %self.url, "Redis connection restored");
        }
        *shared.retry_at.lock() = None;
    }

    /// When the next connection attempt may be made (`None`: now).
    pub fn retry_at(&self) -> Option<Instant> {
        self.joined().and_then(|s| *s.retry_at.lock())
    }

    pub fn open_again(&self) {
        self.closed.store(false, Ordering::Release);
    }

    /// Let go of the command connection; the next use takes it again (or
    /// opens a new one, if this was its last user).
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.leave();
    }

    pub fn state(&self) -> BackendState {
        if self.closed.load(Ordering::Acquire) {
            BackendState::Closed
        } else if self.consecutive_failures() > 0 {
            BackendState::Reconnecting
        } else {
            BackendState::Connected
        }
    }

    /// Reconnection attempts of the command connection since this link
    /// first used it (made by whichever link sharing it got there first).
    pub fn reconnect_attempts(&self) -> u64 {
        self.shared.get().map_or(0, |(s, at_join)| {
            s.reconnect_attempts
                .load(Ordering::Relaxed)
                .saturating_sub(*at_join)
        })
    }

    pub fn consecutive_failures(&self) -> u32 {
        self.joined()
            .map_or(0, |s| s.consecutive_failures.load(Ordering::Relaxed))
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.leave();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_show() {
        let link = Link::new(
            "redis://user:p%40ss@127.0.0.1:1/0",
            ReconnectStrategy::default(),
            false,
        )
        .unwrap();
        assert_eq!(link.url, "redis://user:***@127.0.0.1:1/0");
        assert_eq!(link.scrub("bad p%40ss and p@ss"), "bad *** and ***");
        let link = Link::new(
            "rediss://hunter2@example.invalid",
            ReconnectStrategy::default(),
            false,
        )
        .unwrap();
        assert_eq!(link.scrub("x hunter2 y"), "x *** y");
        match Link::new(
            "http://user:hunter2@host",
            ReconnectStrategy::default(),
            false,
        ) {
            Err(Error::Config(m)) => {
                assert!(m.starts_with("url:"), "{m}");
                assert!(!m.contains("hunter2"), "{m}");
            }
            _ => panic!("expected a config error"),
        }
    }

    /// A Redis to talk to: `FOXTIVE_REDIS_URL`, else the local one.
    fn redis_url() -> String {
        std::env::var("FOXTIVE_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/0".into())
    }

    async fn client_id(link: &Link) -> (u64, i64) {
        let (gen, mut conn) = link.writer().await.unwrap();
        let id: i64 = redis::cmd("CLIENT")
            .arg("ID")
            .query_async(&mut conn)
            .await
            .unwrap();
        (gen, id)
    }

    #[tokio::test]
    async fn links_to_one_redis_share_one_command_connection() {
        let strategy = ReconnectStrategy::fixed(Duration::from_millis(200));
        let url = redis_url();
        let a = Link::new(&url, strategy, false).unwrap();
        // Queue parameters in the URL shape queues, not the connection.
        let sep = if url.contains('?') { '&' } else { '?' };
        let b = Link::new(&format!("{url}{sep}partitions=2"), strategy, false).unwrap();
        let other = Link::new(&url, ReconnectStrategy::default(), false).unwrap();
        let (gen, id) = client_id(&a).await;
        assert_eq!(client_id(&b).await, (gen, id));
        assert_ne!(
            client_id(&other).await.1,
            id,
            "another strategy, another gate"
        );

        // A lost connection is counted once, for both, and reopened once.
        let lost = Error::ConnectionLost("gone".into());
        a.lost(gen, &lost);
        b.lost(gen, &lost);
        assert_eq!((a.consecutive_failures(), b.consecutive_failures()), (1, 1));
        assert_eq!(b.state(), BackendState::Reconnecting);
        assert!(b.writer().await.is_err(), "nobody tries before the delay");
        tokio::time::sleep_until(a.retry_at().unwrap()).await;
        let (gen2, id2) = client_id(&b).await;
        assert_ne!(gen2, gen);
        assert_eq!(client_id(&a).await, (gen2, id2));
        assert_eq!((a.reconnect_attempts(), b.reconnect_attempts()), (1, 1));
        assert_eq!(a.state(), BackendState::Connected);

        // Closing one leaves the other its connection; the last one drops it.
        a.close();
        assert_eq!(a.state(), BackendState::Closed);
        assert_eq!(client_id(&b).await.1, id2);
        b.close();
        let (_, id3) = client_id(&a).await;
        assert_ne!(id3, id2, "the last user's close dropped the connection");
        assert_eq!(a.state(), BackendState::Connected);
        // A link joining later counts only the attempts it saw.
        let c = Link::new(&url, strategy, false).unwrap();
        assert_eq!(client_id(&c).await.1, id3);
        assert_eq!(c.reconnect_attempts(), 0);
    }
}
