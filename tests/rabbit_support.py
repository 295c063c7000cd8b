"""Helpers for the RabbitMQ tests: the real broker on 127.0.0.1:5672, with
aio-pika and ``rabbitmqctl`` as independent judges. No mocks."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aio_pika

import foxtive

URL = "amqp://guest:guest@127.0.0.1:5672/%2f"


def unique(prefix: str) -> str:
    return f"foxtive-test-{prefix}-{uuid.uuid4().hex[:8]}"


def backend(queue: str, **config: Any) -> foxtive.RabbitMqBackend:
    return foxtive.RabbitMqBackend(
        URL, foxtive.RabbitMqConsumerConfig(queue_name=queue, **config),
        reconnect_initial=0.2, reconnect_max=2.0,
    )


def list_queues() -> dict[str, tuple[int, int]]:
    """``rabbitmqctl list_queues name messages_ready messages_unacknowledged``."""
    out = subprocess.run(
        ["rabbitmqctl", "list_queues", "-q", "--no-table-headers",
         "name", "messages_ready", "messages_unacknowledged"],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout
    result = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[1].isdigit():
            result[parts[0]] = (int(parts[1]), int(parts[2]))
    return result


@asynccontextmanager
async def judge(*queues: str) -> AsyncIterator[aio_pika.abc.AbstractChannel]:
    """An aio-pika channel; deletes ``queues`` (and their retry/DLQ queues) afterwards."""
    conn = await aio_pika.connect_robust(URL)
    try:
        channel = await conn.channel()
        yield channel
    finally:
        channel = await conn.channel()
        existing = list_queues()
        for q in queues:
            for name in existing:
                if name == q or name.startswith(q + "."):
                    await channel.queue_delete(name)
        await conn.close()


async def publish_with_pika(channel: aio_pika.abc.AbstractChannel, queue: str,
                            messages: Iterable[aio_pika.Message], declare: bool = True) -> int:
    """Publish through the default exchange with confirms; declares ``queue`` durable."""
    if declare:
        await channel.declare_queue(queue, durable=True)
    n = 0
    pending = []
    for m in messages:
        pending.append(channel.default_exchange.publish(m, routing_key=queue))
        n += 1
        if len(pending) >= 500:
            await asyncio.gather(*pending)
            pending.clear()
    await asyncio.gather(*pending)
    return n


async def ready_count(channel: aio_pika.abc.AbstractChannel, queue: str) -> int:
    q = await channel.declare_queue(queue, passive=True)
    return int(q.declaration_result.message_count or 0)


def delete_queues(name: str, exchanges: Iterable[str] = ()) -> None:
    """Delete ``name`` and every queue named ``name.*`` (delay buckets, the
    DLQ), and ``exchanges``: what a test on queue ``name`` leaves behind."""

    async def cleanup() -> None:
        conn = await aio_pika.connect(URL)
        ch = await conn.channel()
        for q in list_queues():
            if q == name or q.startswith(name + "."):
                await ch.queue_delete(q)
        for ex in exchanges:
            await ch.exchange_delete(ex)
        await conn.close()

    asyncio.run(cleanup())


WORKER = Path(__file__).with_name("rabbit_worker.py")


def start_worker(queue: str, out: Path, *extra: str) -> subprocess.Popen[str]:
    """``rabbit_worker.py`` on ``queue`` as a subprocess, once it says it is ready."""
    proc = subprocess.Popen(
        [sys.executable, str(WORKER), queue, str(out), *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith("ready"), (line, proc.stderr.read() if proc.stderr else "")
    return proc
