//! Commands on one Redis outside any queue's reading: a task's result
//! record, its "pending" mark, and the direct (caller's thread) path of a
//! publish. One piece for the sender and the result store: a
//! [`super::RedisStreamBackend`] holds one on its own command connection,
//! and a result store makes one from its URL; both share the process's
//! command connection to that Redis (see [`super::shared`]) and each
//! thread's direct connection to it (see [`super::direct`]).

use std::io;
use std::sync::Arc;
use std::time::Duration;

use redis::Value;

use super::direct::{Address, Direct};
use super::link::Link;
use super::publish::MarkNew;
use super::resp::{encode, Frame};
use super::shared::Key;
use super::PUBLISH_RETRY_WINDOW;
use crate::backend::shared::SharedByKey;
use crate::policy::ReconnectStrategy;
use crate::{Error, Result};

/// The direct connections by Redis: one set per Redis in the process,
/// whoever asks (a queue's backend, a result store).
static DIRECT: SharedByKey<Key, Direct> = SharedByKey::new();

/// The name direct connections give themselves (`CLIENT LIST`).
pub const DIRECT_CLIENT_NAME: &str = "foxtive-sender";

pub struct RedisCommands {
    link: Arc<Link>,
    direct: Option<Arc<Direct>>,
}

impl RedisCommands {
    /// Commands on the Redis of `url` (`redis://`, `rediss://`, `unix://`;
    /// not a cluster), with the default reconnect strategy.
    pub fn new(url: &str) -> Result<Self> {
        if crate::redis_url::is_cluster_url(url) {
            return Err(Error::Config(
                "url: a Redis Cluster has no single command connection".to_string(),
            ));
        }
        let link = Arc::new(Link::new(url, ReconnectStrategy::default(), false)?);
        Ok(Self::on(link, url, false))
    }

    /// Commands on `link` (a backend's), the Redis of `url`. No direct
    /// path on a cluster (a key's node is not known here).
    pub(super) fn on(link: Arc<Link>, url: &str, cluster: bool) -> Self {
        let direct = match (cluster, link.info()) {
            (false, Some(info)) => Direct::new(info, DIRECT_CLIENT_NAME)
                .map(|made| DIRECT.get_or_make(Key::new(url, false, "direct"), || made)),
            _ => None,
        };
        RedisCommands { link, direct }
    }

    /// The URL with its password replaced by `***`.
    pub fn url(&self) -> &str {
        &self.link.url
    }

    /// Where direct connections go (`None`: no direct path, TLS or a cluster).
    pub fn direct_address(&self) -> Option<&Address> {
        self.direct.as_ref().map(|d| d.address())
    }

    /// The handshake of a direct connection (AUTH, SELECT, CLIENT SETNAME)
    /// and its number of replies: for a connection an event loop makes
    /// itself. Holds the password: never to be logged.
    pub fn direct_handshake(&self) -> Option<(&[u8], usize)> {
        self.direct.as_ref().map(|d| d.handshake())
    }

    /// Run `commands` (`replies` of them, encoded) on this thread's direct
    /// connection, blocking; `None` when there is no direct path.
    pub fn run_now(&self, commands: &[u8], replies: usize) -> Option<io::Result<Vec<Frame>>> {
        self.direct.as_ref().map(|d| d.run(commands, replies))
    }

    /// A Redis error reply as a core error, scrubbed.
    pub fn reply_error(&self, context: &str, text: &str) -> Error {
        Error::Backend(
            self.link
                .scrub(format!("{context} ({}): {text}", self.link.url)),
        )
    }

    /// A direct connection's failure as a core error, scrubbed.
    pub fn io_error(&self, context: &str, e: &io::Error) -> Error {
        Error::ConnectionLost(
            self.link
                .scrub(format!("{context} ({}): {e}", self.link.url)),
        )
    }

    /// Write `value` at `key` for `ttl` on the shared command connection,
    /// in one `MULTI`: with `push` also replace the list `<key>:done` by
    /// `[value]` (same TTL), which a waiter blocks on (`BLMOVE`). The task
    /// layer's final result record; without `push`, a plain `SET PX`.
    pub async fn write_record(
        &self,
        key: &str,
        value: &[u8],
        ttl: Duration,
        push: bool,
    ) -> Result<()> {
        let ttl_ms = millis(ttl);
        let done = format!("{key}:done");
        self.link
            .with_writer("result write", PUBLISH_RETRY_WINDOW, |mut conn| {
                let mut pipe = redis::pipe();
                if push {
                    pipe.atomic();
                }
                pipe.cmd("SET")
                    .arg(key)
                    .arg(value)
                    .arg("PX")
                    .arg(ttl_ms)
                    .ignore();
                if push {
                    pipe.cmd("DEL").arg(&done).ignore();
                    pipe.cmd("RPUSH").arg(&done).arg(value).ignore();
                    pipe.cmd("PEXPIRE").arg(&done).arg(ttl_ms).ignore();
                }
                async move {
                    pipe.query_async::<Value>(&mut conn).await?;
                    Ok(())
                }
            })
            .await
    }

    /// `SET NX PX` of `mark` alone, on the shared command connection.
    pub async fn mark_new(&self, mark: &MarkNew) -> Result<()> {
        self.link
            .with_writer("SET NX", PUBLISH_RETRY_WINDOW, |mut conn| {
                let mut pipe = redis::pipe();
                mark.cmd(&mut pipe);
                async move {
                    pipe.query_async::<Vec<Value>>(&mut conn).await?;
                    Ok(())
                }
            })
            .await
    }

    /// Let go of the shared command connection and shut this process's
    /// direct connections to the Redis down (the next use opens new ones).
    pub fn close(&self) {
        self.link.close();
        self.close_direct();
    }

    /// Shut this process's direct connections to the Redis down.
    pub(super) fn close_direct(&self) {
        if let Some(direct) = &self.direct {
            direct.close();
        }
    }
}

/// A TTL in whole milliseconds, at least 1.
pub(super) fn millis(ttl: Duration) -> u64 {
    ttl.as_millis().clamp(1, u64::MAX as u128) as u64
}

/// Append `SET key value PX ttl NX` for `mark` to `out`.
pub(super) fn encode_mark(out: &mut Vec<u8>, mark: &MarkNew) {
    encode(
        out,
        &[
            b"SET",
            mark.key.as_bytes(),
            &mark.value,
            b"PX",
            millis(mark.ttl).to_string().as_bytes(),
            b"NX",
        ],
    );
}
