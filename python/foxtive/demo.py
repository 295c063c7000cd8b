"""`foxtive demo`: the seed README's email worker on a SQLite queue.

A producer keeps publishing welcome emails; a worker "sends" them (a short
await stands in for SMTP), one address in fifty is invalid and goes to the
dead-letter queue, one send in twenty fails transiently and is retried with
backoff. Progress is printed every second. Ctrl-C drains and exits 0.

The queue is a SQLite file (the embedded default, no server): by default a
fresh file in a temporary directory, removed at exit, so every demo starts
empty and leaves nothing behind in the working directory. ``db=PATH`` keeps
the file: what a Ctrl-C left queued is there for the next run, and the
dead letters can be listed with ``foxtive dlq list --broker sqlite:///PATH
--queue emails``. ``db=":memory:"`` runs on the in-process backend instead.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import sqlite3
import sys
import tempfile
import time
from typing import TextIO

from .backends import MemoryBackend, NativeBackend
from .errors import PermanentError
from .policies import RetryHandler
from .pool import WorkerPoolBuilder
from .sqlite import SqliteBackend
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


async def produce(backend: NativeBackend, total: int | None, rate: float) -> None:
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
        await backend.publish_many(batch)
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


def queued(backend: NativeBackend) -> int:
    """Jobs still in the queue (the in-process backend, or the SQLite file)."""
    if isinstance(backend, MemoryBackend):
        return backend.qsize()
    path = getattr(backend, "path", "")
    with sqlite3.connect(path) as conn:
        row = conn.execute("SELECT count(*) FROM foxtive_jobs WHERE queue = ?",
                           (backend.name,)).fetchone()
    return int(row[0]) if row else 0


async def main(total: int | None = None, rate: float = 1000.0, out: TextIO = sys.stdout,
               quiet: bool = True, db: str | None = None) -> int:
    if quiet:  # the demo prints its own progress; per-message failure logs are noise here
        logging.getLogger("foxtive").setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory(prefix="foxtive-demo-") as tmp:
        return await _run(total, rate, out, db or os.path.join(tmp, "foxtive.db"), db is None)


async def _run(total: int | None, rate: float, out: TextIO, db: str, temporary: bool) -> int:
    backend: NativeBackend
    if db == ":memory:":
        backend = MemoryBackend("emails")
        where = "the in-process backend"
    else:
        backend = SqliteBackend(db, "emails")
        where = f"SQLite file {db}" + (" (temporary)" if temporary else "")
    worker = EmailWorker(out)
    pool = (
        WorkerPoolBuilder("email-pool")
        .with_concurrency_limit(50)
        .with_middleware(RetryHandler(max_retries=3, initial_backoff=0.2, max_backoff=2.0))
        .add_worker(worker)
        .with_backend(backend)
        .build()
    )
    print(f"foxtive demo: an email worker on {where} "
          f"({'Ctrl-C to stop' if total is None else f'{total} emails'})", file=out, flush=True)
    tasks = [asyncio.ensure_future(produce(backend, total, rate)),
             asyncio.ensure_future(report(pool, out))]
    try:
        if total is None:
            await pool.run_async()
        elif isinstance(backend, MemoryBackend):
            while not tasks[0].done():
                await pool.run_until_idle_async(timeout=60)
            await pool.run_until_idle_async(timeout=60)
        else:
            # One pool run until the file's queue is empty (retries waiting
            # for their time are rows too), rather than a run per burst.
            runner = asyncio.ensure_future(pool.run_async())
            await tasks[0]
            deadline = time.monotonic() + 60
            while queued(backend) and not runner.done() and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            pool.shutdown()
            await runner
    finally:
        for t in tasks:
            t.cancel()
    s = pool.stats()
    print(f"stopped: {s['processed']:,} sent, {s['retried']:,} retried, "
          f"{s['dead_lettered']:,} in the dead-letter queue, "
          f"{queued(backend):,} still queued", file=out, flush=True)
    for dead in backend.dead_letters(limit=3):
        print(f"  dead letter {dead.original_id}: {dead.error_type}: {dead.error_message}",
              file=out, flush=True)
    await backend.close()
    if not temporary and db != ":memory:":
        print(f"the queue is kept in {db}: foxtive dlq list --broker sqlite:///"
              f"{db if not os.path.isabs(db) else '/' + db.lstrip('/')} --queue emails",
              file=out, flush=True)
    return 0
