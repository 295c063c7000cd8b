"""The reliability toolkit over the real brokers: the same behaviour as over
the memory backend (tests/test_reliability.py, test_failure_policy.py)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest

import foxtive

from . import rabbit_support


@asynccontextmanager
async def rabbitmq() -> AsyncIterator[foxtive.Backend]:
    queue = rabbit_support.unique("rel")
    async with rabbit_support.judge(queue):
        yield rabbit_support.backend(queue, prefetch_count=50)


@asynccontextmanager
async def redis_streams() -> AsyncIterator[foxtive.Backend]:
    import redis

    stream = f"foxtive-test:rel:{uuid.uuid4().hex[:12]}"
    config = foxtive.RedisStreamConsumerConfig(stream_name=stream, group_name="rel")
    try:
        yield foxtive.RedisStreamBackend("redis://127.0.0.1:6379/0", config)
    finally:
        client = redis.Redis(host="127.0.0.1", port=6379)
        keys = client.keys(f"{stream}*")
        if keys:
            client.delete(*keys)


BROKERS: dict[str, Callable[[], Any]] = {"rabbitmq": rabbitmq}
if hasattr(foxtive, "RedisStreamBackend"):
    BROKERS["redis"] = redis_streams


def retries(max_retries: int, store: Any = None) -> foxtive.RetryHandler:
    return foxtive.RetryHandler(max_retries=max_retries, initial_backoff=0.05,
                                max_backoff=0.2, jitter=False, dead_letter_queue=store)


@pytest.fixture(params=sorted(BROKERS))
def broker(request: pytest.FixtureRequest) -> Callable[[], Any]:
    return BROKERS[request.param]


async def test_exact_attempts_then_dead_letter(broker: Callable[[], Any]) -> None:
    store = foxtive.MemoryDLQ()
    attempts: dict[str, list[int]] = {}

    async def handler(m: foxtive.Message) -> None:
        attempts.setdefault(m.id, []).append(m.attempt)
        raise ValueError("always")

    async with broker() as backend:
        await backend.publish(b"x", message_id="doomed")
        pool = (foxtive.WorkerPoolBuilder("p").with_middleware(retries(3, store))
                .add_worker(handler, id="h").build())
        assert await pool.run_until_idle_async(backend, timeout=30)
    assert attempts == {"doomed": [1, 2, 3, 4]}
    [dead] = store.get_failed_messages()
    assert (dead.original_id, dead.attempts, dead.error_type) == ("doomed", 4, "ValueError")


async def test_dead_letter_replay_round_trip(broker: Callable[[], Any]) -> None:
    store = foxtive.MemoryDLQ()
    seen: list[tuple[bytes, int]] = []

    async def handler(m: foxtive.Message) -> None:
        seen.append((m.body, m.attempt))
        if len(seen) == 1:
            raise foxtive.PermanentError("bad day")

    async with broker() as backend:
        await backend.publish(b"payload", message_id="m1")
        pool = (foxtive.WorkerPoolBuilder("p").with_middleware(retries(3, store))
                .add_worker(handler, id="h").build())
        assert await pool.run_until_idle_async(backend, timeout=30)
        assert len(store) == 1
        assert await store.replay() == 1  # to the backend the pool ran on
        assert len(store) == 0
        assert await pool.run_until_idle_async(backend, timeout=30)
    assert seen == [(b"payload", 1), (b"payload", 1)]


async def test_breaker_opens_probes_and_closes_losing_nothing(broker: Callable[[], Any]) -> None:
    down = True
    states: list[str] = []
    pool_ref: list[foxtive.WorkerPool] = []

    async def handler(m: foxtive.Message) -> None:
        nonlocal down
        states.append(pool_ref[0].stats()["circuit_breaker"])
        if down:
            if len(states) >= 3:
                down = False
            raise ConnectionError("dependency down")

    async with broker() as backend:
        await backend.publish_many([str(i).encode() for i in range(10)])
        pool = (
            foxtive.WorkerPoolBuilder("p").with_concurrency_limit(1)
            .with_middleware(foxtive.CircuitBreakerMiddleware(
                failure_threshold=3, reset_timeout=0.3, success_threshold=1))
            .with_middleware(retries(5))
            .add_worker(handler, id="h").build()
        )
        pool_ref.append(pool)
        assert await pool.run_until_idle_async(backend, timeout=30)
    assert "open" not in states
    s = pool.stats()
    assert (s["processed"], s["dead_lettered"]) == (10, 0)
    assert s["circuit_breaker_transitions"] >= 3


async def test_rate_limit_holds_over_the_broker(broker: Callable[[], Any]) -> None:
    stamps: list[float] = []

    async def handler(m: foxtive.Message) -> None:
        stamps.append(time.monotonic())

    async with broker() as backend:
        await backend.publish_many([b"x"] * 200)
        pool = (foxtive.WorkerPoolBuilder("p")
                .with_middleware(foxtive.RateLimitMiddleware(per_second=50, burst=1))
                .add_worker(handler, id="h").build())
        assert await pool.run_until_idle_async(backend, timeout=30)
    rate = (len(stamps) - 1) / (stamps[-1] - stamps[0])
    assert len(stamps) == 200 and 45 <= rate <= 55, rate
    assert pool.stats()["failed"] == 0


async def test_timeout_settles_once(broker: Callable[[], Any]) -> None:
    store = foxtive.MemoryDLQ()

    async def handler(m: foxtive.Message) -> None:
        if m.body == b"hang":
            await asyncio.sleep(3600)

    async with broker() as backend:
        await backend.publish_many([b"hang", b"ok"])
        pool = (foxtive.WorkerPoolBuilder("p").with_middleware(retries(0, store))
                .with_middleware(foxtive.TimeoutMiddleware(seconds=0.2))
                .add_worker(handler, id="h").build())
        assert await pool.run_until_idle_async(backend, timeout=30)
    s = pool.stats()
    assert (s["processed"], s["dead_lettered"], s["failed"]) == (1, 1, 1)
    [dead] = store.get_failed_messages()
    assert dead.body == b"hang" and dead.error_type == "TimeoutError"
