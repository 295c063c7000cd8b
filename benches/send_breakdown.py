"""Where the time of one ``await task.send(...)`` goes, on Redis (issue 14).

Times each piece of a send in a loop of its own, one process, µs per call:
the task layer's Python (body, id, handle), the native publish alone (async
and blocking), a redis-py asyncio SET NX alone, the two gathered, and the
whole ``send`` / ``send_sync`` with results off and on. A release build
(``maturin develop --release``) and a quiet machine; compare the pieces of
one run, not runs.

    python benches/send_breakdown.py [-n 5000] [--redis redis://127.0.0.1:6379/0]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import foxtive
from foxtive import _core, envelope
from foxtive.results import RedisResultStore
from foxtive.tasks import TaskCall

TASK_STR = "x" * 64


def _app(url: str, queue: str, results: bool) -> tuple[Any, Any]:
    def broker(q: str) -> Any:
        return foxtive.RedisStreamBackend(url, foxtive.RedisStreamConsumerConfig(
            stream_name=q, group_name="g", batch_size=100, delete_on_ack=True))

    app = foxtive.App("breakdown", broker=broker, results=url if results else None,
                      result_ttl=60)

    @app.task(name="bench.noop", queue=queue)
    async def noop(i: int, s: str) -> None:
        return None

    return app, noop


async def _timed_async(n: int, call: Callable[[int], Awaitable[Any]]) -> float:
    for i in range(50):
        await call(-i)
    t = time.perf_counter()
    for i in range(n):
        await call(i)
    return (time.perf_counter() - t) / n * 1e6


def _timed_sync(n: int, call: Callable[[int], Any]) -> float:
    for i in range(50):
        call(-i)
    t = time.perf_counter()
    for i in range(n):
        call(i)
    return (time.perf_counter() - t) / n * 1e6


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=2000, help="calls per piece per round")
    ap.add_argument("--rounds", type=int, default=5,
                    help="rounds, the pieces interleaved; the median is reported")
    ap.add_argument("--redis", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    a = ap.parse_args()
    n, url = a.n, a.redis
    queue = f"breakdown-{uuid.uuid4().hex[:8]}"
    app_off, noop_off = _app(url, queue, results=False)
    app_on, noop_on = _app(url, queue, results=True)
    # The same sends through the core's runtime (the path before the direct
    # connections; FOXTIVE_REDIS_DIRECT=0), for before/after in one run.
    app_rt, noop_rt = _app(url, queue, results=True)
    app_rt._publisher.direct = False
    backend = app_off.backend(queue)
    headers = envelope.headers_for("bench.noop")
    store = RedisResultStore(url, ttl=60)
    body = envelope.encode((1, TASK_STR), {})
    native_b = backend._native

    def task_layer(i: int) -> Any:
        call = TaskCall(noop_off)
        return call._handle(call._prepare((i, TASK_STR), {})[1])

    # Sync pieces run on a plain thread (no running loop: send_sync's own path).
    sync_pieces: list[tuple[str, Callable[[int], Any]]] = [
        ("task layer: TaskCall + body + id + handle (Python only)", task_layer),
        ("native publish_begin().wait() alone (XADD, GIL released)",
         lambda i: backend.publish_begin(body, headers, None, None).wait()),
        ("redis-py sync SET NX PX alone",
         lambda i: store.mark_new_sync(uuid.uuid4().hex, "pending")),
        ("send_sync, results off", lambda i: noop_off.send_sync(i, TASK_STR)),
        ("native publish_prepared_begin().wait() alone (runtime: SET NX + XADD)",
         lambda i: native_b.publish_prepared_begin(_core.RedisPublish(
             body, headers, None, f"rt-{i}", **store.pending_mark(f"rt-{i}"))).wait()),
        ("native publish_now() with the mark alone (this thread's connection)",
         lambda i: native_b.publish_now(_core.RedisPublish(
             body, headers, None, f"dt-{i}", **store.pending_mark(f"dt-{i}")))),
        ("send_sync, results on, through the runtime (before)",
         lambda i: noop_rt.send_sync(i, TASK_STR)),
        ("send_sync, results on (Redis store)", lambda i: noop_on.send_sync(i, TASK_STR)),
    ]

    async def sleep0(i: int) -> None:
        await asyncio.sleep(0)

    async def native(i: int) -> None:
        await backend.publish(body, headers=headers)

    async def setnx(i: int) -> None:
        await store.mark_new(uuid.uuid4().hex, "pending")

    async def both(i: int) -> None:
        await asyncio.gather(store.mark_new(uuid.uuid4().hex, "pending"),
                             backend.publish(body, headers=headers))

    async def send_off(i: int) -> None:
        await noop_off.send(i, TASK_STR)

    async def send_on(i: int) -> None:
        await noop_on.send(i, TASK_STR)

    async def send_rt(i: int) -> None:
        await noop_rt.send(i, TASK_STR)

    record = {"status": "succeeded", "value": 1}
    finished = f"breakdown-{uuid.uuid4().hex}"

    async def multi(i: int) -> None:
        key = f"{store.prefix}{finished}"
        value = b'{"status":"succeeded","value":1}'
        async with store._client().pipeline(transaction=True) as pipe:
            pipe.set(key, value, px=60_000)
            pipe.delete(f"{key}:done")
            pipe.rpush(f"{key}:done", value)
            pipe.pexpire(f"{key}:done", 60_000)
            await pipe.execute()

    async def finish(i: int) -> None:
        await store.finish(finished, record)

    async def wait_done(i: int) -> None:
        await store.wait(finished, timeout=5)

    async_pieces: list[tuple[str, Callable[[int], Awaitable[Any]]]] = [
        ("redis-py asyncio MULTI SET/DEL/RPUSH/PEXPIRE (the worker's final write before)",
         multi),
        ("store.finish(final record), this build", finish),
        ("store.wait(task already finished), this build", wait_done),
        ("asyncio.sleep(0) (one loop iteration)", sleep0),
        ("native await publish alone (XADD + wake)", native),
        ("redis-py asyncio SET NX PX alone", setnx),
        ("gather(redis-py SET NX, native publish)", both),
        ("await send, results off", send_off),
        ("await send, results on, through the runtime (before)", send_rt),
        ("await send, results on (Redis store)", send_on),
    ]
    times: dict[str, list[float]] = {name: [] for name, _ in sync_pieces + async_pieces}
    loads: list[float] = []

    async def go() -> None:
        for _ in range(a.rounds):
            loads.append(os.getloadavg()[0])
            for name, fn in sync_pieces:
                times[name].append(await asyncio.to_thread(_timed_sync, n, fn))
            for name, afn in async_pieces:
                times[name].append(await _timed_async(n, afn))
        await store.close()
        await app_on.aclose()
        await app_rt.aclose()
        await app_off.aclose()

    asyncio.run(go())
    _cleanup(url, queue)
    _cleanup(url, f"{store.prefix}{finished}")
    print(f"load average {min(loads):.2f}-{max(loads):.2f}, n={n} x {a.rounds} rounds "
          "(median; min-max)")
    for name, ts in times.items():
        print(f"| {name} | {statistics.median(ts):7.1f} | {min(ts):.0f}-{max(ts):.0f} |")


def _cleanup(url: str, queue: str) -> None:
    import redis

    r = redis.Redis.from_url(url)
    r.delete(queue)
    for key in r.scan_iter(f"{queue}*"):
        r.delete(key)
    r.close()


if __name__ == "__main__":
    main()
