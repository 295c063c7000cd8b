"""Task send options on the real backends: ``transaction`` (the task exists
only if the caller's transaction commits), ``priority`` (9 runs first) and
``dedup_key``/``dedup_ttl`` (a second send within the TTL enqueues nothing
and returns the first task's handle). Each test has its own queue, file or
schema and removes it."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

import foxtive

from .conftest import fast_retries
from .contract.kits.postgres import POSTGRES_URL, drop_schema, postgres_answers

needs_postgres = pytest.mark.skipif(postgres_answers() is not None,
                                    reason=str(postgres_answers()))


def on_plain_thread(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Run ``fn`` on a new thread with no event loop (Django, Flask)."""
    out: list[Any] = []

    def body() -> None:
        try:
            out.append(fn(*args, **kwargs))
        except BaseException as e:
            out.append(e)

    t = threading.Thread(target=body)
    t.start()
    t.join(30)
    assert out, "the call did not finish"
    if isinstance(out[0], BaseException):
        raise out[0]
    return out[0]


class Recorder:
    """An app with one task that records its argument, in run order."""

    def __init__(self, broker: str, **kw: Any) -> None:
        kw.setdefault("retry", fast_retries(1))
        self.app = foxtive.App(f"opts-{uuid.uuid4().hex[:8]}", broker=broker, **kw)
        self.ran: list[str] = []
        self.queue = f"taskopts-{uuid.uuid4().hex[:8]}"

        @self.app.task(queue=self.queue, name="record")
        async def record(label: str) -> str:
            self.ran.append(label)
            return label

        self.task = record

    async def drain(self) -> None:
        assert await self.app.run_until_idle_async(timeout=30.0)


@pytest.fixture
def sqlite_path(tmp_path: Path) -> str:
    return str(tmp_path / "taskopts.db")


@pytest.fixture
def pg_schema() -> Iterator[str]:
    name = f"fx_taskopts_{uuid.uuid4().hex[:10]}"
    try:
        yield name
    finally:
        drop_schema(name)


# -- transaction -------------------------------------------------------------

async def test_sqlite_transaction_rollback_drops_the_task_commit_runs_it(
        sqlite_path: str) -> None:
    r = Recorder(f"sqlite:///{sqlite_path}")
    conn = sqlite3.connect(sqlite_path)
    try:
        await r.task.options(transaction=conn).send("rolled-back")
        conn.rollback()
        await r.task.options(transaction=conn).send("committed")
        await r.task.options(transaction=conn).send_many([("many-1",), ("many-2",)])
        conn.commit()
    finally:
        conn.close()
    await r.drain()
    assert sorted(r.ran) == ["committed", "many-1", "many-2"]
    await r.app.aclose()


def test_sqlite_transaction_from_sync_code(sqlite_path: str) -> None:
    r = Recorder(f"sqlite:///{sqlite_path}")

    def view(label: str, commit: bool) -> str:
        conn = sqlite3.connect(sqlite_path)  # the view's own connection, on its thread
        try:
            handle = r.task.options(transaction=conn).send_sync(label)
            handles = r.task.options(transaction=conn).send_many_sync([(label + "-b",)])
            (conn.commit if commit else conn.rollback)()
            return f"{handle.id} {handles[0].id}"
        finally:
            conn.close()

    on_plain_thread(view, "kept", True)
    on_plain_thread(view, "dropped", False)
    asyncio.run(r.drain())
    assert sorted(r.ran) == ["kept", "kept-b"]
    r.app.close()


@needs_postgres
async def test_postgres_transaction_async_connection(pg_schema: str) -> None:
    r = Recorder(f"{POSTGRES_URL}?schema={pg_schema}")
    async with await psycopg.AsyncConnection.connect(POSTGRES_URL) as conn:
        await r.task.options(transaction=conn).send("rolled-back")
        await r.task.options(transaction=conn).send_many([("rolled-back-2",)])
        await conn.rollback()
        await r.task.options(transaction=conn).send("committed")
        await r.task.options(transaction=conn).send_many([("many-1",), ("many-2",)])
        await conn.commit()
    await r.drain()
    assert sorted(r.ran) == ["committed", "many-1", "many-2"]
    await r.app.aclose()


@needs_postgres
def test_postgres_transaction_sync_connection(pg_schema: str) -> None:
    r = Recorder(f"{POSTGRES_URL}?schema={pg_schema}")

    def view(label: str, commit: bool) -> None:
        with psycopg.connect(POSTGRES_URL) as conn:
            r.task.options(transaction=conn).send_sync(label)
            (conn.commit if commit else conn.rollback)()

    on_plain_thread(view, "dropped", False)
    on_plain_thread(view, "kept", True)
    asyncio.run(r.drain())
    assert r.ran == ["kept"]
    r.app.close()


async def test_transaction_on_a_broker_without_one_is_a_config_error() -> None:
    r = Recorder("memory://")
    conn = sqlite3.connect(":memory:")
    try:
        with pytest.raises(foxtive.ConfigError, match="transaction"):
            await r.task.options(transaction=conn).send("x")
        with pytest.raises(foxtive.ConfigError, match="transaction"):
            r.task.options(transaction=conn).send_sync("x")
        with pytest.raises(foxtive.ConfigError, match="transaction"):
            await r.task.options(transaction=conn).send_many([("x",)])
    finally:
        conn.close()
    assert r.app.backend(r.queue).qsize() == 0
    await r.app.aclose()
