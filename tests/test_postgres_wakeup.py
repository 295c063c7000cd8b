"""An idle PostgreSQL worker starts a newly committed job at once: woken by
the NOTIFY its enqueueing transaction sends at commit, not by polling.

Measured in ``benches/postgres_wakeup.py`` (target: median <= 50 ms);
asserted loosely here, for a loaded 2-core machine. The safety-net poll is
30 s, and the pool asks the backend again every 0.5 s
(``pool/engine.rs``, ``RECEIVE_WAIT``): without NOTIFY a job would start
after ~0.25 s on average (uniform over 0-0.5 s), so most starts well under
that show the NOTIFY path. The job is inserted through the caller's psycopg
connection (``transaction=``), which wakes nothing in this process: only the
server's notification can."""

from __future__ import annotations

import asyncio
import random
import statistics
import time

import psycopg
import pytest

import foxtive

from .contract.kits.postgres import POSTGRES_URL, postgres_answers, schema_fixture

pytestmark = pytest.mark.skipif(postgres_answers() is not None, reason=str(postgres_answers()))

SAMPLES = 20
POLL = 30.0


schema = schema_fixture("fxp_wake_")


async def test_idle_worker_starts_committed_jobs_on_notify(schema: str) -> None:
    backend = foxtive.PostgresBackend(POSTGRES_URL, "wake", schema=schema, poll_interval=POLL)
    await backend.ensure_schema()
    started: asyncio.Queue[tuple[bytes, float]] = asyncio.Queue()

    async def handler(m: foxtive.Message) -> None:
        started.put_nowait((m.body, time.monotonic()))

    pool = foxtive.WorkerPoolBuilder("pg-wakeup").add_worker(handler, id="h").build()
    task = asyncio.ensure_future(pool.run_async(backend, handle_signals=False))
    latencies = []
    try:
        async with await psycopg.AsyncConnection.connect(POSTGRES_URL) as conn:
            for i in range(SAMPLES + 1):  # the first one warms the worker up
                # Idle for a while, out of step with the pool's receive cycle.
                await asyncio.sleep(random.uniform(0.2, 0.6))
                body = f"w-{i}".encode()
                async with conn.transaction():
                    await backend.publish(body, transaction=conn)
                    assert started.empty()
                    sent = time.monotonic()  # COMMIT is sent as the block ends
                got, at = await asyncio.wait_for(started.get(), 10)
                assert got == body
                if i:
                    latencies.append(at - sent)
    finally:
        pool.shutdown()
        await asyncio.wait_for(task, 30)
    median = statistics.median(latencies)
    fast = sum(1 for x in latencies if x < 0.15)
    summary = ", ".join(f"{x * 1000:.0f}" for x in sorted(latencies))
    assert median < 0.5, f"median {median * 1000:.0f} ms: {summary}"
    assert max(latencies) < POLL / 10, f"a start waited for the safety-net poll: {summary}"
    # Woken by polling alone, P(start < 150 ms) = 0.3 per job, and 15 of 20
    # such starts would happen with probability ~2e-5.
    assert fast >= 15, f"only {fast} of {SAMPLES} started within 150 ms (ms: {summary})"
