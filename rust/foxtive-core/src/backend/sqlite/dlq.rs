//! `foxtive_dead_letters` as a [`DeadLetterStore`]: list, show, replay and
//! purge the dead letters of one queue. The key of a record is its row id.
//!
//! A replay is one transaction: `INSERT ... SELECT` of the chosen records
//! back into `foxtive_jobs` (same message id, body and headers; attempts
//! start again at 0, so the next delivery is attempt 1) and their DELETE.
//! An interrupted replay leaves each record dead or replayed, never both or
//! neither, and two replays at once cannot move one record twice (SQLite
//! runs one write transaction at a time).

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

use super::{row, Inner, SqliteBackend};
use crate::clock::unix_now;
use crate::dlq::{DeadLetter, DeadLetterStore, StoredDeadLetter};
use crate::{Error, Result};

/// The dead letters of one SQLite queue.
pub struct SqliteDeadLetters {
    inner: Arc<Inner>,
    name: String,
}

impl SqliteBackend {
    /// A view of this backend's dead letters (it shares the backend's connection).
    pub fn dead_letter_store(&self) -> SqliteDeadLetters {
        SqliteDeadLetters {
            name: format!(
                "sqlite:{} queue={}",
                self.inner.cfg.path.display(),
                self.inner.queue
            ),
            inner: self.inner.clone(),
        }
    }
}

const LIST: &str = "SELECT id, original_id, body, headers, queue, attempts, error_type, \
     error_message, failed_at, worker_id, poison_pill FROM foxtive_dead_letters \
     WHERE queue = ?1 ORDER BY id LIMIT ?2";
/// `?2`: a JSON list of original ids, or NULL for all.
const REPLAY: &str = "INSERT INTO foxtive_jobs (queue, message_id, body, headers, attempts, \
     run_at, locked_until, created_at) SELECT queue, original_id, body, headers, 0, ?3, NULL, ?3 \
     FROM foxtive_dead_letters WHERE queue = ?1 \
     AND (?2 IS NULL OR original_id IN (SELECT value FROM json_each(?2))) ORDER BY id";
const REPLAYED: &str = "DELETE FROM foxtive_dead_letters WHERE queue = ?1 \
     AND (?2 IS NULL OR original_id IN (SELECT value FROM json_each(?2)))";

fn dlq_error(e: Error) -> Error {
    match e {
        Error::DeadLetter(_) => e,
        other => Error::DeadLetter(other.to_string()),
    }
}

impl SqliteDeadLetters {
    /// Up to `limit` records of this queue, oldest first.
    pub async fn read(&self, limit: usize) -> Result<Vec<StoredDeadLetter>> {
        let queue = self.inner.queue.clone();
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.inner
            .with_conn("list dead letters", move |conn| {
                let mut stmt = conn.prepare_cached(LIST)?;
                let rows = stmt.query_map(rusqlite::params![&*queue, limit], |r| {
                    let key: i64 = r.get(0)?;
                    let headers: Option<String> = r.get(3)?;
                    let attempts: i64 = r.get(5)?;
                    Ok(StoredDeadLetter {
                        key: key.to_string(),
                        record: DeadLetter {
                            original_id: r.get(1)?,
                            body: Bytes::from(r.get::<_, Vec<u8>>(2)?),
                            headers: row::headers_of(headers.as_deref(), key),
                            source_queue: r.get(4)?,
                            attempts: u32::try_from(attempts).unwrap_or(0),
                            error_type: r.get(6)?,
                            error_message: r.get(7)?,
                            failed_at: r.get(8)?,
                            worker_id: r.get(9)?,
                            poison_pill: r.get(10)?,
                        },
                    })
                })?;
                rows.collect()
            })
            .await
            .map_err(dlq_error)
    }

    async fn delete(&self, what: &'static str, keys: Option<Vec<i64>>) -> Result<usize> {
        let queue = self.inner.queue.clone();
        self.inner
            .with_conn(what, move |conn| match keys {
                Some(keys) => conn
                    .prepare_cached(
                        "DELETE FROM foxtive_dead_letters WHERE queue = ?1 \
                         AND id IN (SELECT value FROM json_each(?2))",
                    )?
                    .execute(rusqlite::params![&*queue, row::id_list(&keys)]),
                None => conn
                    .prepare_cached("DELETE FROM foxtive_dead_letters WHERE queue = ?1")?
                    .execute([&*queue]),
            })
            .await
            .map_err(dlq_error)
    }
}

#[async_trait]
impl DeadLetterStore for SqliteDeadLetters {
    fn name(&self) -> &str {
        &self.name
    }

    async fn put(&self, _records: Vec<DeadLetter>) -> Result<()> {
        Err(crate::dlq::native_put_refused(&self.name))
    }

    async fn list(&self, limit: usize) -> Result<Vec<StoredDeadLetter>> {
        self.read(limit).await
    }

    async fn remove(&self, keys: &[String]) -> Result<usize> {
        let ids: Vec<i64> = keys.iter().filter_map(|k| k.parse().ok()).collect();
        if ids.is_empty() {
            return Ok(0);
        }
        self.delete("remove dead letters", Some(ids)).await
    }

    async fn purge(&self) -> Result<usize> {
        self.delete("purge dead letters", None).await
    }

    async fn count(&self) -> Result<usize> {
        let queue = self.inner.queue.clone();
        self.inner
            .with_conn("count dead letters", move |conn| {
                conn.prepare_cached("SELECT count(*) FROM foxtive_dead_letters WHERE queue = ?1")?
                    .query_row([&*queue], |r| r.get::<_, i64>(0))
            })
            .await
            .map(|n| usize::try_from(n).unwrap_or(0))
            .map_err(dlq_error)
    }

    /// The file is there: asking must not create it (a mistyped path in
    /// `foxtive dlq --broker sqlite:///...` is an error, not an empty queue).
    async fn exists(&self) -> Result<bool> {
        Ok(self.inner.cfg.path.is_file())
    }

    async fn replay_in_place(&self, ids: Option<&[String]>) -> Result<usize> {
        let queue = self.inner.queue.clone();
        let chosen = ids.map(|ids| serde_json::Value::from(ids.to_vec()).to_string());
        let n = self
            .inner
            .with_conn("replay dead letters", move |conn| {
                let tx =
                    conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
                let now = unix_now();
                let moved = tx
                    .prepare_cached(REPLAY)?
                    .execute(rusqlite::params![&*queue, chosen, now])?;
                let removed = tx
                    .prepare_cached(REPLAYED)?
                    .execute(rusqlite::params![&*queue, chosen])?;
                if moved != removed {
                    // Cannot happen inside one write transaction; refuse
                    // rather than commit a duplicate or a loss.
                    return Err(rusqlite::Error::StatementChangedRows(removed));
                }
                tx.commit()?;
                Ok(moved)
            })
            .await
            .map_err(dlq_error)?;
        if n > 0 {
            self.inner.wake.notify_waiters();
        }
        Ok(n)
    }
}
