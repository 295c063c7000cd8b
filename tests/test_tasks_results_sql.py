"""Task results in the broker's own SQL database: ``results=True`` with a
``postgresql://`` or ``sqlite:///`` broker (psycopg and the stdlib sqlite3
as the judges of the rows and their expiry)."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import foxtive
from foxtive.results_sql import PostgresResultStore, SqliteResultStore

from .conftest import fast_retries
from .contract.kits.postgres import POSTGRES_URL, drop_schema, judge_connection, postgres_answers

needs_pg = pytest.mark.skipif(postgres_answers() is not None, reason=str(postgres_answers()))


@pytest.fixture
def schema() -> Iterator[str]:
    name = f"fxp_sqlops_res_{uuid.uuid4().hex[:10]}"
    try:
        yield name
    finally:
        drop_schema(name)


def pg_row(schema: str, task_id: str) -> tuple[Any, ...] | None:
    with judge_connection() as conn:
        row: tuple[Any, ...] | None = conn.execute(
            f'SELECT record, extract(epoch FROM expires_at - now()) FROM "{schema}".results '
            "WHERE task_id = %s", (task_id,)).fetchone()
    return row


def lite_row(path: Path, task_id: str) -> tuple[Any, ...] | None:
    with sqlite3.connect(path) as conn:
        row: tuple[Any, ...] | None = conn.execute(
            "SELECT record, expires_at - ? FROM foxtive_results WHERE task_id = ?",
            (time.time(), task_id)).fetchone()
    return row


def run_app(app: foxtive.App, queue: str, make_row: Any) -> None:
    """Shared by both databases: pending row with its TTL, a blocking waiter
    on another thread woken by the worker's final write, a failure, an
    unknown id."""

    @app.task(queue=queue)
    def mul(a: int, b: int) -> int:
        return a * b

    @app.task(queue=queue)
    def fails() -> None:
        raise foxtive.PermanentError("nope")

    handle = mul.send_sync(6, 7)
    bad = fails.send_sync()
    row = make_row(handle.id)
    assert row is not None and row[0] == '{"status":"pending"}'
    assert 0 < row[1] <= 120
    assert asyncio.run(handle.status()) == "pending"
    got: list[Any] = []
    woke: list[float] = []

    def wait() -> None:
        got.append(handle.result_sync(timeout=30))
        woke.append(time.monotonic())

    waiter = threading.Thread(target=wait)
    waiter.start()
    assert app.pool(queue).run_until_idle(timeout=30.0)
    idle_at = time.monotonic()
    waiter.join(30)
    assert got == [42]
    assert woke[0] - idle_at < 1.0, "the waiter was not woken promptly"
    assert handle.result_sync(timeout=1) == 42          # the row stays until its TTL
    assert asyncio.run(handle.status()) == "succeeded"
    with pytest.raises(foxtive.TaskError) as info:
        bad.result_sync(timeout=5)
    assert (info.value.type_name, info.value.message, info.value.attempts) == (
        "PermanentError", "nope", 1)
    never = foxtive.TaskHandle(uuid.uuid4().hex, "x", queue, app)
    assert asyncio.run(never.status()) == "unknown"
    with pytest.raises(TimeoutError):
        never.result_sync(timeout=0.2)


@needs_pg
def test_results_on_postgres_with_ttl_and_listen_wait(schema: str) -> None:
    app = foxtive.App("res-pg", broker=f"{POSTGRES_URL}?schema={schema}", results=True,
                      result_ttl=120.0, retry=fast_retries(0))
    try:
        run_app(app, "sqlops-res", lambda tid: pg_row(schema, tid))
    finally:
        app.close()


@needs_pg
async def test_postgres_async_waiter_wakes_on_notify(schema: str) -> None:
    """The async waiter sleeps on the LISTEN connection: woken by the final
    write's NOTIFY, not by a poll (nothing else would wake it for 30 s)."""
    store = PostgresResultStore(f"{POSTGRES_URL}?schema={schema}", ttl=60.0)
    writer = PostgresResultStore(POSTGRES_URL, ttl=60.0, schema=schema)
    task_id = uuid.uuid4().hex
    try:
        await store.mark(task_id, "running")
        waiting = asyncio.ensure_future(store.wait(task_id, timeout=30))
        await asyncio.sleep(0.2)  # the waiter is asleep, not done
        assert not waiting.done()
        assert await store.status(task_id) == "running"
        written = time.monotonic()
        await writer.finish(task_id, {"status": "succeeded", "value": [1, "a"]})
        assert await asyncio.wait_for(waiting, 10) == [1, "a"]
        assert time.monotonic() - written < 1.0
    finally:
        await store.close()
        await writer.close()


@needs_pg
async def test_postgres_expired_results_are_deleted(schema: str) -> None:
    store = PostgresResultStore(POSTGRES_URL, ttl=0.3, schema=schema)
    try:
        old = [uuid.uuid4().hex for _ in range(3)]
        for t in old:
            await store.finish(t, {"status": "succeeded", "value": 1})
        assert await store.wait(old[0], timeout=1) == 1
        await asyncio.sleep(0.4)  # past the TTL: this test is about time passing
        assert await store.status(old[0]) == "unknown"      # reads ignore expired rows
        with pytest.raises(TimeoutError):
            await store.wait(old[0], timeout=0.1)
        # The next write deletes them (its expiry round is due).
        await store.mark(uuid.uuid4().hex, "pending")
        with judge_connection() as conn:
            left = conn.execute(f'SELECT count(*) FROM "{schema}".results '
                                "WHERE task_id = ANY(%s)", (old,)).fetchone()
        assert left == (0,)
    finally:
        await store.close()


def test_results_on_sqlite_with_ttl_and_in_process_wake(tmp_path: Path) -> None:
    path = tmp_path / "res.db"
    app = foxtive.App("res-lite", broker=f"sqlite:///{path}", results=True, result_ttl=120.0,
                      retry=fast_retries(0))
    try:
        run_app(app, "sqlops-res", lambda tid: lite_row(path, tid))
    finally:
        app.close()


def test_sqlite_waiter_sees_another_process_write(tmp_path: Path) -> None:
    path = tmp_path / "xproc.db"
    store = SqliteResultStore(f"sqlite:///{path}", ttl=60.0)
    task_id = uuid.uuid4().hex
    store.mark_sync([task_id], "running")
    child = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import asyncio, sys
        from foxtive.results_sql import SqliteResultStore
        s = SqliteResultStore({str(path)!r}, ttl=60.0)
        sys.stdin.readline()
        asyncio.run(s.finish({task_id!r}, {{"status": "failed", "error": {{
            "type": "KeyError", "message": "'k'", "attempts": 3}}}}))
        print("written", flush=True)
    """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert child.stdin is not None and child.stdout is not None
    try:
        errors: list[BaseException] = []

        def wait() -> None:
            try:
                store.wait_sync(task_id, timeout=30)
            except BaseException as e:
                errors.append(e)

        waiter = threading.Thread(target=wait)
        waiter.start()
        child.stdin.write("go\n")
        child.stdin.flush()
        assert child.stdout.readline().strip() == "written"
        written = time.monotonic()
        waiter.join(30)
        assert time.monotonic() - written < 1.0, "the poll back-off is capped at 250 ms"
        assert len(errors) == 1 and isinstance(errors[0], foxtive.TaskError)
        assert (errors[0].type_name, errors[0].attempts) == ("KeyError", 3)
    finally:
        child.wait(30)
        asyncio.run(store.close())


async def test_sqlite_expired_results_are_deleted(tmp_path: Path) -> None:
    path = tmp_path / "ttl.db"
    store = SqliteResultStore(str(path), ttl=0.3)
    try:
        old = [uuid.uuid4().hex for _ in range(3)]
        for t in old:
            await store.finish(t, {"status": "succeeded", "value": "v"})
        assert await store.wait(old[1], timeout=1) == "v"
        await asyncio.sleep(0.4)  # past the TTL: this test is about time passing
        assert await store.status(old[1]) == "unknown"
        await store.mark(uuid.uuid4().hex, "pending")
        with sqlite3.connect(path) as conn:
            n = conn.execute("SELECT count(*) FROM foxtive_results WHERE task_id IN (?, ?, ?)",
                             old).fetchone()
        assert n == (0,)
    finally:
        await store.close()
