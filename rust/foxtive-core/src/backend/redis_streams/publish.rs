//! Publishing: immediate entries with XADD, delayed ones into the sorted set.

use super::resp::Frame;
use super::*;

impl Inner {
    pub(super) async fn publish(&self, messages: Vec<Outgoing>) -> Result<Vec<String>> {
        if messages.iter().any(|m| m.priority.is_some()) {
            // A stream is read in order: there is no way to let a later entry pass.
            return Err(Error::Config(
                "priority: Redis Streams deliver in stream order and have no priorities; \
                 use RabbitMQ (max_priority), PostgreSQL, SQLite or memory"
                    .to_string(),
            ));
        }
        if messages.iter().any(|m| m.dedup.is_some()) {
            // Each keyed message is its own script run (check and enqueue in
            // one step); the others go as usual, in order.
            let mut ids = Vec::with_capacity(messages.len());
            for m in messages {
                match m.dedup.clone() {
                    Some(d) => ids.push(self.publish_once(&m, &d).await?),
                    None => ids.extend(self.publish_batch(vec![m]).await?),
                }
            }
            return Ok(ids);
        }
        self.publish_batch(messages).await
    }

    async fn publish_batch(&self, messages: Vec<Outgoing>) -> Result<Vec<String>> {
        let mut ids: Vec<Option<String>> = Vec::with_capacity(messages.len());
        let mut now_fields: Vec<(usize, Vec<Field<'_>>)> = Vec::new();
        let mut delayed: Vec<(u64, Vec<u8>)> = Vec::new();
        let generated: Vec<Option<String>> = messages
            .iter()
            .map(|m| match (&m.message_id, m.delay) {
                (None, Some(d)) if !d.is_zero() => Some(format!("{:032x}", rand::random::<u128>())),
                _ => None,
            })
            .collect();
        for (i, m) in messages.iter().enumerate() {
            let id = m.message_id.as_deref().or(generated[i].as_deref());
            let fields = Parts::from_outgoing(m, id).fields();
            match m.delay {
                Some(d) if !d.is_zero() => {
                    delayed.push((
                        d.as_millis().min(u64::MAX as u128) as u64,
                        codec::delayed_member(&fields),
                    ));
                    ids.push(id.map(str::to_string));
                }
                _ => {
                    ids.push(m.message_id.clone());
                    now_fields.push((i, fields));
                }
            }
        }
        for chunk in now_fields.chunks(10_000) {
            let replies = self
                .with_writer("XADD", PUBLISH_RETRY_WINDOW, |mut conn| {
                    let mut pipe = redis::pipe();
                    for (_, fields) in chunk {
                        self.xadd(&mut pipe, &self.cfg.stream_name, fields, true);
                    }
                    async move {
                        let replies = pipe.query_async::<Vec<Value>>(&mut conn).await?;
                        self.replicated(&mut conn).await?;
                        Ok(replies)
                    }
                })
                .await?;
            for ((i, _), reply) in chunk.iter().zip(replies) {
                if ids[*i].is_none() {
                    ids[*i] = reply::string(reply);
                }
            }
        }
        let items: Vec<(u64, &[u8])> = delayed.iter().map(|(ms, m)| (*ms, m.as_slice())).collect();
        for chunk in items.chunks(1000) {
            self.schedule(chunk, PUBLISH_RETRY_WINDOW).await?;
        }
        self.touch();
        ids.into_iter()
            .map(|id| id.ok_or_else(|| Error::Backend("XADD returned no entry id".to_string())))
            .collect()
    }
}

/// A key written with `SET key value PX ttl NX` in the round trip of one
/// publish (the task layer's "pending" record of a task whose id was made
/// for this send): only where no key is, so a record a worker wrote first
/// is never overwritten, and done before the publish returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MarkNew {
    pub key: String,
    pub value: Vec<u8>,
    pub ttl: Duration,
}

impl MarkNew {
    pub(super) fn cmd(&self, pipe: &mut redis::Pipeline) {
        let ttl_ms = self.ttl.as_millis().clamp(1, u64::MAX as u128) as u64;
        pipe.cmd("SET")
            .arg(&self.key)
            .arg(&self.value[..])
            .arg("PX")
            .arg(ttl_ms)
            .arg("NX")
            .ignore();
    }
}

impl RedisStreamBackend {
    /// Publish `message` and write `mark` (see [`MarkNew`]). An immediate
    /// message on one stream (no partitions, no cluster, no delay, no
    /// dedup) goes with the `SET` in one pipeline on the shared command
    /// connection: one round trip. Otherwise the two run concurrently and
    /// both are done before this returns; the publish's error is the one
    /// returned when both fail.
    pub async fn publish_marking(&self, message: Outgoing, mark: &MarkNew) -> Result<String> {
        let immediate = message.delay.is_none_or(|d| d.is_zero());
        if self.rest.is_empty()
            && !self.config.cluster
            && immediate
            && message.dedup.is_none()
            && message.priority.is_none()
        {
            return self.inner.publish_marking(&message, mark).await;
        }
        let (ids, marked) = tokio::join!(
            Backend::publish(self, vec![message]),
            self.commands.mark_new(mark)
        );
        let id = ids?.pop();
        marked?;
        id.ok_or_else(|| Error::Backend("publish returned no id".to_string()))
    }

    /// Whether `url` names this backend's Redis: the same server,
    /// credentials and database (the queue's own URL parameters aside), so
    /// that keys written through the backend's command connection are the
    /// ones a client of `url` reads.
    pub fn same_redis(&self, url: &str) -> bool {
        let cluster = self.config.cluster || crate::redis_url::is_cluster_url(url);
        self.server == shared::Key::new(url, cluster, &format!("{:?}", self.config.reconnect))
    }
}

impl Inner {
    /// `SET NX` of `mark` and `XADD` of `m`, one pipeline.
    async fn publish_marking(&self, m: &Outgoing, mark: &MarkNew) -> Result<String> {
        let fields = Parts::from_outgoing(m, m.message_id.as_deref()).fields();
        let reply = self
            .with_writer("XADD", PUBLISH_RETRY_WINDOW, |mut conn| {
                let mut pipe = redis::pipe();
                mark.cmd(&mut pipe);
                self.xadd(&mut pipe, &self.cfg.stream_name, &fields, true);
                async move {
                    let mut replies = pipe.query_async::<Vec<Value>>(&mut conn).await?;
                    self.replicated(&mut conn).await?;
                    Ok(replies.pop())
                }
            })
            .await?;
        self.touch();
        match &m.message_id {
            Some(id) => Ok(id.clone()),
            None => reply
                .and_then(reply::string)
                .ok_or_else(|| Error::Backend("XADD returned no entry id".to_string())),
        }
    }
}

impl RedisStreamBackend {
    /// The commands of a publish of `message` (with `mark`: of
    /// [`Self::publish_marking`], the `SET NX` first) for a direct
    /// connection, encoded, and how many replies they get; `None` when the
    /// publish needs more than one pipeline on one node (partitions, a
    /// cluster, a delay, dedup, priority, `wait_replicas`) or the Redis has
    /// no direct path (TLS).
    pub fn direct_commands(
        &self,
        message: &Outgoing,
        mark: Option<&MarkNew>,
    ) -> Option<(Vec<u8>, usize)> {
        let immediate = message.delay.is_none_or(|d| d.is_zero());
        if !(self.rest.is_empty()
            && !self.config.cluster
            && immediate
            && message.dedup.is_none()
            && message.priority.is_none()
            && self.inner.cfg.wait_replicas == 0
            && self.commands.direct_address().is_some())
        {
            return None;
        }
        let mut out = Vec::with_capacity(128 + message.body.len());
        if let Some(mark) = mark {
            commands::encode_mark(&mut out, mark);
        }
        self.inner.encode_xadd(&mut out, message);
        Some((out, 1 + usize::from(mark.is_some())))
    }

    /// The message's id from the replies of [`Self::direct_commands`] (an
    /// error reply is the send's error: the task was not sent, or its
    /// record not written).
    pub fn direct_reply(&self, message: &Outgoing, replies: Vec<Frame>) -> Result<String> {
        let mut entry = None;
        for reply in replies {
            match reply {
                Frame::Error(e) => {
                    let what = if entry.is_none() { "publish" } else { "XADD" };
                    return Err(self.commands.reply_error(what, &e));
                }
                other => entry = Some(other),
            }
        }
        self.inner.touch();
        let id = match entry {
            Some(Frame::Bulk(id)) | Some(Frame::Simple(id)) => id,
            _ => return Err(Error::Backend("XADD returned no entry id".to_string())),
        };
        match &message.message_id {
            Some(given) => Ok(given.clone()),
            None => String::from_utf8(id.to_vec())
                .map_err(|_| Error::Backend("XADD returned a bad entry id".to_string())),
        }
    }

    /// A publish of `message` (with `mark`, as [`Self::publish_marking`])
    /// from the caller's thread on its own connection (blocking: the glue
    /// releases the GIL around it). `None` when the direct path does not
    /// apply ([`Self::direct_commands`]) or its connection failed even after
    /// one reconnection: the caller then publishes through the runtime
    /// (which retries per the reconnect strategy). A failure after the
    /// commands were written may have sent the message: sent again, it is
    /// delivered twice, never lost.
    pub fn publish_now(
        &self,
        message: &Outgoing,
        mark: Option<&MarkNew>,
    ) -> Option<Result<String>> {
        let (commands, replies) = self.direct_commands(message, mark)?;
        match self.commands.run_now(&commands, replies)? {
            Ok(got) => Some(self.direct_reply(message, got)),
            Err(e) => {
                tracing::debug!(error = %self.commands.io_error("direct publish", &e),
                    "direct publish failed; publishing through the runtime");
                None
            }
        }
    }

    /// The commands on this backend's Redis (shared with result stores).
    pub fn commands(&self) -> &Arc<RedisCommands> {
        &self.commands
    }
}

impl Inner {
    /// Append this partition's `XADD` of `m` to `out` (as [`Inner::xadd`]).
    fn encode_xadd(&self, out: &mut Vec<u8>, m: &Outgoing) {
        let fields = Parts::from_outgoing(m, m.message_id.as_deref()).fields();
        let maxlen = self.cfg.maxlen.map(|n| n.to_string());
        let mut args: Vec<&[u8]> = Vec::with_capacity(6 + 2 * fields.len());
        args.push(b"XADD");
        args.push(self.cfg.stream_name.as_bytes());
        if let Some(n) = &maxlen {
            args.extend([&b"MAXLEN"[..], b"~", n.as_bytes()]);
        }
        args.push(b"*");
        for (k, v) in &fields {
            args.push(k);
            args.push(v);
        }
        resp::encode(out, &args);
    }
}
