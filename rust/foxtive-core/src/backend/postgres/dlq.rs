//! The dead-letter table of one queue as a [`DeadLetterStore`]: what
//! `foxtive dlq` and `backend.dead_letter_queue()` read, replay and purge.
//! Keys are the table's row ids.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

use super::publish::EnqueueRows;
use super::schema::{insert_sql, quote_ident, Placeholders};
use super::Inner;
use crate::dlq::{native_put_refused, DeadLetter, DeadLetterStore, StoredDeadLetter};
use crate::{Error, Result};

pub struct PostgresDeadLetters {
    inner: Arc<Inner>,
    name: String,
}

const COLUMNS: &str = "id, message_id, body, headers, queue, attempts, error_type, \
    error_message, extract(epoch FROM failed_at)::float8, worker_id, poison_pill";

impl PostgresDeadLetters {
    pub(crate) fn new(inner: Arc<Inner>) -> Self {
        let name = format!(
            "{} {}.dead_letters (queue {:?})",
            inner.link.url, inner.cfg.schema, inner.cfg.queue
        );
        PostgresDeadLetters { inner, name }
    }

    fn table(&self) -> String {
        format!("{}.dead_letters", quote_ident(&self.inner.cfg.schema))
    }

    fn queue(&self) -> &str {
        &self.inner.cfg.queue
    }

    /// Run one statement (on the backend's connection) and turn its error
    /// into a dead-letter error.
    async fn query(
        &self,
        what: &str,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>> {
        self.inner.reopen();
        let conn = self
            .inner
            .link
            .conn()
            .await
            .map_err(|e| Error::DeadLetter(format!("{}: {what}: {e}", self.name)))?;
        conn.client.query(sql, params).await.map_err(|e| {
            let err = self.inner.failed(&conn, what, &e);
            Error::DeadLetter(format!("{}: {err}", self.name))
        })
    }

    async fn select(&self, limit: usize, keys: Option<&[i64]>) -> Result<Vec<StoredDeadLetter>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let sql = format!(
            "SELECT {COLUMNS} FROM {} WHERE queue = $1 AND ($2::int8[] IS NULL OR id = ANY($2)) \
             ORDER BY id LIMIT $3",
            self.table()
        );
        let keys: Option<Vec<i64>> = keys.map(<[i64]>::to_vec);
        let rows = self
            .query("list", &sql, &[&self.queue(), &keys, &limit])
            .await?;
        rows.iter().map(record).collect()
    }
}

fn record(row: &Row) -> Result<StoredDeadLetter> {
    let bad = |e: tokio_postgres::Error| Error::DeadLetter(format!("dead_letters row: {e}"));
    let id: i64 = row.try_get(0).map_err(bad)?;
    let body: &[u8] = row.try_get(2).map_err(bad)?;
    let headers: String = row.try_get(3).map_err(bad)?;
    let attempts: i32 = row.try_get(5).map_err(bad)?;
    Ok(StoredDeadLetter {
        key: id.to_string(),
        record: DeadLetter {
            original_id: row.try_get(1).map_err(bad)?,
            body: Bytes::copy_from_slice(body),
            headers: crate::dlq::codec::headers_from_text(&headers).unwrap_or_default(),
            source_queue: row.try_get(4).map_err(bad)?,
            attempts: u32::try_from(attempts).unwrap_or(0),
            error_type: row.try_get(6).map_err(bad)?,
            error_message: row.try_get(7).map_err(bad)?,
            failed_at: row.try_get(8).map_err(bad)?,
            worker_id: row.try_get(9).map_err(bad)?,
            poison_pill: row.try_get(10).map_err(bad)?,
        },
    })
}

fn keys_of(keys: &[String]) -> Vec<i64> {
    keys.iter().filter_map(|k| k.parse().ok()).collect()
}

#[async_trait]
impl DeadLetterStore for PostgresDeadLetters {
    fn name(&self) -> &str {
        &self.name
    }

    async fn put(&self, _records: Vec<DeadLetter>) -> Result<()> {
        Err(native_put_refused(&self.name))
    }

    async fn list(&self, limit: usize) -> Result<Vec<StoredDeadLetter>> {
        self.select(limit, None).await
    }

    async fn remove(&self, keys: &[String]) -> Result<usize> {
        let keys = keys_of(keys);
        let sql = format!(
            "DELETE FROM {} WHERE queue = $1 AND id = ANY($2) RETURNING id",
            self.table()
        );
        Ok(self
            .query("remove", &sql, &[&self.queue(), &keys])
            .await?
            .len())
    }

    async fn purge(&self) -> Result<usize> {
        let sql = format!("DELETE FROM {} WHERE queue = $1 RETURNING id", self.table());
        Ok(self.query("purge", &sql, &[&self.queue()]).await?.len())
    }

    async fn count(&self) -> Result<usize> {
        let sql = format!("SELECT count(*) FROM {} WHERE queue = $1", self.table());
        let rows = self.query("count", &sql, &[&self.queue()]).await?;
        let n: i64 = rows.first().map_or(0, |r| r.get(0));
        Ok(usize::try_from(n).unwrap_or(0))
    }

    /// Each chosen record is moved back into `jobs` by one statement (the
    /// DELETE feeds the INSERT), so it is never in both tables or in
    /// neither, and two replays at once cannot both republish it.
    async fn replay_in_place(&self, ids: Option<&[String]>) -> Result<usize> {
        let mut chosen = self.select(usize::MAX, None).await?;
        if let Some(ids) = ids {
            chosen.retain(|s| ids.contains(&s.record.original_id));
        }
        let mut done = 0;
        for chunk in chosen.chunks(1000) {
            let keys: Vec<i64> = keys_of(&chunk.iter().map(|s| s.key.clone()).collect::<Vec<_>>());
            let rows = EnqueueRows::of(chunk.iter().map(|s| s.record.to_replay()).collect());
            let bodies: Vec<&[u8]> = rows.body.iter().map(|b| &b[..]).collect();
            // The INSERT's arrays, filtered to the records this DELETE took.
            let insert = insert_sql(&self.inner.cfg.schema, Placeholders::Dollar)
                .replace("FROM unnest(", "FROM (SELECT * FROM unnest(")
                .replace(
                    ") AS t(m, b, h, c, ct, r, rk, p, a, d)",
                    ", $12::int8[]) AS t(m, b, h, c, ct, r, rk, p, a, d, k) \
                     WHERE k IN (SELECT id FROM gone)) AS t",
                );
            let sql = format!(
                "WITH gone AS (DELETE FROM {} WHERE queue = $1 AND id = ANY($12) RETURNING id) {insert}",
                self.table()
            );
            let queue = self.queue();
            let mut params = rows.params(&queue, &bodies).to_vec();
            params.push(&keys);
            self.inner.reopen();
            let conn = self
                .inner
                .link
                .conn()
                .await
                .map_err(|e| Error::DeadLetter(format!("{}: replay: {e}", self.name)))?;
            let n = conn
                .client
                .execute(sql.as_str(), &params)
                .await
                .map_err(|e| {
                    let err = self.inner.failed(&conn, "replay", &e);
                    Error::DeadLetter(format!(
                        "{}: replay stopped after {done} records: {err}",
                        self.name
                    ))
                })?;
            done += n as usize;
        }
        Ok(done)
    }
}
