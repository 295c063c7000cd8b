//! The tables, defined once: the backend creates them, and the Python
//! transactional enqueue (`publish(..., transaction=conn)`) runs the same
//! statements and the same INSERT through the caller's connection.
//!
//! SQLite has no schemas, so every name starts with `foxtive_`: the tables can
//! live in the application's own database file next to its tables.
//!
//! A job is one row of `foxtive_jobs`. `run_at` is when the row may next be
//! claimed: the publish time (plus any delay), the retry time, or, while the
//! row is leased, the end of the lease (`locked_until` holds the same value,
//! and is NULL when nobody holds it). Folding the lease into `run_at` makes
//! "the next claimable job of queue q" one range scan of one index, whether
//! the row is new, a due retry, or an expired lease of a dead worker.

use rusqlite::{Connection, TransactionBehavior};

/// The version [`MIGRATIONS`] bring a database to.
pub const SCHEMA_VERSION: i64 = 4;

/// `(version, statements)`, applied in order above the version found.
/// Append, never edit. Every statement is `IF NOT EXISTS`: the Python
/// transactional enqueue creates version 1's tables ([`DDL`]) through the
/// caller's connection without recording a version, and the backend then
/// runs every migration over them.
pub const MIGRATIONS: &[(i64, &[&str])] = &[
    (1, V1_TABLES),
    (2, FINISHED_JOBS),
    (3, RESULTS),
    (4, PRIORITY_AND_DEDUP),
];

/// Version 4: the claim order index ([`PRIORITY_INDEX`]) and the publish
/// deduplication table (`dedup.rs`). Both are also in [`DDL`], which a new
/// file gets as version 1; `IF NOT EXISTS` makes the second run a no-op.
const PRIORITY_AND_DEDUP: &[&str] = &[PRIORITY_INDEX, super::dedup::DDL];

/// Version 3: `foxtive_results`, the task result store of this file
/// (`foxtive.results_sql.SqliteResultStore`): one row per task, the JSON
/// `record`, its `status`, and `expires_at` (unix seconds, the end of its
/// `result_ttl`). Reads ignore expired rows; the store deletes them in
/// batches, a range scan of `foxtive_results_expiry`.
pub const RESULTS: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS foxtive_results (
        task_id TEXT PRIMARY KEY,
        status TEXT NOT NULL,
        record TEXT NOT NULL,
        expires_at REAL NOT NULL
    )",
    "CREATE INDEX IF NOT EXISTS foxtive_results_expiry ON foxtive_results (expires_at)",
];

/// The tables of version 1 (after `foxtive_schema`).
const V1_TABLES: &[&str] = DDL.split_at(1).1;

/// Version 2: `foxtive_finished_jobs`, where an ack moves a job when the
/// backend keeps finished jobs (`keep_finished` > 0); the retention duty
/// deletes them `keep_finished` after they finished ([`EXPIRE_FINISHED`]).
/// A table of its own, so `foxtive_jobs` and its index only hold live work
/// and kept rows cost the claim and the idle poll nothing.
///
/// `foxtive_finished_jobs_expiry (queue, finished_at)`: `EXPLAIN QUERY PLAN`
/// of [`EXPIRE_FINISHED`]:
///
/// ```text
/// SEARCH foxtive_finished_jobs USING INTEGER PRIMARY KEY (rowid=?)
/// LIST SUBQUERY 1
/// `--SEARCH foxtive_finished_jobs USING COVERING INDEX foxtive_finished_jobs_expiry (queue=? AND finished_at<?)
/// ```
const FINISHED_JOBS: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS foxtive_finished_jobs (
        id INTEGER PRIMARY KEY,
        queue TEXT NOT NULL,
        message_id TEXT NOT NULL,
        body BLOB NOT NULL,
        headers TEXT,
        correlation_id TEXT,
        content_type TEXT,
        reply_to TEXT,
        priority INTEGER,
        routing_key TEXT,
        attempts INTEGER NOT NULL,
        created_at REAL NOT NULL,
        finished_at REAL NOT NULL
    )",
    "CREATE INDEX IF NOT EXISTS foxtive_finished_jobs_expiry \
        ON foxtive_finished_jobs (queue, finished_at)",
];

/// Ack when finished jobs are kept: copy the rows (ids as `json_each(?1)`
/// reads them) into `foxtive_finished_jobs`, finished at ?2; the ack's
/// DELETE follows in the same transaction.
pub const FINISH_JOBS: &str = "INSERT OR IGNORE INTO foxtive_finished_jobs (id, queue, \
     message_id, body, headers, correlation_id, content_type, reply_to, priority, routing_key, \
     attempts, created_at, finished_at) SELECT id, queue, message_id, body, headers, \
     correlation_id, content_type, reply_to, priority, routing_key, attempts, created_at, ?2 \
     FROM foxtive_jobs WHERE id IN (SELECT value FROM json_each(?1))";

/// The retention step: delete up to ?3 rows of queue ?1 finished before ?2.
pub const EXPIRE_FINISHED: &str = "DELETE FROM foxtive_finished_jobs WHERE id IN \
     (SELECT id FROM foxtive_finished_jobs WHERE queue = ?1 AND finished_at < ?2 \
     ORDER BY finished_at LIMIT ?3)";

/// Rows deleted by one retention statement (one short write transaction).
pub const EXPIRE_BATCH: i64 = 1000;

/// Idempotent DDL of every version (every statement `IF NOT EXISTS`).
///
/// `foxtive_jobs_due (queue, run_at)`: the claim's inner SELECT
/// (`WHERE queue = ? AND run_at <= ? ORDER BY run_at LIMIT ?`) and the idle
/// poll (`SELECT min(run_at) ... WHERE queue = ?`) are range scans of it.
/// `EXPLAIN QUERY PLAN` of the claim (SQLite 3.x, bundled):
///
/// ```text
/// SEARCH foxtive_jobs USING INTEGER PRIMARY KEY (rowid=?)
/// LIST SUBQUERY 1
/// `--SEARCH foxtive_jobs USING COVERING INDEX foxtive_jobs_due (queue=? AND run_at<?)
/// ```
///
/// and of the poll: `SEARCH foxtive_jobs USING COVERING INDEX foxtive_jobs_due
/// (queue=?)` (a min() over an index is one seek). No sort step: rows come out
/// of the index in `run_at` order, so a job delayed by an hour sits at the far
/// end of the range and never holds back a due one.
pub const DDL: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS foxtive_schema (version INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS foxtive_jobs (
        id INTEGER PRIMARY KEY,
        queue TEXT NOT NULL,
        message_id TEXT NOT NULL,
        body BLOB NOT NULL,
        headers TEXT,
        correlation_id TEXT,
        content_type TEXT,
        reply_to TEXT,
        priority INTEGER,
        routing_key TEXT,
        attempts INTEGER NOT NULL DEFAULT 0,
        run_at REAL NOT NULL,
        locked_until REAL,
        created_at REAL NOT NULL
    )",
    "CREATE INDEX IF NOT EXISTS foxtive_jobs_due ON foxtive_jobs (queue, run_at)",
    "CREATE TABLE IF NOT EXISTS foxtive_dead_letters (
        id INTEGER PRIMARY KEY,
        queue TEXT NOT NULL,
        original_id TEXT NOT NULL,
        body BLOB NOT NULL,
        headers TEXT,
        attempts INTEGER NOT NULL,
        error_type TEXT NOT NULL,
        error_message TEXT NOT NULL,
        failed_at REAL NOT NULL,
        worker_id TEXT NOT NULL,
        poison_pill INTEGER NOT NULL
    )",
    "CREATE INDEX IF NOT EXISTS foxtive_dead_letters_queue ON foxtive_dead_letters (queue, id)",
    // Version 4 (priorities): see [`PRIORITY_INDEX`].
    PRIORITY_INDEX,
    // Version 4 (publish deduplication): see `dedup.rs`.
    super::dedup::DDL,
];

/// Version 4: the claim takes due jobs by priority first (9 before 0, none
/// counting as 0), then `run_at`, then id, `INDEXED BY` this index: without
/// `ANALYZE` statistics (which foxtive never runs) SQLite 3.40 prefers
/// `foxtive_jobs_due` and sorts every due row of the queue
/// (`USE TEMP B-TREE FOR ORDER BY`) on each claim. `EXPLAIN QUERY PLAN` of
/// the claim (SQLite 3.40, 20k rows over 4 queues, a fifth of them with a
/// priority):
///
/// ```text
/// SEARCH foxtive_jobs USING INTEGER PRIMARY KEY (rowid=?)
/// LIST SUBQUERY 1
/// `--SEARCH foxtive_jobs USING INDEX foxtive_jobs_next (queue=?)
/// ```
///
/// No sort step (no `USE TEMP B-TREE FOR ORDER BY`): rows come out of the
/// index in claim order and the scan stops after the batch; `run_at <= now`
/// is checked on index entries, so delayed and leased rows of a higher
/// priority are skipped without reading their rows. The idle poll keeps
/// using `foxtive_jobs_due`.
pub const PRIORITY_INDEX: &str = "CREATE INDEX IF NOT EXISTS foxtive_jobs_next ON foxtive_jobs \
     (queue, coalesce(priority, 0) DESC, run_at, id)";

/// The one INSERT of a new job. Parameters, in order: queue, message_id,
/// body, headers (JSON or NULL), correlation_id, content_type, reply_to,
/// priority, routing_key, run_at, created_at (unix seconds).
pub const INSERT_JOB: &str = "INSERT INTO foxtive_jobs (queue, message_id, body, headers, \
     correlation_id, content_type, reply_to, priority, routing_key, attempts, run_at, \
     locked_until, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, 0, ?10, NULL, ?11)";

/// Bring the database to [`SCHEMA_VERSION`], once, whoever gets there first:
/// the check and the DDL run in one `BEGIN IMMEDIATE` transaction, so two
/// processes opening a new file at once do not both migrate. A database from
/// a newer foxtive is refused rather than written with an older layout.
pub fn migrate(conn: &mut Connection) -> rusqlite::Result<std::result::Result<(), String>> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    tx.execute(DDL[0], [])?;
    let version: Option<i64> =
        tx.query_row("SELECT max(version) FROM foxtive_schema", [], |r| r.get(0))?;
    let version = version.unwrap_or(0);
    if version > SCHEMA_VERSION {
        return Ok(Err(format!(
            "the database has foxtive schema version {version}; this foxtive knows up to \
             {SCHEMA_VERSION} (upgrade foxtive)"
        )));
    }
    if version < SCHEMA_VERSION {
        for (_, statements) in MIGRATIONS.iter().filter(|(v, _)| *v > version) {
            for ddl in *statements {
                tx.execute(ddl, [])?;
            }
        }
        tx.execute("DELETE FROM foxtive_schema", [])?;
        tx.execute(
            "INSERT INTO foxtive_schema (version) VALUES (?1)",
            [SCHEMA_VERSION],
        )?;
    }
    tx.commit()?;
    Ok(Ok(()))
}

/// The version recorded in the file (0: none yet).
pub fn version(conn: &Connection) -> rusqlite::Result<i64> {
    let exists: bool = conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'foxtive_schema')",
        [],
        |r| r.get(0),
    )?;
    if !exists {
        return Ok(0);
    }
    let v: Option<i64> =
        conn.query_row("SELECT max(version) FROM foxtive_schema", [], |r| r.get(0))?;
    Ok(v.unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_only_grow_and_end_at_the_schema_version() {
        assert!(MIGRATIONS.windows(2).all(|w| w[0].0 < w[1].0));
        assert_eq!(MIGRATIONS.last().map(|m| m.0), Some(SCHEMA_VERSION));
    }

    #[test]
    fn a_version_1_file_is_brought_forward() {
        let mut conn = Connection::open_in_memory().unwrap();
        for ddl in DDL {
            conn.execute(ddl, []).unwrap();
        }
        conn.execute("INSERT INTO foxtive_schema (version) VALUES (1)", [])
            .unwrap();
        assert_eq!(version(&conn).unwrap(), 1);
        migrate(&mut conn).unwrap().unwrap();
        assert_eq!(version(&conn).unwrap(), SCHEMA_VERSION);
        let mut stmt = conn
            .prepare(&format!("EXPLAIN QUERY PLAN {EXPIRE_FINISHED}"))
            .unwrap();
        let plan: Vec<String> = stmt
            .query_map(rusqlite::params!["q", 1.0, 10], |r| r.get(3))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        let plan = plan.join("\n");
        assert!(
            plan.contains(
                "USING COVERING INDEX foxtive_finished_jobs_expiry (queue=? AND finished_at<?)"
            ),
            "{plan}"
        );
    }
}
