"""Task send options on the real backends: ``transaction`` (the task exists
only if the caller's transaction commits), ``priority`` (9 runs first) and
``dedup_key``/``dedup_ttl`` (a second send within the TTL enqueues nothing
and returns the first task's handle). Each test has its own queue, file or
schema and removes it."""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aio_pika
import psycopg
import pytest

import foxtive

from .conftest import fast_retries
from .contract.kits.postgres import POSTGRES_URL, postgres_answers, schema_fixture
from .rabbit_support import URL as AMQP_URL
from .rabbit_support import delete_queues
from .redis_support import REDIS_URL
from .test_tasks_brokers import send_from_plain_thread as on_plain_thread

needs_postgres = pytest.mark.skipif(postgres_answers() is not None,
                                    reason=str(postgres_answers()))


class Recorder:
    """An app with one task that records its argument, in run order."""

    def __init__(self, broker: Any, queue: str | None = None, **kw: Any) -> None:
        kw.setdefault("retry", fast_retries(1))
        self.app = foxtive.App(f"opts-{uuid.uuid4().hex[:8]}", broker=broker, **kw)
        self.ran: list[str] = []
        self.queue = queue or f"taskopts-{uuid.uuid4().hex[:8]}"

        @self.app.task(queue=self.queue, name="record")
        async def record(label: str) -> str:
            self.ran.append(label)
            return label

        self.task = record

    async def drain(self) -> None:
        """Run what waits, one task at a time (so the run order is the
        delivery order)."""
        pool = self.app.pool(self.queue, concurrency_limit=1)
        assert await pool.run_until_idle_async(timeout=30.0)

    async def send_low_then_high(self) -> None:
        """While no worker runs: plain and low-priority tasks first, then
        high ones; a drain must run the high ones first."""
        await self.task.send("plain-1")
        await self.task.options(priority=1).send("low-1")
        await self.task.options(priority=1).send_many([("low-2",)])
        await self.task.options(priority=9).send("high-1")
        self.task.options(priority=9).send_sync("high-2")
        await self.task.options(priority=5).send("mid-1")

    EXPECTED = ["high-1", "high-2", "mid-1", "low-1", "low-2", "plain-1"]


@pytest.fixture
def sqlite_path(tmp_path: Path) -> str:
    return str(tmp_path / "taskopts.db")


pg_schema = schema_fixture("fx_taskopts_")


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


# -- priority ----------------------------------------------------------------

@pytest.fixture
def amqp_queue() -> Iterator[str]:
    name = f"foxtive-test-taskopts-{uuid.uuid4().hex[:8]}"
    yield name
    delete_queues(name)


def rabbit_factory(**config: Any) -> Any:
    def make(queue: str) -> foxtive.RabbitMqBackend:
        return foxtive.RabbitMqBackend(
            AMQP_URL, foxtive.RabbitMqConsumerConfig(queue_name=queue, **config))
    return make


async def test_memory_priority_runs_high_first() -> None:
    r = Recorder("memory://")
    await r.send_low_then_high()
    await r.drain()
    assert r.ran == Recorder.EXPECTED
    await r.app.aclose()


async def test_sqlite_priority_runs_high_first(sqlite_path: str) -> None:
    r = Recorder(f"sqlite:///{sqlite_path}")
    await r.send_low_then_high()
    await r.drain()
    assert r.ran == Recorder.EXPECTED
    with sqlite3.connect(sqlite_path) as conn:  # the migration made the claim's index
        assert conn.execute("SELECT count(*) FROM sqlite_master WHERE type = 'index' "
                            "AND name = 'foxtive_jobs_next'").fetchone() == (1,)
    await r.app.aclose()


@needs_postgres
async def test_postgres_priority_runs_high_first(pg_schema: str) -> None:
    r = Recorder(f"{POSTGRES_URL}?schema={pg_schema}")
    await r.send_low_then_high()
    async with await psycopg.AsyncConnection.connect(POSTGRES_URL) as conn:
        cur = await conn.execute(
            f'SELECT priority, count(*) FROM "{pg_schema}".jobs GROUP BY 1 ORDER BY 1')
        assert await cur.fetchall() == [(1, 2), (5, 1), (9, 2), (None, 1)]
    await r.drain()
    assert r.ran == Recorder.EXPECTED
    await r.app.aclose()


async def test_rabbitmq_priority_runs_high_first(amqp_queue: str) -> None:
    r = Recorder(rabbit_factory(max_priority=10), queue=amqp_queue)
    await r.send_low_then_high()
    await r.drain()
    assert r.ran == Recorder.EXPECTED
    await r.app.aclose()


async def test_rabbitmq_priority_is_the_amqp_property(amqp_queue: str) -> None:
    """Judged by aio-pika: the broker itself orders them, and the priority
    travels as the message property."""
    r = Recorder(rabbit_factory(max_priority=10), queue=amqp_queue)
    await r.task.options(priority=2).send("low")
    await r.task.options(priority=8).send("high")
    await r.app.aclose()
    conn = await aio_pika.connect(AMQP_URL)
    try:
        ch = await conn.channel()
        queue = await ch.declare_queue(amqp_queue, passive=True)
        got = []
        for _ in range(2):
            m = await queue.get(timeout=5)
            assert m is not None
            got.append((m.priority, m.headers.get("foxtive-priority")))
            await m.ack()
    finally:
        await conn.close()
    assert got == [(8, None), (2, None)]


async def test_rabbitmq_priority_without_max_priority_is_a_config_error(
        amqp_queue: str) -> None:
    r = Recorder(rabbit_factory(), queue=amqp_queue)
    with pytest.raises(foxtive.ConfigError, match="max_priority"):
        await r.task.options(priority=5).send("x")
    assert (await r.task.send("no priority")).queue == amqp_queue  # plain sends still go
    await r.app.aclose()


async def test_redis_streams_priority_is_a_config_error() -> None:
    stream = f"foxtive-test:taskopts:{uuid.uuid4().hex[:12]}"
    r = Recorder(REDIS_URL, queue=stream)
    try:
        with pytest.raises(foxtive.ConfigError, match="priority"):
            await r.task.options(priority=5).send("x")
        with pytest.raises(foxtive.ConfigError, match="priority"):
            await r.app.backend(stream).publish(b"x", priority=1)
    finally:
        await r.app.aclose()
        import redis
        client = redis.Redis.from_url(REDIS_URL)
        assert client.xlen(stream) == 0
        client.delete(stream, f"{stream}:dlq", f"{stream}:delayed")
        client.close()


def test_priority_out_of_range_is_a_config_error() -> None:
    backend = foxtive.MemoryBackend("taskopts-range")
    for bad in (10, -1, True, "5"):
        with pytest.raises(foxtive.ConfigError, match="priority"):
            backend.publish_sync(b"x", priority=bad)  # type: ignore[arg-type]
    assert backend.qsize() == 0


# -- dedup -------------------------------------------------------------------

async def send_twice(r: Recorder, key: str, ttl: float = 60.0
                     ) -> tuple[foxtive.TaskHandle, foxtive.TaskHandle]:
    first = await r.task.options(dedup_key=key, dedup_ttl=ttl).send("first")
    second = await r.task.options(dedup_key=key, dedup_ttl=ttl).send("second")
    return first, second


async def test_memory_dedup_returns_the_first_handle() -> None:
    r = Recorder("memory://")
    first, second = await send_twice(r, "welcome-ann")
    third = r.task.options(dedup_key="welcome-ann", dedup_ttl=60).send_sync("third")
    assert first == second == third
    other = await r.task.options(dedup_key="welcome-bob", dedup_ttl=60).send("other")
    assert other.id != first.id
    await r.drain()
    assert sorted(r.ran) == ["first", "other"]
    backend = foxtive.MemoryBackend("taskopts-dedup")
    assert backend.publish_sync(b"a", message_id="a", dedup_key="k", dedup_ttl=60) == "a"
    assert backend.publish_sync(b"b", message_id="b", dedup_key="k", dedup_ttl=60) == "a"
    assert backend.qsize() == 1
    await r.app.aclose()


def test_dedup_options_are_checked() -> None:
    r = Recorder("memory://")
    with pytest.raises(foxtive.ConfigError, match="dedup_ttl"):
        r.task.options(dedup_key="k")
    with pytest.raises(foxtive.ConfigError, match="dedup_key"):
        r.task.options(dedup_ttl=5.0)
    with pytest.raises(foxtive.ConfigError, match="dedup_ttl"):
        r.task.options(dedup_key="k", dedup_ttl=0)
    with pytest.raises(foxtive.ConfigError, match="send_many"):
        r.task.options(dedup_key="k", dedup_ttl=5.0).send_many_sync([("a",)])
    assert r.app.backend(r.queue).qsize() == 0
    r.app.close()


async def test_redis_dedup_is_one_script_and_expires() -> None:
    import redis.asyncio as aioredis
    stream = f"foxtive-test:taskopts:{uuid.uuid4().hex[:12]}"
    r = Recorder(REDIS_URL, queue=stream)
    client = aioredis.Redis.from_url(REDIS_URL)
    try:
        # Twenty sends of one key at once: exactly one entry, every handle the same.
        handles = await asyncio.gather(*(
            r.task.options(dedup_key="tick", dedup_ttl=60).send(f"n{i}") for i in range(20)))
        assert len({h.id for h in handles}) == 1
        assert await client.xlen(stream) == 1
        assert (await client.get(f"{stream}:dedup:tick")).decode() == handles[0].id
        assert 0 < await client.pttl(f"{stream}:dedup:tick") <= 60_000
        # A delayed send takes its key too (the entry waits in the delayed set).
        late = await r.task.options(dedup_key="late", dedup_ttl=60, delay=3600).send("late")
        again = await r.task.options(dedup_key="late", dedup_ttl=60).send("late-2")
        assert again == late and await client.zcard(f"{stream}:delayed") == 1
        # Once the TTL is over, the key is free again.
        short = await r.task.options(dedup_key="short", dedup_ttl=0.2).send("s1")
        await asyncio.sleep(0.3)  # the TTL itself is what is being tested
        assert (await r.task.options(dedup_key="short", dedup_ttl=0.2).send("s2")) != short
        assert await client.xlen(stream) == 3
        # The message layer: publish returns the holder's id.
        backend = r.app.backend(stream)
        assert await backend.publish(b"x", message_id="m1", dedup_key="raw", dedup_ttl=60) == "m1"
        assert await backend.publish(b"y", message_id="m2", dedup_key="raw", dedup_ttl=60) == "m1"
        assert await client.xlen(stream) == 4
    finally:
        await r.app.aclose()
        keys = [k async for k in client.scan_iter(match=f"{stream}*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()


async def test_sqlite_dedup_commits_with_the_job(sqlite_path: str) -> None:
    r = Recorder(f"sqlite:///{sqlite_path}")
    first, second = await send_twice(r, "k")
    assert first == second
    conn = sqlite3.connect(sqlite_path)
    try:
        # In a transaction that rolls back, the key goes back with the job.
        await r.task.options(dedup_key="tx", dedup_ttl=60, transaction=conn).send("rolled-back")
        conn.rollback()
        kept = await r.task.options(dedup_key="tx", dedup_ttl=60, transaction=conn).send("kept")
        conn.commit()
    finally:
        conn.close()
    assert (await r.task.options(dedup_key="tx", dedup_ttl=60).send("late")) == kept
    with sqlite3.connect(sqlite_path) as judge:
        assert judge.execute("SELECT count(*) FROM foxtive_jobs").fetchone() == (2,)
        assert judge.execute("SELECT message_id FROM foxtive_dedup WHERE key = 'tx'"
                             ).fetchone() == (kept.id,)
    await r.drain()
    assert sorted(r.ran) == ["first", "kept"]
    await r.app.aclose()


@needs_postgres
async def test_postgres_dedup_one_statement_and_in_transaction(pg_schema: str) -> None:
    r = Recorder(f"{POSTGRES_URL}?schema={pg_schema}")
    handles = await asyncio.gather(*(
        r.task.options(dedup_key="k", dedup_ttl=60).send(f"n{i}") for i in range(10)))
    assert len({h.id for h in handles}) == 1
    async with await psycopg.AsyncConnection.connect(POSTGRES_URL) as conn:
        await r.task.options(dedup_key="tx", dedup_ttl=60, transaction=conn).send("rolled")
        await conn.rollback()
        kept = await r.task.options(dedup_key="tx", dedup_ttl=60, transaction=conn).send("kept")
        again = await r.task.options(dedup_key="tx", dedup_ttl=60, transaction=conn).send("x")
        await conn.commit()
        assert again == kept
        assert (await r.task.options(dedup_key="tx", dedup_ttl=60).send("late")) == kept
        cur = await conn.execute(f'SELECT count(*) FROM "{pg_schema}".jobs')
        assert await cur.fetchone() == (2,)
    await r.drain()
    assert len(r.ran) == 2 and "kept" in r.ran
    await r.app.aclose()


async def test_rabbitmq_dedup_needs_a_redis_result_store(amqp_queue: str) -> None:
    r = Recorder(rabbit_factory(), queue=amqp_queue)
    with pytest.raises(foxtive.ConfigError, match="results="):
        await r.task.options(dedup_key="k", dedup_ttl=60).send("x")
    await r.app.aclose()
    r = Recorder(rabbit_factory(), queue=amqp_queue, results=REDIS_URL)
    key = f"k-{uuid.uuid4().hex[:6]}"
    first, second = await send_twice(r, key)
    assert first == second
    await r.app.aclose()
    conn = await aio_pika.connect(AMQP_URL)
    try:
        ch = await conn.channel()
        queue = await ch.declare_queue(amqp_queue, passive=True)
        assert queue.declaration_result.message_count == 1
    finally:
        await conn.close()
    import redis
    client = redis.Redis.from_url(REDIS_URL)
    holder = f"foxtive:result:dedup:{amqp_queue}:{key}"
    assert client.get(holder) == first.id.encode()
    client.delete(holder, f"foxtive:result:{first.id}", f"foxtive:result:{second.id}")
    client.close()
