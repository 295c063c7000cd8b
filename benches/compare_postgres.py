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
import os
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
PG_URL = os.environ.get("PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
BATCH = 500  # rows claimed per statement by the raw consumers and the ceiling
ENQUEUE_N = 10_000

FOX, PEER, RUST = "foxtive", "peers", "rust"

CONTENDERS: dict[str, list[tuple[str, str, str]]] = {
    "w1-postgres": [
        ("foxtive", FOX, "PostgresBackend, claims of up to 256 (the pool's default "
                         "batch_size), async no-op handler, acks batched (DELETE)"),
        ("rust ceiling", RUST, f"tokio-postgres, foxtive's own claim (UPDATE ... FOR UPDATE "
                               f"SKIP LOCKED LIMIT {BATCH}, leased) + DELETE of the batch "
                               "pipelined with the next claim, no handler "
                               "(examples/postgres_ceiling.rs)"),
        ("rust tx ceiling", RUST, f"tokio-postgres, BEGIN; SELECT ... FOR UPDATE SKIP LOCKED "
                                  f"LIMIT {BATCH}; DELETE; COMMIT (no lease), no handler"),
        ("psycopg raw", FOX, f"psycopg 3 sync: BEGIN; SELECT ... FOR UPDATE SKIP LOCKED LIMIT "
                             f"{BATCH}; handler per row; DELETE ... = ANY; COMMIT"),
        ("pgqueuer", PEER, "QueueManager on psycopg async, batch_size 500, no-op async "
                           "entrypoint"),
        ("procrastinate", PEER, "PsycopgConnector, worker concurrency 10, no-op async task"),
    ],
}
SLOW = {"procrastinate"}


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


def body_for(i: int) -> bytes:
    from compare import body_for as b

    return b(i)


# --------------------------------------------------------------------------
# parent side: hooks called by compare.py
# --------------------------------------------------------------------------


def unavailable(name: str) -> str:
    from compare import PEERS_PY, ceiling_binary

    if name.startswith("rust"):
        try:
            ceiling_binary("postgres_ceiling")
        except SystemExit as e:
            return str(e)
    elif name in ("pgqueuer", "procrastinate") and subprocess.run(
            [str(PEERS_PY), "-c", f"import {name}"], capture_output=True).returncode:
        return f"{name} is not installed in benches/.peers-venv"
    return ""


def prepublish(name: str, kind: str, queue: str, n: int) -> None:
    from compare import interpreter

    peer = name in ("pgqueuer", "procrastinate")
    subprocess.run([interpreter(PEER if peer else FOX), str(HERE / "compare.py"), "--publish",
                    name if peer else "foxtive", "--queue", queue, "-n", str(n),
                    "--workload", "w1-postgres"], check=True, timeout=900)


def rust_cmd(name: str, queue: str, n: int) -> list[str]:
    from compare import ceiling_binary

    return [ceiling_binary("postgres_ceiling"), "drain", PG_URL, schema_of(queue), queue,
            str(n), str(BATCH), "tx" if "tx" in name else "lease"]


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
    from compare import Recorder, fox_pool, id_of

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
    from compare import id_of

    select = (f'SELECT id, body FROM "{schema}".jobs WHERE queue = %s AND run_at <= now() '
              f"ORDER BY run_at, id LIMIT {BATCH} FOR UPDATE SKIP LOCKED")
    delete = f'DELETE FROM "{schema}".jobs WHERE id = ANY(%s)'
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
    from compare import id_of

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


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    raise SystemExit(__doc__)
