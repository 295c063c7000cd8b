"""W1 in memory (child side): foxtive's MemoryBackend against a plain
Python loop calling the same handler, sync and async; no recorder, the
ids are checked once the drain is over."""

from __future__ import annotations

import json
import time
from typing import Any

from harness.bodies import body_for, id_of


def consume_memory(contender: str, n: int, result: str) -> None:
    import asyncio

    hits: list[bytes] = []
    append = hits.append

    def sync_handler(message: Any) -> None:
        append(message.body)

    async def async_handler(message: Any) -> None:
        append(message.body)

    kind = contender.split()[1]
    handler = sync_handler if kind == "sync" else async_handler
    if contender.startswith("loop"):
        class Msg:
            __slots__ = ("body",)

            def __init__(self, body: bytes) -> None:
                self.body = body
        msgs = [Msg(body_for(i)) for i in range(n)]
        t0 = time.time()
        if kind == "sync":
            for m in msgs:
                sync_handler(m)
        else:
            async def drive() -> None:
                for m in msgs:
                    await async_handler(m)
            asyncio.run(drive())
        t1 = time.time()
    else:
        import foxtive

        backend = foxtive.MemoryBackend("bench")
        chunk = 100_000
        for start in range(0, n, chunk):
            backend.publish_bulk([body_for(i) for i in range(start, min(n, start + chunk))])
        pool = foxtive.WorkerPoolBuilder("bench").add_worker(handler, id="noop").build()
        t0 = time.time()
        idle = pool.run_until_idle(backend, timeout=600)
        t1 = time.time()
        assert idle, "pool did not go idle"
    seen = {id_of(b) for b in hits}
    with open(result, "w") as f:
        json.dump({"first": t0, "last": t1, "unique": len(seen),
                   "dups": len(hits) - len(seen), "lost": n - len(seen)}, f)
