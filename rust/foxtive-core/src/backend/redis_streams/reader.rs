//! Reading: own pending entries first, reclaim when due, then new entries,
//! with the next batch already requested while the last one is handed out.
//!
//! New entries come over a connection of their own (a blocking XREADGROUP
//! would hold up every command queued behind it on a shared connection):
//! the small RESP connection of [`super::resp`] for TCP and unix sockets,
//! a redis-rs connection for TLS.
//!
//! That connection is one per queue (per partition), not one per process,
//! although the command connection is shared (see `shared.rs`): a blocking
//! read holds its connection until an entry comes or BLOCK ends, and one
//! `XREADGROUP ... STREAMS q1 q2 q3 > > >` for every queue does not fit:
//! * COUNT applies to every stream of the read alike, while each pool asks
//!   for what it has room for, and a pool with no room must not be read for
//!   at all (what is read is pending to this consumer, out of its peers'
//!   reach until `claim_idle`). The streams of a read would change with
//!   every pool's room, and a BLOCK under way cannot take in a stream whose
//!   pool just got room: that pool would wait up to `block` (or the read
//!   would need a `CLIENT UNBLOCK` from yet another connection).
//! * Every queue would need the same group, consumer name and `block`, and
//!   on a Redis Cluster the streams of one read must hash to one slot, which
//!   the streams of different queues (or partitions) do not.

use std::collections::VecDeque;
use std::time::Duration;

use redis::{RedisError, Value};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::reply::{self, RawEntry};
use super::resp::{Frame, RespConn};
use super::{Inner, READ_AHEAD, READ_MARGIN};
use crate::message::Delivery;
use crate::redis_url::Conn;
use crate::{Error, Result};

/// How long opening the read connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

type Ahead = JoinHandle<std::result::Result<Value, RedisError>>;

pub(super) enum ReadConn {
    /// With the COUNT of each read whose reply is still to come.
    Resp {
        conn: RespConn,
        asked: VecDeque<usize>,
    },
    /// TLS: redis-rs, with read-ahead in spawned tasks (and their COUNT).
    Mux {
        conn: Conn,
        ahead: VecDeque<(usize, Ahead)>,
    },
}

impl Drop for ReadConn {
    fn drop(&mut self) {
        // A dropped reader reads no more.
        if let ReadConn::Mux { ahead, .. } = self {
            for (_, task) in ahead.drain(..) {
                task.abort();
            }
        }
    }
}

pub(super) struct Reader {
    /// The connection and the command-connection generation it was opened under.
    pub conn: Option<(u64, ReadConn)>,
    /// Some(id) while re-reading this consumer's own pending entries.
    pub cursor: Option<String>,
    pub next_claim: Instant,
    pub claim_cursor: String,
}

impl Reader {
    pub fn new() -> Self {
        Reader {
            conn: None,
            cursor: Some("0".to_string()),
            next_claim: Instant::now(),
            claim_cursor: "0-0".to_string(),
        }
    }
}

pub(super) enum ReadError {
    /// The stream or the group is gone.
    NoGroup,
    /// The connection is unusable; reconnect.
    Lost(Error),
    Failed(Error),
}

fn lost_io(e: std::io::Error) -> ReadError {
    ReadError::Lost(Error::ConnectionLost(format!("reading: {e}")))
}

fn from_server(text: String) -> ReadError {
    if text.starts_with("NOGROUP") {
        ReadError::NoGroup
    } else {
        ReadError::Failed(Error::Backend(text))
    }
}

impl Inner {
    fn read_error(&self, what: &str, e: &RedisError) -> ReadError {
        if e.code() == Some("NOGROUP") {
            return ReadError::NoGroup;
        }
        let err = self.link.error(what, e);
        if err.is_connection() {
            ReadError::Lost(err)
        } else {
            ReadError::Failed(err)
        }
    }

    fn xreadgroup_args<'a>(
        &'a self,
        count: &'a str,
        block: Option<&'a str>,
        id: &'a str,
    ) -> Vec<&'a [u8]> {
        let mut args: Vec<&[u8]> = vec![
            b"XREADGROUP",
            b"GROUP",
            self.cfg.group_name.as_bytes(),
            self.cfg.consumer_name.as_bytes(),
            b"COUNT",
            count.as_bytes(),
        ];
        if let Some(b) = block {
            args.push(b"BLOCK");
            args.push(b.as_bytes());
        }
        args.push(b"STREAMS");
        args.push(self.cfg.stream_name.as_bytes());
        args.push(id.as_bytes());
        args
    }

    fn xreadgroup(&self, count: usize, block: Option<Duration>, id: &str) -> redis::Cmd {
        let count = count.to_string();
        let block = block.map(|b| b.as_millis().max(1).to_string());
        let mut cmd = redis::Cmd::new();
        for arg in self.xreadgroup_args(&count, block.as_deref(), id) {
            cmd.arg(arg);
        }
        cmd
    }

    /// The small RESP connection for reads, when the server is one plain
    /// TCP or unix server (`Ok(None)`: use a redis-rs connection).
    async fn connect_resp(&self) -> std::io::Result<Option<RespConn>> {
        match self.link.info() {
            Some(info) => RespConn::connect(info, CONNECT_TIMEOUT).await,
            None => Ok(None),
        }
    }

    /// Open the read connection once the command connection shows Redis is
    /// reachable (and the group exists). `false` when `deadline` passes first.
    async fn open_reader(&self, rd: &mut Reader, deadline: Instant) -> bool {
        loop {
            if let Ok((gen, mut writer)) = self.link.writer().await {
                let opened = match self.create_group(&mut writer).await {
                    Err(e) => Err(self.link.error("XGROUP CREATE", &e)),
                    Ok(()) => match self.connect_resp().await {
                        Ok(Some(conn)) => Ok(ReadConn::Resp {
                            conn,
                            asked: VecDeque::new(),
                        }),
                        Ok(None) => match self.link.open(self.cfg.block + READ_MARGIN).await {
                            Ok(conn) => Ok(ReadConn::Mux {
                                conn,
                                ahead: VecDeque::new(),
                            }),
                            Err(e) => Err(self.link.error("connect", &e)),
                        },
                        Err(e) => Err(Error::ConnectionLost(
                            self.link.scrub(format!("connect ({}): {e}", self.link.url)),
                        )),
                    },
                };
                match opened {
                    Ok(conn) => {
                        rd.conn = Some((gen, conn));
                        return true;
                    }
                    Err(err) if err.is_connection() => self.link.lost(gen, &err),
                    Err(err) => {
                        tracing::warn!(stream = %self.queue, error = %err, "cannot open the reader");
                    }
                }
            }
            let now = Instant::now();
            let at = self
                .link
                .retry_at()
                .unwrap_or(now + Duration::from_millis(200))
                .max(now + Duration::from_millis(20));
            if at >= deadline {
                tokio::time::sleep_until(deadline).await;
                return false;
            }
            tokio::time::sleep_until(at).await;
        }
    }

    /// One XREADGROUP on the read connection. For new entries (`>`), a full
    /// batch sends more reads right away (no BLOCK: an empty answer comes
    /// back at once), so they travel while this one is handed out: at most
    /// [`READ_AHEAD`] of them, for no more entries than the pool has room
    /// for (`room`), so nothing is hoarded that other consumers could take.
    async fn read(
        &self,
        conn: &mut ReadConn,
        count: usize,
        id: &str,
        deadline: Instant,
        room: usize,
    ) -> std::result::Result<Vec<RawEntry>, ReadError> {
        let new = id == ">";
        let block = if new {
            let b = self
                .cfg
                .block
                .min(deadline.saturating_duration_since(Instant::now()));
            (!b.is_zero()).then_some(b)
        } else {
            None
        };
        // The reads to send ahead once a reply shows more is waiting.
        let plan = |got: usize, on_the_way: &mut dyn Iterator<Item = usize>, sent: usize| {
            let mut room = room.saturating_sub(got).saturating_sub(on_the_way.sum());
            let mut sizes = Vec::new();
            while sent + sizes.len() < READ_AHEAD && room > 0 && !self.stopped() {
                let n = room.min(self.cfg.batch_size);
                sizes.push(n);
                room -= n;
            }
            sizes
        };
        match conn {
            ReadConn::Resp { conn: c, asked } => {
                if !new && !asked.is_empty() {
                    // Replies of reads ahead would come first: start afresh.
                    return Err(ReadError::Lost(Error::ConnectionLost(
                        "reader out of step".into(),
                    )));
                }
                if asked.is_empty() || !new {
                    let count_s = count.to_string();
                    let block_s = block.map(|b| b.as_millis().max(1).to_string());
                    c.queue(&self.xreadgroup_args(&count_s, block_s.as_deref(), id));
                    c.flush(1).await.map_err(lost_io)?;
                    asked.push_back(count);
                }
                // Whatever was sent blocks for at most `block` on the server.
                let frame = tokio::time::timeout(self.cfg.block + READ_MARGIN, c.reply())
                    .await
                    .map_err(|_| ReadError::Lost(Error::ConnectionLost("read timed out".into())))?
                    .map_err(lost_io)?;
                let wanted = asked.pop_front().unwrap_or(count);
                if let Frame::Error(text) = frame {
                    return Err(from_server(text));
                }
                let got = reply::frame_read_len(&frame);
                if new && got >= wanted {
                    let sizes = plan(got, &mut asked.iter().copied(), asked.len());
                    for n in &sizes {
                        c.queue(&self.xreadgroup_args(&n.to_string(), None, ">"));
                        asked.push_back(*n);
                    }
                    if !sizes.is_empty() {
                        c.flush(sizes.len()).await.map_err(lost_io)?;
                    }
                }
                reply::frame_read_reply(frame).map_err(ReadError::Failed)
            }
            ReadConn::Mux { conn, ahead } => {
                let (wanted, value) = match (new, ahead.front_mut()) {
                    (true, Some((wanted, task))) => {
                        let wanted = *wanted;
                        match tokio::time::timeout_at(deadline, task).await {
                            // Still on its way: keep it for the next call.
                            Err(_) => return Ok(Vec::new()),
                            Ok(joined) => {
                                ahead.pop_front();
                                let value = joined
                                    .map_err(|e| {
                                        ReadError::Lost(Error::ConnectionLost(format!(
                                            "read-ahead: {e}"
                                        )))
                                    })?
                                    .map_err(|e| self.read_error("XREADGROUP", &e))?;
                                (wanted, value)
                            }
                        }
                    }
                    _ => {
                        let value = self
                            .xreadgroup(count, block, id)
                            .query_async::<Value>(conn)
                            .await
                            .map_err(|e| self.read_error("XREADGROUP", &e))?;
                        (count, value)
                    }
                };
                let got = reply::read_len(&value);
                if new && got >= wanted {
                    let sizes = plan(got, &mut ahead.iter().map(|(n, _)| *n), ahead.len());
                    for n in sizes {
                        let cmd = self.xreadgroup(n, None, ">");
                        let mut conn = conn.clone();
                        ahead.push_back((
                            n,
                            tokio::spawn(async move { cmd.query_async::<Value>(&mut conn).await }),
                        ));
                    }
                }
                reply::read_reply(value).map_err(ReadError::Failed)
            }
        }
    }

    /// XAUTOCLAIM on the command connection: entries idle longer than
    /// `claim_idle` in any consumer become this one's.
    async fn claim(
        &self,
        rd: &mut Reader,
        count: usize,
    ) -> std::result::Result<Vec<RawEntry>, ReadError> {
        let now = Instant::now();
        rd.next_claim = now + self.cfg.claim_interval;
        let Ok((gen, mut conn)) = self.link.writer().await else {
            return Ok(Vec::new());
        };
        let res = redis::cmd("XAUTOCLAIM")
            .arg(&self.cfg.stream_name)
            .arg(&self.cfg.group_name)
            .arg(&self.cfg.consumer_name)
            .arg(self.cfg.claim_idle.as_millis() as u64)
            .arg(&rd.claim_cursor)
            .arg("COUNT")
            .arg(count)
            .query_async::<Value>(&mut conn)
            .await;
        let value = match res {
            Ok(v) => v,
            Err(e) => {
                return match self.read_error("XAUTOCLAIM", &e) {
                    ReadError::Lost(err) => {
                        self.link.lost(gen, &err);
                        Ok(Vec::new())
                    }
                    other => Err(other),
                };
            }
        };
        let (next, claimed, deleted) = reply::autoclaim_reply(value).map_err(ReadError::Failed)?;
        if !deleted.is_empty() {
            tracing::warn!(stream = %self.queue, count = deleted.len(),
                "pending entries were deleted from the stream before being processed; dropped from the pending list");
        }
        // More to look at: come back at the next read, not in `claim_interval`.
        if next != "0-0" {
            rd.next_claim = now;
        }
        rd.claim_cursor = next;
        if !claimed.is_empty() {
            tracing::info!(stream = %self.queue, count = claimed.len(),
                "took over entries idle longer than claim_idle");
        }
        Ok(claimed)
    }

    /// One step of reading. `Ok(None)` when it found nothing to hand out.
    async fn read_step(
        &self,
        rd: &mut Reader,
        count: usize,
        max: usize,
        deadline: Instant,
    ) -> std::result::Result<Option<Vec<Delivery>>, ReadError> {
        let Some((_, conn)) = rd.conn.as_mut() else {
            return Ok(None);
        };
        if let Some(cursor) = rd.cursor.clone() {
            let entries = self.read(conn, count, &cursor, deadline, 0).await?;
            rd.cursor = entries.last().map(|last| last.id.clone());
            if entries.is_empty() {
                return Ok(None);
            }
            return Ok(non_empty(self.admit(entries, true).await));
        }
        if Instant::now() >= rd.next_claim {
            let claimed = self.claim(rd, count).await?;
            if !claimed.is_empty() {
                return Ok(non_empty(self.admit(claimed, true).await));
            }
        }
        let Some((_, conn)) = rd.conn.as_mut() else {
            return Ok(None);
        };
        let entries = self.read(conn, count, ">", deadline, max).await?;
        if entries.is_empty() {
            return Ok(None);
        }
        Ok(non_empty(self.admit(entries, false).await))
    }

    pub(super) async fn receive(&self, max: usize, wait: Duration) -> Result<Vec<Delivery>> {
        if self.stopped() {
            return Err(Error::Shutdown);
        }
        let deadline = Instant::now() + wait;
        let max = max.max(1);
        {
            let mut ready = self.ready.lock();
            if !ready.is_empty() {
                let n = max.min(ready.len());
                return Ok(ready.drain(..n).collect());
            }
        }
        let count = max.min(self.cfg.batch_size);
        let mut rd = self.reader.lock().await;
        loop {
            if rd.conn.is_none() && !self.open_reader(&mut rd, deadline).await {
                return Ok(Vec::new());
            }
            match self.read_step(&mut rd, count, max, deadline).await {
                Ok(Some(mut batch)) => {
                    if batch.len() > max {
                        self.ready.lock().extend(batch.drain(max..));
                    }
                    return Ok(batch);
                }
                Ok(None) => {}
                Err(ReadError::NoGroup) => {
                    tracing::warn!(stream = %self.queue, group = %self.cfg.group_name,
                        "stream or consumer group is gone; recreating it");
                    // Replies still due on the old reader are NOGROUP too.
                    rd.conn = None;
                    rd.claim_cursor = "0-0".to_string();
                }
                Err(ReadError::Lost(err)) => {
                    if let Some((gen, _)) = rd.conn.take() {
                        self.link.lost(gen, &err);
                    }
                }
                Err(ReadError::Failed(err)) => return Err(err),
            }
            if Instant::now() >= deadline {
                return Ok(Vec::new());
            }
        }
    }
}

fn non_empty(v: Vec<Delivery>) -> Option<Vec<Delivery>> {
    (!v.is_empty()).then_some(v)
}
