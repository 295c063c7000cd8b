"""W1 on SQLite (child side): one database file per run,
``SQLITE_DIR/<queue>.db``; foxtive's SqliteBackend, the raw stdlib sqlite3
loop on foxtive's table and huey."""

from __future__ import annotations

import json
import time
from typing import Any

from harness.bodies import body_for, id_of
from harness.config import SQLITE_BATCH, SQLITE_DIR
from harness.fox_pool import fox_pool
from harness.recorder import Recorder


def sqlite_path(queue: str) -> str:
    return str(SQLITE_DIR / f"{queue}.db")


#: The raw consumers' claim: foxtive's own (fetch.rs), on foxtive's table.
SQLITE_CLAIM = ("UPDATE foxtive_jobs SET attempts = attempts + 1, locked_until = ?3, "
                "run_at = ?3 WHERE id IN (SELECT id FROM foxtive_jobs WHERE queue = ?1 AND "
                "run_at <= ?2 ORDER BY run_at LIMIT ?4) RETURNING id, body")


def sqlite_publish(contender: str, queue: str, n: int) -> None:
    """Pre-publish: huey through its own enqueue, the others through foxtive's
    ``publish_many`` (the rows the raw consumers and the ceiling read too)."""
    if contender == "huey":
        _, noop = huey_app(queue, None)
        for i in range(n):
            noop(i)
        return
    import asyncio

    import foxtive

    async def go() -> None:
        backend = foxtive.SqliteBackend(sqlite_path(queue), queue)
        for start in range(0, n, 10_000):
            await backend.publish_many([body_for(i) for i in range(start, min(n, start + 10_000))])
        await backend.close()
    asyncio.run(go())


def huey_app(queue: str, rec: Recorder | None) -> tuple[Any, Any]:
    from huey import SqliteHuey

    huey = SqliteHuey(queue, filename=sqlite_path(queue), results=False)

    @huey.task()
    def noop(i: int) -> None:
        if rec is not None:
            rec.hit(i)
    return huey, noop


def consume_sqlite(contender: str, queue: str, n: int, result: str, idle: float) -> None:
    import asyncio

    rec = Recorder(n, result, idle, share=contender.endswith("processes"))
    path = sqlite_path(queue)
    if contender.startswith("foxtive"):
        import foxtive

        async def handler(message: foxtive.Message) -> None:
            rec.hit(id_of(message.body))

        pool = fox_pool(handler, rec)
        asyncio.run(pool.run_async(foxtive.SqliteBackend(path, queue), handle_signals=False))
    elif contender.startswith("sqlite3 raw"):
        import sqlite3

        conn = sqlite3.connect(path, timeout=10, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        while True:
            t = time.time()
            conn.execute("BEGIN IMMEDIATE")
            rows = conn.execute(SQLITE_CLAIM, (queue, t, t + 30.0, SQLITE_BATCH)).fetchall()
            conn.execute("COMMIT")
            if not rows:
                time.sleep(0.001)
                continue
            for _, body in rows:
                rec.hit(id_of(body))
            conn.execute("DELETE FROM foxtive_jobs WHERE id IN (SELECT value FROM json_each(?))",
                         (json.dumps([r[0] for r in rows]),))
    elif contender == "huey":
        huey, _ = huey_app(queue, rec)
        consumer = huey.create_consumer(workers=8, worker_type="thread", periodic=False,
                                        initial_delay=0.001, backoff=1.5, max_delay=0.01)
        consumer.run()
    else:
        raise SystemExit(f"unknown contender {contender}")
    time.sleep(3600)  # the recorder ends the process
