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
