//! The connections to Redis and their health: one multiplexed connection for
//! commands (acks, publishes, scripts), and, owned by the reader, one for
//! blocking reads (a blocking XREADGROUP would stall everything queued
//! behind it on a shared connection).
//!
//! Every (re)connection goes through [`Link::writer`], which keeps to the
//! [`ReconnectStrategy`]: after a failure, nobody tries again before the
//! strategy's delay has passed, so an outage costs one attempt per delay,
//! not one per caller.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use redis::{ErrorKind, RedisError, ServerErrorKind};
use tokio::time::Instant;

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
    writer: Mutex<Option<(u64, Conn)>>,
    next_gen: AtomicU64,
    connecting: tokio::sync::Mutex<()>,
    retry_at: Mutex<Option<Instant>>,
    /// The last connection error, scrubbed: reported while reconnecting.
    last_error: Mutex<String>,
    reconnect_attempts: AtomicU64,
    consecutive_failures: AtomicU32,
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
        if url.starts_with("rediss") {
            // rustls has two providers compiled in (ring via lapin, aws-lc via
            // redis) and will not guess: name one, unless the process did.
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        let AnyTarget {
            client,
            redacted,
            secrets,
        } = if cluster {
            redis_url::open_cluster(url, "url")?
        } else {
            redis_url::open_any(url, "url")?
        };
        Ok(Link {
            client,
            url: redacted,
            secrets,
            strategy,
            writer: Mutex::new(None),
            next_gen: AtomicU64::new(1),
            connecting: tokio::sync::Mutex::new(()),
            retry_at: Mutex::new(None),
            last_error: Mutex::new(String::new()),
            reconnect_attempts: AtomicU64::new(0),
            consecutive_failures: AtomicU32::new(0),
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

    /// Open a new connection (not counted: callers go through [`Link::writer`]).
    pub async fn open(&self, response_timeout: Duration) -> std::result::Result<Conn, RedisError> {
        self.client.connect(CONNECT_TIMEOUT, response_timeout).await
    }

    /// The command connection and its generation, connecting if needed.
    /// Fails at once while the reconnect delay has not passed.
    pub async fn writer(&self) -> Result<(u64, Conn)> {
        if let Some((gen, conn)) = self.writer.lock().as_ref() {
            return Ok((*gen, conn.clone()));
        }
        let _one_at_a_time = self.connecting.lock().await;
        if let Some((gen, conn)) = self.writer.lock().as_ref() {
            return Ok((*gen, conn.clone()));
        }
        // Used again after close (a publish, a new pool run): reopen.
        self.closed.store(false, Ordering::Release);
        if let Some(at) = *self.retry_at.lock() {
            if Instant::now() < at {
                return Err(Error::ConnectionLost(format!(
                    "reconnecting after {} failed attempt(s); last error: {}",
                    self.consecutive_failures.load(Ordering::Relaxed),
                    self.last_error.lock()
                )));
            }
        }
        if self.consecutive_failures.load(Ordering::Acquire) > 0 {
            self.reconnect_attempts.fetch_add(1, Ordering::Relaxed);
        }
        match self.open(COMMAND_TIMEOUT).await {
            Ok(conn) => {
                let gen = self.next_gen.fetch_add(1, Ordering::Relaxed);
                *self.writer.lock() = Some((gen, conn.clone()));
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

    /// The connection of generation `gen` failed: drop it and count the
    /// failure once (others that used it find it already gone).
    pub fn lost(&self, gen: u64, err: &Error) {
        let dropped = {
            let mut w = self.writer.lock();
            match w.as_ref() {
                Some((g, _)) if *g == gen => {
                    *w = None;
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
        let n = self
            .consecutive_failures
            .fetch_add(1, Ordering::AcqRel)
            .saturating_add(1);
        let delay = self.strategy.delay(n);
        *self.retry_at.lock() = Some(Instant::now() + delay);
        *self.last_error.lock() = match err {
            Error::ConnectionLost(text) | Error::Backend(text) => text.clone(),
            other => other.to_string(),
        };
        if !self.closed.load(Ordering::Acquire) {
            tracing::warn!(url = %self.url, failures = n, retry_in_s = delay.as_secs_f64(),
                error = %err, "Redis connection failed; reconnecting");
        }
    }

    pub fn succeeded(&self) {
        if self.consecutive_failures.swap(0, Ordering::AcqRel) > 0 {
            tracing::info!(url = %self.url, "Redis connection restored");
        }
        *self.retry_at.lock() = None;
    }

    /// When the next connection attempt may be made (`None`: now).
    pub fn retry_at(&self) -> Option<Instant> {
        *self.retry_at.lock()
    }

    pub fn open_again(&self) {
        self.closed.store(false, Ordering::Release);
    }

    /// Drop the command connection; the next use opens a new one.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        *self.writer.lock() = None;
    }

    pub fn state(&self) -> BackendState {
        if self.closed.load(Ordering::Acquire) {
            BackendState::Closed
        } else if self.consecutive_failures.load(Ordering::Acquire) > 0 {
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
}
