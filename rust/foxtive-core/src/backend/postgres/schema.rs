//! The tables, written once: every statement foxtive runs against them is
//! built here from the schema name, and the Python transactional enqueue uses
//! the same INSERT ([`insert_sql`]).
//!
//! Migrations run forward in one transaction under an advisory lock, so any
//! number of workers may start at once: `schema_version` holds one row per
//! migration applied; a worker applies those above the highest it finds.

use tokio_postgres::Client;

use crate::{Error, Result};

/// `(version, DDL)`; `{s}` is the quoted schema. Append, never edit.
///
/// `jobs_due (queue, run_at, id)`: "next due jobs of queue q" is a range
/// scan in fetch order. A claimed row gets `run_at = locked_until` (its lease
/// end), so rows in handlers leave the due range instead of being scanned
/// past by every fetch. PostgreSQL 15, 200k rows over 4 queues, 4000 leased,
/// ANALYZEd:
///
/// ```text
/// EXPLAIN WITH c AS (SELECT id FROM jobs WHERE queue = 'q1' AND run_at <= now()
///   AND (locked_until IS NULL OR locked_until < now()) ORDER BY run_at, id
///   LIMIT 100 FOR UPDATE SKIP LOCKED) UPDATE jobs j SET ... FROM c WHERE j.id = c.id;
///  Update on jobs j  (cost=21.62..827.20 rows=0 width=0)
///    CTE c
///      ->  Limit  (cost=0.42..21.20 rows=100 width=22)
///            ->  LockRows  (cost=0.42..9824.71 rows=47276 width=22)
///                  ->  Index Scan using jobs_due on jobs  (cost=0.42..9351.95 ...)
///                        Index Cond: ((queue = 'q1'::text) AND (run_at <= now()))
///                        Filter: ((locked_until IS NULL) OR (locked_until < now()))
///    ->  Nested Loop  (cost=0.42..806.00 rows=100 width=42)
///          ->  CTE Scan on c  (cost=0.00..2.00 rows=100 width=40)
///          ->  Index Scan using jobs_pkey on jobs j  (cost=0.42..8.04 rows=1 width=18)
///                Index Cond: (id = c.id)
/// ```
///
/// No sort: the index order is the fetch order, and the scan stops after
/// the batch (`Limit` over `LockRows`).
pub const MIGRATIONS: &[(i32, &str)] = &[
    (
        1,
        r#"
CREATE TABLE {s}.jobs (
    id bigserial PRIMARY KEY,
    queue text NOT NULL,
    message_id text NOT NULL,
    body bytea NOT NULL,
    -- The header pairs as typed JSON (dlq::codec's layout): order, duplicates
    -- and types (bytes, floats, nested tables) survive.
    headers text NOT NULL DEFAULT '[]',
    correlation_id text,
    content_type text,
    reply_to text,
    routing_key text,
    priority smallint,
    -- Deliveries so far: counted when a job is claimed, so durable by construction.
    attempts integer NOT NULL DEFAULT 0,
    run_at timestamptz NOT NULL DEFAULT now(),
    locked_until timestamptz,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX jobs_due ON {s}.jobs (queue, run_at, id);
-- Every job is inserted, updated at claim and deleted: a queue table churns.
-- Vacuum it after a fixed number of dead rows, not a fraction of its size
-- (the default waits for 20 % of the table), so dead index entries do not
-- pile up in front of the next due job.
ALTER TABLE {s}.jobs SET (autovacuum_vacuum_scale_factor = 0.0,
    autovacuum_vacuum_threshold = 10000, autovacuum_vacuum_insert_scale_factor = 0.0,
    autovacuum_vacuum_insert_threshold = 10000, autovacuum_analyze_scale_factor = 0.0,
    autovacuum_analyze_threshold = 10000);
CREATE TABLE {s}.dead_letters (
    id bigserial PRIMARY KEY,
    queue text NOT NULL,
    message_id text NOT NULL,
    body bytea NOT NULL,
    headers text NOT NULL DEFAULT '[]',
    attempts integer NOT NULL,
    error_type text NOT NULL,
    error_message text NOT NULL,
    worker_id text NOT NULL,
    poison_pill boolean NOT NULL DEFAULT false,
    failed_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX dead_letters_queue ON {s}.dead_letters (queue, id);
-- One NOTIFY per queue per inserting statement, sent at commit: a job
-- enqueued in the caller's transaction wakes idle workers only once it exists.
CREATE FUNCTION {s}.notify_jobs() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('foxtive_' || md5(TG_TABLE_SCHEMA || '.' || q), '')
    FROM (SELECT DISTINCT queue AS q FROM new_jobs) AS t;
    RETURN NULL;
END
$$;
CREATE TRIGGER jobs_notify AFTER INSERT ON {s}.jobs
    REFERENCING NEW TABLE AS new_jobs
    FOR EACH STATEMENT EXECUTE FUNCTION {s}.notify_jobs();
"#,
    ),
    (2, FINISHED_JOBS),
    (3, RESULTS),
    (4, PRIORITY_MIGRATION),
    (5, super::dedup::MIGRATION),
];

/// Migration 3: `results`, the task result store of this schema (written
/// and read by `foxtive.results_sql.PostgresResultStore`). One row per task:
/// `record` is the JSON record, `status` its status (for `status()` and for
/// the trigger), `expires_at` the end of its `result_ttl`; reads ignore
/// expired rows and the store deletes them in batches, `DELETE ... WHERE
/// task_id = ANY(ARRAY(SELECT task_id ... WHERE expires_at < now() ORDER BY
/// expires_at LIMIT 1000 FOR UPDATE SKIP LOCKED))`: `results_expiry` makes
/// the inner SELECT `Index Scan using results_expiry, Index Cond:
/// (expires_at < now())` under the `Limit`, the outer a `Bitmap Index Scan
/// on results_pkey` (PostgreSQL 15, 100k rows, ANALYZEd).
///
/// A final write (succeeded / failed) sends `NOTIFY foxtive_results_<md5 of
/// the schema>, '<task id>'` from a row trigger, so waiters LISTEN instead of
/// polling, whoever wrote the row (a worker in any language).
const RESULTS: &str = r#"
CREATE TABLE {s}.results (
    task_id text PRIMARY KEY,
    status text NOT NULL,
    record text NOT NULL,
    expires_at timestamptz NOT NULL
);
CREATE INDEX results_expiry ON {s}.results (expires_at);
ALTER TABLE {s}.results SET (autovacuum_vacuum_scale_factor = 0.0,
    autovacuum_vacuum_threshold = 10000, autovacuum_analyze_scale_factor = 0.0,
    autovacuum_analyze_threshold = 10000);
CREATE FUNCTION {s}.notify_results() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('foxtive_results_' || md5(TG_TABLE_SCHEMA), NEW.task_id);
    RETURN NULL;
END
$$;
CREATE TRIGGER results_notify AFTER INSERT OR UPDATE ON {s}.results
    FOR EACH ROW WHEN (NEW.status IN ('succeeded', 'failed'))
    EXECUTE FUNCTION {s}.notify_results();
"#;

/// Migration 2: `finished_jobs`, where an ack moves a job when the backend
/// keeps finished jobs (`keep_finished` > 0) for inspection; the retention
/// duty deletes them `keep_finished` after they finished
/// ([`expire_finished_sql`]).
///
/// A table of its own rather than a state column in `jobs`: `jobs` and its
/// `jobs_due` index only ever hold live work, so kept rows cost the claim
/// and the idle probe nothing, and the retention DELETE never touches (or
/// waits for) a row a worker may lock.
///
/// `finished_jobs_expiry (queue, finished_at)`: the retention DELETE's inner
/// SELECT is a range scan of it that stops after the batch, and the ids go
/// to the primary key as an array (`= ANY(ARRAY(...))`: a join there was
/// planned as a hash join over a sequential scan of the whole table).
/// PostgreSQL 15, 100k kept rows over 2 queues, a quarter expired, ANALYZEd:
///
/// ```text
/// EXPLAIN DELETE FROM finished_jobs WHERE id = ANY(ARRAY(SELECT id FROM finished_jobs
///   WHERE queue = 'q1' AND finished_at < now() - make_interval(secs => 60)
///   ORDER BY finished_at LIMIT 1000 FOR UPDATE SKIP LOCKED));
///  Delete on finished_jobs  (cost=173.70..220.51 rows=0 width=0)
///    InitPlan 1 (returns $2)
///      ->  Limit  (cost=0.30..173.41 rows=1000 width=22)
///            ->  LockRows  (cost=0.30..4485.00 rows=25906 width=22)
///                  ->  Index Scan using finished_jobs_expiry on finished_jobs finished_jobs_1
///                        Index Cond: ((queue = 'q1'::text) AND (finished_at < (now() - '00:01:00'::interval)))
///    ->  Index Scan using finished_jobs_pkey on finished_jobs  (cost=0.29..47.10 rows=10 width=6)
///          Index Cond: (id = ANY ($2))
/// ```
const FINISHED_JOBS: &str = r#"
CREATE TABLE {s}.finished_jobs (
    -- The job's id in jobs (ids are never reused, so it stays unique).
    id bigint PRIMARY KEY,
    queue text NOT NULL,
    message_id text NOT NULL,
    body bytea NOT NULL,
    headers text NOT NULL DEFAULT '[]',
    correlation_id text,
    content_type text,
    reply_to text,
    routing_key text,
    priority smallint,
    attempts integer NOT NULL,
    created_at timestamptz NOT NULL,
    finished_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX finished_jobs_expiry ON {s}.finished_jobs (queue, finished_at);
-- Rows are inserted once and deleted once: vacuum after a fixed number of
-- dead rows, as for jobs (migration 1).
ALTER TABLE {s}.finished_jobs SET (autovacuum_vacuum_scale_factor = 0.0,
    autovacuum_vacuum_threshold = 10000, autovacuum_vacuum_insert_scale_factor = 0.0,
    autovacuum_vacuum_insert_threshold = 10000, autovacuum_analyze_scale_factor = 0.0,
    autovacuum_analyze_threshold = 10000);
"#;

/// Rows deleted by one retention statement: small enough to hold its locks
/// for milliseconds, large enough that a busy queue's backlog goes quickly.
pub const EXPIRE_BATCH: i64 = 1000;

/// Ack when finished jobs are kept: the rows move from `jobs` to
/// `finished_jobs` in one statement. `$1` ids, `$2` attempts (as the ack).
pub(crate) fn finish_sql(schema: &str) -> String {
    let s = quote_ident(schema);
    format!(
        "WITH d AS (DELETE FROM {s}.jobs j USING unnest($1::int8[], $2::int4[]) AS s(id, att) \
             WHERE j.id = s.id AND j.attempts = s.att \
             RETURNING j.id, j.queue, j.message_id, j.body, j.headers, j.correlation_id, \
             j.content_type, j.reply_to, j.routing_key, j.priority, j.attempts, j.created_at) \
         INSERT INTO {s}.finished_jobs (id, queue, message_id, body, headers, correlation_id, \
             content_type, reply_to, routing_key, priority, attempts, created_at) \
         SELECT * FROM d ON CONFLICT (id) DO NOTHING"
    )
}

/// The retention step: delete up to `$3` rows of queue `$1` finished more
/// than `$2` seconds ago. `SKIP LOCKED`: workers of one queue expiring at
/// once never wait for each other. Plan: see [`FINISHED_JOBS`].
pub(crate) fn expire_finished_sql(schema: &str) -> String {
    let s = quote_ident(schema);
    format!(
        "DELETE FROM {s}.finished_jobs WHERE id = ANY(ARRAY(SELECT id FROM {s}.finished_jobs \
           WHERE queue = $1 AND finished_at < now() - make_interval(secs => $2) \
           ORDER BY finished_at LIMIT $3 FOR UPDATE SKIP LOCKED))"
    )
}

/// Migration 4, priorities: the claim takes due jobs by priority first (9
/// before 0; no priority counts as 0), then `run_at`, then id, and
/// `jobs_next` is that order. PostgreSQL 15, 200k rows over 4 queues, a
/// fifth with a priority, 4000 leased, ANALYZEd:
///
/// ```text
/// EXPLAIN WITH c AS (SELECT id FROM jobs WHERE queue = 'q1' AND run_at <= now()
///   AND (locked_until IS NULL OR locked_until < now())
///   ORDER BY coalesce(priority, 0) DESC, run_at, id LIMIT 100 FOR UPDATE SKIP LOCKED)
///   UPDATE jobs j SET ... FROM c WHERE j.id = c.id;
///  Update on jobs j  (cost=24.22..830.80 rows=0 width=0)
///    CTE c
///      ->  Limit  (cost=0.42..23.80 rows=100 width=26)
///            ->  LockRows  (cost=0.42..10936.81 rows=46774 width=26)
///                  ->  Index Scan using jobs_next on jobs  (cost=0.42..10469.07 ...)
///                        Index Cond: ((queue = 'q1'::text) AND (run_at <= now()))
///                        Filter: ((locked_until IS NULL) OR (locked_until < now()))
///    ->  Nested Loop  (cost=0.42..807.00 rows=100 width=58)
///          ->  CTE Scan on c  (cost=0.00..2.00 rows=100 width=40)
///          ->  Index Scan using jobs_pkey on jobs j  (cost=0.42..8.04 rows=1 width=18)
/// ```
///
/// Still no sort and a scan that stops after the batch. `run_at <= now()` is
/// an index condition, so delayed or leased rows of a higher priority are
/// skipped on index entries (no heap visit). `jobs_due` stays for the idle
/// probe (`min(run_at)` of a queue).
const PRIORITY_MIGRATION: &str = r#"
CREATE INDEX jobs_next ON {s}.jobs (queue, (coalesce(priority, 0)) DESC, run_at, id);
"#;

/// The highest migration this build knows.
pub fn latest_version() -> i32 {
    MIGRATIONS.last().map_or(0, |(v, _)| *v)
}

/// `name` as a quoted SQL identifier.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The NOTIFY channel of `queue` in `schema` (the trigger computes the same
/// on the server; channels are identifiers, so long names are hashed).
pub const CHANNEL_SQL: &str = "SELECT 'foxtive_' || md5($1 || '.' || $2)";

/// Create the schema or bring it forward to [`latest_version`]. Returns the
/// version found before (0 for a new schema).
pub async fn migrate(client: &mut Client, schema: &str) -> Result<i32> {
    let s = quote_ident(schema);
    let sql_err = |what: &str, e: tokio_postgres::Error| {
        Error::Backend(format!(
            "schema {schema:?}: {what}: {}",
            super::link::describe(&e)
        ))
    };
    let tx = client
        .transaction()
        .await
        .map_err(|e| sql_err("begin", e))?;
    // Serialise concurrent first starts (CREATE ... IF NOT EXISTS races).
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtext('foxtive.schema.' || $1::text))",
        &[&schema],
    )
    .await
    .map_err(|e| sql_err("lock", e))?;
    tx.batch_execute(&format!(
        "CREATE SCHEMA IF NOT EXISTS {s};
         CREATE TABLE IF NOT EXISTS {s}.schema_version (
             version integer PRIMARY KEY,
             applied_at timestamptz NOT NULL DEFAULT now());"
    ))
    .await
    .map_err(|e| sql_err("create", e))?;
    let row = tx
        .query_one(
            &format!("SELECT coalesce(max(version), 0) FROM {s}.schema_version"),
            &[],
        )
        .await
        .map_err(|e| sql_err("read version", e))?;
    let found: i32 = row.get(0);
    if found > latest_version() {
        return Err(Error::Config(format!(
            "schema {schema:?} is at version {found}, newer than this foxtive knows \
             ({}): upgrade foxtive",
            latest_version()
        )));
    }
    for (version, ddl) in MIGRATIONS.iter().filter(|(v, _)| *v > found) {
        tx.batch_execute(&ddl.replace("{s}", &s))
            .await
            .map_err(|e| sql_err(&format!("migration {version}"), e))?;
        tx.execute(
            &format!("INSERT INTO {s}.schema_version (version) VALUES ($1)"),
            &[version],
        )
        .await
        .map_err(|e| sql_err("record version", e))?;
    }
    tx.commit().await.map_err(|e| sql_err("commit", e))?;
    Ok(found)
}

/// Connect to `dsn` and bring `schema` (or the URL's `?schema=`, or
/// [`DEFAULT_SCHEMA`](super::DEFAULT_SCHEMA)) to [`latest_version`], on a
/// connection of its own (`foxtive db migrate`). Returns the schema and the
/// versions before and after.
pub async fn migrate_url(dsn: &str, schema: Option<&str>) -> Result<(String, i32, i32)> {
    let parsed = super::config::parse_dsn(dsn)?;
    let schema = schema
        .map(str::to_string)
        .or_else(|| parsed.schema.clone())
        .unwrap_or_else(|| super::DEFAULT_SCHEMA.to_string());
    super::validate_schema(&schema)?;
    let (mut client, connection) = super::tls::connect(&parsed).await?;
    let task = tokio::spawn(connection);
    let before = migrate(&mut client, &schema).await;
    drop(client);
    let _ = task.await;
    Ok((schema, before?, latest_version()))
}

/// How parameters are written: `$1` (the server's, tokio-postgres) or `%s`
/// (psycopg's client-side style).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placeholders {
    Dollar,
    Percent,
}

/// Columns of a published row, in the order of [`insert_sql`]'s arrays.
pub const INSERT_ARRAYS: [&str; 10] = [
    "message_id text[]",
    "body bytea[]",
    "headers text[]",
    "correlation_id text[]",
    "content_type text[]",
    "reply_to text[]",
    "routing_key text[]",
    "priority int2[]",
    "attempts int4[]",
    "delay float8[]",
];

/// The one INSERT of jobs: parameter 1 is the queue, then one array per
/// entry of [`INSERT_ARRAYS`] (one element per message), so a batch of any
/// size is one statement (and one prepared plan).
pub fn insert_sql(schema: &str, style: Placeholders) -> String {
    let p = |n: usize| match style {
        Placeholders::Dollar => format!("${n}"),
        Placeholders::Percent => "%s".to_string(),
    };
    let arrays: Vec<String> = INSERT_ARRAYS
        .iter()
        .enumerate()
        .map(|(i, col)| {
            let ty = col.split(' ').nth(1).unwrap_or("text[]");
            format!("{}::{ty}", p(i + 2))
        })
        .collect();
    format!(
        "INSERT INTO {s}.jobs (queue, message_id, body, headers, correlation_id, content_type, \
         reply_to, routing_key, priority, attempts, run_at) \
         SELECT {q}::text, m, b, h, c, ct, r, rk, p, a, now() + make_interval(secs => d) \
         FROM unnest({arrays}) AS t(m, b, h, c, ct, r, rk, p, a, d)",
        s = quote_ident(schema),
        q = p(1),
        arrays = arrays.join(", "),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
    }

    #[test]
    fn insert_has_one_placeholder_per_array() {
        let sql = insert_sql("fx", Placeholders::Percent);
        assert_eq!(sql.matches("%s").count(), 1 + INSERT_ARRAYS.len());
        assert!(insert_sql("fx", Placeholders::Dollar).contains("$11::float8[]"));
    }

    #[test]
    fn versions_only_grow() {
        assert!(MIGRATIONS.windows(2).all(|w| w[0].0 < w[1].0));
    }
}
