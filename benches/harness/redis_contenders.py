"""The Redis contenders (child side): raw redis-py and foxtive on a stream,
RQ, arq, taskiq-redis and FastStream, each with its publisher (an async
context manager yielding ``send(i, sent=None)``, for pre-publishing and
W4) and its consumer. Celery and Dramatiq, on both brokers, are in
``peer_apps.py``."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

from harness import mode
from harness.bodies import id_of, sent_of
from harness.config import BODY_SIZE, REDIS_URL
from harness.fox_pool import fox_pool
from harness.mode import W6Error, async_work, sync_work
from harness.peer_apps import faststream_hit
from harness.recorder import Recorder


@contextlib.asynccontextmanager
async def raw_redis_sender(stream: str) -> AsyncIterator[Any]:
    """W4 for foxtive and redis-py: XADD ``m-<i>:<sent>:xxx`` (the group exists)."""
    import redis.asyncio

    r = redis.asyncio.Redis.from_url(REDIS_URL)

    async def send(i: int, sent: float | None = None) -> None:
        head = b"m-%d:%.6f:" % (i, sent or time.time())
        await r.xadd(stream, {"body": head + b"x" * max(0, BODY_SIZE - len(head))})
    yield send
    await r.aclose()


def redis_py_consume(stream: str, rec: Recorder) -> None:
    import redis

    r = redis.Redis.from_url(REDIS_URL)
    while True:
        reply = r.xreadgroup("g", "redis-py", {stream: ">"}, count=100, block=1000)
        if not reply:
            continue
        ids = []
        for entry_id, fields in reply[0][1]:
            rec.hit(id_of(fields[b"body"]), sent_of(fields[b"body"]))
            ids.append(entry_id)
        pipe = r.pipeline(transaction=False)
        pipe.xack(stream, "g", *ids)
        pipe.xdel(stream, *ids)
        pipe.execute()


def foxtive_redis_consume(stream: str, rec: Recorder, sync: bool = False) -> None:
    import asyncio

    import foxtive

    async def handler(message: foxtive.Message) -> None:
        await async_work(rec, id_of(message.body), sent_of(message.body))

    pool = fox_pool(handler, rec, (lambda m: id_of(m.body)) if sync else None)
    config = foxtive.RedisStreamConsumerConfig(stream_name=stream, group_name="g",
                                               batch_size=100, delete_on_ack=True)
    backend = foxtive.RedisStreamBackend(REDIS_URL, config)
    asyncio.run(pool.run_async(backend, handle_signals=False))


_REC: Recorder | None = None


def task_args(i: int, sent: float | None) -> tuple[Any, ...]:
    return (i, *mode.TASK_ARG) if sent is None else (i, sent)


def rq_noop(i: int, sent: float = 0.0) -> None:
    assert _REC is not None
    sync_work(_REC, i, sent)  # W3 / W6: raises, RQ's Retry takes over


def rq_job(queue: str, i: int, sent: float | None = None) -> Any:
    """Job ids carry the queue name so that cleanup finds every ``rq:job:`` key."""
    from rq import Queue, Retry

    # RQ retries in whole seconds, through its scheduler (every second)
    retry = Retry(max=1, interval=max(1, round(mode.RETRY_DELAY))) if mode.RETRY_DELAY else None
    return Queue.prepare_data(rq_noop, args=task_args(i, sent), result_ttl=0,
                              job_id=f"{queue}-{i}", retry=retry)


def rq_publish(queue: str, n: int) -> None:
    import redis
    from rq import Queue

    q = Queue(queue, connection=redis.Redis.from_url(REDIS_URL))
    for start in range(0, n, 1000):
        q.enqueue_many([rq_job(queue, i) for i in range(start, min(n, start + 1000))])


@contextlib.asynccontextmanager
async def rq_sender(queue: str) -> AsyncIterator[Any]:
    import redis
    from rq import Queue

    q = Queue(queue, connection=redis.Redis.from_url(REDIS_URL))

    async def send(i: int, sent: float | None = None) -> None:
        q.enqueue_many([rq_job(queue, i, sent)])
    yield send


def rq_consume(queue: str, rec: Recorder) -> None:
    import logging

    import redis
    from rq import Queue, SimpleWorker

    global _REC
    _REC = rec
    logging.disable(logging.INFO)
    conn = redis.Redis.from_url(REDIS_URL)
    worker = SimpleWorker([Queue(queue, connection=conn)], connection=conn, name=f"{queue}-w")
    # W3 / W6: RQ moves due retries back to the queue from its scheduler, a
    # process forked by the worker (not counted in this process's RSS / CPU)
    rec.at_exit.append(lambda: worker.scheduler and worker.scheduler._process
                       and worker.scheduler._process.kill())
    worker.work(logging_level="WARNING", with_scheduler=bool(mode.RETRY_DELAY))


def arq_retry(delay: float) -> Exception:
    from arq import Retry

    return Retry(defer=delay)


async def arq_noop(ctx: dict[str, Any], i: int, sent: float = 0.0) -> None:
    assert _REC is not None
    await async_work(_REC, i, sent, retry=arq_retry)


@contextlib.asynccontextmanager
async def arq_sender(queue: str) -> AsyncIterator[Any]:
    """Job ids carry the queue name so that cleanup finds every ``arq:*`` key."""
    from arq import create_pool
    from arq.connections import RedisSettings

    pool = await create_pool(RedisSettings.from_dsn(REDIS_URL))

    async def send(i: int, sent: float | None = None) -> None:
        await pool.enqueue_job("arq_noop", *task_args(i, sent), _queue_name=queue,
                               _job_id=f"{queue}-{i}")
    yield send
    await pool.aclose()


def arq_consume(queue: str, rec: Recorder) -> None:
    import asyncio

    from arq import Worker, func
    from arq.connections import RedisSettings

    global _REC
    _REC = rec
    asyncio.set_event_loop(asyncio.new_event_loop())
    Worker(functions=[func(arq_noop, name="arq_noop", max_tries=2 if mode.RETRY_DELAY else None)],
           queue_name=queue, redis_settings=RedisSettings.from_dsn(REDIS_URL), max_jobs=100,
           keep_result=0, handle_signals=False, poll_delay=0.05).run()


def taskiq_redis_broker(queue: str, rec: Recorder | None) -> tuple[Any, Any, Any]:
    """W3 / W6: SmartRetryMiddleware; taskiq-redis ignores the ``delay`` label,
    so retries wait in a ListRedisScheduleSource for a scheduler to send them."""
    from taskiq_redis import ListRedisScheduleSource, RedisStreamBroker

    broker = RedisStreamBroker(REDIS_URL, queue_name=queue, consumer_group_name="g")
    source = None
    if mode.RETRY_DELAY:
        from taskiq.middlewares import SmartRetryMiddleware

        source = ListRedisScheduleSource(REDIS_URL, prefix=f"{queue}-schedule")
        # default_retry_count counts attempts: 2 = the first and one retry
        broker = broker.with_middlewares(SmartRetryMiddleware(
            default_retry_count=2, default_retry_label=True, default_delay=mode.RETRY_DELAY,
            schedule_source=source))

    @broker.task(task_name="bench.noop")
    async def noop(i: int, sent: float | str = 0.0) -> None:  # str: tasks-*
        if rec is not None:
            await async_work(rec, i, sent, retry=lambda _: W6Error(i))
    return broker, noop, source


@contextlib.asynccontextmanager
async def taskiq_redis_sender(queue: str) -> AsyncIterator[Any]:
    broker, task, _ = taskiq_redis_broker(queue, None)
    await broker.startup()

    async def send(i: int, sent: float | None = None) -> None:
        await task.kiq(*task_args(i, sent))
    yield send
    await broker.shutdown()


def taskiq_redis_consume(queue: str, rec: Recorder) -> None:
    import asyncio

    from taskiq.acks import AcknowledgeType
    from taskiq.receiver import Receiver

    async def go() -> None:
        broker, _, source = taskiq_redis_broker(queue, rec)
        broker.is_worker_process = True
        await broker.startup()
        if mode.W3:  # the scheduler (`taskiq scheduler`), here as a task of the worker
            import datetime

            from taskiq import TaskiqScheduler
            from taskiq.cli.scheduler.run import SchedulerLoop

            scheduler = TaskiqScheduler(broker, sources=[source])
            await source.startup()
            await scheduler.startup()
            loop = SchedulerLoop(scheduler)
            task = asyncio.create_task(
                loop.run(update_interval=datetime.timedelta(seconds=1)))
            rec.at_exit.append(task.cancel)
        await Receiver(broker, max_async_tasks=mode.CONC or 100,
                       ack_type=AcknowledgeType.WHEN_EXECUTED).listen(asyncio.Event())
    asyncio.run(go())


@contextlib.asynccontextmanager
async def faststream_redis_sender(queue: str) -> AsyncIterator[Any]:
    import redis
    from faststream.redis import RedisBroker

    broker = RedisBroker(REDIS_URL)
    await broker.connect()

    async def send(i: int, sent: float | None = None) -> None:
        await broker.publish(i if sent is None else [i, sent], stream=queue)
    yield send
    await broker.stop()
    try:  # the group must see pre-published entries (FastStream creates it at "$")
        redis.Redis.from_url(REDIS_URL).xgroup_create(queue, "g", id="0")
    except redis.ResponseError:  # W4: the running consumer created it
        pass


def faststream_redis_consume(queue: str, rec: Recorder) -> None:
    import asyncio

    from faststream.middlewares import AckPolicy
    from faststream.redis import RedisBroker, StreamSub

    async def go() -> None:
        broker = RedisBroker(REDIS_URL)

        @broker.subscriber(stream=StreamSub(queue, group="g", consumer="c1", batch=False),
                           ack_policy=AckPolicy.REJECT_ON_ERROR)
        async def handle(body: Any) -> None:
            faststream_hit(rec, body)
        await broker.start()
        await asyncio.Event().wait()
    asyncio.run(go())


# async context managers yielding ``send(i, sent=None)``: frameworks through
# their own publisher (pre-publishing and W4), foxtive / redis-py for W4 only
REDIS_SENDERS = {"rq": rq_sender, "arq": arq_sender, "taskiq-redis": taskiq_redis_sender,
                 "faststream": faststream_redis_sender, "foxtive": raw_redis_sender,
                 "redis-py": raw_redis_sender}
REDIS_BULK_PUBLISHERS = {"rq": rq_publish}  # faster than one enqueue per job
REDIS_CONSUMERS = {"foxtive": foxtive_redis_consume, "redis-py": redis_py_consume,
                   "rq": rq_consume, "arq": arq_consume,
                   "taskiq-redis": taskiq_redis_consume,
                   "faststream": faststream_redis_consume}
