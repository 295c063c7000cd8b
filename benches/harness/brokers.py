"""The brokers around the runs (parent side): waiting for them to answer
(someone may restart one), filling a Redis stream with raw bodies, and
deleting everything a run left behind (queues, keys, files, schemas,
streams)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time

from harness import jetstream, postgres
from harness.bodies import body_for
from harness.config import AMQP_URL, REDIS_URL
from harness.sqlite import sqlite_path


def retry_queues(queue: str) -> list[str]:
    """foxtive's TTL retry queues: ``{queue}.retry.<bucket>``; list them via rabbitmqctl."""
    try:
        out = subprocess.run(["rabbitmqctl", "-q", "list_queues", "name"], capture_output=True,
                             text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [q.strip() for q in out.splitlines() if q.strip().startswith(f"{queue}.retry")]


def wait_for_brokers(workload: str, limit: float = 180.0) -> None:
    import socket

    ports = [] if workload in ("w1-memory", "w1-sqlite") else [5432] if "postgres" in \
        workload else [4222] if workload.endswith("nats") else \
        [6379] + ([5672] if "rabbit" in workload else [])
    end = time.time() + limit
    for port in ports:
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=2).close()
                break
            except OSError:
                if time.time() > end:
                    raise
                time.sleep(2)
    if ports:
        time.sleep(0.5)


def cleanup(workload: str, queue: str) -> None:
    try:
        if workload.endswith("rabbitmq"):
            extra = retry_queues(queue) if workload.startswith(("w3", "w6")) else []
            delete_queues([queue, f"{queue}.DQ", f"{queue}.XQ", f"{queue}.dlq", *extra])
        elif workload.endswith("redis"):
            delete_redis_keys(queue)
        elif workload.endswith("sqlite"):
            for suffix in ("", "-wal", "-shm"):
                with contextlib.suppress(FileNotFoundError):
                    os.remove(sqlite_path(queue) + suffix)
        elif workload.endswith("postgres"):
            postgres.cleanup(queue)
        elif workload.endswith("nats"):
            jetstream.cleanup(queue)
    except Exception as e:
        print(f"cleanup of {queue} failed: {e}", file=sys.stderr)


def delete_queues(queues: list[str]) -> None:
    import asyncio

    import aio_pika

    async def go() -> None:
        conn = await aio_pika.connect(AMQP_URL)
        for q in queues:
            ch = await conn.channel()
            try:
                await ch.queue_delete(q)
            except Exception:
                pass
        await conn.close()
    asyncio.run(go())


def fill_stream(stream: str, n: int) -> None:
    import redis

    r = redis.Redis.from_url(REDIS_URL)
    r.delete(stream)
    pipe = r.pipeline(transaction=False)
    for i in range(n):
        pipe.xadd(stream, {"body": body_for(i)})
        if i % 5000 == 4999:
            pipe.execute()
    pipe.execute()
    r.xgroup_create(stream, "g", id="0", mkstream=True)


def delete_redis_keys(queue: str) -> None:
    import redis

    r = redis.Redis.from_url(REDIS_URL)
    keys = [k for pat in (f"*{queue}*",) for k in r.scan_iter(match=pat, count=1000)]
    # RQ's own registries: the worker and queue sets, the scheduler's hash
    keys += [k for k in r.scan_iter(match="rq:scheduler:*", count=1000)
             if r.hget(k, "queues") == queue.encode()]
    if keys:
        r.delete(*keys)
    for registry in ("rq:workers", "rq:queues"):
        if members := [m for m in r.smembers(registry) if queue.encode() in m]:
            r.srem(registry, *members)
