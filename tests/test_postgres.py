"""PostgresBackend from Python against the real database: transactional
enqueue (psycopg 3, sync and async), wake-up latency, URLs and redaction.
Judged with psycopg; every test has its own schema and drops it."""

from __future__ import annotations

import asyncio
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest

import foxtive

from .contract.kits.postgres import (
    POSTGRES_URL,
    postgres_answers,
    schema_fixture,
    waiting_jobs,
)

pytestmark = pytest.mark.skipif(postgres_answers() is not None, reason=str(postgres_answers()))


schema = schema_fixture("fxp_")


async def drain(backend: foxtive.PostgresBackend) -> list[foxtive.Message]:
    seen: list[foxtive.Message] = []

    async def handler(m: foxtive.Message) -> None:
        seen.append(m)

    pool = foxtive.WorkerPoolBuilder("pg").add_worker(handler, id="h").build()
    assert await pool.run_until_idle_async(backend, timeout=30)
    return seen


async def test_sync_transaction_rollback_means_no_job_commit_means_one(schema: str) -> None:
    backend = foxtive.PostgresBackend(POSTGRES_URL, "orders", schema=schema)
    with psycopg.connect(POSTGRES_URL) as conn:
        with conn.transaction():
            conn.execute("SELECT 1")
            await backend.publish(b"rolled-back", message_id="r-1", transaction=conn)
            assert waiting_jobs(schema, "orders") == 0, "not visible before commit"
            raise psycopg.Rollback()
    assert waiting_jobs(schema, "orders") == 0
    with psycopg.connect(POSTGRES_URL) as conn:
        with conn.transaction():
            job_id = await backend.publish(b"committed", headers={"n": 1, "f": 1.5},
                                           transaction=conn)
    assert waiting_jobs(schema, "orders") == 1
    seen = await drain(backend)
    assert [(m.body, m.id, m.attempt) for m in seen] == [(b"committed", job_id, 1)]
    assert seen[0].headers == {"n": 1, "f": 1.5}
    assert waiting_jobs(schema, "orders") == 0


async def test_async_transaction_enqueue_many(schema: str) -> None:
    backend = foxtive.PostgresBackend(POSTGRES_URL, "orders", schema=schema)
    async with await psycopg.AsyncConnection.connect(POSTGRES_URL) as conn:
        async with conn.transaction():
            await backend.publish_many([b"a", b"b"], transaction=conn)
            raise psycopg.Rollback()
        async with conn.transaction():
            ids = await backend.publish_many([b"c", b"d"], delay=0.0, transaction=conn)
    assert len(set(ids)) == 2
    seen = await drain(backend)
    assert sorted(m.body for m in seen) == [b"c", b"d"]
    assert sorted(m.id for m in seen) == sorted(ids)


async def test_an_idle_worker_starts_a_committed_job_at_once(schema: str) -> None:
    """Woken by NOTIFY at commit, not by polling (poll_interval is 30 s)."""
    backend = foxtive.PostgresBackend(POSTGRES_URL, "wake", schema=schema, poll_interval=30.0)
    await backend.ensure_schema()
    started: asyncio.Queue[float] = asyncio.Queue()

    async def handler(m: foxtive.Message) -> None:
        started.put_nowait(time.monotonic())

    pool = foxtive.WorkerPoolBuilder("pg-wake").add_worker(handler, id="h").build()
    task = asyncio.ensure_future(pool.run_async(backend, handle_signals=False))
    latencies = []
    try:
        async with await psycopg.AsyncConnection.connect(POSTGRES_URL) as conn:
            for i in range(10):
                await asyncio.sleep(0.1)  # the worker is idle again
                async with conn.transaction():
                    await backend.publish(f"w-{i}".encode(), transaction=conn)
                committed = time.monotonic()
                latencies.append(await asyncio.wait_for(started.get(), 10) - committed)
    finally:
        pool.shutdown()
        await asyncio.wait_for(task, 30)
    # Measured in a benchmark; asserted loosely here (a loaded 2-core machine).
    assert statistics.median(latencies) < 0.5, latencies


async def test_backend_from_url_and_the_password_never_shows(schema: str) -> None:
    url = POSTGRES_URL.replace("postgresql://postgres@", "postgresql://postgres:s3cret@")
    backend = foxtive.backend_from_url(f"{url}?schema={schema}", "q", lease_timeout=3.0)
    assert isinstance(backend, foxtive.PostgresBackend)
    assert (backend.schema, backend.queue, backend.lease_timeout) == (schema, "q", 3.0)
    assert "s3cret" not in repr(backend) and "s3cret" not in backend.url
    await backend.publish(b"x")  # trust auth: any password is accepted
    assert waiting_jobs(schema, "q") == 1
    await backend.close()
    with pytest.raises(foxtive.ConfigError) as info:
        foxtive.PostgresBackend("postgresql://u:s3cret@127.0.0.1:5432/test?bogus=1")
    assert "s3cret" not in str(info.value)
    with pytest.raises(foxtive.ConfigError, match="unknown option"):
        foxtive.backend_from_url(url, "q", prefetch=5)


async def test_foxtive_dlq_cli_lists_replays_and_purges_the_table(schema: str,
                                                                  tmp_path: Path) -> None:
    url = f"{POSTGRES_URL}?schema={schema}"
    backend = foxtive.PostgresBackend(url, "billing")
    await backend.publish_many([b"bad-1", b"bad-2"])

    async def handler(m: foxtive.Message) -> None:
        raise ValueError("nope")

    pool = (foxtive.WorkerPoolBuilder("pg-dlq").add_worker(handler, id="h")
            .with_middleware(foxtive.RetryHandler(max_retries=0)).build())
    assert await pool.run_until_idle_async(backend, timeout=30)
    assert len(backend.dead_letters()) == 2

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "foxtive", "--log-level", "ERROR", "dlq",
                               *args, "--broker", url, "--queue", "billing"],
                              cwd=tmp_path, capture_output=True, text=True, timeout=60)

    listed = cli("list", "--json")
    assert listed.returncode == 0, listed.stderr
    records = json.loads(listed.stdout)
    assert len(records) == 2
    assert {r["error_type"] for r in records} == {"ValueError"}
    first = records[0]["original_id"]
    shown = cli("show", first)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)[0]["body"] in ("bad-1", "bad-2")
    replayed = cli("replay", first)
    assert replayed.returncode == 0, replayed.stderr
    assert "replayed 1" in replayed.stdout
    assert waiting_jobs(schema, "billing") == 1
    purged = cli("purge", "--yes")
    assert purged.returncode == 0, purged.stderr
    assert "purged 1" in purged.stdout
    assert backend.dead_letters() == []
    await backend.close()
