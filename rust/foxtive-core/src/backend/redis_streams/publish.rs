//! Publishing: immediate entries with XADD, delayed ones into the sorted set.

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
    fn cmd(&self, pipe: &mut redis::Pipeline) {
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
            self.inner.mark_new(mark)
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

    /// `SET NX` of `mark` alone, on the command connection.
    async fn mark_new(&self, mark: &MarkNew) -> Result<()> {
        self.with_writer("SET NX", PUBLISH_RETRY_WINDOW, |mut conn| {
            let mut pipe = redis::pipe();
            mark.cmd(&mut pipe);
            async move {
                pipe.query_async::<Vec<Value>>(&mut conn).await?;
                Ok(())
            }
        })
        .await
    }
}

impl RedisStreamBackend {
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
        let ttl_ms = ttl.as_millis().clamp(1, u64::MAX as u128) as u64;
        let done = format!("{key}:done");
        self.inner
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
}
