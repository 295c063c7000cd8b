"""A deduplicated send and the result store (issue 14): the second send of a
``dedup_key`` enqueues nothing, so it must leave no record of its own id
("pending" forever before this was fixed); its handle is the first task's
(same id, same status, same result). Judged on Redis (redis-py), SQLite
(sqlite3) and PostgreSQL (psycopg); each test has its own queue, file or
schema and removes it."""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis

import foxtive
from foxtive.results import MemoryResultStore, RedisResultStore, succeeded
from foxtive.results_sql import PostgresResultStore, SqliteResultStore

from .conftest import fast_retries
from .contract.kits.postgres import POSTGRES_URL, drop_schema, judge_connection, postgres_answers
from .redis_support import REDIS_URL

needs_pg = pytest.mark.skipif(postgres_answers() is not None, reason=str(postgres_answers()))


class Broker:
    """One broker for one test, and a judge that reads its result records."""

    def __init__(self, url: str, queue: str, records: Callable[[str], list[str]],
                 cleanup: Callable[[], None]) -> None:
        self.url = url
        self.queue = queue
        self.records = records  # task id -> the statuses stored for it (0 or 1)
        self.cleanup = cleanup


@pytest.fixture(params=["redis", "sqlite", "postgres"])
def broker(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Broker]:
    yield from make_broker(request.param, tmp_path)


@pytest.fixture(params=["sqlite", "postgres"])
def sql_broker(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Broker]:
    """The brokers with ``transaction=`` (Redis raises ConfigError: test_task_options)."""
    yield from make_broker(request.param, tmp_path)


def make_broker(kind: str, tmp_path: Path) -> Iterator[Broker]:
    if kind == "redis":
        queue = f"foxtive-test:dedupres:{uuid.uuid4().hex[:12]}"
        client = redis.Redis.from_url(REDIS_URL)
        seen: list[str] = []

        def redis_records(task_id: str) -> list[str]:
            seen.append(task_id)
            raw = client.get(f"foxtive:result:{task_id}")
            return [] if raw is None else [foxtive_status(raw)]

        def redis_cleanup() -> None:
            keys = list(client.scan_iter(match=f"{queue}*"))
            for t in seen:
                keys += [f"foxtive:result:{t}", f"foxtive:result:{t}:done"]
            if keys:
                client.delete(*keys)
            client.close()

        yield Broker(REDIS_URL, queue, redis_records, redis_cleanup)
        redis_cleanup()
    elif kind == "sqlite":
        path = tmp_path / "dedup.db"

        def lite_records(task_id: str) -> list[str]:
            with sqlite3.connect(path) as conn:
                return [r[0] for r in conn.execute(
                    "SELECT status FROM foxtive_results WHERE task_id = ?", (task_id,))]

        yield Broker(f"sqlite:///{path}", "dedupres", lite_records, lambda: None)
    else:
        if postgres_answers() is not None:
            pytest.skip(str(postgres_answers()))
        schema = f"fx_dedupres_{uuid.uuid4().hex[:10]}"

        def pg_records(task_id: str) -> list[str]:
            with judge_connection() as conn:
                return [r[0] for r in conn.execute(
                    f'SELECT status FROM "{schema}".results WHERE task_id = %s', (task_id,))]

        try:
            yield Broker(f"{POSTGRES_URL}?schema={schema}", "dedupres", pg_records,
                         lambda: None)
        finally:
            drop_schema(schema)


def foxtive_status(raw: bytes) -> str:
    import json
    return str(json.loads(raw)["status"])


def make_app(broker: Broker) -> tuple[foxtive.App, Any]:
    app = foxtive.App(f"dedupres-{uuid.uuid4().hex[:8]}", broker=broker.url, results=True,
                      retry=fast_retries(1))

    @app.task(queue=broker.queue, name="echo")
    async def echo(label: str) -> str:
        return label

    return app, echo


async def test_a_deduplicated_send_leaves_no_record_and_reports_the_first(
        broker: Broker) -> None:
    app, echo = make_app(broker)
    try:
        key = f"k-{uuid.uuid4().hex[:8]}"
        first = await echo.options(dedup_key=key, dedup_ttl=60).send("first")
        second_id = f"second-{uuid.uuid4().hex}"
        second = await echo.options(dedup_key=key, dedup_ttl=60,
                                    message_id=second_id).send("second")
        third_id = f"third-{uuid.uuid4().hex}"
        third = await asyncio.to_thread(  # send_sync from a thread with no loop
            lambda: echo.options(dedup_key=key, dedup_ttl=60,
                                 message_id=third_id).send_sync("third"))
        # The handle of a suppressed send is the first task's...
        assert second == first and third == first
        assert await second.status() == "pending"
        # ...and nothing was written for the ids that were never enqueued.
        assert broker.records(first.id) == ["pending"]
        assert broker.records(second_id) == []
        assert broker.records(third_id) == []
        assert await app.run_until_idle_async(timeout=30.0)
        assert await second.result(timeout=10) == "first"
        assert await second.status() == "succeeded"
        assert broker.records(second_id) == []
    finally:
        await app.aclose()


async def test_a_send_without_dedup_is_pending_from_send_on(broker: Broker) -> None:
    app, echo = make_app(broker)
    try:
        handle = await echo.send("plain")
        assert broker.records(handle.id) == ["pending"]
        handles = await echo.send_many([("a",), ("b",)])
        assert [broker.records(h.id) for h in handles] == [["pending"], ["pending"]]
        assert await app.run_until_idle_async(timeout=30.0)
        assert [await h.result(timeout=10) for h in handles] == ["a", "b"]
    finally:
        await app.aclose()


# -- mark_new on each store: a live record is never overwritten ---------------

@pytest.fixture
async def stores(tmp_path: Path) -> AsyncIterator[list[Any]]:
    out: list[Any] = [MemoryResultStore(60.0), RedisResultStore(REDIS_URL, 60.0),
                      SqliteResultStore(str(tmp_path / "store.db"), 60.0)]
    schema = None
    if postgres_answers() is None:
        schema = f"fx_dedupres_{uuid.uuid4().hex[:10]}"
        out.append(PostgresResultStore(f"{POSTGRES_URL}?schema={schema}", 60.0))
    try:
        yield out
    finally:
        for store in out:
            await store.close()
        if schema is not None:
            drop_schema(schema)


async def test_mark_new_leaves_a_live_record_alone(stores: list[Any]) -> None:
    ids = []
    try:
        for store in stores:
            done, fresh = uuid.uuid4().hex, uuid.uuid4().hex
            ids += [done, fresh]
            await store.finish(done, succeeded("v"))
            await store.mark_new(done, "pending")        # a worker was faster: kept
            await store.mark_new(fresh, "pending")       # nothing there: written
            assert await store.status(done) == "succeeded", store
            assert await store.wait(done, 1.0) == "v"
            assert await store.status(fresh) == "pending", store
    finally:
        client = redis.Redis.from_url(REDIS_URL)
        client.delete(*[f"foxtive:result:{t}{s}" for t in ids for s in ("", ":done")])
        client.close()


# -- in a transaction: the pending record commits or rolls back with the task --

def connect(broker: Broker) -> Any:
    if broker.url.startswith("sqlite"):
        return sqlite3.connect(broker.url.removeprefix("sqlite:///"))
    return psycopg.connect(POSTGRES_URL)


def test_transaction_records_commit_or_roll_back_with_the_tasks(sql_broker: Broker) -> None:
    app, echo = make_app(sql_broker)
    try:
        conn = connect(sql_broker)
        try:
            rolled = echo.options(transaction=conn).send_sync("rolled")
            rolled_many = echo.options(transaction=conn).send_many_sync([("r1",), ("r2",)])
            conn.rollback()
            kept = echo.options(transaction=conn).send_sync("kept")
            key = f"k-{uuid.uuid4().hex[:8]}"
            first = echo.options(transaction=conn, dedup_key=key, dedup_ttl=60).send_sync("d1")
            again = echo.options(transaction=conn, dedup_key=key, dedup_ttl=60,
                                 message_id="again-" + key).send_sync("d2")
            conn.commit()
        finally:
            conn.close()
        assert again == first
        for gone in [rolled, *rolled_many]:
            assert sql_broker.records(gone.id) == []
        assert sql_broker.records(kept.id) == ["pending"]
        assert sql_broker.records(first.id) == ["pending"]
        assert sql_broker.records("again-" + key) == []
        assert app.run_until_idle(timeout=30.0)
        assert kept.result_sync(timeout=10) == "kept"
        assert again.result_sync(timeout=10) == "d1"
    finally:
        app.close()
