"""Retention (``keep_finished``) on the real PostgreSQL and a real SQLite
file: an acked job is kept (visible in the finished table, no longer in the
queue) and deleted once expired, in batches that never hold the queue up.
Judged with psycopg and the stdlib sqlite3."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import foxtive

from .contract.kits.postgres import POSTGRES_URL, judge_connection, postgres_answers, schema_fixture

needs_pg = pytest.mark.skipif(postgres_answers() is not None, reason=str(postgres_answers()))


schema = schema_fixture("fxp_sqlops_")


def pg_count(sql: str, *params: object) -> int:
    with judge_connection() as conn:
        row = conn.execute(sql, params).fetchone()
    return int(row[0]) if row else 0


def lite_count(path: Path, sql: str, *params: object) -> int:
    with sqlite3.connect(path) as conn:
        row = conn.execute(sql, params).fetchone()
    return int(row[0]) if row else 0


async def until(check: Callable[[], bool], timeout: float, what: str) -> None:
    """Wait for a state the database reaches on its own (the retention
    duty's next round): look every 50 ms, fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for: {what}")
        await asyncio.sleep(0.05)


class Recorder:
    def __init__(self) -> None:
        self.done: dict[str, float] = {}
        self.twice = 0

    async def __call__(self, m: foxtive.Message) -> None:
        if m.id in self.done:
            self.twice += 1
        self.done[m.id] = time.monotonic()


def start(backend: foxtive.backends.NativeBackend, handler: Recorder,
          name: str) -> tuple[foxtive.WorkerPool, asyncio.Future[None]]:
    pool = foxtive.WorkerPoolBuilder(name).add_worker(handler, id="h").build()
    return pool, asyncio.ensure_future(pool.run_async(backend, handle_signals=False))


@needs_pg
async def test_postgres_kept_job_is_visible_then_gone(schema: str) -> None:
    backend = foxtive.PostgresBackend(POSTGRES_URL, "kept", schema=schema, keep_finished=1.0)
    assert backend.keep_finished == 1.0
    seen = Recorder()
    pool, task = start(backend, seen, "pg-keep")
    q = f'"{schema}"'
    try:
        ids = await backend.publish_many([f"k-{i}".encode() for i in range(50)])
        await until(lambda: len(seen.done) == 50, 20, "50 jobs handled")
        # Kept: in finished_jobs with its fields, no longer in the queue.
        await until(lambda: pg_count(f"SELECT count(*) FROM {q}.finished_jobs") == 50, 5,
                    "50 kept rows")
        assert pg_count(f"SELECT count(*) FROM {q}.jobs") == 0
        with judge_connection() as conn:
            row = conn.execute(f"SELECT message_id, body, attempts, finished_at <= now() "
                               f"FROM {q}.finished_jobs WHERE message_id = %s",
                               (ids[7],)).fetchone()
        assert row == (ids[7], b"k-7", 1, True)
        # Gone once expired (1 s), while the pool still runs.
        await until(lambda: pg_count(f"SELECT count(*) FROM {q}.finished_jobs") == 0, 15,
                    "kept rows deleted")
    finally:
        pool.shutdown()
        await asyncio.wait_for(task, 30)
    assert seen.twice == 0


@needs_pg
async def test_postgres_default_deletes_at_ack(schema: str) -> None:
    backend = foxtive.PostgresBackend(POSTGRES_URL, "plain", schema=schema)
    assert backend.keep_finished == 0.0
    seen = Recorder()
    pool, task = start(backend, seen, "pg-plain")
    try:
        await backend.publish_many([b"a", b"b", b"c"])
        await until(lambda: len(seen.done) == 3, 20, "3 jobs handled")
        await until(lambda: pg_count(f'SELECT count(*) FROM "{schema}".jobs') == 0, 5,
                    "acked rows deleted")
        assert pg_count(f'SELECT count(*) FROM "{schema}".finished_jobs') == 0
    finally:
        pool.shutdown()
        await asyncio.wait_for(task, 30)


@needs_pg
async def test_postgres_queue_drains_while_retention_deletes(schema: str) -> None:
    """100k expired kept rows are deleted (1,000 per statement) while jobs
    keep flowing: every job published during the deletion runs promptly."""
    backend = foxtive.PostgresBackend(POSTGRES_URL, "busy", schema=schema, keep_finished=2.0)
    await backend.ensure_schema()
    q = f'"{schema}"'
    with judge_connection() as conn:
        conn.execute(
            f"INSERT INTO {q}.finished_jobs (id, queue, message_id, body, attempts, created_at, "
            f"finished_at) SELECT -g, 'busy', 'old-' || g, '\\x00', 1, now() - interval '2 h', "
            f"now() - interval '1 h' FROM generate_series(1, 100000) AS g")
    old = f"SELECT count(*) FROM {q}.finished_jobs WHERE message_id LIKE 'old-%%'"
    seen = Recorder()
    published: dict[str, float] = {}
    remaining: list[tuple[float, int]] = []
    pool, task = start(backend, seen, "pg-busy")
    try:
        deadline = time.monotonic() + 60
        while True:
            left = pg_count(old)
            remaining.append((time.monotonic(), left))
            if left == 0 or time.monotonic() > deadline:
                break
            for mid in await backend.publish_many([b"x"] * 20):
                published[mid] = time.monotonic()
            await asyncio.sleep(0.01)
        assert remaining[-1][1] == 0, "the expired rows were not all deleted"
        await until(lambda: len(seen.done) == len(published), 20, "every job handled")
    finally:
        pool.shutdown()
        await asyncio.wait_for(task, 30)
    # Deletion took several rounds and jobs ran during it, none held up.
    during = [t for t, n in remaining if 0 < n < 100000]
    assert during, f"the deletion was never seen in progress: {remaining[:3]}...{remaining[-3:]}"
    start_t, end_t = during[0], remaining[-1][0]
    ran_during = [mid for mid, t in seen.done.items() if start_t <= t <= end_t]
    assert ran_during, "no job ran while retention deleted"
    waits = sorted(seen.done[mid] - t for mid, t in published.items())
    assert waits[len(waits) // 2] < 0.5 and waits[-1] < 3.0, (waits[len(waits) // 2], waits[-1])
    assert seen.twice == 0


async def test_sqlite_kept_job_is_visible_then_gone(tmp_path: Path) -> None:
    path = tmp_path / "keep.db"
    backend = foxtive.SqliteBackend(str(path), "kept", keep_finished=1.0)
    assert backend.keep_finished == 1.0
    seen = Recorder()
    pool, task = start(backend, seen, "lite-keep")
    try:
        ids = await backend.publish_many([f"k-{i}".encode() for i in range(50)])
        await until(lambda: len(seen.done) == 50, 20, "50 jobs handled")
        await until(lambda: lite_count(path, "SELECT count(*) FROM foxtive_finished_jobs") == 50,
                    5, "50 kept rows")
        assert lite_count(path, "SELECT count(*) FROM foxtive_jobs") == 0
        with sqlite3.connect(path) as conn:
            row = conn.execute("SELECT message_id, body, attempts, finished_at <= ? FROM "
                               "foxtive_finished_jobs WHERE message_id = ?",
                               (time.time(), ids[3])).fetchone()
        assert row == (ids[3], b"k-3", 1, 1)
        await until(lambda: lite_count(path, "SELECT count(*) FROM foxtive_finished_jobs") == 0,
                    15, "kept rows deleted")
        assert lite_count(path, "SELECT max(version) FROM foxtive_schema") >= 3
    finally:
        pool.shutdown()
        await asyncio.wait_for(task, 30)
    assert seen.twice == 0


async def test_sqlite_queue_drains_while_retention_deletes(tmp_path: Path) -> None:
    path = tmp_path / "busy.db"
    backend = foxtive.SqliteBackend(str(path), "busy", keep_finished=2.0)
    await backend.publish(b"warm-up")  # creates the file and its tables
    with sqlite3.connect(path) as conn:
        conn.executemany(
            "INSERT INTO foxtive_finished_jobs (id, queue, message_id, body, attempts, "
            "created_at, finished_at) VALUES (?, 'busy', ?, x'00', 1, 0, ?)",
            ((-i, f"old-{i}", time.time() - 3600) for i in range(1, 60001)))
    old = "SELECT count(*) FROM foxtive_finished_jobs WHERE message_id LIKE 'old-%'"
    seen = Recorder()
    published: dict[str, float] = {}
    remaining: list[tuple[float, int]] = []
    pool, task = start(backend, seen, "lite-busy")
    try:
        deadline = time.monotonic() + 60
        while True:
            left = lite_count(path, old)
            remaining.append((time.monotonic(), left))
            if left == 0 or time.monotonic() > deadline:
                break
            for mid in await backend.publish_many([b"x"] * 20):
                published[mid] = time.monotonic()
            await asyncio.sleep(0.01)
        assert remaining[-1][1] == 0, "the expired rows were not all deleted"
        await until(lambda: len(seen.done) == len(published) + 1, 20, "every job handled")
    finally:
        pool.shutdown()
        await asyncio.wait_for(task, 30)
    waits = sorted(seen.done[mid] - t for mid, t in published.items())
    assert waits[len(waits) // 2] < 0.5 and waits[-1] < 3.0, (waits[len(waits) // 2], waits[-1])
    assert seen.twice == 0
