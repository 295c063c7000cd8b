"""Task results: ``results=True`` on memory and on the real Redis (redis-py
as the judge of the keys and their TTL)."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis

import foxtive

from .conftest import fast_retries
from .redis_support import REDIS_URL, delete_keys


@dataclasses.dataclass
class Summary:
    total: int
    at: dt.datetime


def test_results_on_memory_value_error_and_status() -> None:
    app = foxtive.App("res-mem", broker="memory://", results=True, retry=fast_retries(1))

    @app.task
    def summarize(n: int) -> Summary:
        return Summary(n * 2, dt.datetime(2026, 1, 1, tzinfo=dt.UTC))

    @app.task
    def broken() -> None:
        raise ValueError("bad input")

    ok = summarize.send_sync(21)
    bad = broken.send_sync()
    never = foxtive.TaskHandle(uuid.uuid4().hex, "x", "default", app)
    assert asyncio.run(ok.status()) == "pending"
    assert asyncio.run(never.status()) == "unknown"
    assert app.pool().run_until_idle(timeout=20.0)
    assert ok.result_sync(timeout=1.0) == Summary(42, dt.datetime(2026, 1, 1, tzinfo=dt.UTC))
    with pytest.raises(foxtive.TaskError) as info:
        bad.result_sync(timeout=1.0)
    assert (info.value.type_name, info.value.message, info.value.attempts) == (
        "ValueError", "bad input", 2)
    assert asyncio.run(ok.status()) == "succeeded"
    assert asyncio.run(bad.status()) == "failed"
    with pytest.raises(TimeoutError):
        never.result_sync(timeout=0.05)


async def test_results_memory_waiter_is_woken() -> None:
    app = foxtive.App("res-mem2", broker="memory://", results=True)

    @app.task
    async def add(a: int, b: int) -> int:
        return a + b

    handle = await add.send(2, 3)
    pool = app.pool()
    runner = asyncio.ensure_future(pool.run_async(handle_signals=False))
    try:
        assert await handle.result(timeout=10.0) == 5
    finally:
        pool.shutdown()
        await runner


def test_results_need_a_store() -> None:
    app = foxtive.App("nores", broker="memory://")

    @app.task
    def t() -> None: ...

    with pytest.raises(foxtive.ConfigError, match="results"):
        t.send_sync().result_sync(timeout=0.1)
    with pytest.raises(foxtive.ConfigError, match="results"):
        foxtive.App("amqp", broker="amqp://127.0.0.1:5672", results=True)


@pytest.fixture
def stream() -> Iterator[str]:
    client = redis.Redis.from_url(REDIS_URL)
    name = f"foxtive-test:tasks-res:{uuid.uuid4().hex[:12]}"
    yield name
    delete_keys(client, name)
    client.close()


def test_results_on_redis_with_ttl_and_blocking_wait(stream: str) -> None:
    app = foxtive.App("res-redis", broker=REDIS_URL, results=True, result_ttl=120.0,
                      retry=fast_retries(0))
    judge = redis.Redis.from_url(REDIS_URL)

    @app.task(queue=stream)
    def mul(a: int, b: int) -> int:
        return a * b

    @app.task(queue=stream)
    def fails() -> None:
        raise foxtive.PermanentError("nope")

    handle = mul.send_sync(6, 7)
    bad = fails.send_sync()
    key = f"foxtive:result:{handle.id}"
    try:
        assert judge.get(key) == b'{"status":"pending"}'
        assert 0 < judge.ttl(key) <= 120
        # A waiter on another thread blocks in Redis until the worker finishes.
        got: list[Any] = []
        waiter = threading.Thread(target=lambda: got.append(handle.result_sync(timeout=30)))
        waiter.start()
        assert app.pool(stream).run_until_idle(timeout=30.0)
        waiter.join(30)
        assert got == [42]
        assert handle.result_sync(timeout=1) == 42       # the done list kept its element
        assert 0 < judge.ttl(f"{key}:done") <= 120 and 0 < judge.ttl(key) <= 120
        with pytest.raises(foxtive.TaskError) as info:
            bad.result_sync(timeout=5)
        assert (info.value.type_name, info.value.attempts) == ("PermanentError", 1)
        with pytest.raises(TimeoutError):
            foxtive.TaskHandle(uuid.uuid4().hex, "x", stream, app).result_sync(timeout=0.2)
    finally:
        judge.delete(key, f"{key}:done", f"foxtive:result:{bad.id}",
                     f"foxtive:result:{bad.id}:done")
        judge.close()
        app.close()


async def test_status_says_running_for_a_task_that_takes_a_while_on_redis() -> None:
    """A quick task goes from "pending" to its outcome without a "running"
    write on its critical path; one that runs past RUNNING_AFTER (foxtive.task_router) shows
    "running" (redis-py reads the record), and the outcome is never
    overwritten by a late "running"."""
    queue = f"foxtive-test:running:{uuid.uuid4().hex[:12]}"
    app = foxtive.App("res-running", broker=REDIS_URL, results=True)
    release = asyncio.Event()
    started = asyncio.Event()

    @app.task(queue=queue)
    async def slow() -> str:
        started.set()
        await release.wait()
        return "done"

    @app.task(queue=queue)
    async def quick() -> str:
        return "fast"

    client = redis.Redis.from_url(REDIS_URL)
    pool = app.pool(queue)
    runner = asyncio.ensure_future(pool.run_async(handle_signals=False))
    handles = []
    try:
        fast = await quick.send()
        handles.append(fast)
        assert await fast.result(timeout=10.0) == "fast"
        assert await fast.status() == "succeeded"
        handle = await slow.send()
        handles.append(handle)
        await asyncio.wait_for(started.wait(), 10.0)
        deadline = asyncio.get_running_loop().time() + 10.0
        while await handle.status() != "running":  # written RUNNING_AFTER into the run
            assert asyncio.get_running_loop().time() < deadline, await handle.status()
            await asyncio.sleep(0.01)
        assert b'"running"' in client.get(f"foxtive:result:{handle.id}")
        release.set()
        assert await handle.result(timeout=10.0) == "done"
        assert await handle.status() == "succeeded"
    finally:
        release.set()
        pool.shutdown()
        await runner
        delete_keys(client, queue)
        for h in handles:
            client.delete(f"foxtive:result:{h.id}", f"foxtive:result:{h.id}:done")
        client.close()
        await app.aclose()
