//! Opening the database file, and SQLite errors as core errors.

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, ErrorCode, OpenFlags};

use super::schema;
use crate::{Error, Result};

/// Open (creating if needed) the file for one connection of this backend:
///
/// * WAL: readers (the idle poll, `is_drained`, another process's reads)
///   never wait for the writer, and a commit is one append to the log.
/// * `busy_timeout`: several processes share one file and SQLite allows one
///   writer at a time; a writer that finds the lock taken waits up to this
///   long instead of failing with "database is locked" (huey#445).
/// * `synchronous=FULL`: a publish or a settlement that returned is on disk,
///   power loss included (NORMAL could lose the last commits on power loss).
pub fn open(path: &Path, busy_timeout: Duration) -> Result<Connection> {
    let mut conn = Connection::open(path).map_err(|e| {
        Error::ConnectionLost(format!("sqlite: cannot open {}: {e}", path.display()))
    })?;
    let setup = |conn: &Connection| -> rusqlite::Result<()> {
        conn.busy_timeout(busy_timeout)?;
        let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            tracing::warn!(path = %path.display(), mode = %mode,
                "sqlite: WAL mode refused (a network or in-memory file?); several processes will block each other");
        }
        conn.execute_batch("PRAGMA synchronous=FULL")?;
        Ok(())
    };
    setup(&conn).map_err(|e| error("open", path, e))?;
    match schema::migrate(&mut conn) {
        Ok(Ok(())) => Ok(conn),
        Ok(Err(why)) => Err(Error::Config(format!("sqlite {}: {why}", path.display()))),
        Err(e) => Err(error("create the tables", path, e)),
    }
}

/// A connection for quick synchronous reads (`is_drained`): never creates
/// the file, never waits for a lock (a WAL read needs none).
pub fn open_reader(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(Duration::ZERO)?;
    Ok(conn)
}

/// A SQLite failure of `what`. A lock still held by another process after
/// `busy_timeout`, or an unreadable file, is a connection-level problem that
/// may pass (the caller tries again later); the rest are backend errors.
pub fn error(what: &str, path: &Path, e: rusqlite::Error) -> Error {
    let text = format!("sqlite {} ({}): {e}", what, path.display());
    match e.sqlite_error_code() {
        Some(
            ErrorCode::DatabaseBusy
            | ErrorCode::DatabaseLocked
            | ErrorCode::CannotOpen
            | ErrorCode::SystemIoFailure,
        ) => Error::ConnectionLost(text),
        _ => Error::Backend(text),
    }
}

/// Open `path` (creating it if missing) and bring its tables to
/// [`schema::SCHEMA_VERSION`] (`foxtive db migrate`). Returns the versions
/// before and after.
pub fn migrate_path(path: &Path, busy_timeout: Duration) -> Result<(i64, i64)> {
    let before = if path.exists() {
        let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(|e| error("open", path, e))?;
        conn.busy_timeout(busy_timeout)
            .map_err(|e| error("open", path, e))?;
        schema::version(&conn).map_err(|e| error("read the version", path, e))?
    } else {
        0
    };
    let conn = open(path, busy_timeout)?;
    let after = schema::version(&conn).map_err(|e| error("read the version", path, e))?;
    Ok((before, after))
}
