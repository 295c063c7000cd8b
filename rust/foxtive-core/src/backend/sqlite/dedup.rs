//! Publish deduplication: `foxtive_dedup` holds, per queue and key, the id
//! of the message that took the key and until when.
//!
//! The key is taken in the same transaction as the job insert (the
//! backend's own publish, or the caller's with `transaction=conn`): the
//! upsert takes a free or expired key and RETURNs the id; no row back means
//! another message holds it, and nothing is inserted. Both or neither are
//! committed, so a process dying between them loses nothing.

use rusqlite::{Connection, OptionalExtension};

/// Schema version 3: the dedup table (a primary-key lookup per publish).
pub const DDL: &str = "CREATE TABLE IF NOT EXISTS foxtive_dedup (
        queue TEXT NOT NULL,
        key TEXT NOT NULL,
        message_id TEXT NOT NULL,
        expires_at REAL NOT NULL,
        PRIMARY KEY (queue, key)
    ) WITHOUT ROWID";

/// Take key ?2 of queue ?1 for message ?3 until ?4, if free or expired at ?5.
pub const CLAIM: &str = "INSERT INTO foxtive_dedup (queue, key, message_id, expires_at) \
     VALUES (?1, ?2, ?3, ?4) ON CONFLICT (queue, key) DO UPDATE SET \
     message_id = excluded.message_id, expires_at = excluded.expires_at \
     WHERE foxtive_dedup.expires_at <= ?5 RETURNING message_id";

/// The id holding key ?2 of queue ?1.
pub const HELD: &str = "SELECT message_id FROM foxtive_dedup WHERE queue = ?1 AND key = ?2";

/// Take `key` for message `id` (inside the caller's open transaction).
/// `None`: taken, insert the job; `Some(holder)`: another message holds it.
pub fn claim(
    conn: &Connection,
    queue: &str,
    key: &str,
    id: &str,
    ttl: f64,
    now: f64,
) -> rusqlite::Result<Option<String>> {
    let took: Option<String> = conn
        .prepare_cached(CLAIM)?
        .query_row(rusqlite::params![queue, key, id, now + ttl, now], |r| {
            r.get(0)
        })
        .optional()?;
    if took.is_some() {
        return Ok(None);
    }
    conn.prepare_cached(HELD)?
        .query_row(rusqlite::params![queue, key], |r| r.get(0))
        .optional()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_held_until_it_expires() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute(DDL, []).unwrap();
        assert_eq!(claim(&conn, "q", "k", "a", 10.0, 100.0).unwrap(), None);
        assert_eq!(
            claim(&conn, "q", "k", "b", 10.0, 105.0).unwrap().as_deref(),
            Some("a")
        );
        assert_eq!(claim(&conn, "other", "k", "c", 10.0, 105.0).unwrap(), None);
        assert_eq!(claim(&conn, "q", "k", "d", 10.0, 110.0).unwrap(), None);
        assert_eq!(
            claim(&conn, "q", "k", "e", 10.0, 111.0).unwrap().as_deref(),
            Some("d")
        );
    }
}
