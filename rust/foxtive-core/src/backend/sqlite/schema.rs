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
pub const SCHEMA_VERSION: i64 = 3;

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
    // Version 2 (priorities): see [`PRIORITY_INDEX`].
    PRIORITY_INDEX,
    // Version 3 (publish deduplication): see `dedup.rs`.
    super::dedup::DDL,
];

/// Version 2: the claim takes due jobs by priority first (9 before 0, none
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
        for ddl in &DDL[1..] {
            tx.execute(ddl, [])?;
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
