"""The peers' framework apps, shared by their publishers and consumers:
Celery and Dramatiq (on RabbitMQ or Redis), taskiq on aio-pika. Each task
is ``noop(i, sent=0.0)``: the work of ``mode.sync_work`` / ``async_work``
on the recorder (none when publishing)."""

from __future__ import annotations

from typing import Any

from harness import mode
from harness.config import AMQP_URL, REDIS_URL, W6_DELAY
from harness.mode import W6Error, async_work, sync_work
from harness.recorder import Recorder


def celery_app(queue: str, rec: Recorder | None, redis_: bool) -> Any:
    from celery import Celery

    app = Celery("bench", broker=REDIS_URL if redis_ else AMQP_URL.replace("amqp://", "pyamqp://"))
    app.conf.update(task_acks_late=True, task_reject_on_worker_lost=True,
                    worker_prefetch_multiplier=1 if mode.CONC else 4, task_ignore_result=True,
                    worker_enable_remote_control=False, worker_send_task_events=False,
                    task_default_queue=queue, worker_hijack_root_logger=False,
                    broker_connection_retry_on_startup=True)
    if redis_:
        # every key under the queue's name (kombu keeps `unacked` global
        # otherwise); a visibility timeout past the W6 countdown, as Celery's
        # Redis notes ask for ETA tasks
        app.conf.broker_transport_options = {"global_keyprefix": f"{queue}:",
                                             "visibility_timeout": 2 * W6_DELAY}

    @app.task(name="bench.noop", bind=True)
    def noop(self: Any, i: int, sent: float = 0.0) -> None:
        if rec is not None:
            try:
                sync_work(rec, i, sent)
            except W6Error as e:
                raise self.retry(countdown=mode.RETRY_DELAY, max_retries=1) from e
    return app


def dramatiq_actor(queue: str, rec: Recorder | None, redis_: bool) -> Any:
    import dramatiq

    if redis_:
        from dramatiq.brokers.redis import RedisBroker

        broker: Any = RedisBroker(url=REDIS_URL, namespace=f"dramatiq-{queue}")
    else:
        from dramatiq.brokers.rabbitmq import RabbitmqBroker

        broker = RabbitmqBroker(url=AMQP_URL)
    dramatiq.set_broker(broker)

    backoff_ms = int(mode.RETRY_DELAY * 1000) or 1

    @dramatiq.actor(queue_name=queue, max_retries=1 if mode.W6 or mode.W3 else 0,
                    min_backoff=backoff_ms, max_backoff=backoff_ms)
    def noop(i: int, sent: float = 0.0) -> None:
        if rec is not None:
            sync_work(rec, i, sent)
    return noop


def taskiq_broker(queue: str, rec: Recorder | None) -> Any:
    from taskiq_aio_pika import AioPikaBroker
    from taskiq_aio_pika.queue import Queue

    broker = AioPikaBroker(AMQP_URL, qos=100, task_queues=[Queue(name=queue, durable=True)])

    @broker.task(task_name="bench.noop")
    async def noop(i: int, sent: float | str = 0.0) -> None:  # str: tasks-*
        if rec is not None:
            await async_work(rec, i, sent)
    return broker, noop


def faststream_hit(rec: Recorder, body: Any) -> None:
    """FastStream's handler on every broker: the body is the id, or W4's
    ``[id, sent]``."""
    if isinstance(body, list):
        rec.hit(body[0], body[1])
    else:
        rec.hit(body)
