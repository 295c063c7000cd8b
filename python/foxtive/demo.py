"""`foxtive demo`: the seed README's email worker on the in-process backend.

A producer keeps publishing welcome emails; a worker "sends" them (a short
await stands in for SMTP), one address in fifty is invalid and goes to the
dead-letter queue, one send in twenty fails transiently and is retried with
backoff. Progress is printed every second. Ctrl-C drains and exits 0.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import sys
import time
from typing import TextIO

from .backends import MemoryBackend
from .errors import PermanentError
from .policies import RetryHandler
from .pool import WorkerPoolBuilder
from .worker import Worker

NAMES = ["alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy"]


class EmailWorker(Worker):
    """Sends welcome emails (simulated)."""

    id = "email-worker"

    def __init__(self, out: TextIO, show: int = 5) -> None:
        self.out = out
        self.show = show
        self.sent = 0

    async def process(self, message) -> None:  # type: ignore[no-untyped-def]
        email = message.json()
        to = email.get("to", "")
        if "@" not in to:
            raise PermanentError(f"invalid address {to!r}")
        await asyncio.sleep(0.002)  # the SMTP round trip
        if random.random() < 0.05 and message.attempt == 1:
            raise ConnectionError("SMTP server busy")
        self.sent += 1
        if self.sent <= self.show:
            print(f"  sent {email['subject']!r} to {to} (attempt {message.attempt})",
                  file=self.out, flush=True)


async def produce(backend: MemoryBackend, total: int | None, rate: float) -> None:
    n = 0
    burst = max(1, int(rate / 20))
    while total is None or n < total:
        count = burst if total is None else min(burst, total - n)
        batch = []
        for _ in range(count):
            name = random.choice(NAMES)
            to = f"{name}@example.com" if random.random() > 0.02 else name
            batch.append(json.dumps({"to": to, "subject": "Welcome!", "n": n}).encode())
            n += 1
        backend.publish_many_sync(batch)
        await asyncio.sleep(0.05)


async def report(pool, out: TextIO) -> None:  # type: ignore[no-untyped-def]
    last, last_t = 0, time.monotonic()
    while True:
        await asyncio.sleep(1.0)
        s = pool.stats()
        now = time.monotonic()
        rate = (s["processed"] - last) / (now - last_t)
        last, last_t = s["processed"], now
        print(f"processed {s['processed']:>7,}  retried {s['retried']:>5,}  "
              f"dead-lettered {s['dead_lettered']:>4,}  in flight {s['in_flight']:>3}  "
              f"{rate:>8,.0f} msg/s", file=out, flush=True)


async def main(total: int | None = None, rate: float = 1000.0, out: TextIO = sys.stdout,
               quiet: bool = True) -> int:
    if quiet:  # the demo prints its own progress; per-message failure logs are noise here
        logging.getLogger("foxtive").setLevel(logging.ERROR)
    backend = MemoryBackend("emails")
    worker = EmailWorker(out)
    pool = (
        WorkerPoolBuilder("email-pool")
        .with_concurrency_limit(50)
        .with_middleware(RetryHandler(max_retries=3, initial_backoff=0.2, max_backoff=2.0))
        .add_worker(worker)
        .with_backend(backend)
        .build()
    )
    print("foxtive demo: an email worker on the in-process backend "
          f"({'Ctrl-C to stop' if total is None else f'{total} emails'})", file=out, flush=True)
    tasks = [asyncio.ensure_future(produce(backend, total, rate)),
             asyncio.ensure_future(report(pool, out))]
    try:
        if total is None:
            await pool.run_async()
        else:
            while not tasks[0].done():
                await pool.run_until_idle_async(timeout=60)
            await pool.run_until_idle_async(timeout=60)
    finally:
        for t in tasks:
            t.cancel()
    s = pool.stats()
    print(f"stopped: {s['processed']:,} sent, {s['retried']:,} retried, "
          f"{len(backend.dead_letters()):,} in the dead-letter queue, "
          f"{backend.qsize():,} still queued", file=out, flush=True)
    for dead in backend.dead_letters()[:3]:
        print(f"  dead letter {dead.original_id}: {dead.error_type}: {dead.error_message}",
              file=out, flush=True)
    return 0
