"""A jobs table filled since it was last analyzed (here: never) makes the
claim's plan read the whole queue, ~25x slower, until autovacuum analyzes
it (never on the test server, whose autovacuum is off). The backend sees
a claim turn slow, finds the statistics stale and runs ``ANALYZE``
itself. psycopg reads ``pg_stat_user_tables`` as the judge."""

from __future__ import annotations

import asyncio
import time

import psycopg
import pytest

import foxtive

from .contract.kits.postgres import POSTGRES_URL, postgres_answers, schema_fixture

pytestmark = pytest.mark.skipif(postgres_answers() is not None, reason=str(postgres_answers()))

schema = schema_fixture("fxp_analyze_")


def analyzed(schema: str) -> bool:
    with psycopg.connect(POSTGRES_URL) as conn:
        row = conn.execute("SELECT coalesce(last_analyze, last_autoanalyze) IS NOT NULL "
                           "FROM pg_stat_user_tables WHERE schemaname = %s AND relname = 'jobs'",
                           (schema,)).fetchone()
    return bool(row and row[0])


async def test_slow_claims_on_a_never_analyzed_table_analyze_it(schema: str) -> None:
    backend = foxtive.PostgresBackend(POSTGRES_URL, "bulk", schema=schema)
    await backend.ensure_schema()
    for _ in range(10):
        await backend.publish_many([b"x"] * 10_000)
    assert not analyzed(schema)  # the server did not: the backend must
    first = asyncio.get_running_loop().create_future()

    async def handler(m: foxtive.Message) -> None:
        if not first.done():
            first.set_result(None)

    pool = foxtive.WorkerPoolBuilder("pg-analyze").add_worker(handler, id="h").build()
    # How slow a claim on the unanalyzed table is depends on the planner;
    # make the first one slow for sure: it waits for a lock held 0.2 s.
    with psycopg.connect(POSTGRES_URL) as locker:
        locker.execute(f'LOCK TABLE "{schema}".jobs IN ACCESS EXCLUSIVE MODE')
        run = asyncio.ensure_future(pool.run_async(backend, handle_signals=False))
        deadline = time.monotonic() + 30
        while not waiting_on_lock(schema):
            assert time.monotonic() < deadline, "the claim never came"
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.2)  # the slowness under test, not a synchronisation
        locker.commit()
    try:
        await asyncio.wait_for(first, 30)
        # ANALYZE runs on a task of its own after the slow claim: wait for
        # the server to show it (no event to await from outside).
        deadline = time.monotonic() + 30
        while not analyzed(schema):
            assert time.monotonic() < deadline, "the jobs table was never analyzed"
            await asyncio.sleep(0.1)
    finally:
        pool.shutdown()
        await asyncio.wait_for(run, 60)
        await backend.close()


def waiting_on_lock(schema: str) -> bool:
    with psycopg.connect(POSTGRES_URL) as conn:
        row = conn.execute("SELECT count(*) FROM pg_locks WHERE NOT granted "
                           "AND relation = %s::regclass", (f'"{schema}".jobs',)).fetchone()
    return bool(row and row[0])
