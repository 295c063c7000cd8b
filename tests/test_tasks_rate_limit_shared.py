"""A task's ``rate_limit`` is one budget for every process of an app when the
broker is Redis (API.md: "shared across processes where the broker has a
store"). Two App objects stand for two processes: they share nothing but the
Redis server, as two processes would."""

from __future__ import annotations

import asyncio
import time
import uuid

import redis

import foxtive
from foxtive import _core

from .redis_support import REDIS_URL


def _limited_task(app_name: str, broker: str) -> foxtive.App:
    app = foxtive.App(app_name, broker=broker)

    @app.task(name="limited", rate_limit="10/s")
    async def limited() -> None:
        return None

    return app


async def test_two_processes_draw_from_one_budget() -> None:
    name = f"rl-{uuid.uuid4().hex[:10]}"
    a, b = _limited_task(name, REDIS_URL), _limited_task(name, REDIS_URL)
    la, lb = a._tasks["limited"]._limiter, b._tasks["limited"]._limiter
    assert isinstance(la, _core.SharedRateLimiter) and la is not lb
    key = f"foxtive:rate:task:{name}:limited"
    client = redis.Redis.from_url(REDIS_URL)
    try:
        started = time.monotonic()

        async def take(limiter: _core.SharedRateLimiter, n: int) -> None:
            for _ in range(n):
                await limiter.acquire()

        await asyncio.gather(take(la, 20), take(lb, 20))
        span = time.monotonic() - started
        # One budget of 10/s with a burst of 10: the 40th permit is due 3 s
        # after the first. Two private buckets would each give their 20 in
        # 1 s, so anything under 2.5 s means the budget was not shared.
        assert span >= 2.5, span
        assert client.exists(key), "the shared bucket lives in Redis"
        waits_a, _ = la.waits()
        waits_b, _ = lb.waits()
        assert waits_a + waits_b >= 25, (waits_a, waits_b)
    finally:
        client.delete(key)
        client.close()
        await a.aclose()
        await b.aclose()


def test_brokers_without_a_shared_store_limit_in_process() -> None:
    app = _limited_task("rl-memory", "memory://")
    assert not isinstance(app._tasks["limited"]._limiter, _core.SharedRateLimiter)
    app.close()
