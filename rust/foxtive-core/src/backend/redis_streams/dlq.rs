//! The dead-letter stream (`{stream}:dlq`) as a [`DeadLetterStore`]: list,
//! show, replay and purge the entries the backend wrote there.
//!
//! Replay moves one entry per Lua script run: the script checks that the
//! entry is still in the dead-letter stream, XADDs its copy to the source
//! stream, then XDELs it. A script runs whole or not at all as far as a
//! client can tell (Redis runs nothing else meanwhile, and a client killed
//! mid-call leaves the script to finish), so an interrupted replay leaves
//! each entry either still dead-lettered or replayed, never both or neither;
//! two replays running at once cannot both move the same entry. The XADD
//! comes first so that a failing XADD (e.g. the source key holds another
//! type) changes nothing.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use redis::{Script, Value};

use super::{codec, reply, Inner, RedisStreamBackend, SHUTDOWN_STEP};
use crate::dlq::{DeadLetter, DeadLetterStore, StoredDeadLetter};
use crate::{Error, Result};

/// Entries read per XRANGE.
const PAGE: usize = 500;

/// KEYS[1] dead-letter stream, KEYS[2] source stream; ARGV[1] entry id,
/// ARGV[2] MAXLEN ('' for none), ARGV[3..] the copy's fields. Returns the
/// new entry id, or false when the entry is gone (replayed by someone else).
const REPLAY: &str = r"
if #redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1]) == 0 then return false end
local id
if ARGV[2] ~= '' then
  id = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', unpack(ARGV, 3))
else
  id = redis.call('XADD', KEYS[2], '*', unpack(ARGV, 3))
end
redis.call('XDEL', KEYS[1], ARGV[1])
return id
";

/// The dead-letter stream of one Redis Streams backend.
pub struct StreamDeadLetters {
    inner: Arc<Inner>,
    name: String,
    replay: Script,
}

impl RedisStreamBackend {
    /// A view of this backend's dead-letter stream (it shares the backend's
    /// command connection): of partition 0 only, see [`Self::dead_letters_store`].
    pub fn dead_letter_store(&self) -> StreamDeadLetters {
        StreamDeadLetters::of(&self.inner)
    }

    /// The dead-letter streams of every partition as one store: the stream
    /// of [`Self::dead_letter_store`] without partitions; with them, keys
    /// read `<partition>/<entry id>` and replays go back to each entry's
    /// own partition.
    pub fn dead_letters_store(&self) -> Arc<dyn DeadLetterStore> {
        if self.rest.is_empty() {
            return Arc::new(self.dead_letter_store());
        }
        let parts: Vec<StreamDeadLetters> = self.parts().map(StreamDeadLetters::of).collect();
        Arc::new(PartitionedDeadLetters {
            name: format!(
                "redis:{} streams={}",
                self.inner.link.url,
                parts.iter().map(|p| p.key()).collect::<Vec<_>>().join(",")
            ),
            parts,
        })
    }
}

/// The dead-letter streams of a partitioned queue.
pub struct PartitionedDeadLetters {
    parts: Vec<StreamDeadLetters>,
    name: String,
}

impl PartitionedDeadLetters {
    /// `(partition, entry id)` of a key `<partition>/<entry id>`.
    fn split(key: &str) -> Option<(usize, &str)> {
        let (p, id) = key.split_once('/')?;
        Some((p.parse().ok()?, id))
    }
}

#[async_trait]
impl DeadLetterStore for PartitionedDeadLetters {
    fn name(&self) -> &str {
        &self.name
    }

    async fn put(&self, _records: Vec<DeadLetter>) -> Result<()> {
        Err(crate::dlq::native_put_refused(&self.name))
    }

    async fn list(&self, limit: usize) -> Result<Vec<StoredDeadLetter>> {
        let mut out = Vec::new();
        for (i, part) in self.parts.iter().enumerate() {
            if out.len() >= limit {
                break;
            }
            for mut d in part.list(limit - out.len()).await? {
                d.key = format!("{i}/{}", d.key);
                out.push(d);
            }
        }
        Ok(out)
    }

    async fn remove(&self, keys: &[String]) -> Result<usize> {
        let mut removed = 0;
        for (i, part) in self.parts.iter().enumerate() {
            let mine: Vec<String> = keys
                .iter()
                .filter_map(|k| Self::split(k))
                .filter(|(p, _)| *p == i)
                .map(|(_, id)| id.to_string())
                .collect();
            removed += part.remove(&mine).await?;
        }
        Ok(removed)
    }

    async fn purge(&self) -> Result<usize> {
        let mut n = 0;
        for part in &self.parts {
            n += part.purge().await?;
        }
        Ok(n)
    }

    async fn count(&self) -> Result<usize> {
        let mut n = 0;
        for part in &self.parts {
            n += part.count().await?;
        }
        Ok(n)
    }

    async fn exists(&self) -> Result<bool> {
        for part in &self.parts {
            if part.exists().await? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    async fn replay_in_place(&self, ids: Option<&[String]>) -> Result<usize> {
        let mut done = 0;
        for (i, part) in self.parts.iter().enumerate() {
            let mine: Option<Vec<String>> = ids.map(|ids| {
                ids.iter()
                    .map(|k| match Self::split(k) {
                        // An entry key of this partition: its entry id.
                        Some((p, id)) if p == i => id.to_string(),
                        // An original message id: looked for everywhere.
                        _ => k.clone(),
                    })
                    .collect()
            });
            done += part.replay_in_place(mine.as_deref()).await?;
        }
        Ok(done)
    }
}

impl StreamDeadLetters {
    fn of(inner: &Arc<Inner>) -> Self {
        StreamDeadLetters {
            name: format!(
                "redis:{} stream={}",
                inner.link.url, inner.cfg.dead_letter_stream
            ),
            inner: inner.clone(),
            replay: Script::new(REPLAY),
        }
    }

    fn key(&self) -> &str {
        &self.inner.cfg.dead_letter_stream
    }

    /// Raw entries from `start` (exclusive when it starts with `(`), oldest first.
    async fn page(&self, start: String, count: usize) -> Result<Vec<reply::RawEntry>> {
        let key = self.key().to_string();
        let reply = self
            .inner
            .with_writer("XRANGE dead letters", SHUTDOWN_STEP, |mut conn| {
                let (key, start) = (key.clone(), start.clone());
                async move {
                    redis::cmd("XRANGE")
                        .arg(&key)
                        .arg(&start)
                        .arg("+")
                        .arg("COUNT")
                        .arg(count.max(1))
                        .query_async::<Value>(&mut conn)
                        .await
                }
            })
            .await?;
        reply::entries(reply)
    }

    /// Up to `limit` raw entries (id and fields), oldest first.
    async fn raw(&self, limit: usize) -> Result<Vec<(String, codec::RawFields)>> {
        let mut out = Vec::new();
        let mut start = "-".to_string();
        while out.len() < limit {
            let want = PAGE.min(limit - out.len());
            let page = self.page(start.clone(), want).await?;
            let got = page.len();
            for entry in page {
                start = format!("({}", entry.id);
                if let Some(fields) = entry.fields {
                    out.push((entry.id, fields));
                }
            }
            if got < want {
                break;
            }
        }
        Ok(out)
    }

    async fn query<T: redis::FromRedisValue + Send>(
        &self,
        what: &str,
        cmd: redis::Cmd,
    ) -> Result<T> {
        self.inner
            .with_writer(what, SHUTDOWN_STEP, |mut conn| {
                let cmd = cmd.clone();
                async move { cmd.query_async::<T>(&mut conn).await }
            })
            .await
    }

    /// Move one entry back to its source; false when it was already gone.
    async fn replay_one(&self, entry_id: &str, fields: &[(Bytes, Bytes)]) -> Result<bool> {
        let maxlen = self
            .inner
            .cfg
            .maxlen
            .map(|n| n.to_string())
            .unwrap_or_default();
        let moved: Value = self
            .inner
            .with_writer("replay a dead letter", SHUTDOWN_STEP, |mut conn| {
                let mut invocation = self.replay.prepare_invoke();
                invocation
                    .key(self.key())
                    .key(&self.inner.cfg.stream_name)
                    .arg(entry_id)
                    .arg(&maxlen);
                for (k, v) in fields {
                    invocation.arg(k.as_ref()).arg(v.as_ref());
                }
                async move { invocation.invoke_async::<Value>(&mut conn).await }
            })
            .await?;
        Ok(!matches!(moved, Value::Nil | Value::Boolean(false)))
    }
}

/// The fields of the replayed copy: the message as it was (body, id,
/// headers, properties) without the failure's description and without the
/// attempt bookkeeping, so it starts again at attempt 1.
fn replay_fields(fields: &codec::RawFields) -> Vec<(Bytes, Bytes)> {
    fields
        .iter()
        .filter(|(k, _)| {
            let k = k.as_ref();
            let is_meta = codec::DEAD_LETTER_FIELDS.iter().any(|m| m.as_bytes() == k);
            let bookkeeping =
                k == b"attempt" || k.starts_with(b"h:x-foxtive-") || k == b"h:x-delivery-count";
            !is_meta && !bookkeeping
        })
        .cloned()
        .collect()
}

fn chosen(ids: Option<&[String]>, entry_id: &str, record: &DeadLetter) -> bool {
    ids.is_none_or(|ids| {
        ids.iter()
            .any(|i| *i == record.original_id || i == entry_id)
    })
}

#[async_trait]
impl DeadLetterStore for StreamDeadLetters {
    fn name(&self) -> &str {
        &self.name
    }

    async fn put(&self, _records: Vec<DeadLetter>) -> Result<()> {
        Err(crate::dlq::native_put_refused(&self.name))
    }

    async fn list(&self, limit: usize) -> Result<Vec<StoredDeadLetter>> {
        Ok(self
            .raw(limit)
            .await?
            .into_iter()
            .map(|(id, fields)| StoredDeadLetter {
                record: codec::dead_letter_from_fields(&id, fields),
                key: id,
            })
            .collect())
    }

    async fn remove(&self, keys: &[String]) -> Result<usize> {
        if keys.is_empty() {
            return Ok(0);
        }
        let mut cmd = redis::cmd("XDEL");
        cmd.arg(self.key()).arg(keys);
        self.query("XDEL dead letters", cmd).await
    }

    async fn purge(&self) -> Result<usize> {
        // Count and empty in one transaction; the key stays (an empty
        // stream), so the dead-letter stream still shows as there.
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("XLEN")
            .arg(self.key())
            .cmd("XTRIM")
            .arg(self.key())
            .arg("MAXLEN")
            .arg(0);
        let (n, _): (usize, usize) = self
            .inner
            .with_writer("purge dead letters", SHUTDOWN_STEP, |mut conn| {
                let pipe = pipe.clone();
                async move { pipe.query_async(&mut conn).await }
            })
            .await?;
        Ok(n)
    }

    async fn count(&self) -> Result<usize> {
        let mut cmd = redis::cmd("XLEN");
        cmd.arg(self.key());
        self.query("XLEN dead letters", cmd).await
    }

    /// There when the source stream or its dead-letter stream exists: a
    /// typo in the stream name finds neither.
    async fn exists(&self) -> Result<bool> {
        let mut cmd = redis::cmd("EXISTS");
        cmd.arg(self.key()).arg(&self.inner.cfg.stream_name);
        let n: usize = self.query("EXISTS", cmd).await?;
        Ok(n > 0)
    }

    async fn replay_in_place(&self, ids: Option<&[String]>) -> Result<usize> {
        // Only the entries there when the call starts: a message failing
        // again meanwhile is not replayed twice.
        let entries = self.raw(usize::MAX).await?;
        let mut done = 0;
        for (entry_id, fields) in entries {
            let copy = replay_fields(&fields);
            let record = codec::dead_letter_from_fields(&entry_id, fields);
            if !chosen(ids, &entry_id, &record) {
                continue;
            }
            match self.replay_one(&entry_id, &copy).await {
                Ok(true) => done += 1,
                Ok(false) => {}
                Err(e) => {
                    return Err(Error::DeadLetter(format!(
                        "replay from {}: stopped after {done} entries (each moved whole; the \
                         rest stay dead-lettered): {e}",
                        self.name
                    )))
                }
            }
        }
        Ok(done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_replayed_copy_is_the_message_without_the_failure() {
        let raw = |k: &'static str, v: &'static str| {
            (
                Bytes::from_static(k.as_bytes()),
                Bytes::from_static(v.as_bytes()),
            )
        };
        let fields = vec![
            raw("body", "b"),
            raw("id", "m-1"),
            raw("attempt", "4"),
            raw("h:tenant", "sacme"),
            raw("h:x-foxtive-attempt", "i4"),
            raw("p:content_type", "text/plain"),
            raw("source", "q"),
            raw("error_type", "E"),
            raw("error_message", "boom"),
            raw("poison_pill", "false"),
        ];
        let kept: Vec<_> = replay_fields(&fields)
            .into_iter()
            .map(|(k, _)| String::from_utf8(k.to_vec()).unwrap())
            .collect();
        assert_eq!(kept, ["body", "id", "h:tenant", "p:content_type"]);
    }
}
