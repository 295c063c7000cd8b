"""App.send_many of 20,000 tasks, two ways in one run: "batch" (one
publish_many carrying each task id) and "per-task" (each task published on
its own, concurrently: the path send_many took before publish_many accepted
message_ids). The queue length is checked each time (redis-py, sqlite3 or
psycopg). ``--results``: the app keeps results, so every send also writes
its "pending" records (one statement per batch).

    python benches/task_send_many.py                                   # Redis
    python benches/task_send_many.py --broker sqlite:////tmp/b.db --results
    python benches/task_send_many.py --broker postgresql://postgres@127.0.0.1/test --results
    python benches/task_send_many.py --single 2000 --broker ...  # also a loop of send
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import time
import uuid
from typing import Any

import redis

import foxtive
from foxtive.backends import NativeBackend

URL = "redis://127.0.0.1:6379/0"
N = 20_000


def queue_length(url: str, queue: str) -> int:
    if url.startswith("sqlite"):
        with sqlite3.connect(url.removeprefix("sqlite:///")) as conn:
            return int(conn.execute("SELECT count(*) FROM foxtive_jobs WHERE queue = ?",
                                    (queue,)).fetchone()[0])
    if url.startswith("postgres"):
        import psycopg
        with psycopg.connect(url) as conn:
            row = conn.execute("SELECT count(*) FROM foxtive.jobs WHERE queue = %s",
                               (queue,)).fetchone()
            return int(row[0]) if row else 0
    return int(redis.Redis.from_url(url).xlen(queue))


def clean(url: str, queue: str) -> None:
    if url.startswith("sqlite"):
        with sqlite3.connect(url.removeprefix("sqlite:///")) as conn:
            conn.execute("DELETE FROM foxtive_jobs WHERE queue = ?", (queue,))
            conn.execute("DELETE FROM foxtive_results")
    elif url.startswith("postgres"):
        import psycopg
        with psycopg.connect(url) as conn:
            conn.execute("DELETE FROM foxtive.jobs WHERE queue = %s", (queue,))
            conn.execute("DELETE FROM foxtive.results")
    else:
        redis.Redis.from_url(url).delete(queue, f"{queue}:dlq", f"{queue}:delayed")


async def one_by_one(self: NativeBackend, bodies: Any, headers: Any = None, delay: Any = None, *,
                     message_ids: Any = None, **_: Any) -> list[str]:
    return list(await asyncio.gather(*(self.publish(b, headers=headers, delay=delay, message_id=m)
                                       for b, m in zip(bodies, message_ids, strict=True))))


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--broker", default=URL)
    ap.add_argument("--results", action="store_true")
    ap.add_argument("--modes", default="batch,per-task",
                    help="which of batch,per-task to time (per-task is slow on SQL brokers)")
    ap.add_argument("--single", type=int, default=0,
                    help="also time a loop of this many awaited send() calls")
    opts = ap.parse_args()
    url = opts.broker
    app = foxtive.App("send-many", broker=url, results=True if opts.results else None)
    calls = [(i, "x") for i in range(N)]
    batch = NativeBackend.publish_many
    for rnd in range(1, 4):
        for mode in opts.modes.split(","):
            queue = f"send-many-{uuid.uuid4().hex[:8]}"

            def noop(i: int, s: str) -> None: ...

            task = app.task(queue=queue, name=f"bench.noop.{queue}")(noop)
            NativeBackend.publish_many = batch if mode == "batch" else one_by_one  # type: ignore[method-assign]
            started = time.perf_counter()
            await task.send_many(calls)
            elapsed = time.perf_counter() - started
            NativeBackend.publish_many = batch  # type: ignore[method-assign]
            length = queue_length(url, queue)
            print(f"round {rnd} {mode:8s} {N / elapsed:10,.0f} tasks/s  queue length {length}")
            clean(url, queue)
        if opts.single:
            queue = f"send-one-{uuid.uuid4().hex[:8]}"

            def one(i: int, s: str) -> None: ...

            task = app.task(queue=queue, name=f"bench.one.{queue}")(one)
            started = time.perf_counter()
            for i in range(opts.single):
                await task.send(i, "x")
            elapsed = time.perf_counter() - started
            length = queue_length(url, queue)
            print(f"round {rnd} send     {opts.single / elapsed:10,.0f} tasks/s  "
                  f"queue length {length}")
            clean(url, queue)
    await app.aclose()


if __name__ == "__main__":
    asyncio.run(main())
