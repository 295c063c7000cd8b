"""The consumers (child side): ``consume`` runs one contender on one queue
until its recorder ends the process. The RabbitMQ contenders (and Celery,
Dramatiq on Redis too) are here; the other brokers' in their own modules.
Also W2's no-broker reference, ``asyncio_bound``."""

from __future__ import annotations

import os
import time
from typing import Any

from harness import jetstream, mode, postgres, tasks
from harness.bodies import id_of, sent_of
from harness.config import AMQP_URL, PREFETCH, REDIS_URL
from harness.fox_pool import fox_pool
from harness.memory import consume_memory
from harness.mode import async_work, set_mode
from harness.peer_apps import celery_app, dramatiq_actor, faststream_hit, taskiq_broker
from harness.recorder import Recorder
from harness.redis_contenders import REDIS_CONSUMERS, foxtive_redis_consume
from harness.sqlite import consume_sqlite


async def asyncio_bound(rec: Recorder, n: int) -> None:
    """W2's reference for async handlers: no broker, no framework, just
    ``CONC`` coroutines awaiting ``async_work`` (asyncio.sleep(10 ms)) in a
    loop. asyncio's timers fire up to ~1 ms late (epoll's millisecond timeout,
    rounded up), so this stays under the 10,000 msg/s of the workload's
    definition; the gap is the event loop's, not the broker's."""
    import asyncio

    ids = iter(range(n))

    async def worker() -> None:
        for i in ids:
            await async_work(rec, i)
    await asyncio.gather(*(worker() for _ in range(mode.CONC or 1)))
    await asyncio.Event().wait()  # the recorder ends the process


def consume(workload: str, contender: str, queue: str, n: int, result: str,
            idle: float) -> None:
    import asyncio

    if workload == "w1-memory":
        return consume_memory(contender, n, result)
    if workload == "w1-sqlite":
        return consume_sqlite(contender, queue, n, result, idle)
    if workload == "w1-postgres":
        return postgres.consume(contender, queue, n, result, idle)
    set_mode(workload)
    rec = Recorder(n, result, idle)
    redis_ = workload.endswith("redis")
    if contender == "foxtive tasks":
        tasks.consume(workload, queue, rec, AMQP_URL, REDIS_URL, PREFETCH)
    elif workload.endswith("nats"):
        jetstream.consume(contender, queue, rec)
    elif redis_ and contender == "foxtive sync":
        foxtive_redis_consume(queue, rec, sync=True)
    elif redis_ and contender in REDIS_CONSUMERS:
        REDIS_CONSUMERS[contender](queue, rec)
    elif contender == "asyncio bound":
        asyncio.run(asyncio_bound(rec, n))
    elif contender in ("foxtive", "foxtive sync"):
        import foxtive

        async def fox_handler(message: foxtive.Message) -> None:
            await async_work(rec, id_of(message.id), sent_of(message.body))

        pool = fox_pool(fox_handler, rec, (lambda m: id_of(m.id)) if contender == "foxtive sync"
                        else None)
        # README: prefetch about twice the concurrency, so a finished handler
        # finds its next message already here.
        backend = foxtive.RabbitMqBackend(AMQP_URL, foxtive.RabbitMqConsumerConfig(
            queue_name=queue,
            prefetch_count=int(os.environ.get("W2_PREFETCH", 0)) or 2 * mode.CONC or PREFETCH))
        asyncio.run(pool.run_async(backend, handle_signals=False))
    elif contender == "aio-pika":
        import aio_pika

        async def go() -> None:
            conn = await aio_pika.connect(AMQP_URL)
            ch = await conn.channel()
            await ch.set_qos(prefetch_count=mode.CONC or PREFETCH)
            q = await ch.declare_queue(queue, durable=True)

            async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
                await async_work(rec, id_of(message.message_id or b""), sent_of(message.body))
                await message.ack()
            await q.consume(on_message)
            await asyncio.Event().wait()
        asyncio.run(go())
    elif contender == "celery":
        app = celery_app(queue, rec, redis_)
        app.worker_main(["worker", "--pool=threads", "-c", str(mode.CONC or 8), "-Q", queue,
                         "--without-gossip", "--without-mingle", "--without-heartbeat",
                         "-l", "WARNING"])
    elif contender == "dramatiq":
        from dramatiq import Worker

        actor = dramatiq_actor(queue, rec, redis_)
        worker = Worker(actor.broker, worker_threads=mode.CONC or 8)
        worker.start()
        while True:
            time.sleep(1)
    elif contender == "faststream":
        from faststream.middlewares import AckPolicy
        from faststream.rabbit import Channel, RabbitBroker, RabbitQueue

        async def go() -> None:
            broker = RabbitBroker(AMQP_URL)

            @broker.subscriber(RabbitQueue(queue, durable=True),
                               channel=Channel(prefetch_count=100),
                               ack_policy=AckPolicy.REJECT_ON_ERROR)
            async def handle(body: Any) -> None:
                faststream_hit(rec, body)
            await broker.start()
            await asyncio.Event().wait()
        asyncio.run(go())
    elif contender == "taskiq-aio-pika":
        from taskiq.acks import AcknowledgeType
        from taskiq.receiver import Receiver

        async def go() -> None:
            broker, _ = taskiq_broker(queue, rec)
            broker.is_worker_process = True
            await broker.startup()
            receiver = Receiver(broker, max_async_tasks=mode.CONC or 100,
                                ack_type=AcknowledgeType.WHEN_EXECUTED)
            await receiver.listen(asyncio.Event())
        asyncio.run(go())
    else:
        raise SystemExit(f"unknown contender {contender}")
    time.sleep(3600)  # the recorder ends the process
