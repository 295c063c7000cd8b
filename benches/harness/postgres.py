"""W1 and enqueue on PostgreSQL for ``benches/compare.py`` (issue 13).

    cargo build --release -p foxtive-core --example postgres_ceiling
    python benches/compare.py --no-install --workloads w1-postgres,enqueue-postgres

``w1-postgres``: 100,000 jobs of ~100 B pre-published into a fresh schema per
run (foxtive's ``publish_many``, or the peer's own enqueue), then drained by
one contender process; compare.py times it as every other W1 (first handled
-> last handled, median of the rounds). ``enqueue-postgres``: 10,000 jobs in
one transaction per contender, timed in the contender's process around the
enqueue alone (connections opened and tables created before, one warm-up
enqueue of 10 jobs first so every prepared statement exists).

Every run has its own schema (``fxbench_<queue>``), dropped afterwards; the
peers get theirs through ``search_path`` (their tables and functions are
unqualified), so nothing here touches anyone else's tables. The database is
``PG_URL`` (default ``postgresql://postgres@127.0.0.1:5432/test``).

Child modes (run by compare.py or by ``run_enqueue``):
``python benches/compare_postgres.py enqueue CONTENDER SCHEMA N`` prints one
JSON line ``{"n": ..., "seconds": ...}``.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from datetime import timedelta
from typing import Any

from harness.accounting import loadavg
from harness.binaries import ceiling_binary
from harness.bodies import body_for, id_of
from harness.children import child, compare_child
from harness.config import FOX, PEER, POSTGRES_PY, RUST
from harness.fox_pool import fox_pool
from harness.peers_venv import peers_have
from harness.recorder import Recorder

PG_URL = os.environ.get("PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
#: Rows claimed per statement by the raw consumers and the ceilings;
#: ``PG_BENCH_BATCH=256`` gives them foxtive's claim size (the pool's
#: default batch_size) for a like-for-like ratio.
BATCH = int(os.environ.get("PG_BENCH_BATCH", "500"))
ENQUEUE_N = 10_000

CONTENDERS: dict[str, list[tuple[str, str, str]]] = {
    "w1-postgres": [
        ("foxtive", FOX, "PostgresBackend, claims of up to 256 (the pool's default "
                         "batch_size), async no-op handler, acks batched (DELETE)"),
        ("rust ceiling", RUST, f"tokio-postgres, foxtive's own claim (UPDATE ... FOR UPDATE "
                               f"SKIP LOCKED LIMIT {BATCH}, leased) + DELETE of the batch "
                               "pipelined with the next claim, no handler "
                               "(examples/postgres_ceiling.rs)"),
        ("rust 2-conn ceiling", RUST, f"tokio-postgres, foxtive's exact claim (LIMIT {BATCH}) on "
                                      "one connection and foxtive's exact ack (DELETE ... "
                                      "USING unnest(ids, attempts)) on a second, the deletes "
                                      "fed through a channel so claims never wait for them "
                                      "(as foxtive's fetch and settle links), no handler"),
        ("rust tx ceiling", RUST, f"tokio-postgres, BEGIN; SELECT ... FOR UPDATE SKIP LOCKED "
                                  f"LIMIT {BATCH}; DELETE; COMMIT (no lease), no handler"),
        ("psycopg raw", FOX, f"psycopg 3 sync: BEGIN; SELECT ... FOR UPDATE SKIP LOCKED LIMIT "
                             f"{BATCH}; handler per row; DELETE ... = ANY; COMMIT"),
        ("pgqueuer", PEER, "QueueManager on psycopg async, batch_size 500, no-op async "
                           "entrypoint"),
        ("procrastinate", PEER, "PsycopgConnector, worker concurrency 10, no-op async task"),
    ],
}
SLOW = {"pgqueuer", "procrastinate"}  # capped by --slow-cap


def schema_of(queue: str) -> str:
    return "fxbench_" + queue.replace("-", "_")


def dsn_in(schema: str) -> str:
    """PG_URL with ``search_path`` set to ``schema`` (for the peers' tables)."""
    sep = "&" if "?" in PG_URL else "?"
    return f"{PG_URL}{sep}options=-csearch_path%3D{schema}"


def admin(sql: str) -> None:
    import psycopg

    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(sql)


def cleanup(queue: str) -> None:
    admin(f'DROP SCHEMA IF EXISTS "{schema_of(queue)}" CASCADE')


# --------------------------------------------------------------------------
# parent side: hooks called by compare.py
# --------------------------------------------------------------------------


def unavailable(name: str) -> str:
    if name.startswith("rust"):
        try:
            ceiling_binary("postgres_ceiling")
        except SystemExit as e:
            return str(e)
    elif name in ("pgqueuer", "procrastinate") and not peers_have(name):
        return f"{name} is not installed in benches/.peers-venv"
    return ""


def prepublish(name: str, kind: str, queue: str, n: int) -> None:
    peer = name in ("pgqueuer", "procrastinate")
    subprocess.run(compare_child(PEER if peer else FOX, "--publish", name if peer else "foxtive",
                                 "--queue", queue, "-n", str(n), "--workload", "w1-postgres"),
                   check=True, timeout=900)
    analyze(schema_of(queue))


def analyze(schema: str) -> None:
    """Give the planner statistics for the freshly filled tables before the
    drain, for every contender alike. A table of 100,000 rows inserted
    since the last ANALYZE is planned from default selectivities (~110 due
    rows): a claim's `ORDER BY ... LIMIT` then becomes a bitmap scan and a
    sort of the whole backlog (~200 ms per batch here) instead of an index
    scan that stops after the batch (~1 ms). Autovacuum would analyze it
    within a minute (`autovacuum_naptime`); a drain is over before that, so
    without this the rounds measured the planner's guess, not the queue
    (the raw psycopg loop's 2.6k/s in the first PostgreSQL run)."""
    import psycopg

    with psycopg.connect(PG_URL, autocommit=True) as conn:
        tables = conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = %s",
                              (schema,)).fetchall()
        for (table,) in tables:
            conn.execute(f'ANALYZE "{schema}"."{table}"')


def rust_cmd(name: str, queue: str, n: int) -> list[str]:
    return [ceiling_binary("postgres_ceiling"), "drain", PG_URL, schema_of(queue), queue,
            str(n), str(BATCH),
            "tx" if "tx" in name else "two" if "2-conn" in name else "lease"]


# --------------------------------------------------------------------------
# child side: publishers and consumers
# --------------------------------------------------------------------------


def publish(contender: str, queue: str, n: int) -> None:
    schema = schema_of(queue)
    if contender == "pgqueuer":
        return asyncio.run(pgqueuer_enqueue(schema, queue, range(n)))
    if contender == "procrastinate":
        return asyncio.run(procrastinate_enqueue(schema, queue, range(n)))
    import foxtive

    async def go() -> None:
        backend = foxtive.PostgresBackend(PG_URL, queue, schema=schema)
        for start in range(0, n, 10_000):
            await backend.publish_many([body_for(i) for i in range(start, min(n, start + 10_000))])
        await backend.close()
    asyncio.run(go())


def consume(contender: str, queue: str, n: int, result: str, idle: float) -> None:
    rec = Recorder(n, result, idle)
    schema = schema_of(queue)
    if contender == "foxtive":
        import foxtive

        async def handler(message: foxtive.Message) -> None:
            rec.hit(id_of(message.body))

        pool = fox_pool(handler, rec)
        asyncio.run(pool.run_async(foxtive.PostgresBackend(PG_URL, queue, schema=schema),
                                   handle_signals=False))
    elif contender == "psycopg raw":
        raw_consume(rec, schema, queue)
    elif contender == "pgqueuer":
        asyncio.run(pgqueuer_consume(rec, schema, queue))
    elif contender == "procrastinate":
        asyncio.run(procrastinate_consume(rec, schema, queue))
    else:
        raise SystemExit(f"unknown contender {contender}")
    time.sleep(3600)  # the recorder ends the process


def raw_consume(rec: Any, schema: str, queue: str) -> None:
    """The issue's hand-written loop on foxtive's table."""
    import psycopg
    select = (f'SELECT id, body FROM "{schema}".jobs WHERE queue = %s AND run_at <= now() '
              f"ORDER BY run_at, id LIMIT {BATCH} FOR UPDATE SKIP LOCKED")
    delete = f'DELETE FROM "{schema}".jobs WHERE id = ANY(%s::int8[])'
    with psycopg.connect(PG_URL) as conn:
        while True:
            with conn.transaction():
                rows = conn.execute(select, (queue,)).fetchall()
                for _, body in rows:
                    rec.hit(id_of(body))
                if rows:
                    conn.execute(delete, ([r[0] for r in rows],))
            if not rows:
                time.sleep(0.001)


# --------------------------------------------------------------------------
# peers (child side, in benches/.peers-venv)
# --------------------------------------------------------------------------


def pgqueuer_env(schema: str) -> None:
    """pgqueuer's tables, function and NOTIFY channel in this run's schema
    (read from the environment when pgqueuer is imported)."""
    os.environ["PGQUEUER_SCHEMA"] = schema
    os.environ["PGQUEUER_PREFIX"] = f"{schema}_"


async def pgqueuer_queries(schema: str) -> Any:
    pgqueuer_env(schema)
    import psycopg
    from pgqueuer import PsycopgDriver, Queries

    conn = await psycopg.AsyncConnection.connect(PG_URL, autocommit=True)
    return Queries(PsycopgDriver(conn))


async def pgqueuer_enqueue(schema: str, queue: str, ids: range, timed: bool = False) -> float:
    queries = await pgqueuer_queries(schema)
    await queries.install()  # a fresh schema per run
    if timed:
        await queries.enqueue(["noop"] * 10, [body_for(i) for i in range(10)], [0] * 10)
    t = time.perf_counter()
    for start in range(ids.start, ids.stop, 10_000):
        chunk = range(start, min(ids.stop, start + 10_000))
        await queries.enqueue(["noop"] * len(chunk), [body_for(i) for i in chunk],
                              [0] * len(chunk))
    return time.perf_counter() - t


async def pgqueuer_consume(rec: Any, schema: str, queue: str) -> None:
    queries = await pgqueuer_queries(schema)
    from pgqueuer import QueueManager
    from pgqueuer.models import Job

    qm = QueueManager(queries)

    @qm.entrypoint("noop")
    async def noop(job: Job) -> None:
        rec.hit(id_of(job.payload or b""))

    await qm.run(batch_size=BATCH, dequeue_timeout=timedelta(seconds=1))


def procrastinate_app(schema: str, queue: str, rec: Any = None) -> tuple[Any, Any]:
    import procrastinate

    app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=dsn_in(schema)))

    @app.task(queue=queue, name="noop")
    async def noop(i: int) -> None:
        if rec is not None:
            rec.hit(i)
    return app, noop


async def procrastinate_enqueue(schema: str, queue: str, ids: range,
                                timed: bool = False) -> float:
    admin(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
    app, noop = procrastinate_app(schema, queue)
    async with app.open_async():
        async with app.connector.pool.connection() as conn:
            exists = await (await conn.execute(
                "SELECT to_regclass('procrastinate_jobs') IS NOT NULL")).fetchone()
        if not exists[0]:
            await app.schema_manager.apply_schema_async()
        if timed:
            await noop.batch_defer_async(*({"i": i} for i in range(10)))
        t = time.perf_counter()
        for start in range(ids.start, ids.stop, 10_000):
            await noop.batch_defer_async(
                *({"i": i} for i in range(start, min(ids.stop, start + 10_000))))
        return time.perf_counter() - t


async def procrastinate_consume(rec: Any, schema: str, queue: str) -> None:
    app, _ = procrastinate_app(schema, queue, rec)
    async with app.open_async():
        await app.run_worker_async(queues=[queue], concurrency=10, wait=True,
                                   delete_jobs="always", install_signal_handlers=False)


# --------------------------------------------------------------------------
# enqueue-postgres: 10,000 jobs in one transaction
# --------------------------------------------------------------------------

ENQUEUE: list[tuple[str, str, str]] = [
    ("foxtive publish_many", FOX, "backend.publish_many(10,000 bodies): one INSERT ... SELECT "
                                  "FROM unnest(arrays) on foxtive's connection (tokio-postgres)"),
    ("foxtive transaction=", FOX, "backend.publish_many(bodies, transaction=conn) through a "
                                  "sync psycopg 3 connection, in conn.transaction()"),
    ("psycopg multi-row INSERT", FOX, "one INSERT ... VALUES (%s, %s, %s), ... of 10,000 rows "
                                      "(queue, uuid4 id, body) in a transaction"),
    ("psycopg COPY", FOX, "COPY jobs (queue, message_id, body) FROM STDIN, write_row per job, "
                          "in a transaction"),
    ("pgqueuer", PEER, "Queries.enqueue(lists of 10,000): one statement"),
    ("procrastinate", PEER, "task.batch_defer_async(10,000 kwargs)"),
]


def fox_enqueue(contender: str, schema: str, queue: str, n: int) -> float:
    import foxtive

    backend = foxtive.PostgresBackend(PG_URL, queue, schema=schema)

    async def go() -> float:
        await backend.publish_many([body_for(i) for i in range(10)])  # warm-up
        if contender == "foxtive publish_many":
            t = time.perf_counter()
            await backend.publish_many([body_for(i) for i in range(n)])
            return time.perf_counter() - t
        import psycopg

        with psycopg.connect(PG_URL) as conn:
            with conn.transaction():
                await backend.publish_many([body_for(i) for i in range(10)], transaction=conn)
            t = time.perf_counter()
            with conn.transaction():
                await backend.publish_many([body_for(i) for i in range(n)], transaction=conn)
            return time.perf_counter() - t
    try:
        return asyncio.run(go())
    finally:
        asyncio.run(backend.close())


def raw_enqueue(contender: str, schema: str, queue: str, n: int) -> float:
    import psycopg

    import foxtive

    async def tables() -> None:  # foxtive's schema, created beforehand
        await foxtive.PostgresBackend(PG_URL, queue, schema=schema).ensure_schema()
    asyncio.run(tables())
    cols = f'"{schema}".jobs (queue, message_id, body)'

    def run(conn: Any, k: int) -> None:
        with conn.transaction():
            if contender == "psycopg COPY":
                with conn.cursor().copy(f"COPY {cols} FROM STDIN") as copy:
                    for i in range(k):
                        copy.write_row((queue, str(uuid.uuid4()), body_for(i)))
            else:
                params: list[Any] = []
                for i in range(k):
                    params += (queue, str(uuid.uuid4()), body_for(i))
                conn.execute(f"INSERT INTO {cols} VALUES " + ",".join(["(%s, %s, %s)"] * k),
                             params)

    with psycopg.connect(PG_URL) as conn:
        run(conn, 10)  # warm-up
        t = time.perf_counter()
        run(conn, n)
        return time.perf_counter() - t


def count_rows(contender: str, schema: str, queue: str) -> int:
    import psycopg

    table = {"pgqueuer": f'"{schema}"."{schema}_pgqueuer"',
             "procrastinate": f'"{schema}".procrastinate_jobs'}.get(contender,
                                                                    f'"{schema}".jobs')
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        row = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
    return int(row[0]) if row else 0


def enqueue_child(contender: str, schema: str, n: int) -> None:
    queue = "bench"
    if contender == "pgqueuer":
        secs = asyncio.run(pgqueuer_enqueue(schema, queue, range(n), timed=True))
    elif contender == "procrastinate":
        secs = asyncio.run(procrastinate_enqueue(schema, queue, range(n), timed=True))
    elif contender.startswith("foxtive"):
        secs = fox_enqueue(contender, schema, queue, n)
    else:
        secs = raw_enqueue(contender, schema, queue, n)
    rows = count_rows(contender, schema, queue)
    print(json.dumps({"n": n, "seconds": secs, "rows": rows}))


def run_enqueue(rounds: int, only: set[str], report: list[str]) -> None:
    """Parent side of ``enqueue-postgres``: each contender in its own process
    per round, alternated, into a fresh schema dropped afterwards."""
    n = ENQUEUE_N
    contenders = [c for c in ENQUEUE if (not only or c[0] in only)
                  and not (c[1] == PEER and unavailable(c[0]))]
    secs: dict[str, list[float]] = {c[0]: [] for c in contenders}
    print(f"\n== enqueue-postgres: {n:,} jobs x {rounds} rounds (load {loadavg()})", flush=True)
    for r in range(rounds):
        for name, kind, _ in contenders:
            schema = f"fxbench_enq_{uuid.uuid4().hex[:8]}"
            try:
                out = subprocess.run(child(kind, POSTGRES_PY, "enqueue", name, schema, str(n)),
                                     capture_output=True, text=True, timeout=900)
                if out.returncode:
                    print(f"{name}: failed\n{out.stderr[-2000:]}", file=sys.stderr, flush=True)
                    continue
                res = json.loads(out.stdout.strip().splitlines()[-1])
            finally:
                admin(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
            if res["rows"] != n + (20 if name == "foxtive transaction=" else 10):
                print(f"{name}: {res['rows']} rows after {n} + warm-up", file=sys.stderr)
            secs[name].append(res["seconds"])
            print(f"round {r + 1}: {name:26s} {n / res['seconds']:>10,.0f} jobs/s "
                  f"({res['seconds'] * 1000:.1f} ms, load {loadavg()})", flush=True)
    med = {k: statistics.median(v) for k, v in secs.items() if v}
    foxes = [k for k in med if k.startswith("foxtive")]
    lines = ["| contender | jobs/s median (min-max) | ms per 10,000 | "
             + "".join(f"{f} / this | " for f in foxes) + "settings |",
             "|---|---|---|" + "---|" * len(foxes) + "---|"]
    for name, _, what in contenders:
        if name not in med:
            lines.append(f"| {name} | failed | | " + "| " * len(foxes) + f"{what} |")
            continue
        rates = [n / s for s in secs[name]]
        ratios = "".join(f"{med[name] / med[f]:.2f} | " if f != name else "- | "
                         for f in foxes)
        lines.append(f"| {name} | {n / med[name]:,.0f} ({min(rates):,.0f}-{max(rates):,.0f}) "
                     f"| {med[name] * 1000:.1f} | {ratios}{what} |")
    report += [f"## enqueue-postgres: {n:,} jobs of ~100 B in one transaction, median of "
               f"{rounds}", "", *lines, "", f"Load average after: {loadavg()}.", ""]
    print("\n".join(lines), flush=True)

