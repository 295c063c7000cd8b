//! Dead letters in a Redis stream at `key`: one entry per record, its JSON
//! (see [`super::codec`]) in the field `record`; the entry id is the key.
//!
//! A stream, not a list: entries are removed by id (`XDEL`), so removing a
//! replayed record never touches another copy of the same message, and reads
//! page by id without shifting under concurrent writers. A batch is added in
//! one `MULTI`, so it is kept whole or not at all.

use std::time::Duration;

use async_trait::async_trait;
use redis::streams::StreamRangeReply;
use tokio::sync::OnceCell;

use super::{codec, DeadLetter, DeadLetterStore, StoredDeadLetter};
use crate::redact::scrub;
use crate::redis_url::{self, AnyTarget, Conn, RedisClient};
use crate::{Error, Result};

/// The field of a stream entry holding the record.
const FIELD: &str = "record";
/// Entries read per `XRANGE`.
const PAGE: usize = 500;
/// How long connecting or one command may take before it counts as failed:
/// a stalled Redis must not stall the settle loop.
const TIMEOUT: Duration = Duration::from_secs(5);

/// The Redis store.
pub struct RedisStore {
    client: RedisClient,
    key: String,
    /// The URL's secrets, to scrub from error texts (redis-rs may echo them).
    secrets: Vec<String>,
    name: String,
    conn: OnceCell<Conn>,
}

impl RedisStore {
    /// A store at `key` on the server at `url`. Connects on first use.
    pub fn new(url: &str, key: &str) -> Result<Self> {
        if key.is_empty() {
            return Err(Error::Config("key: must be a non-empty string".to_string()));
        }
        let AnyTarget {
            client,
            redacted,
            secrets,
        } = redis_url::open_any(url, "url")?;
        Ok(RedisStore {
            client,
            key: key.to_string(),
            secrets,
            name: format!("redis:{redacted} key={key}"),
            conn: OnceCell::new(),
        })
    }

    pub fn key(&self) -> &str {
        &self.key
    }

    async fn conn(&self) -> Result<Conn> {
        self.conn
            .get_or_try_init(|| async {
                self.client
                    .managed(TIMEOUT, 2)
                    .await
                    .map_err(|e| self.error("connect to", e))
            })
            .await
            .cloned()
    }

    fn error(&self, what: &str, e: redis::RedisError) -> Error {
        let text = scrub(e.to_string(), &self.secrets);
        Error::DeadLetter(format!("cannot {what} {}: {text}", self.name))
    }

    fn decode(
        &self,
        id: String,
        map: &std::collections::HashMap<String, redis::Value>,
    ) -> Option<StoredDeadLetter> {
        let decoded = map
            .get(FIELD)
            .ok_or_else(|| Error::DeadLetter(format!("entry has no {FIELD:?} field")))
            .and_then(|v| {
                redis::from_redis_value_ref::<String>(v)
                    .map_err(|e| Error::DeadLetter(format!("{FIELD:?} is not text: {e}")))
            })
            .and_then(|text| codec::decode(&text));
        match decoded {
            Ok(mut stored) => {
                stored.key = id;
                Some(stored)
            }
            Err(e) => {
                tracing::warn!(store = %self.name, entry = %id, error = %e,
                    "skipping a dead-letter entry");
                None
            }
        }
    }
}

#[async_trait]
impl DeadLetterStore for RedisStore {
    fn name(&self) -> &str {
        &self.name
    }

    async fn put(&self, records: Vec<DeadLetter>) -> Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        pipe.atomic();
        for record in &records {
            pipe.cmd("XADD")
                .arg(&self.key)
                .arg("*")
                .arg(FIELD)
                .arg(codec::encode("", record))
                .ignore();
        }
        let mut conn = self.conn().await?;
        pipe.exec_async(&mut conn)
            .await
            .map_err(|e| self.error("write to", e))
    }

    async fn list(&self, limit: usize) -> Result<Vec<StoredDeadLetter>> {
        let mut conn = self.conn().await?;
        let mut out = Vec::new();
        let mut start = "-".to_string();
        while out.len() < limit {
            let want = PAGE.min(limit - out.len());
            let page: StreamRangeReply = redis::cmd("XRANGE")
                .arg(&self.key)
                .arg(&start)
                .arg("+")
                .arg("COUNT")
                .arg(want)
                .query_async(&mut conn)
                .await
                .map_err(|e| self.error("read", e))?;
            let got = page.ids.len();
            for entry in page.ids {
                start = format!("({}", entry.id);
                if let Some(stored) = self.decode(entry.id, &entry.map) {
                    out.push(stored);
                }
            }
            if got < want {
                break;
            }
        }
        out.truncate(limit);
        Ok(out)
    }

    async fn remove(&self, keys: &[String]) -> Result<usize> {
        if keys.is_empty() {
            return Ok(0);
        }
        let mut conn = self.conn().await?;
        let mut removed = 0;
        for chunk in keys.chunks(PAGE) {
            let n: usize = redis::cmd("XDEL")
                .arg(&self.key)
                .arg(chunk)
                .query_async(&mut conn)
                .await
                .map_err(|e| self.error("remove from", e))?;
            removed += n;
        }
        Ok(removed)
    }

    async fn purge(&self) -> Result<usize> {
        let mut conn = self.conn().await?;
        // Count and delete in one transaction: nothing added in between is
        // deleted uncounted.
        let (n, _): (usize, usize) = redis::pipe()
            .atomic()
            .cmd("XLEN")
            .arg(&self.key)
            .cmd("DEL")
            .arg(&self.key)
            .query_async(&mut conn)
            .await
            .map_err(|e| self.error("purge", e))?;
        Ok(n)
    }

    async fn exists(&self) -> Result<bool> {
        let mut conn = self.conn().await?;
        redis::cmd("EXISTS")
            .arg(&self.key)
            .query_async(&mut conn)
            .await
            .map_err(|e| self.error("read", e))
    }

    async fn count(&self) -> Result<usize> {
        let mut conn = self.conn().await?;
        redis::cmd("XLEN")
            .arg(&self.key)
            .query_async(&mut conn)
            .await
            .map_err(|e| self.error("read", e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dlq::testing::sample;

    const URL: &str = "redis://127.0.0.1:6379/0";

    fn unique_key(tag: &str) -> String {
        format!("foxtive-test:dlq:{tag}:{:x}", rand::random::<u64>())
    }

    fn named(id: &str) -> DeadLetter {
        DeadLetter {
            original_id: id.into(),
            ..sample()
        }
    }

    #[tokio::test]
    async fn put_list_page_remove_purge_on_a_real_redis() {
        let store = RedisStore::new(URL, &unique_key("basic")).unwrap();
        let many: Vec<DeadLetter> = (0..PAGE + 3).map(|i| named(&format!("m{i}"))).collect();
        store.put(many).await.unwrap();
        assert_eq!(store.count().await.unwrap(), PAGE + 3);
        let all = store.list(usize::MAX).await.unwrap();
        assert_eq!(all.len(), PAGE + 3, "pages past the first are read");
        assert_eq!(
            all[0].record,
            named("m0"),
            "binary body and typed headers intact"
        );
        assert_eq!(all[PAGE + 2].record.original_id, format!("m{}", PAGE + 2));
        assert_eq!(store.list(2).await.unwrap().len(), 2);
        let keys = vec![all[1].key.clone(), all[2].key.clone()];
        assert_eq!(store.remove(&keys).await.unwrap(), 2);
        assert_eq!(store.remove(&keys).await.unwrap(), 0);
        assert_eq!(store.purge().await.unwrap(), PAGE + 1);
        assert_eq!(store.count().await.unwrap(), 0);
    }

    #[tokio::test]
    async fn errors_name_the_store_without_the_password() {
        // Nothing listens on port 1.
        let store = RedisStore::new("redis://user:hunter2@127.0.0.1:1/0", "k").unwrap();
        assert!(!store.name().contains("hunter2"));
        let err = store.put(vec![named("a")]).await.unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("127.0.0.1:1") && !text.contains("hunter2"),
            "{text}"
        );
    }

    #[test]
    fn bad_settings_are_config_errors() {
        assert!(matches!(RedisStore::new(URL, ""), Err(Error::Config(_))));
        let err = RedisStore::new("nope://:secret@host", "k").err().unwrap();
        assert!(matches!(err, Error::Config(_)));
        assert!(!err.to_string().contains("secret"));
    }
}
