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
    let mut conn = connect(path, busy_timeout)?;
    match schema::migrate(&mut conn) {
        Ok(Ok(())) => Ok(conn),
        Ok(Err(why)) => Err(Error::Config(format!("sqlite {}: {why}", path.display()))),
        Err(e) => Err(error("create the tables", path, e)),
    }
}

/// Open `path` with the settings above, without touching the tables: the
/// backend's [`open`] and the schedule store share it.
pub(crate) fn connect(path: &Path, busy_timeout: Duration) -> Result<Connection> {
    let conn = Connection::open(path).map_err(|e| {
        Error::ConnectionLost(format!("sqlite: cannot open {}: {e}", path.display()))
    })?;
    let setup = |conn: &Connection| -> rusqlite::Result<()> {
        conn.busy_timeout(busy_timeout)?;
        let mode: String = retry_busy(busy_timeout, || {
            conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
        })?;
        if !mode.eq_ignore_ascii_case("wal") {
            tracing::warn!(path = %path.display(), mode = %mode,
                "sqlite: WAL mode refused (a network or in-memory file?); several processes will block each other");
        }
        conn.execute_batch("PRAGMA synchronous=FULL")?;
        Ok(())
    };
    setup(&conn).map_err(|e| error("open", path, e))?;
    Ok(conn)
}

/// Run `op` again while SQLite answers "busy", for up to `budget`.
///
/// Switching a new file to WAL takes an exclusive lock, and SQLite may report
/// SQLITE_BUSY at once instead of calling the busy handler (two processes, or
/// a pool and the scheduler of one process, opening a new file together: seen
/// in CI). Waiting here is what `busy_timeout` promises everywhere else.
fn retry_busy<T>(
    budget: Duration,
    mut op: impl FnMut() -> rusqlite::Result<T>,
) -> rusqlite::Result<T> {
    let started = std::time::Instant::now();
    let mut pause = Duration::from_millis(5);
    loop {
        match op() {
            Err(e)
                if matches!(
                    e.sqlite_error_code(),
                    Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
                ) && started.elapsed() + pause < budget =>
            {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(100));
            }
            other => return other,
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Several connections opening one new file at once (a pool and its
    /// scheduler, or several processes starting together) all succeed: the
    /// switch to WAL waits for the lock instead of failing "database is locked".
    #[test]
    fn connections_opening_a_new_file_together_all_succeed() {
        let dir = std::env::temp_dir().join(format!("foxtive-open-race-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for round in 0..20 {
            let path = dir.join(format!("r{round}.db"));
            let barrier = std::sync::Arc::new(std::sync::Barrier::new(6));
            let openers: Vec<_> = (0..6)
                .map(|i| {
                    let (path, barrier) = (path.clone(), barrier.clone());
                    std::thread::spawn(move || {
                        barrier.wait();
                        if i % 2 == 0 {
                            open(&path, Duration::from_secs(5)).map(drop)
                        } else {
                            connect(&path, Duration::from_secs(5)).map(drop)
                        }
                    })
                })
                .collect();
            for opener in openers {
                let result = opener.join().unwrap();
                assert!(result.is_ok(), "round {round}: {result:?}");
            }
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
