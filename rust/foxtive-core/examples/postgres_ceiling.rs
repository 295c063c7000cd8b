//! The pure-Rust ceiling for W1 on PostgreSQL: a plain tokio-postgres
//! consumer on foxtive's own `jobs` table, no foxtive in between (no handler,
//! no lease renewal, no Python). Two loops, both `FOR UPDATE SKIP LOCKED` in
//! batches, both reading each claimed row's body as a consumer would:
//!
//! * `lease` (the default, foxtive's semantics): claim up to BATCH due rows
//!   with foxtive's own statement (one `UPDATE ... FROM (SELECT ... FOR
//!   UPDATE SKIP LOCKED LIMIT n) RETURNING`: attempt counted, row leased),
//!   then delete them by id. The delete of a batch is pipelined with the
//!   claim of the next one on the same connection, as foxtive's two links
//!   overlap settling and fetching.
//! * `two` (foxtive's connections): foxtive's exact claim (priority order,
//!   lease as a parameter, every column returned) on one connection, and
//!   foxtive's exact ack (`DELETE ... USING unnest(ids, attempts)`) on a
//!   second one, as foxtive claims on its fetch link and settles on its
//!   settle link. The claimer never waits for a delete: it hands each
//!   batch's receipts to the deleter, which deletes whatever has queued up
//!   in one statement (as foxtive's settle batches), while the server works
//!   on the next claim at the same time. At most 4 batches wait (foxtive's
//!   prefetch bounds its claims the same way).
//! * `tx` (the issue's hand-written loop): `BEGIN; SELECT ... FOR UPDATE SKIP
//!   LOCKED LIMIT n; DELETE ... WHERE id = ANY(...); COMMIT`: no lease, the
//!   row lock is held while the batch is handled.
//!
//! ```text
//! cargo build --release -p foxtive-core --example postgres_ceiling
//! postgres_ceiling drain DSN SCHEMA QUEUE N [BATCH] [lease|two|tx]
//! ```
//! The jobs are published beforehand (foxtive's `publish_many`, the same
//! rows). `drain` stops after N jobs, or when the queue stays empty for 2 s
//! after the first job, and prints one JSON line: `{"n": …, "seconds": …,
//! "rate": …}`, timed from the first claimed batch to the last delete.

use std::time::{Duration, Instant};

use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, NoTls, Statement};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// foxtive's claim (backend/postgres/fetch.rs), returning only what a
/// consumer needs here: the id and the body.
fn claim_sql(s: &str) -> String {
    format!(
        "WITH c AS (SELECT id FROM {s}.jobs WHERE queue = $1 AND run_at <= now() \
           AND (locked_until IS NULL OR locked_until < now()) \
           ORDER BY run_at, id LIMIT $2 FOR UPDATE SKIP LOCKED) \
         UPDATE {s}.jobs j SET attempts = j.attempts + 1, \
           locked_until = now() + interval '30 seconds', \
           run_at = now() + interval '30 seconds' \
         FROM c WHERE j.id = c.id RETURNING j.id, j.body"
    )
}

fn select_sql(s: &str) -> String {
    format!(
        "SELECT id, body FROM {s}.jobs WHERE queue = $1 AND run_at <= now() \
         ORDER BY run_at, id LIMIT $2 FOR UPDATE SKIP LOCKED"
    )
}

/// foxtive's claim, word for word (backend/postgres/fetch.rs).
fn fox_claim_sql(s: &str) -> String {
    format!(
        "WITH c AS (SELECT id FROM {s}.jobs WHERE queue = $1 AND run_at <= now() \
           AND (locked_until IS NULL OR locked_until < now()) \
           ORDER BY coalesce(priority, 0) DESC, run_at, id LIMIT $2 FOR UPDATE SKIP LOCKED) \
         UPDATE {s}.jobs j SET attempts = j.attempts + 1, \
           locked_until = now() + make_interval(secs => $3), \
           run_at = now() + make_interval(secs => $3) \
         FROM c WHERE j.id = c.id \
         RETURNING j.id, j.message_id, j.body, j.headers, j.correlation_id, j.content_type, \
           j.reply_to, j.routing_key, j.priority, j.attempts"
    )
}

/// foxtive's ack, word for word (backend/postgres/settle.rs).
fn fox_ack_sql(s: &str) -> String {
    format!(
        "DELETE FROM {s}.jobs j USING unnest($1::int8[], $2::int4[]) AS s(id, att) \
         WHERE j.id = s.id AND j.attempts = s.att"
    )
}

fn delete_sql(s: &str) -> String {
    format!("DELETE FROM {s}.jobs WHERE id = ANY($1)")
}

struct Tally {
    done: usize,
    bytes: usize,
    first: Option<Instant>,
    last: Instant,
}

impl Tally {
    fn new() -> Self {
        Tally {
            done: 0,
            bytes: 0,
            first: None,
            last: Instant::now(),
        }
    }

    /// The ids of a claimed batch; the clock starts at the first one.
    fn take(&mut self, rows: &[tokio_postgres::Row]) -> Res<Vec<i64>> {
        self.first.get_or_insert_with(Instant::now);
        let mut ids = Vec::with_capacity(rows.len());
        for row in rows {
            ids.push(row.try_get::<_, i64>(0)?);
            self.bytes += row.try_get::<_, &[u8]>(1)?.len();
        }
        Ok(ids)
    }

    fn deleted(&mut self, n: u64) -> Res<()> {
        if n > 0 {
            self.done += usize::try_from(n)?;
            self.last = Instant::now();
        }
        Ok(())
    }
}

/// One way of draining: the two modes differ only in a round's statements.
trait Drain {
    /// Claim a batch (and settle it, or the one before): false when nothing was due.
    async fn round(&mut self, t: &mut Tally) -> Res<bool>;
    /// Settle what the last round left claimed.
    async fn finish(&mut self, t: &mut Tally) -> Res<()>;
}

/// The loop both modes share: rounds until N jobs are done, or the queue
/// stayed empty for 2 s after the first job.
async fn run(mode: &mut impl Drain, n: usize) -> Res<Tally> {
    let mut t = Tally::new();
    let mut idle_since = Instant::now();
    while t.done < n {
        if mode.round(&mut t).await? {
            idle_since = Instant::now();
            continue;
        }
        if t.first.is_some() && idle_since.elapsed() > Duration::from_secs(2) {
            break;
        }
        if t.done < n {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    mode.finish(&mut t).await?;
    Ok(t)
}

/// foxtive's semantics: claim (lease, attempt counted), delete by id; the
/// delete of a batch is pipelined with the claim of the next.
struct Lease<'a> {
    client: &'a Client,
    claim: Statement,
    delete: Statement,
    queue: &'a str,
    batch: i64,
    pending: Vec<i64>,
}

impl Drain for Lease<'_> {
    async fn round(&mut self, t: &mut Tally) -> Res<bool> {
        let (client, delete, pending) = (self.client, &self.delete, &self.pending);
        let del = async {
            if pending.is_empty() {
                return Ok(0);
            }
            client.execute(delete, &[pending]).await
        };
        let params: [&(dyn ToSql + Sync); 2] = [&self.queue, &self.batch];
        let (deleted, rows) = tokio::join!(del, client.query(&self.claim, &params));
        t.deleted(deleted?)?;
        let rows = rows?;
        self.pending = if rows.is_empty() {
            Vec::new()
        } else {
            t.take(&rows)?
        };
        Ok(!rows.is_empty())
    }

    async fn finish(&mut self, t: &mut Tally) -> Res<()> {
        if !self.pending.is_empty() {
            t.deleted(self.client.execute(&self.delete, &[&self.pending]).await?)?;
            self.pending.clear();
        }
        Ok(())
    }
}

/// The issue's hand-written loop: one transaction per batch, the row lock
/// held while the batch is handled, no lease.
struct Tx<'a> {
    client: &'a mut Client,
    select: Statement,
    delete: Statement,
    queue: &'a str,
    batch: i64,
}

impl Drain for Tx<'_> {
    async fn round(&mut self, t: &mut Tally) -> Res<bool> {
        let tx = self.client.transaction().await?;
        let rows = tx.query(&self.select, &[&self.queue, &self.batch]).await?;
        if rows.is_empty() {
            tx.commit().await?;
            return Ok(false);
        }
        let ids = t.take(&rows)?;
        tx.execute(&self.delete, &[&ids]).await?;
        tx.commit().await?;
        t.deleted(u64::try_from(ids.len())?)?;
        Ok(true)
    }

    async fn finish(&mut self, _t: &mut Tally) -> Res<()> {
        Ok(())
    }
}

/// foxtive's two connections: claims on one, acks on the other, the
/// deleter fed through a channel so a claim never waits for a delete.
async fn drain_two(dsn: &str, s: &str, queue: &str, n: usize, batch: i64) -> Res<Tally> {
    let (claimer, c1) = tokio_postgres::connect(dsn, NoTls).await?;
    let (settler, c2) = tokio_postgres::connect(dsn, NoTls).await?;
    tokio::spawn(c1);
    tokio::spawn(c2);
    let claim = claimer.prepare(&fox_claim_sql(s)).await?;
    let ack = settler.prepare(&fox_ack_sql(s)).await?;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(Vec<i64>, Vec<i32>)>(4);
    let deleter = tokio::spawn(async move {
        let mut done = 0usize;
        let mut last = Instant::now();
        while let Some((mut ids, mut atts)) = rx.recv().await {
            while let Ok((more_ids, more_atts)) = rx.try_recv() {
                ids.extend(more_ids);
                atts.extend(more_atts);
            }
            let n = settler.execute(&ack, &[&ids, &atts]).await?;
            done += usize::try_from(n)?;
            last = Instant::now();
        }
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>((done, last))
    });
    let lease = 30.0f64;
    let mut t = Tally::new();
    let mut claimed = 0usize;
    let mut idle_since = Instant::now();
    while claimed < n {
        let params: [&(dyn ToSql + Sync); 3] = [&queue, &batch, &lease];
        let rows = claimer.query(&claim, &params).await?;
        if rows.is_empty() {
            if t.first.is_some() && idle_since.elapsed() > Duration::from_secs(2) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
            continue;
        }
        idle_since = Instant::now();
        // foxtive's columns: id, message_id, body, ..., attempts (10th).
        t.first.get_or_insert_with(Instant::now);
        let mut ids = Vec::with_capacity(rows.len());
        let mut atts = Vec::with_capacity(rows.len());
        for row in &rows {
            ids.push(row.try_get::<_, i64>(0)?);
            t.bytes += row.try_get::<_, &[u8]>(2)?.len();
            atts.push(row.try_get::<_, i32>(9)?);
        }
        claimed += ids.len();
        tx.send((ids, atts)).await?;
    }
    drop(tx);
    let (done, last) = deleter.await?.map_err(|e| e.to_string())?;
    t.done = done;
    t.last = last;
    Ok(t)
}

async fn drain(dsn: &str, schema: &str, queue: &str, n: usize, batch: i64, mode: &str) -> Res<()> {
    let s = quote(schema);
    if mode == "two" {
        let t = drain_two(dsn, &s, queue, n, batch).await?;
        return report(&t);
    }
    let (mut client, connection) = tokio_postgres::connect(dsn, NoTls).await?;
    let driver = tokio::spawn(connection);
    let delete = client.prepare(&delete_sql(&s)).await?;
    let t = match mode {
        "lease" => {
            let claim = client.prepare(&claim_sql(&s)).await?;
            let pending = Vec::new();
            let mut lease = Lease {
                client: &client,
                claim,
                delete,
                queue,
                batch,
                pending,
            };
            run(&mut lease, n).await?
        }
        "tx" => {
            let select = client.prepare(&select_sql(&s)).await?;
            let mut tx = Tx {
                client: &mut client,
                select,
                delete,
                queue,
                batch,
            };
            run(&mut tx, n).await?
        }
        other => return Err(format!("unknown mode {other:?}: lease, two or tx").into()),
    };
    drop(client);
    let _ = driver.await;
    report(&t)
}

/// The one JSON line the harness reads.
fn report(t: &Tally) -> Res<()> {
    let secs = t
        .first
        .map(|f| t.last.duration_since(f).as_secs_f64())
        .unwrap_or(0.0);
    println!(
        "{{\"n\": {}, \"seconds\": {secs:.4}, \"rate\": {:.1}, \"bytes\": {}}}",
        t.done,
        t.done as f64 / secs.max(1e-9),
        t.bytes
    );
    Ok(())
}

fn main() -> Res<()> {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("drain") if args.len() >= 6 => {
            let n: usize = args[5].parse()?;
            let batch: i64 = args.get(6).map_or(Ok(500), |s| s.parse())?;
            let mode = args.get(7).map_or("lease", String::as_str);
            // One thread: the client and its connection task, as a consumer.
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(drain(&args[2], &args[3], &args[4], n, batch, mode))
        }
        _ => Err("usage: postgres_ceiling drain DSN SCHEMA QUEUE N [BATCH] [lease|two|tx]".into()),
    }
}
