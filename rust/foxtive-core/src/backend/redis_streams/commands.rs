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
        self.link
            .with_writer("result write", PUBLISH_RETRY_WINDOW, |mut conn| {
                let pipe = record_pipeline(key, value, ttl, push);
                async move {
                    pipe.query_async::<Value>(&mut conn).await?;
                    Ok(())
                }
            })
            .await
    }

    /// The commands of [`Self::write_record`], encoded for a connection of
    /// the caller's own (an event loop's), and how many replies they get:
    /// with `push`, `MULTI`, the four commands and `EXEC` (six replies, the
    /// last `EXEC`'s array); without, the `SET PX` alone.
    pub fn record_commands(key: &str, value: &[u8], ttl: Duration, push: bool) -> (Vec<u8>, usize) {
        let packed = record_pipeline(key, value, ttl, push).get_packed_pipeline();
        (packed, if push { 6 } else { 1 })
    }

    /// A waiter's `BLMOVE <key>:done <key>:done RIGHT RIGHT <timeout>`
    /// (the list keeps its element for the next waiter), encoded; `None`
    /// waits for ever (timeout 0). Redis takes the timeout in seconds as a
    /// decimal: sub-second waits keep their precision.
    pub fn wait_command(key: &str, timeout: Option<Duration>) -> Vec<u8> {
        let done = [key.as_bytes(), b":done"].concat();
        let seconds = match timeout {
            // Redis reads 0 as "for ever": a positive wait stays positive.
            Some(t) => format!("{}", t.as_secs_f64().max(0.001)),
            None => "0".to_string(),
        };
        let mut out = Vec::with_capacity(64 + 2 * done.len());
        encode(
            &mut out,
            &[
                b"BLMOVE",
                &done,
                &done,
                b"RIGHT",
                b"RIGHT",
                seconds.as_bytes(),
            ],
        );
        out
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

/// The result record's write: `SET PX`, and with `push` in one `MULTI`
/// also `<key>:done` replaced by `[value]` with the same TTL. One builder
/// for the runtime's write and the event loop's ([`RedisCommands::record_commands`]).
fn record_pipeline(key: &str, value: &[u8], ttl: Duration, push: bool) -> redis::Pipeline {
    let ttl_ms = millis(ttl);
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
        let done = format!("{key}:done");
        pipe.cmd("DEL").arg(&done).ignore();
        pipe.cmd("RPUSH").arg(&done).arg(value).ignore();
        pipe.cmd("PEXPIRE").arg(&done).arg(ttl_ms).ignore();
    }
    pipe
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The record write's commands, as Redis must receive them (the
    /// runtime's and the loop's writes send these bytes): same commands,
    /// same TTLs, in one MULTI when pushed.
    #[test]
    fn record_commands_are_the_set_and_the_pushed_list_in_one_multi() {
        let ttl = Duration::from_millis(60_500);
        let value = b"{\"status\":\"succeeded\"}";
        let key = b"foxtive:result:t1";
        let done = b"foxtive:result:t1:done";
        for push in [true, false] {
            let mut expected = Vec::new();
            let set: &[&[u8]] = &[b"SET", key, value, b"PX", b"60500"];
            if push {
                encode(&mut expected, &[b"MULTI"]);
                encode(&mut expected, set);
                encode(&mut expected, &[b"DEL", done]);
                encode(&mut expected, &[b"RPUSH", done, value]);
                encode(&mut expected, &[b"PEXPIRE", done, b"60500"]);
                encode(&mut expected, &[b"EXEC"]);
            } else {
                encode(&mut expected, set);
            }
            let (ours, replies) =
                RedisCommands::record_commands("foxtive:result:t1", value, ttl, push);
            assert_eq!(ours, expected, "push={push}");
            assert_eq!(replies, if push { 6 } else { 1 });
        }
    }

    #[test]
    fn wait_command_keeps_sub_second_timeouts_and_zero_is_for_ever() {
        let cmd = |t| String::from_utf8(RedisCommands::wait_command("k", t)).unwrap();
        assert_eq!(
            cmd(Some(Duration::from_millis(250))),
            "*6\r\n$6\r\nBLMOVE\r\n$6\r\nk:done\r\n$6\r\nk:done\r\n\
             $5\r\nRIGHT\r\n$5\r\nRIGHT\r\n$4\r\n0.25\r\n"
        );
        assert!(cmd(None).ends_with("RIGHT\r\n$1\r\n0\r\n"));
        assert!(cmd(Some(Duration::ZERO)).ends_with("RIGHT\r\n$5\r\n0.001\r\n"));
    }
}
