"""A SQLite pool that stops while a claim is running on the blocking pool
gives that batch back at once, instead of leaving it leased until
``lease_timeout`` (the fetch loop drops its receive when it stops)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import foxtive


async def test_repeated_runs_until_idle_never_wait_for_a_lease(tmp_path: Path) -> None:
    # A stop landing during a claim happened about once per two runs here;
    # each such batch used to come back only after lease_timeout (5 s).
    backend = foxtive.SqliteBackend(str(tmp_path / "stop.db"), "stop", lease_timeout=5.0)
    seen: list[str] = []

    async def handler(m: foxtive.Message) -> None:
        seen.append(m.id)

    pool = (foxtive.WorkerPoolBuilder("stop").with_concurrency_limit(50)
            .add_worker(handler, id="h").build())

    async def produce() -> None:
        for _ in range(20):
            await backend.publish_many([b"x"] * 50)
            await asyncio.sleep(0.05)

    producer = asyncio.ensure_future(produce())
    worst = 0.0
    while True:
        last = producer.done()
        started = time.monotonic()
        assert await pool.run_until_idle_async(backend, timeout=60)
        worst = max(worst, time.monotonic() - started)
        if last:
            break
    assert len(seen) == 1000 and len(set(seen)) == 1000
    assert worst < 4.0, f"a run waited {worst:.1f} s: a claimed batch was left leased"
