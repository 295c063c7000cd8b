"""App.send_many of 20,000 tasks to a Redis queue, two ways in one run:
"batch" (one publish_many carrying each task id) and "per-task" (each task
published on its own, concurrently: the path send_many took before
publish_many accepted message_ids). Stream length is checked each time.

    python benches/task_send_many.py
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import redis

import foxtive
from foxtive.backends import NativeBackend

URL = "redis://127.0.0.1:6379/0"
N = 20_000


async def one_by_one(self: NativeBackend, bodies: Any, headers: Any = None, delay: Any = None, *,
                     message_ids: Any = None) -> list[str]:
    return list(await asyncio.gather(*(self.publish(b, headers=headers, delay=delay, message_id=m)
                                       for b, m in zip(bodies, message_ids, strict=True))))


async def main() -> None:
    app = foxtive.App("send-many", broker=URL)
    r = redis.Redis.from_url(URL)
    calls = [(i, "x") for i in range(N)]
    batch = NativeBackend.publish_many
    for rnd in range(1, 4):
        for mode in ("batch", "per-task"):
            queue = f"send-many-{uuid.uuid4().hex[:8]}"

            def noop(i: int, s: str) -> None: ...

            task = app.task(queue=queue, name=f"bench.noop.{queue}")(noop)
            NativeBackend.publish_many = batch if mode == "batch" else one_by_one  # type: ignore[method-assign]
            started = time.perf_counter()
            await task.send_many(calls)
            elapsed = time.perf_counter() - started
            NativeBackend.publish_many = batch  # type: ignore[method-assign]
            length = r.xlen(queue)
            print(f"round {rnd} {mode:8s} {N / elapsed:10,.0f} tasks/s  stream length {length}")
            r.delete(queue, f"{queue}:dlq", f"{queue}:delayed")
    await app.aclose()


if __name__ == "__main__":
    asyncio.run(main())
