"""The "execute" workloads of ``compare.py`` (issue 14): ``tasks-rabbitmq``,
``tasks-redis``. 50,000 no-op tasks taking ``(int, str)`` are sent before the
timed window, then drained: foxtive's App (``@app.task`` routed by its
header, arguments decoded and checked against the annotations) next to
foxtive's raw message drain of the same backend settings and the peers' own
tasks, each sent through the peer's own producer API with the same two
arguments. Here: the task constants, the contender list and the foxtive
task side (publisher, consumer); compare.py runs every contender as for W1.
"""

from __future__ import annotations

from typing import Any

from harness.config import FOX, PEER, RUST

#: The task's second argument (the first is the id the recorder counts).
TASK_STR = "x" * 64
TASK_NAME = "bench.noop"
#: Tasks per ``send_many`` call when pre-sending (outside the timed window).
SEND_CHUNK = 5_000
N_DEFAULT = 50_000
#: The plain lapin consumer of the tasks' own messages: what the broker and
#: lapin give a consumer of the envelope (headers, id, content type) at all.
TASK_CEILING = "lapin ceiling on task messages"
#: Contenders whose queue is filled with ``send_many`` (the task envelope).
SENT_AS_TASKS = ("foxtive tasks", TASK_CEILING)

CONTENDERS: dict[str, list[tuple[str, str, str]]] = {
    "tasks-rabbitmq": [
        ("foxtive tasks", FOX, "App, @app.task async def noop(i: int, s: str), "
                               "prefetch 1000 (the raw drain's backend settings)"),
        ("foxtive", FOX, "raw message drain: prefetch 1000, async handler reading the id"),
        # what the broker gives a consumer at all: the bound on every
        # contender's rate (needs cargo build --release -p foxtive-core
        # --example rabbitmq_ceiling; left out, with the reason, without it)
        ("lapin ceiling", RUST, "plain lapin consumer, prefetch 1000, one multiple-ack per "
                                "drained batch, raw messages"),
        (TASK_CEILING, RUST, "the same lapin consumer on the tasks' messages (sent by "
                             "send_many: the envelope's headers, id and content type)"),
        ("celery", PEER, "acks_late=True, prefetch_multiplier 4 x 8 threads, pool=threads"),
        ("dramatiq", PEER, "8 worker threads, prefetch 2xthreads, ack after processing"),
        ("taskiq-aio-pika", PEER, "qos 100, ack_type WHEN_EXECUTED, max_async_tasks 100"),
    ],
    "tasks-redis": [
        ("foxtive tasks", FOX, "App, @app.task async def noop(i: int, s: str), "
                               "batch_size 100, delete_on_ack (the raw drain's settings)"),
        ("foxtive", FOX, "raw message drain: batch_size 100, delete_on_ack, async handler"),
        ("celery", PEER, "redis broker, acks_late=True, prefetch_multiplier 4 x 8 threads"),
        ("dramatiq", PEER, "RedisBroker, 8 worker threads, prefetch 2xthreads, ack after"),
        ("arq", PEER, "max_jobs 100, keep_result 0"),
        ("rq", PEER, "SimpleWorker (no fork), one job at a time"),
        ("taskiq-redis", PEER, "RedisStreamBroker (XACK after), max_async_tasks 100, "
                               "WHEN_EXECUTED"),
    ],
}


def is_tasks(workload: str) -> bool:
    return workload.startswith("tasks-")


def bench_app(workload: str, queue: str, amqp_url: str, redis_url: str, prefetch: int,
              on_task: Any = None) -> tuple[Any, Any]:
    """The app and its task, on a backend built exactly as the raw drain's."""
    import foxtive

    def broker(q: str) -> Any:
        if workload.endswith("rabbitmq"):
            return foxtive.RabbitMqBackend(amqp_url, foxtive.RabbitMqConsumerConfig(
                queue_name=q, prefetch_count=prefetch))
        return foxtive.RedisStreamBackend(redis_url, foxtive.RedisStreamConsumerConfig(
            stream_name=q, group_name="g", batch_size=100, delete_on_ack=True))

    app = foxtive.App("bench", broker=broker)
    hit = on_task

    @app.task(name=TASK_NAME, queue=queue)
    async def noop(i: int, s: str) -> None:
        hit(i)

    return app, noop


def publish(workload: str, queue: str, n: int, amqp_url: str, redis_url: str,
            prefetch: int) -> None:
    """Pre-send n tasks with ``send_many`` (chunks of SEND_CHUNK)."""
    import asyncio

    app, noop = bench_app(workload, queue, amqp_url, redis_url, prefetch)

    async def go() -> None:
        for start in range(0, n, SEND_CHUNK):
            await noop.send_many([(i, TASK_STR) for i in range(start, min(n, start + SEND_CHUNK))])
        await app.aclose()

    asyncio.run(go())


def consume(workload: str, queue: str, rec: Any, amqp_url: str, redis_url: str,
            prefetch: int) -> None:
    """Run the app's one queue; the recorder ends the process."""
    import asyncio

    app, _ = bench_app(workload, queue, amqp_url, redis_url, prefetch, on_task=rec.hit)
    asyncio.run(app.run_async(handle_signals=False))
