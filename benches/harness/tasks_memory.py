"""``python benches/compare_tasks.py memory``: the task layer's cost with no
broker, in one process."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

from harness.tasks import SEND_CHUNK, TASK_NAME, TASK_STR


def run_memory(args: Any) -> None:
    """Memory backend, one process: process CPU seconds to drain n messages,
    raw bodies, the same task bodies with the task headers and ids (raw
    handler), and App tasks: what the task layer costs per message, broker
    aside."""
    import foxtive
    from foxtive import envelope

    n = args.n
    hits: list[int] = []
    bodies = [b'{"args":[%d,"%s"],"kwargs":{}}' % (i, TASK_STR.encode()) for i in range(n)]

    async def handler(m: Any) -> None:
        hits.append(int(m.body[9:m.body.index(b",")]))

    def drain_raw(headers: bool) -> float:
        backend = foxtive.MemoryBackend(f"mem-{uuid.uuid4().hex[:6]}")
        if headers:
            h = envelope.headers_for(TASK_NAME)
            for at in range(0, n, SEND_CHUNK):
                chunk = bodies[at:at + SEND_CHUNK]
                backend.publish_many_sync(chunk, headers=h,
                                          message_ids=[uuid.uuid4().hex for _ in chunk])
        else:
            backend.publish_bulk(bodies)
        pool = foxtive.WorkerPoolBuilder("bench").add_worker(handler, id="noop").build()
        t = time.process_time()
        assert pool.run_until_idle(backend, timeout=600)
        return time.process_time() - t

    def drain_tasks() -> float:
        app = foxtive.App("mem", broker="memory://")

        @app.task(name=TASK_NAME, queue="mem")
        async def noop(i: int, s: str) -> None:
            hits.append(i)

        for at in range(0, n, SEND_CHUNK):
            noop.send_many_sync([(i, TASK_STR) for i in range(at, min(n, at + SEND_CHUNK))])
        t = time.process_time()
        assert app.run_until_idle(timeout=600)
        elapsed = time.process_time() - t
        asyncio.run(app.aclose())
        return elapsed

    for r in range(args.rounds):
        row = {}
        for what, fn in (("raw", lambda: drain_raw(False)),
                         ("raw + task headers", lambda: drain_raw(True)),
                         ("tasks", drain_tasks)):
            hits.clear()
            row[what] = n / fn()
            assert sorted(hits) == list(range(n))
        print(f"round {r + 1}: " + "  ".join(f"{k} {v:,.0f}/CPU-s" for k, v in row.items())
              + f"  tasks/raw {row['tasks'] / row['raw']:.2f}"
              + f"  tasks/(raw + headers) {row['tasks'] / row['raw + task headers']:.2f}",
              flush=True)
