"""The publishers (child side, in the contender's interpreter): ``publish``
fills a queue before the timed run through the contender's own producer,
``paced_publish`` sends W4's messages at a steady rate while the contender
runs, each carrying its send time."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

from harness import jetstream, mode, postgres, tasks
from harness.config import AMQP_URL, BODY_SIZE, PREFETCH, REDIS_URL
from harness.mode import set_mode
from harness.peer_apps import celery_app, dramatiq_actor, taskiq_broker
from harness.redis_contenders import REDIS_BULK_PUBLISHERS, REDIS_SENDERS
from harness.sending import drive_sender, in_chunks
from harness.sqlite import sqlite_publish


@contextlib.asynccontextmanager
async def faststream_rabbit(queue: str) -> AsyncIterator[Any]:
    """FastStream's RabbitMQ broker, connected, the durable queue declared."""
    from faststream.rabbit import RabbitBroker, RabbitQueue

    broker = RabbitBroker(AMQP_URL)
    await broker.connect()
    await broker.declare_queue(RabbitQueue(queue, durable=True))
    yield broker
    await broker.stop()


def paced_publish(workload: str, contender: str, queue: str, n: int, rate: float) -> None:
    """W4: publish n messages at a steady rate, each carrying its send time."""
    import asyncio

    async def pace(send: Any) -> None:
        t0 = time.time() + 0.05
        for i in range(n):
            delay = t0 + i / rate - time.time()
            if delay > 0:
                await asyncio.sleep(delay)
            await send(i, time.time())

    set_mode(workload)
    redis_ = workload.endswith("redis")
    if redis_ and contender in REDIS_SENDERS:
        drive_sender(REDIS_SENDERS[contender], queue, pace)
    elif contender in ("foxtive", "aio-pika"):
        import aio_pika

        async def go() -> None:
            conn = await aio_pika.connect(AMQP_URL)
            ch = await conn.channel()
            await ch.declare_queue(queue, durable=True)

            async def send(i: int, t: float) -> None:
                head = b"m-%d:%.6f:" % (i, t)
                await ch.default_exchange.publish(aio_pika.Message(
                    head + b"x" * max(0, BODY_SIZE - len(head)), message_id=f"m-{i}",
                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT), routing_key=queue)
            await pace(send)
            await conn.close()
        asyncio.run(go())
    elif contender == "celery":
        app = celery_app(queue, None, redis_)
        task = app.tasks["bench.noop"]
        with app.producer_or_acquire() as producer:
            async def send(i: int, t: float) -> None:
                task.apply_async(args=[i, t], queue=queue, producer=producer)
            asyncio.run(pace(send))
    elif contender == "dramatiq":
        actor = dramatiq_actor(queue, None, redis_)

        async def send(i: int, t: float) -> None:
            actor.send(i, t)
        asyncio.run(pace(send))
        actor.broker.close()
    elif contender == "faststream":
        async def go() -> None:
            async with faststream_rabbit(queue) as broker:
                await pace(lambda i, t: broker.publish([i, t], queue=queue, persist=True))
        asyncio.run(go())
    elif contender == "taskiq-aio-pika":
        async def go() -> None:
            broker, task = taskiq_broker(queue, None)
            await broker.startup()
            await pace(task.kiq)
            await broker.shutdown()
        asyncio.run(go())
    else:
        raise SystemExit(f"no paced publisher for {contender}")


def publish(workload: str, contender: str, queue: str, n: int) -> None:
    if workload == "w1-sqlite":
        return sqlite_publish(contender, queue, n)
    if workload == "w1-postgres":
        return postgres.publish(contender, queue, n)
    set_mode(workload)
    if workload.endswith("nats"):
        return jetstream.publish(contender, queue, n)
    redis_ = workload.endswith("redis")
    if contender in tasks.SENT_AS_TASKS:
        return tasks.publish(workload, queue, n, AMQP_URL, REDIS_URL, PREFETCH)
    if redis_ and contender in REDIS_BULK_PUBLISHERS:
        return REDIS_BULK_PUBLISHERS[contender](queue, n)
    if redis_ and contender in REDIS_SENDERS:
        return drive_sender(REDIS_SENDERS[contender], queue,
                            lambda send: in_chunks(n, send, 10))
    if contender == "celery":
        app = celery_app(queue, None, redis_)
        task = app.tasks["bench.noop"]
        with app.producer_or_acquire() as producer:
            for i in range(n):
                task.apply_async(args=[i, *mode.TASK_ARG], queue=queue, producer=producer)
    elif contender == "dramatiq":
        actor = dramatiq_actor(queue, None, redis_)
        for i in range(n):
            actor.send(i, *mode.TASK_ARG)
        actor.broker.close()
    elif contender == "faststream":
        import asyncio

        async def go() -> None:
            async with faststream_rabbit(queue) as broker:
                await in_chunks(n, lambda i: broker.publish(i, queue=queue, persist=True))
        asyncio.run(go())
    elif contender == "taskiq-aio-pika":
        import asyncio

        async def go() -> None:
            broker, task = taskiq_broker(queue, None)
            await broker.startup()
            await in_chunks(n, lambda i: task.kiq(i, *mode.TASK_ARG), 10)
            await broker.shutdown()
        asyncio.run(go())
    else:
        raise SystemExit(f"no publisher for {contender}")
