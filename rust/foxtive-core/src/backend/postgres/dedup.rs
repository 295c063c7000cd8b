//! Publish deduplication: `dedup` holds, per queue and key, the id of the
//! message that took the key and until when.
//!
//! The backend's own publish takes the key and inserts the job in ONE
//! statement (two data-modifying CTEs: the upsert takes a free or expired
//! key, the INSERT runs only if it did), so both or neither happen; a
//! process dying in between loses nothing. With `transaction=conn` the
//! caller's transaction runs [`claim_sql`] then the INSERT: atomic too, as
//! both commit together. A concurrent publish of the same key waits on the
//! first's uncommitted row, then finds the key held.

use super::publish::{EnqueueRows, Param};
use super::schema::{insert_sql, quote_ident, Placeholders};
use super::*;
use crate::message::Dedup;

/// Migration 5: the dedup table. Every publish with a key is a primary-key
/// upsert; an expired key is taken over in place.
pub const MIGRATION: &str = r#"
CREATE TABLE {s}.dedup (
    queue text NOT NULL,
    key text NOT NULL,
    message_id text NOT NULL,
    expires_at timestamptz NOT NULL,
    PRIMARY KEY (queue, key)
);
"#;

fn param(style: Placeholders, n: usize) -> String {
    match style {
        Placeholders::Dollar => format!("${n}"),
        Placeholders::Percent => "%s".to_string(),
    }
}

/// Take key p2 of queue p1 for message p3 for p4 seconds, if free or
/// expired; RETURNs the id when taken, no row when another message holds it.
pub fn claim_sql(schema: &str, style: Placeholders) -> String {
    let p = |n| param(style, n);
    format!(
        "INSERT INTO {s}.dedup AS d (queue, key, message_id, expires_at) \
         VALUES ({}, {}, {}, now() + make_interval(secs => {}::float8)) \
         ON CONFLICT (queue, key) DO UPDATE SET message_id = excluded.message_id, \
         expires_at = excluded.expires_at WHERE d.expires_at <= now() RETURNING message_id",
        p(1),
        p(2),
        p(3),
        p(4),
        s = quote_ident(schema)
    )
}

/// The id holding key p2 of queue p1.
pub fn held_sql(schema: &str, style: Placeholders) -> String {
    format!(
        "SELECT message_id FROM {}.dedup WHERE queue = {} AND key = {}",
        quote_ident(schema),
        param(style, 1),
        param(style, 2)
    )
}

/// One statement: `$1..$11` as [`insert_sql`] (one message), `$12` the key,
/// `$13` the TTL in seconds. Returns (rows inserted, id holding the key);
/// the id is NULL only when another publish took the key after this
/// statement's snapshot (run it again).
fn publish_once_sql(schema: &str) -> String {
    let s = quote_ident(schema);
    format!(
        "WITH took AS (INSERT INTO {s}.dedup AS d (queue, key, message_id, expires_at) \
           VALUES ($1::text, $12::text, ($2::text[])[1], now() + make_interval(secs => $13::float8)) \
           ON CONFLICT (queue, key) DO UPDATE SET message_id = excluded.message_id, \
           expires_at = excluded.expires_at WHERE d.expires_at <= now() RETURNING message_id), \
         ins AS ({insert} WHERE EXISTS (SELECT 1 FROM took) RETURNING 1) \
         SELECT (SELECT count(*) FROM ins)::int8, coalesce((SELECT message_id FROM took), \
           (SELECT message_id FROM {s}.dedup WHERE queue = $1::text AND key = $12::text))",
        insert = insert_sql(schema, Placeholders::Dollar),
    )
}

impl Inner {
    /// Publish messages one by one, those with a key through
    /// [`Self::publish_once`], in order.
    pub(super) async fn publish_each(&self, messages: Vec<Outgoing>) -> Result<Vec<String>> {
        let mut ids = Vec::with_capacity(messages.len());
        for m in messages {
            match m.dedup.clone() {
                Some(d) => ids.push(self.publish_once(m, &d).await?),
                None => ids.extend(Box::pin(self.publish(vec![m])).await?),
            }
        }
        Ok(ids)
    }

    /// Publish one message unless its key is held; the id holding the key
    /// (this message's when it was enqueued).
    pub(super) async fn publish_once(&self, m: Outgoing, dedup: &Dedup) -> Result<String> {
        let rows = EnqueueRows::of(vec![m]);
        let bodies: Vec<&[u8]> = rows.body.iter().map(|b| &b[..]).collect();
        let queue: &str = &self.queue;
        let sql = publish_once_sql(&self.cfg.schema);
        let ttl = dedup.ttl.as_secs_f64();
        let give_up = Instant::now() + PUBLISH_RETRY_WINDOW;
        loop {
            let conn = match self.link.conn().await {
                Ok(conn) => conn,
                Err(e) if e.is_connection() && Instant::now() < give_up => continue,
                Err(e) => return Err(e),
            };
            let [p1, p2, p3, p4, p5, p6, p7, p8, p9, p10, p11] = rows.params(&queue, &bodies);
            let params: [Param<'_>; 13] = [
                p1, p2, p3, p4, p5, p6, p7, p8, p9, p10, p11, &dedup.key, &ttl,
            ];
            match conn.client.query_one(&sql, &params).await {
                Ok(row) => {
                    let inserted: i64 = row.get(0);
                    let holder: Option<String> = row.get(1);
                    match holder {
                        Some(holder) => {
                            if inserted > 0 {
                                self.touch();
                                self.link.wake().notify_waiters();
                            }
                            return Ok(holder);
                        }
                        // Taken by a publish that committed after our snapshot.
                        None if Instant::now() < give_up => continue,
                        None => {
                            return Err(Error::Backend(
                                "dedup publish: the key changed hands repeatedly".to_string(),
                            ))
                        }
                    }
                }
                Err(e) => {
                    let err = self.failed(&conn, "publish (dedup)", &e);
                    if !(err.is_connection() && Instant::now() < give_up) {
                        return Err(err);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_name_the_schema_and_take_their_parameters() {
        let claim = claim_sql("fx", Placeholders::Percent);
        assert_eq!(claim.matches("%s").count(), 4);
        assert!(claim.contains("\"fx\".dedup"));
        assert!(held_sql("fx", Placeholders::Dollar).contains("$2"));
        assert!(publish_once_sql("fx").contains("$13::float8"));
    }
}
