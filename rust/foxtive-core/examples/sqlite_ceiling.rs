//! The pure-Rust ceiling for W1 on SQLite: a plain rusqlite consumer on
//! foxtive's own table, no foxtive in between. Each batch is what foxtive's
//! SQLite backend does, minus everything around it (no tokio, no handler,
//! no lease renewal, no Python): claim up to BATCH due rows with one
//! `UPDATE ... RETURNING` in `BEGIN IMMEDIATE` (attempt counted, rows
//! leased), then delete them in one statement. Same pragmas as the backend
//! (WAL, `synchronous=FULL`, a busy timeout), so several copies may share a
//! file as several worker processes do.
//!
//! `plain` (the default) claims in `run_at` order and returns the id and
//! body; `fox` runs foxtive's claim word for word (backend/sqlite/fetch.rs:
//! priority order through `INDEXED BY foxtive_jobs_next`, every column of a
//! delivery returned and read), so the two tell the SQL's share of foxtive's
//! cost from the rest.
//!
//! ```text
//! cargo build --release -p foxtive-core --example sqlite_ceiling
//! sqlite_ceiling drain PATH QUEUE N [BATCH] [plain|fox]
//! ```
//! The jobs are published beforehand (foxtive's `publish_many`, the same
//! rows). `drain` stops after N jobs, or when the queue stays empty for 2 s
//! after the first job, and prints one JSON line: `{"n": …, "seconds": …,
//! "rate": …}`, timed from the first claimed batch to the last delete.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection, TransactionBehavior};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

const CLAIM: &str = "UPDATE foxtive_jobs SET attempts = attempts + 1, locked_until = ?3, \
     run_at = ?3 WHERE id IN (SELECT id FROM foxtive_jobs WHERE queue = ?1 AND run_at <= ?2 \
     ORDER BY run_at LIMIT ?4) RETURNING id, body";
/// foxtive's claim (backend/sqlite/fetch.rs), word for word.
const FOX_CLAIM: &str = "UPDATE foxtive_jobs SET attempts = attempts + 1, locked_until = ?3, \
     run_at = ?3 WHERE id IN (SELECT id FROM foxtive_jobs INDEXED BY foxtive_jobs_next \
     WHERE queue = ?1 AND run_at <= ?2 \
     ORDER BY coalesce(priority, 0) DESC, run_at, id LIMIT ?4) RETURNING id, message_id, body, headers, correlation_id, \
     content_type, reply_to, priority, routing_key, attempts";
const DELETE: &str = "DELETE FROM foxtive_jobs WHERE id IN (SELECT value FROM json_each(?1))";
const LEASE: f64 = 30.0;

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

fn open(path: &str) -> Res<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(10))?;
    let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(format!("WAL refused: {mode}").into());
    }
    conn.execute_batch("PRAGMA synchronous=FULL")?;
    Ok(conn)
}

fn drain(path: &str, queue: &str, n: usize, batch: i64, fox: bool) -> Res<()> {
    let claim = if fox { FOX_CLAIM } else { CLAIM };
    let mut conn = open(path)?;
    let mut done = 0usize;
    let mut first: Option<Instant> = None;
    let mut last = Instant::now();
    let mut idle_since = Instant::now();
    let mut ids: Vec<i64> = Vec::with_capacity(usize::try_from(batch).unwrap_or(500));
    let mut handled_bytes = 0usize;
    while done < n {
        ids.clear();
        let t = now();
        {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            {
                let mut stmt = tx.prepare_cached(claim)?;
                let mut rows = stmt.query(params![queue, t, t + LEASE, batch])?;
                while let Some(row) = rows.next()? {
                    ids.push(row.get(0)?);
                    if fox {
                        // What a delivery copies out of a row (row::delivery).
                        let id: String = row.get(1)?;
                        let headers: Option<String> = row.get(3)?;
                        let _: Option<String> = row.get(4)?;
                        let _: Option<String> = row.get(5)?;
                        let _: Option<String> = row.get(6)?;
                        let _: Option<i64> = row.get(7)?;
                        let _: Option<String> = row.get(8)?;
                        let _: i64 = row.get(9)?;
                        handled_bytes += row.get_ref(2)?.as_blob()?.to_vec().len()
                            + id.len()
                            + headers.map_or(0, |h| h.len());
                    } else {
                        // The "handler": read the body, as a consumer would.
                        handled_bytes += row.get_ref(1)?.as_blob()?.len();
                    }
                }
            }
            tx.commit()?;
        }
        if ids.is_empty() {
            if first.is_some() && idle_since.elapsed() > Duration::from_secs(2) {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
            continue;
        }
        first.get_or_insert_with(Instant::now);
        let list = format!(
            "[{}]",
            ids.iter().map(i64::to_string).collect::<Vec<_>>().join(",")
        );
        conn.prepare_cached(DELETE)?.execute([list])?;
        done += ids.len();
        last = Instant::now();
        idle_since = last;
    }
    let secs = first
        .map(|f| last.duration_since(f).as_secs_f64())
        .unwrap_or(0.0);
    println!(
        "{{\"n\": {done}, \"seconds\": {secs:.4}, \"rate\": {:.1}, \"bytes\": {handled_bytes}}}",
        done as f64 / secs.max(1e-9)
    );
    Ok(())
}

fn main() -> Res<()> {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("drain") if args.len() >= 5 => {
            let n: usize = args[4].parse()?;
            let batch: i64 = args.get(5).map_or(Ok(500), |s| s.parse())?;
            let fox = args.get(6).is_some_and(|m| m == "fox");
            drain(&args[2], &args[3], n, batch, fox)
        }
        _ => Err("usage: sqlite_ceiling drain PATH QUEUE N [BATCH] [plain|fox]".into()),
    }
}
