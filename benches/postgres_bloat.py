"""Does the PostgreSQL jobs table bloat? Runs N jobs (200k by default)
through PostgresBackend ``--runs`` times and reads ``pg_stat_user_tables`` (live and
dead tuples) and the table and index sizes after each step.

    python benches/postgres_bloat.py [--jobs 200000] [--runs 2] [--vacuum] [--keep-finished S]

``--vacuum`` runs a manual ``VACUUM`` of the tables after each drain (what
autovacuum would do with the per-table thresholds of migration 1); without
it the second run shows what happens when nothing vacuums (autovacuum off,
as on the shared development server: the script prints ``SHOW autovacuum``).
The schema is its own (``fxbloat_<random>``) and is dropped at the end.

With autovacuum off nothing ANALYZEs either: the script runs ``ANALYZE``
of ``jobs`` after each enqueue (see ``run_jobs``).

Statistics in ``pg_stat_user_tables`` are flushed by each backend at most
once a second, so the script closes the workers' connections and waits 1.5 s
before reading them.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
import uuid
from typing import Any

import psycopg

import foxtive

URL = os.environ.get("FOXTIVE_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


def stats(conn: Any, schema: str) -> dict[str, dict[str, int]]:
    rows = conn.execute(
        "SELECT relname, n_live_tup, n_dead_tup, pg_relation_size(relid), "
        "pg_indexes_size(relid) FROM pg_stat_user_tables WHERE schemaname = %s "
        "AND relname IN ('jobs', 'finished_jobs') ORDER BY relname", (schema,)).fetchall()
    return {r[0]: {"live": r[1], "dead": r[2], "table": r[3], "index": r[4]} for r in rows}


def show(step: str, s: dict[str, dict[str, int]], extra: str = "") -> None:
    for rel, v in s.items():
        print(f"| {step} | {rel} | {v['live']:,} | {v['dead']:,} | {v['table'] / 2**20:.1f} | "
              f"{v['index'] / 2**20:.1f} | {extra} |", flush=True)


async def run_jobs(backend: foxtive.PostgresBackend, n: int, judge: Any) -> tuple[float, float]:
    body = b'{"to": "someone@example.com", "subject": "Welcome!"}'
    t0 = time.perf_counter()
    for start in range(0, n, 5000):
        await backend.publish_many([body] * min(5000, n - start))
    enqueued = time.perf_counter() - t0
    # What autovacuum's ANALYZE (threshold 10k rows, migration 1) would have
    # done by now; with autovacuum off and no statistics, the planner takes
    # the fresh 200k-row table for empty and sorts every row on each claim
    # (700 ms a claim, measured).
    judge.execute(f"ANALYZE {_q(backend.schema)}.jobs")

    async def handler(m: foxtive.Message) -> None:
        return None

    pool = (foxtive.WorkerPoolBuilder("bloat").with_concurrency_limit(500)
            .add_worker(handler, id="h").build())
    t1 = time.perf_counter()
    assert await pool.run_until_idle_async(backend, timeout=600)
    drained = time.perf_counter() - t1
    left = judge.execute(f"SELECT count(*) FROM {_q(backend.schema)}.jobs").fetchone()
    assert left == (0,), f"{left} jobs left after the drain"
    return n / enqueued, n / drained


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'



async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=200_000)
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--vacuum", action="store_true", help="VACUUM after each drain")
    ap.add_argument("--keep-finished", type=float, default=0.0,
                    help="keep finished jobs this many seconds (retention on)")
    args = ap.parse_args()
    schema = f"fxbloat_{uuid.uuid4().hex[:10]}"
    judge = psycopg.connect(URL, autocommit=True)
    try:
        autovacuum = judge.execute("SHOW autovacuum").fetchone()
        version = judge.execute("SHOW server_version").fetchone()
        print(f"PostgreSQL {version[0] if version else '?'}, autovacuum = "
              f"{autovacuum[0] if autovacuum else '?'}, {args.jobs:,} jobs per run, "
              f"vacuum between runs: {args.vacuum}, keep_finished: {args.keep_finished}")
        print("| step | table | n_live_tup | n_dead_tup | table MiB | indexes MiB | rates |")
        print("|---|---|---|---|---|---|---|")
        for run in range(1, args.runs + 1):
            backend = foxtive.PostgresBackend(URL, "bloat", schema=schema,
                                              keep_finished=args.keep_finished)
            await backend.ensure_schema()
            enq, drain = await run_jobs(backend, args.jobs, judge)
            await backend.close()
            time.sleep(1.5)  # let every backend flush its statistics
            show(f"run {run}: after drain", stats(judge, schema),
                 f"enqueue {enq:,.0f}/s, drain {drain:,.0f}/s")
            if args.vacuum:
                t = time.perf_counter()
                judge.execute(f'VACUUM "{schema}".jobs')
                judge.execute(f'VACUUM "{schema}".finished_jobs')
                took = time.perf_counter() - t
                time.sleep(1.5)
                show(f"run {run}: after VACUUM", stats(judge, schema), f"VACUUM {took:.2f} s")
    finally:
        judge.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        judge.close()


if __name__ == "__main__":
    asyncio.run(main())
