"""Side-by-side benchmark: foxtive, its peers and a pure-Rust ceiling (issue #7).

    . .venv/bin/activate && maturin develop --release
    cargo build --release -p foxtive-core --example rabbitmq_ceiling
    python benches/compare.py [--quick] [--rounds 3] [--workloads w1-rabbitmq,w1-memory]

The script runs under the foxtive venv. It creates ``benches/.peers-venv``
from ``benches/requirements-peers.txt`` on first use (``--no-install`` skips
that) and runs every peer in that venv, every foxtive contender in the
current interpreter, each as its own process. For each round and contender:

* the messages are pre-published to a fresh queue, outside the timed window
  (raw contenders through the Rust publisher, frameworks through their own
  ``send``/``apply_async``/``kiq``/``publish`` so the format is theirs);
* the contender process starts; its handler records every message id; a
  watcher thread in the process ends it once every id was seen (or after
  ``--idle-timeout`` without progress) and writes first/last handled times;
* the parent takes peak RSS and CPU seconds from ``wait4`` of that process.

Two rates are reported: process start -> last handled (startup included) and
first handled -> last handled (the targets use this one). Lost = ids never
seen, dup = extra deliveries. Results go to ``benches/RESULTS-compare.md``
(markdown tables, ratio foxtive / each contender) and a PNG chart next to it.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import compare_nats as nb  # W1 and W3 on NATS JetStream (issue 15)
import compare_postgres as pg  # W1 and enqueue on PostgreSQL (issue 13)
import compare_tasks

HERE = Path(__file__).resolve().parent
sys.modules.setdefault("compare", sys.modules[__name__])  # compare_postgres / _nats import it
ROOT = HERE.parent
PEERS_VENV = HERE / ".peers-venv"
PEERS_PY = PEERS_VENV / "bin" / "python"
AMQP_URL = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f")
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
TARGET = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
BODY_SIZE = 100
#: The hiredis ceiling (benches/redis_ceiling.c), built by benches/build_redis_ceiling.sh.
C_CEILING = HERE / ".build" / "redis_ceiling_c"
PREFETCH = 1000  # raw clients and foxtive
SQLITE_BATCH = 500  # W1 on SQLite: rows claimed per transaction by the raw consumers
#: W1 on SQLite: one database file per run, on the same disk as the worktree.
SQLITE_DIR = Path(os.environ.get("SQLITE_BENCH_DIR", tempfile.gettempdir()))

# --------------------------------------------------------------------------
# contenders: name -> (interpreter, settings printed with the results)
# --------------------------------------------------------------------------

W2_SLEEP = 0.010  # W2: each handler awaits / sleeps this long
W2_CONC = 100  # W2: concurrency (async tasks or threads) for every contender
SLEEP = 0.0  # set in the child for W2
CONC = 0

FOX = "foxtive"
PEER = "peers"
RUST = "rust"

#: W2's reference for async handlers, the same on both brokers.
ASYNCIO_BOUND = ("asyncio bound", FOX, "no broker: 100 coroutines each awaiting "
                 "asyncio.sleep(10 ms) in a loop; the most any async handler can do here")

CONTENDERS: dict[str, list[tuple[str, str, str]]] = {
    "w1-rabbitmq": [
        ("foxtive", FOX, f"prefetch {PREFETCH}, ack after handler (engine default, batched)"),
        ("lapin ceiling", RUST, f"prefetch {PREFETCH}, one multiple-ack per drained batch"),
        ("aio-pika", PEER, f"prefetch {PREFETCH}, manual ack after handler"),
        ("celery", PEER, "acks_late=True, prefetch_multiplier 4 x 8 threads = 32, pool=threads"),
        ("dramatiq", PEER, "8 worker threads, prefetch 2xthreads = 16, ack after processing"),
        ("faststream", PEER, "Channel(prefetch_count=100), AckPolicy.REJECT_ON_ERROR (ack after)"),
        ("taskiq-aio-pika", PEER, "qos 100, ack_type WHEN_EXECUTED, max_async_tasks 100"),
    ],
    "w1-redis": [
        ("foxtive", FOX, "RedisStreamBackend batch_size 100, delete_on_ack=True"),
        ("redis-rs ceiling", RUST, "foxtive's RESP reader, XREADGROUP COUNT 100, XACK+XDEL "
                                   "of a batch sent with the next read"),
        ("hiredis ceiling", RUST, "C on hiredis, XREADGROUP COUNT 100, XACK+XDEL of a batch "
                                  "sent with the next read"),
        ("redis-py", PEER, "sync XREADGROUP COUNT 100, handler per entry, pipelined XACK+XDEL"),
        ("dramatiq", PEER, "RedisBroker, 8 worker threads, prefetch 2xthreads, ack after"),
        ("arq", PEER, "max_jobs 100, keep_result 0 (at-least-once by design)"),
        ("rq", PEER, "SimpleWorker (no fork), one job at a time"),
        ("celery", PEER, "redis broker, acks_late=True, prefetch_multiplier 4 x 8 threads"),
        ("taskiq-redis", PEER, "RedisStreamBroker (XACK after), max_async_tasks 100, "
                               "ack_type WHEN_EXECUTED"),
        ("faststream", PEER, "StreamSub(group, consumer), AckPolicy.REJECT_ON_ERROR"),
    ],
    "w2-rabbitmq": [
        ("foxtive", FOX, "prefetch 200 (2x concurrency, as the README advises), "
                         "with_concurrency_limit(100), async handler"),
        ("foxtive sync", FOX, "prefetch 200, plain def handler, Worker.concurrency 100 "
                              "(up to 100 threads), time.sleep"),
        ASYNCIO_BOUND,
        ("aio-pika", PEER, "prefetch 100, a task per delivery, manual ack after"),
        ("celery", PEER, "acks_late, pool=threads -c 100, prefetch_multiplier 1"),
        ("dramatiq", PEER, "100 worker threads, prefetch 2xthreads, ack after"),
        ("taskiq-aio-pika", PEER, "qos 100, max_async_tasks 100, WHEN_EXECUTED"),
    ],
    "w2-redis": [
        ("foxtive", FOX, "batch_size 100, delete_on_ack, with_concurrency_limit(100)"),
        ("foxtive sync", FOX, "batch_size 100, delete_on_ack, plain def handler, "
                              "Worker.concurrency 100 (up to 100 threads), time.sleep"),
        ASYNCIO_BOUND,
        ("dramatiq", PEER, "RedisBroker, 100 worker threads"),
        ("arq", PEER, "max_jobs 100, keep_result 0"),
        ("celery", PEER, "redis broker, acks_late, pool=threads -c 100, prefetch_multiplier 1"),
        ("taskiq-redis", PEER, "RedisStreamBroker, max_async_tasks 100, WHEN_EXECUTED"),
    ],
    "w4-rabbitmq": [
        ("foxtive", FOX, f"prefetch {PREFETCH}, async handler"),
        ("aio-pika", PEER, f"prefetch {PREFETCH}, manual ack after"),
        ("celery", PEER, "acks_late, pool=threads -c 8, prefetch_multiplier 4"),
        ("dramatiq", PEER, "8 worker threads, prefetch 2xthreads, ack after"),
        ("faststream", PEER, "Channel(prefetch_count=100), REJECT_ON_ERROR"),
        ("taskiq-aio-pika", PEER, "qos 100, max_async_tasks 100, WHEN_EXECUTED"),
    ],
    "w5-rabbitmq": [
        ("foxtive 1 process", FOX, "foxtive run --processes 1, sync handler, prefetch 100"),
        ("foxtive 2 processes", FOX, "foxtive run --processes 2, sync handler, prefetch 100"),
    ],
    "w3-rabbitmq": [
        ("foxtive", FOX, "RetryableError(delay=0.05), RetryHandler(max_retries=1): "
                         "TTL retry queue; prefetch 1000"),
        ("celery", PEER, "self.retry(countdown=0.05, max_retries=1), acks_late"),
        ("dramatiq", PEER, "max_retries=1, backoff 50 ms (delay queue)"),
    ],
    "w6-rabbitmq": [
        ("foxtive", FOX, "RetryableError(delay=3600), RetryHandler(max_retries=1, 3600 s): "
                         "TTL retry queue in the broker"),
        ("celery", PEER, "self.retry(countdown=3600): ETA message, held by the worker"),
        ("dramatiq", PEER, "max_retries=1, backoff 3,600,000 ms: delay queue .DQ"),
    ],
    "w3-redis": [
        ("foxtive", FOX, "RetryableError(delay=0.05), RetryHandler(max_retries=1): "
                         "sorted set {stream}:delayed; batch_size 100, delete_on_ack"),
        ("celery", PEER, "redis broker, self.retry(countdown=0.05, max_retries=1), acks_late"),
        ("dramatiq", PEER, "RedisBroker, max_retries=1, backoff 50 ms (delay queue .DQ)"),
        ("arq", PEER, "raise Retry(defer=0.05), max_tries=2, max_jobs 100, keep_result 0"),
        ("rq", PEER, "SimpleWorker, Retry(max=1, interval=1) (whole seconds only), "
                     "work(with_scheduler=True): scheduler process requeues every 1 s"),
        ("taskiq-redis", PEER, "SmartRetryMiddleware(default_retry_count=2, delay 0.05) + "
                               "ListRedisScheduleSource, its SchedulerLoop (1 s ticks) as a "
                               "task in the worker; WHEN_EXECUTED"),
    ],
    "w4-redis": [
        ("foxtive", FOX, "RedisStreamBackend batch_size 100, delete_on_ack, async handler"),
        ("redis-py", PEER, "sync XREADGROUP COUNT 100 BLOCK 1000, pipelined XACK+XDEL"),
        ("dramatiq", PEER, "RedisBroker, 8 worker threads, prefetch 2xthreads, ack after"),
        ("arq", PEER, "max_jobs 100, keep_result 0, poll_delay 0.05"),
        ("rq", PEER, "SimpleWorker (no fork), one job at a time"),
        ("celery", PEER, "redis broker, acks_late, pool=threads -c 8, prefetch_multiplier 4"),
        ("taskiq-redis", PEER, "RedisStreamBroker, max_async_tasks 100, WHEN_EXECUTED"),
        ("faststream", PEER, "StreamSub(group, consumer), AckPolicy.REJECT_ON_ERROR"),
    ],
    "w5-redis": [
        ("foxtive 1 process", FOX, "foxtive run --processes 1, sync handler, "
                                   "RedisStreamBackend batch_size 100"),
        ("foxtive 2 processes", FOX, "foxtive run --processes 2, sync handler, "
                                     "RedisStreamBackend batch_size 100"),
    ],
    "w6-redis": [
        ("foxtive", FOX, "RetryableError(delay=3600), RetryHandler(max_retries=1, 3600 s): "
                         "sorted set {stream}:delayed in Redis"),
        ("celery", PEER, "redis broker, self.retry(countdown=3600): ETA message, held by the "
                         "worker; visibility_timeout 7200"),
        ("dramatiq", PEER, "RedisBroker, max_retries=1, backoff 3,600,000 ms: delay queue .DQ"),
        ("arq", PEER, "raise Retry(defer=3600), max_tries=2: job waits in the queue's sorted "
                      "set"),
        ("rq", PEER, "SimpleWorker, Retry(max=1, interval=3600): ScheduledJobRegistry, "
                     "work(with_scheduler=True)"),
        ("taskiq-redis", PEER, "SmartRetryMiddleware(delay 3600) + ListRedisScheduleSource: "
                               "retries wait in Redis for `taskiq scheduler` (not running)"),
    ],
    "w1-sqlite": [
        ("foxtive", FOX, "SqliteBackend (WAL, synchronous=FULL), claims of up to 256 "
                         "(the pool's default batch_size), async no-op handler"),
        ("sqlite3 raw", FOX, f"stdlib sqlite3, same file and pragmas: BEGIN IMMEDIATE + "
                             f"UPDATE ... RETURNING LIMIT {SQLITE_BATCH}, handler per row, "
                             "one DELETE per batch"),
        ("rusqlite ceiling", RUST, f"the same loop in Rust (examples/sqlite_ceiling.rs), "
                                   f"LIMIT {SQLITE_BATCH}, no handler"),
        ("huey", PEER, "SqliteHuey, consumer with 8 threads, poll 1-10 ms (removes each "
                       "task before running it: at-most-once)"),
        ("foxtive 3 processes", FOX, "three foxtive processes on one file (count from "
                                     "their recorded ids)"),
        ("sqlite3 raw 3 processes", FOX, "three raw consumers on one file"),
    ],
    "w1-memory": [
        ("foxtive sync", FOX, "MemoryBackend, publish_bulk, default pool (limit 1000)"),
        ("loop sync", FOX, "plain Python for-loop calling the same handler"),
        ("foxtive async", FOX, "MemoryBackend, publish_bulk, default pool (limit 1000)"),
        ("loop async", FOX, "plain asyncio loop awaiting the same handler"),
    ],
    **pg.CONTENDERS,
    **nb.CONTENDERS,  # w1-nats, w3-nats
    **compare_tasks.CONTENDERS,  # tasks-rabbitmq, tasks-redis: the execute workload (issue 14)
}


def ceiling_binary(name: str = "rabbitmq_ceiling") -> str:
    for profile in ("release", "debug"):
        p = TARGET / profile / "examples" / name
        if p.exists():
            return str(p)
    raise SystemExit(f"build it first: cargo build --release -p foxtive-core --example {name}")


def body_for(i: int) -> bytes:
    head = b"m-%d:" % i
    return head + b"x" * (BODY_SIZE - len(head))


# --------------------------------------------------------------------------
# child side: recorder shared by all consumers
# --------------------------------------------------------------------------


def vmrss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


W6 = False  # set in the child for W6: every handler fails, retry in an hour
W3 = False  # set in the child for W3: ids divisible by 10 fail on their first attempt
W3_DELAY = 0.05  # W3: seconds until the retry
W6_DELAY = 3600.0  # W6: seconds until the retry
RETRY_DELAY = 0.0  # W3_DELAY or W6_DELAY in the child
TASK_ARG: tuple[str, ...] = ()  # tasks-*: the peers' tasks take (i, TASK_STR)
_failed_once: set[int] = set()


def set_mode(workload: str) -> None:
    """Child side (publishers and consumers): the workload's globals."""
    global SLEEP, CONC, W6, W3, RETRY_DELAY, TASK_ARG
    if compare_tasks.is_tasks(workload):
        TASK_ARG = (compare_tasks.TASK_STR,)
    if workload.startswith("w2"):
        SLEEP, CONC = W2_SLEEP, W2_CONC
    W3, W6 = workload.startswith("w3"), workload.startswith("w6")
    RETRY_DELAY = W3_DELAY if W3 else W6_DELAY if W6 else 0.0
    if W3 or W6:
        import logging

        logging.disable(logging.ERROR)  # 100k failure tracebacks are not the point


def w3_should_fail(i: int) -> bool:
    if W3 and i % 10 == 0 and i not in _failed_once:
        _failed_once.add(i)
        return True
    return False


class W6Error(Exception):
    """W6: fail every first attempt."""


class Recorder:
    """Counts ids; a watcher thread writes the result and ends the process."""

    def __init__(self, n: int, result: str, idle_timeout: float,
                 extra: dict[str, Any] | None = None, share: bool = False) -> None:
        self.n = n
        # One of several processes draining one queue: it stops once the
        # queue looks drained (0.5 s without a message after the first) and
        # writes the ids it saw, which the parent merges.
        self.share = share
        self.ids: list[int] = []
        self.result = result
        self.idle_timeout = idle_timeout
        # A deque the watcher empties as it goes (append and popleft are
        # atomic across handler threads): the recorder holds no per-message
        # state, so it does not weigh on the worker's RSS (W6, peak RSS).
        self.hits: collections.deque[int] = collections.deque()
        self.lat: list[float] = []
        self.w6 = W6
        self.rss_before = 0.0
        self.first = 0.0
        self.last = 0.0
        self.extra = extra or {}
        self.at_exit: list[Any] = []  # callables run before the process ends
        threading.Thread(target=self._watch, daemon=True).start()

    def hit(self, i: int, sent: float = 0.0) -> None:
        t = time.time()
        if not self.first:
            self.first = t
        self.last = t
        self.hits.append(i)
        if self.w6 and not self.rss_before:
            self.rss_before = vmrss_mib()
        if sent and sent.__class__ is float:  # tasks-*: the second argument is a str
            self.lat.append(t - sent)

    def _watch(self) -> None:
        seen = bytearray(self.n)
        unique = dups = 0
        progress = time.monotonic()
        while True:
            time.sleep(0.02)
            hits = self.hits
            if hits:
                progress = time.monotonic()
                while hits:
                    i = hits.popleft()
                    if self.share:
                        self.ids.append(i)
                    if 0 <= i < self.n and not seen[i]:
                        seen[i] = 1
                        unique += 1
                    else:
                        dups += 1
            idle = time.monotonic() - progress
            if (unique >= self.n or idle > self.idle_timeout
                    or (self.share and unique and idle > 0.5)):
                break
        if self.w6:  # let the last retries be scheduled, then weigh the worker
            time.sleep(3)
            self.extra.update(rss_before=self.rss_before, rss_after=vmrss_mib())
        with open(self.result, "w") as f:
            lat = sorted(self.lat)
            pct = {} if not lat else {
                "p50_ms": lat[len(lat) // 2] * 1000,
                "p99_ms": lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000,
                "max_ms": lat[-1] * 1000}
            if self.share:
                pct["ids"] = self.ids
            json.dump({"first": self.first, "last": self.last, "unique": unique,
                       "dups": dups, "lost": self.n - unique, **pct, **self.extra}, f)
        for fn in self.at_exit:
            fn()
        os._exit(0)


def sync_work(rec: Recorder, i: int, sent: float = 0.0) -> None:
    if w3_should_fail(i):
        raise W6Error(i)
    rec.hit(i, sent)
    if W6:
        raise W6Error(i)
    if SLEEP:
        time.sleep(SLEEP)


def fox_retry(delay: float) -> Exception:
    import foxtive

    return foxtive.RetryableError("retry", delay=delay)


async def async_work(rec: Recorder, i: int, sent: float = 0.0,
                     retry: Any = fox_retry) -> None:
    """``retry(delay)`` is the exception that asks the framework for a retry."""
    if w3_should_fail(i):
        raise retry(RETRY_DELAY)
    rec.hit(i, sent)
    if W6:
        raise retry(RETRY_DELAY)
    if SLEEP:
        import asyncio

        await asyncio.sleep(SLEEP)


def sent_of(raw: bytes | str) -> float:
    """W4 bodies are ``m-<i>:<time.time()>:xxx``; others carry no send time."""
    if isinstance(raw, str):
        raw = raw.encode()
    parts = raw.split(b":", 2)
    try:
        return float(parts[1]) if len(parts) == 3 else 0.0
    except ValueError:
        return 0.0


def id_of(raw: bytes | str) -> int:
    if isinstance(raw, str):
        raw = raw.encode()
    return int(raw.split(b":", 1)[0][2:]) if raw.startswith(b"m-") else int(raw)


# --------------------------------------------------------------------------
# child side: publishers (run in the contender's interpreter)
# --------------------------------------------------------------------------


def drive_sender(sender: Any, queue: str, use: Any) -> None:
    """Run ``use(send)`` with the ``send`` of one of REDIS_SENDERS."""
    import asyncio

    async def go() -> None:
        async with sender(queue) as send:
            await use(send)
    asyncio.run(go())


async def in_chunks(n: int, send: Any, chunk: int = 200) -> None:
    """Publish concurrently in chunks: outside the timed window, only to save time."""
    import asyncio

    for start in range(0, n, chunk):
        await asyncio.gather(*(send(i) for i in range(start, min(n, start + chunk))))


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
        from faststream.rabbit import RabbitBroker, RabbitQueue

        async def go() -> None:
            broker = RabbitBroker(AMQP_URL)
            await broker.connect()
            await broker.declare_queue(RabbitQueue(queue, durable=True))
            await pace(lambda i, t: broker.publish([i, t], queue=queue, persist=True))
            await broker.stop()
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
        return pg.publish(contender, queue, n)
    set_mode(workload)
    if workload.endswith("nats"):
        return nb.publish(contender, queue, n)
    redis_ = workload.endswith("redis")
    if contender == "foxtive tasks":
        return compare_tasks.publish(workload, queue, n, AMQP_URL, REDIS_URL, PREFETCH)
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
                task.apply_async(args=[i, *TASK_ARG], queue=queue, producer=producer)
    elif contender == "dramatiq":
        actor = dramatiq_actor(queue, None, redis_)
        for i in range(n):
            actor.send(i, *TASK_ARG)
        actor.broker.close()
    elif contender == "faststream":
        import asyncio

        from faststream.rabbit import RabbitBroker, RabbitQueue

        async def go() -> None:
            broker = RabbitBroker(AMQP_URL)
            await broker.connect()
            await broker.declare_queue(RabbitQueue(queue, durable=True))
            await in_chunks(n, lambda i: broker.publish(i, queue=queue, persist=True))
            await broker.stop()
        asyncio.run(go())
    elif contender == "taskiq-aio-pika":
        import asyncio

        async def go() -> None:
            broker, task = taskiq_broker(queue, None)
            await broker.startup()
            await in_chunks(n, lambda i: task.kiq(i, *TASK_ARG), 10)
            await broker.shutdown()
        asyncio.run(go())
    else:
        raise SystemExit(f"no publisher for {contender}")


def celery_app(queue: str, rec: Recorder | None, redis_: bool) -> Any:
    from celery import Celery

    app = Celery("bench", broker=REDIS_URL if redis_ else AMQP_URL.replace("amqp://", "pyamqp://"))
    app.conf.update(task_acks_late=True, task_reject_on_worker_lost=True,
                    worker_prefetch_multiplier=1 if CONC else 4, task_ignore_result=True,
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
                raise self.retry(countdown=RETRY_DELAY, max_retries=1) from e
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

    backoff_ms = int(RETRY_DELAY * 1000) or 1

    @dramatiq.actor(queue_name=queue, max_retries=1 if W6 or W3 else 0,
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


# --------------------------------------------------------------------------
# child side: consumers
# --------------------------------------------------------------------------


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
    await asyncio.gather(*(worker() for _ in range(CONC or 1)))
    await asyncio.Event().wait()  # the recorder ends the process


def fox_pool(handler: Any, rec: Recorder, ident: Any = None) -> Any:
    """The foxtive pool of every broker: retries for W3 / W6, concurrency for W2.

    With ``ident`` (message -> int id): a plain ``def`` worker (``foxtive
    sync``) calling ``sync_work`` on up to ``CONC`` threads, instead of the
    async ``handler``.
    """
    import foxtive

    if ident is not None:
        class SyncWorker(foxtive.Worker):
            id = "noop"
            concurrency = CONC or None

            def process(self, message: foxtive.Message) -> None:  # type: ignore[override]
                sync_work(rec, ident(message), sent_of(message.body))

        builder = foxtive.WorkerPoolBuilder("bench").add_worker(SyncWorker())
    else:
        builder = foxtive.WorkerPoolBuilder("bench").add_worker(handler, id="noop")
    if W6 or W3:
        builder = builder.with_middleware(foxtive.RetryHandler(
            max_retries=1, initial_backoff=RETRY_DELAY, max_backoff=RETRY_DELAY, jitter=False))
    if CONC:
        builder = builder.with_concurrency_limit(CONC)
    return builder.build()


def consume(workload: str, contender: str, queue: str, n: int, result: str,
            idle: float) -> None:
    import asyncio

    if workload == "w1-memory":
        return consume_memory(contender, n, result)
    if workload == "w1-sqlite":
        return consume_sqlite(contender, queue, n, result, idle)
    if workload == "w1-postgres":
        return pg.consume(contender, queue, n, result, idle)
    set_mode(workload)
    rec = Recorder(n, result, idle)
    redis_ = workload.endswith("redis")
    if contender == "foxtive tasks":
        compare_tasks.consume(workload, queue, rec, AMQP_URL, REDIS_URL, PREFETCH)
    elif workload.endswith("nats"):
        nb.consume(contender, queue, rec)
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
            prefetch_count=int(os.environ.get("W2_PREFETCH", 0)) or 2 * CONC or PREFETCH))
        asyncio.run(pool.run_async(backend, handle_signals=False))
    elif contender == "aio-pika":
        import aio_pika

        async def go() -> None:
            conn = await aio_pika.connect(AMQP_URL)
            ch = await conn.channel()
            await ch.set_qos(prefetch_count=CONC or PREFETCH)
            q = await ch.declare_queue(queue, durable=True)

            async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
                await async_work(rec, id_of(message.message_id or b""), sent_of(message.body))
                await message.ack()
            await q.consume(on_message)
            await asyncio.Event().wait()
        asyncio.run(go())
    elif contender == "celery":
        app = celery_app(queue, rec, redis_)
        app.worker_main(["worker", "--pool=threads", "-c", str(CONC or 8), "-Q", queue,
                         "--without-gossip", "--without-mingle", "--without-heartbeat",
                         "-l", "WARNING"])
    elif contender == "dramatiq":
        from dramatiq import Worker

        actor = dramatiq_actor(queue, rec, redis_)
        worker = Worker(actor.broker, worker_threads=CONC or 8)
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
                if isinstance(body, list):
                    rec.hit(body[0], body[1])
                else:
                    rec.hit(body)
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
            receiver = Receiver(broker, max_async_tasks=CONC or 100,
                                ack_type=AcknowledgeType.WHEN_EXECUTED)
            await receiver.listen(asyncio.Event())
        asyncio.run(go())
    else:
        raise SystemExit(f"unknown contender {contender}")
    time.sleep(3600)  # the recorder ends the process


# --------------------------------------------------------------------------
# SQLite contenders (child side): one file per run, SQLITE_DIR/<queue>.db
# --------------------------------------------------------------------------


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


def consume_memory(contender: str, n: int, result: str) -> None:
    import asyncio

    hits: list[bytes] = []
    append = hits.append

    def sync_handler(message: Any) -> None:
        append(message.body)

    async def async_handler(message: Any) -> None:
        append(message.body)

    kind = contender.split()[1]
    handler = sync_handler if kind == "sync" else async_handler
    if contender.startswith("loop"):
        class Msg:
            __slots__ = ("body",)

            def __init__(self, body: bytes) -> None:
                self.body = body
        msgs = [Msg(body_for(i)) for i in range(n)]
        t0 = time.time()
        if kind == "sync":
            for m in msgs:
                sync_handler(m)
        else:
            async def drive() -> None:
                for m in msgs:
                    await async_handler(m)
            asyncio.run(drive())
        t1 = time.time()
    else:
        import foxtive

        backend = foxtive.MemoryBackend("bench")
        chunk = 100_000
        for start in range(0, n, chunk):
            backend.publish_bulk([body_for(i) for i in range(start, min(n, start + chunk))])
        pool = foxtive.WorkerPoolBuilder("bench").add_worker(handler, id="noop").build()
        t0 = time.time()
        idle = pool.run_until_idle(backend, timeout=600)
        t1 = time.time()
        assert idle, "pool did not go idle"
    seen = {id_of(b) for b in hits}
    with open(result, "w") as f:
        json.dump({"first": t0, "last": t1, "unique": len(seen),
                   "dups": len(hits) - len(seen), "lost": n - len(seen)}, f)


# --------------------------------------------------------------------------
# Redis contenders (child side)
# --------------------------------------------------------------------------


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
    return (i, *TASK_ARG) if sent is None else (i, sent)


def rq_noop(i: int, sent: float = 0.0) -> None:
    assert _REC is not None
    sync_work(_REC, i, sent)  # W3 / W6: raises, RQ's Retry takes over


def rq_job(queue: str, i: int, sent: float | None = None) -> Any:
    """Job ids carry the queue name so that cleanup finds every ``rq:job:`` key."""
    from rq import Queue, Retry

    # RQ retries in whole seconds, through its scheduler (every second)
    retry = Retry(max=1, interval=max(1, round(RETRY_DELAY))) if RETRY_DELAY else None
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
    worker.work(logging_level="WARNING", with_scheduler=bool(RETRY_DELAY))


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
    Worker(functions=[func(arq_noop, name="arq_noop", max_tries=2 if RETRY_DELAY else None)],
           queue_name=queue, redis_settings=RedisSettings.from_dsn(REDIS_URL), max_jobs=100,
           keep_result=0, handle_signals=False, poll_delay=0.05).run()


def taskiq_redis_broker(queue: str, rec: Recorder | None) -> tuple[Any, Any, Any]:
    """W3 / W6: SmartRetryMiddleware; taskiq-redis ignores the ``delay`` label,
    so retries wait in a ListRedisScheduleSource for a scheduler to send them."""
    from taskiq_redis import ListRedisScheduleSource, RedisStreamBroker

    broker = RedisStreamBroker(REDIS_URL, queue_name=queue, consumer_group_name="g")
    source = None
    if RETRY_DELAY:
        from taskiq.middlewares import SmartRetryMiddleware

        source = ListRedisScheduleSource(REDIS_URL, prefix=f"{queue}-schedule")
        # default_retry_count counts attempts: 2 = the first and one retry
        broker = broker.with_middlewares(SmartRetryMiddleware(
            default_retry_count=2, default_retry_label=True, default_delay=RETRY_DELAY,
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
        if W3:  # the scheduler (`taskiq scheduler`), here as a task of the worker
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
        await Receiver(broker, max_async_tasks=CONC or 100,
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
            if isinstance(body, list):
                rec.hit(body[0], body[1])
            else:
                rec.hit(body)
        await broker.start()
        await asyncio.Event().wait()
    asyncio.run(go())


SLOW = {"rq", "arq", "huey", *pg.SLOW}
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


# --------------------------------------------------------------------------
# parent side
# --------------------------------------------------------------------------


def ensure_peers_venv() -> None:
    marker = PEERS_VENV / ".installed"
    req = HERE / "requirements-peers.txt"
    if marker.exists() and marker.read_text() == req.read_text():
        return
    print(f"creating {PEERS_VENV} from {req.name} (a few minutes, once)", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(PEERS_VENV)], check=True)
    subprocess.run([str(PEERS_PY), "-m", "pip", "install", "-q", "-r", str(req)], check=True)
    marker.write_text(req.read_text())


def interpreter(kind: str) -> str:
    return str(PEERS_PY) if kind == PEER else sys.executable


def loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


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
            pg.cleanup(queue)
        elif workload.endswith("nats"):
            nb.cleanup(queue)
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


def prepublish(workload: str, name: str, kind: str, queue: str, n: int) -> None:
    raw_redis = (workload.endswith("redis") and name != "foxtive tasks"
                 and name.startswith(("foxtive", "redis-rs ceiling", "hiredis ceiling",
                                      "redis-py")))
    if workload == "w4-redis" and raw_redis:
        return fill_stream(queue, 0)  # the group, before the consumer starts
    if workload in ("w1-memory", "w4-rabbitmq", "w4-redis") or name == "asyncio bound":
        return  # W4 publishes while the contender runs (run_contender); no broker
    if raw_redis:
        return fill_stream(queue, n)
    if workload == "w1-postgres":
        return pg.prepublish(name, kind, queue, n)
    if workload.endswith("nats"):
        return nb.prepublish(name, kind, queue, n, workload)
    if workload == "w1-sqlite":
        subprocess.run([interpreter(kind if name == "huey" else FOX), __file__, "--publish",
                        "huey" if name == "huey" else "foxtive", "--queue", queue, "-n", str(n),
                        "--workload", workload], check=True, timeout=900)
        return
    if workload.endswith("rabbitmq") and name != "foxtive tasks" and name.startswith(
            ("foxtive", "lapin ceiling", "aio-pika")):
        subprocess.run([ceiling_binary(), "publish", queue, str(n), str(BODY_SIZE)],
                       check=True, stdout=subprocess.DEVNULL)
    else:
        subprocess.run([interpreter(kind), __file__, "--publish", name, "--queue", queue,
                        "-n", str(n), "--workload", workload], check=True, timeout=900)


W4_RATE = 1000.0
W4_WARMUP = 5.0


def calibrate_k(target_s: float = 0.001) -> int:
    sys.path.insert(0, str(HERE))
    from w5_app import burn

    # The fastest of several runs: one run is at the mercy of whatever else
    # the machine does at that moment, and a wrong k skews every W5 figure.
    k = 20_000
    best = float("inf")
    for _ in range(7):
        t = time.perf_counter()
        burn(k)
        best = min(best, time.perf_counter() - t)
    return max(1000, int(k * target_s / best))


W5_K = 0


def run_w5(workload: str, name: str, queue: str, n: int, idle: float) -> dict[str, Any]:
    import signal

    import redis

    global W5_K
    if not W5_K:
        W5_K = calibrate_k()
    processes = 2 if "2" in name else 1
    key = f"w5-{queue}"
    r = redis.Redis.from_url(REDIS_URL)
    env = dict(os.environ, W5_QUEUE=queue, W5_K=str(W5_K), W5_KEY=key,
               W5_BROKER=workload.split("-", 1)[1],
               PYTHONPATH=str(HERE) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    foxtive_cli = str(Path(sys.executable).parent / "foxtive")
    spawn = time.time()
    proc = subprocess.Popen([foxtive_cli, "run", "w5_app:pool", "--processes", str(processes)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    total, progress, last_total = 0, time.monotonic(), -1
    vals: list[list[float]] = []
    while total < n and time.monotonic() - progress < idle:
        time.sleep(0.1)
        vals = [json.loads(v) for v in r.hgetall(key).values()]
        total = int(sum(v[0] for v in vals))
        if total != last_total:
            progress, last_total = time.monotonic(), total
    os.killpg(proc.pid, signal.SIGTERM)
    _, _, ru = os.wait4(proc.pid, 0)
    r.delete(key)
    first = min((v[1] for v in vals if v[0]), default=0.0)
    last = max((v[2] for v in vals), default=0.0)
    return {"rss_mib": ru.ru_maxrss / 1024, "cpu_s": ru.ru_utime + ru.ru_stime,
            "exit": proc.returncode, "handled_rate": total / max(last - first, 1e-9),
            "start_rate": total / max(last - spawn, 1e-9), "lost": max(0, n - total),
            "dups": max(0, total - n), "ids_checked": False}


def poll_hwm(pid: int, out: list[float]) -> None:
    """Peak RSS (VmHWM) of a running process, polled every 20 ms until it ends."""
    while True:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        out[0] = max(out[0], int(line.split()[1]) / 1024)
        except OSError:
            return
        time.sleep(0.02)


def run_contender(workload: str, name: str, kind: str, queue: str, n: int,
                  idle: float) -> dict[str, Any]:
    if workload.startswith("w5"):
        return run_w5(workload, name, queue, n, idle)
    if name.endswith("processes"):
        return run_shared(workload, name, kind, queue, n, idle, int(name.split()[-2]))
    fd, result = tempfile.mkstemp(prefix="foxtive-compare-", suffix=".json")
    os.close(fd)
    if kind == RUST and workload.endswith("redis"):
        binary = C_CEILING if name == "hiredis ceiling" else ceiling_binary("redis_ceiling")
        cmd = [str(binary), "--url", REDIS_URL, "--stream", queue,
               "--group", "g", "--count", "100", "--expect", str(n), "--delete"]
    elif kind == RUST and workload.endswith("sqlite"):
        cmd = [ceiling_binary("sqlite_ceiling"), "drain", sqlite_path(queue), queue, str(n),
               str(SQLITE_BATCH)]
    elif kind == RUST and workload.endswith("postgres"):
        cmd = pg.rust_cmd(name, queue, n)
    elif kind == RUST and workload.endswith("nats"):
        cmd = nb.rust_cmd(name, queue, n)
    elif kind == RUST:
        cmd = [ceiling_binary(), "drain", queue, str(n), str(PREFETCH)]
    else:
        cmd = [interpreter(kind), __file__, "--consume", name, "--workload", workload,
               "--queue", queue,
               "-n", str(n), "--result", result, "--idle-timeout", str(idle)]
    spawn = time.time()
    errfile = tempfile.TemporaryFile("w+")  # a pipe could fill up and block the child
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE if kind == RUST else subprocess.DEVNULL,
                            stderr=errfile, text=True)
    killer = threading.Timer(idle * 4 + 600, proc.kill)
    killer.start()
    hwm = [0.0]
    threading.Thread(target=poll_hwm, args=(proc.pid, hwm), daemon=True).start()
    if workload.startswith("w4"):
        time.sleep(W4_WARMUP)  # let the consumer connect and declare
        subprocess.run([str(PEERS_PY), __file__, "--paced-publish", name, "--queue", queue,
                        "-n", str(n), "--workload", workload, "--rate", str(W4_RATE)],
                       check=True)
    out = proc.stdout.read() if proc.stdout else ""
    _, status, ru = os.wait4(proc.pid, 0)
    end = time.time()
    killer.cancel()
    errfile.seek(0)
    err = errfile.read()
    errfile.close()
    proc.returncode = os.waitstatus_to_exitcode(status)
    # wait4's ru_maxrss also counts the pages of this (parent) process that the
    # forked child held before exec: a floor of ~the parent's RSS. VmHWM of the
    # exec'd process, polled while it runs, is the contender's own peak.
    res: dict[str, Any] = {"rss_mib": hwm[0] or ru.ru_maxrss / 1024,
                           "cpu_s": ru.ru_utime + ru.ru_stime,
                           "exit": proc.returncode}
    if kind == RUST:
        line = json.loads(out.strip().splitlines()[-1])
        res.update(handled_rate=line["rate"], start_rate=line["n"] / (end - spawn),
                   lost=n - line["n"], dups=0, ids_checked=False)
    else:
        try:
            with open(result) as f:
                data = json.load(f)
        except (OSError, ValueError):
            data = {}
        os.unlink(result)
        if not data or not data.get("last"):
            sys.stderr.write(f"{name}: no result (exit {proc.returncode})\n{err[-3000:]}\n")
            res.update(handled_rate=0.0, start_rate=0.0, lost=n, dups=0, ids_checked=True)
            return res
        handled = data["unique"] + data["dups"]
        span = max(data["last"] - data["first"], 1e-9)
        for k in ("p50_ms", "p99_ms", "max_ms", "rss_before", "rss_after"):
            if k in data:
                res[k] = data[k]
        res.update(handled_rate=handled / span if handled > 1 else 0.0,
                   start_rate=data["unique"] / max(data["last"] - spawn, 1e-9),
                   lost=data["lost"], dups=data["dups"], ids_checked=True)
    return res


def run_shared(workload: str, name: str, kind: str, queue: str, n: int, idle: float,
               copies: int) -> dict[str, Any]:
    """``copies`` processes of contender ``name`` (less its " N processes")
    on one queue; each writes the ids it handled, merged here: lost and dup
    are checked over all of them, the rate spans first to last handled."""
    single = name.rsplit(" ", 2)[0]
    results = []
    for _ in range(copies):
        fd, result = tempfile.mkstemp(prefix="foxtive-compare-", suffix=".json")
        os.close(fd)
        results.append(result)
    spawn = time.time()
    procs = [subprocess.Popen([interpreter(kind), __file__, "--consume", name, "--workload",
                               workload, "--queue", queue, "-n", str(n), "--result", r,
                               "--idle-timeout", str(idle)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for r in results]
    rss = cpu = 0.0
    for p in procs:
        _, _, ru = os.wait4(p.pid, 0)
        rss, cpu = rss + ru.ru_maxrss / 1024, cpu + ru.ru_utime + ru.ru_stime
    datas = []
    for r in results:
        with contextlib.suppress(OSError, ValueError), open(r) as f:
            datas.append(json.load(f))
        os.unlink(r)
    ids = [i for d in datas for i in d.get("ids", [])]
    unique = len(set(ids))
    firsts = [d["first"] for d in datas if d.get("first")]
    last = max((d["last"] for d in datas if d.get("last")), default=0.0)
    span = max(last - min(firsts, default=last), 1e-9)
    print(f"  {single} x{copies}: {[len(d.get('ids', [])) for d in datas]} each",
          flush=True)
    return {"rss_mib": rss, "cpu_s": cpu, "exit": max(p.returncode or 0 for p in procs),
            "handled_rate": len(ids) / span if len(ids) > 1 else 0.0,
            "start_rate": unique / max(last - spawn, 1e-9), "lost": n - unique,
            "dups": len(ids) - unique, "ids_checked": True}


def available(workload: str, name: str, report: list[str]) -> bool:
    why = ""
    if workload.endswith("postgres"):
        why = pg.unavailable(name)
    elif workload.endswith("nats"):
        why = nb.unavailable(name)
    elif name == "redis-rs ceiling":
        try:
            ceiling_binary("redis_ceiling")
        except SystemExit as e:
            why = str(e)
    elif name == "hiredis ceiling" and not C_CEILING.exists():
        why = f"build it first: sh benches/build_redis_ceiling.sh (looked for {C_CEILING})"
    elif name == "rusqlite ceiling":
        try:
            ceiling_binary("sqlite_ceiling")
        except SystemExit as e:
            why = str(e)
    elif name == "huey" and subprocess.run([str(PEERS_PY), "-c", "import huey"],
                                           capture_output=True).returncode != 0:
        why = "huey is not installed in benches/.peers-venv"
    elif name == "lapin ceiling":
        try:
            ceiling_binary()
        except SystemExit as e:
            why = str(e)
    elif name.startswith("foxtive") and workload.endswith("redis"):
        import foxtive

        if not hasattr(foxtive, "RedisStreamBackend"):
            why = "this foxtive build has no RedisStreamBackend"
    if why:
        print(f"skipping {workload} / {name}: {why}", flush=True)
        report.append(f"*Skipped {workload} / {name}: {why}.*")
        report.append("")
    return not why


def fmt_rate(v: float) -> str:
    return f"{v:,.0f}"


def summarise_latency(runs: dict[str, list[dict[str, Any]]],
                      settings: dict[str, str]) -> list[str]:
    lines = ["| contender | p50 ms | p99 ms | max ms | lost | dup | peak RSS MiB | CPU s | "
             "settings |", "|---|---|---|---|---|---|---|---|---|"]
    for k, v in runs.items():
        def m(key: str, v: list[dict[str, Any]] = v) -> str:
            vals = [r[key] for r in v if key in r]
            return f"{statistics.median(vals):.2f}" if vals else "n/a"
        lines.append(f"| {k} | {m('p50_ms')} | {m('p99_ms')} | {m('max_ms')} | "
                     f"{max(r['lost'] for r in v)} | {max(r['dups'] for r in v)} | "
                     f"{statistics.median(r['rss_mib'] for r in v):.1f} | "
                     f"{statistics.median(r['cpu_s'] for r in v):.2f} | {settings[k]} |")
    return lines


def summarise(workload: str, runs: dict[str, list[dict[str, Any]]],
              settings: dict[str, str]) -> tuple[list[str], dict[str, float]]:
    foxes = [k for k in runs if k.startswith("foxtive")]
    med = {k: statistics.median(r["handled_rate"] for r in v) for k, v in runs.items()}
    lines = [f"| contender | handled msg/s median (min-max) | start->last msg/s median | "
             f"lost | dup | peak RSS MiB | CPU s | "
             f"{''.join(f'{f} / this | ' for f in foxes)}settings |",
             "|---|---|---|---|---|---|---|" + "---|" * len(foxes) + "---|"]
    for k, v in runs.items():
        rates = [r["handled_rate"] for r in v]
        ratios = []
        for f in foxes:
            ratios.append(f"{med[f] / med[k]:.2f}" if med[k] and f != k else "-")
        lost = max(r["lost"] for r in v)
        dups = max(r["dups"] for r in v)
        check = "" if all(r["ids_checked"] for r in v) else " (count only)"
        lines.append(
            f"| {k} | {fmt_rate(med[k])} ({fmt_rate(min(rates))}-{fmt_rate(max(rates))}) | "
            f"{fmt_rate(statistics.median(r['start_rate'] for r in v))} | {lost}{check} | "
            f"{dups} | {statistics.median(r['rss_mib'] for r in v):.1f} | "
            f"{statistics.median(r['cpu_s'] for r in v):.2f} | "
            f"{''.join(x + ' | ' for x in ratios)}{settings[k]} |")
    return lines, med


def chart(all_meds: dict[str, dict[str, float]], png: Path) -> None:
    script = (
        "import json,sys\n"
        "import matplotlib\nmatplotlib.use('Agg')\nimport matplotlib.pyplot as plt\n"
        "d=json.load(open(sys.argv[1]))\n"
        "fig,axes=plt.subplots(len(d),1,figsize=(9,2.2+0.45*sum(len(v) for v in d.values())),"
        "squeeze=False)\n"
        "for ax,(w,meds) in zip(axes[:,0],d.items()):\n"
        "    names=list(meds)[::-1]; vals=[meds[k] for k in names]\n"
        "    cols=['tab:orange' if k.startswith('foxtive') else 'tab:blue' for k in names]\n"
        "    ax.barh(names,vals,color=cols); ax.set_title(w); ax.set_xlim(0,max(vals)*1.25)\n"
        "    ax.set_xlabel('msg/s, first handled -> last handled (median)')\n"
        "    for y,v in enumerate(vals): ax.text(v,y,f' {v:,.0f}',va='center',fontsize=8)\n"
        "fig.tight_layout(); fig.savefig(sys.argv[2],dpi=110)\n")
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(all_meds, f)
    subprocess.run([str(PEERS_PY), "-c", script, f.name, str(png)], check=True)
    os.unlink(f.name)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--quick", action="store_true",
                    help="10,000 messages per RabbitMQ run, 100,000 in memory, 1 round")
    ap.add_argument("-n", type=int, default=None, help="messages per run (default 100,000; "
                    "memory 1,000,000)")
    ap.add_argument("--workloads", default=",".join([*CONTENDERS, "enqueue-postgres"]))
    ap.add_argument("--only", default="", help="comma-separated contender names")
    ap.add_argument("--idle-timeout", type=float, default=30.0)
    ap.add_argument("--slow-cap", type=int, default=20_000,
                    help="messages per run for the slowest peers (RQ, arq), whose 100k runs "
                         "would take ~5 min each; their rates are per message all the same")
    ap.add_argument("--peer-cap", type=int, default=0,
                    help="messages per run for every peer (0: no cap); their rates are per "
                         "message all the same")
    ap.add_argument("--out", default=str(HERE / "RESULTS-compare.md"))
    ap.add_argument("--no-install", action="store_true")
    # child modes
    ap.add_argument("--publish", default=None)
    ap.add_argument("--consume", default=None)
    ap.add_argument("--queue", default="")
    ap.add_argument("--result", default="")
    ap.add_argument("--workload", default="")
    ap.add_argument("--paced-publish", default=None)
    ap.add_argument("--rate", type=float, default=W4_RATE)
    ap.add_argument("--w4-seconds", type=float, default=20.0)
    args = ap.parse_args()
    if args.paced_publish:
        return paced_publish(args.workload, args.paced_publish, args.queue, args.n, args.rate)
    if args.publish:
        return publish(args.workload, args.publish, args.queue, args.n)
    if args.consume:
        return consume(args.workload, args.consume, args.queue, args.n, args.result,
                       args.idle_timeout)

    if not args.no_install:
        ensure_peers_venv()
    if args.quick and "--rounds" not in sys.argv:
        args.rounds = 1
    only = {s.strip() for s in args.only.split(",") if s.strip()}
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    load_before = loadavg()
    report = [f"# foxtive against its peers ({started})", "",
              f"Command: `python benches/compare.py {' '.join(sys.argv[1:])}`", "",
              f"Machine: {os.cpu_count()} cores, {os.uname().sysname} {os.uname().release}, "
              f"CPython {sys.version.split()[0]}; load average at start {load_before}.", ""]
    all_meds: dict[str, dict[str, float]] = {}
    for workload in [w.strip() for w in args.workloads.split(",") if w.strip()]:
        if workload == "enqueue-postgres":
            pg.run_enqueue(args.rounds, only, report)
            continue
        contenders = [c for c in CONTENDERS[workload] if (not only or c[0] in only)
                      and available(workload, c[0], report)]
        if args.n:
            n = args.n
        elif workload == "w1-memory":
            n = 100_000 if args.quick else 1_000_000
        elif workload.startswith("w2"):
            n = 5_000 if args.quick else 50_000
        elif workload.startswith("w6"):
            n = 10_000 if args.quick else 100_000
        elif workload.startswith("w3"):
            n = 10_000 if args.quick else 100_000
        elif workload.startswith("w5"):
            n = 2_000 if args.quick else 20_000
        elif workload.startswith("w4"):
            n = int(W4_RATE * (5 if args.quick else args.w4_seconds))
        elif compare_tasks.is_tasks(workload):
            n = 10_000 if args.quick else compare_tasks.N_DEFAULT
        else:
            n = 10_000 if args.quick else 100_000
        runs: dict[str, list[dict[str, Any]]] = {c[0]: [] for c in contenders}
        settings = {c[0]: c[2] for c in contenders}
        print(f"\n== {workload}: {n:,} messages x {args.rounds} rounds "
              f"(load {loadavg()})", flush=True)
        counts = {c[0]: min(n, args.slow_cap)
                  if workload.endswith(("redis", "sqlite", "postgres")) and c[0] in SLOW
                  else min(n, args.peer_cap) if args.peer_cap and c[1] == PEER
                  else n for c in contenders}
        for r in range(args.rounds):
            for name, kind, _ in contenders:
                n_run = counts[name]
                queue = f"cmp-{name.split()[0]}-{uuid.uuid4().hex[:6]}"
                pub = 0.0
                for attempt in range(3):  # a broker restarted by someone else: wait, redo
                    wait_for_brokers(workload)
                    try:
                        t = time.time()
                        prepublish(workload, name, kind, queue, n_run)
                        pub = time.time() - t
                        res = run_contender(workload, name, kind, queue, n_run,
                                            args.idle_timeout)
                    except (subprocess.SubprocessError, OSError, ValueError) as e:
                        print(f"{name}: run failed: {e}", file=sys.stderr, flush=True)
                        res = {"handled_rate": 0.0, "start_rate": 0.0, "lost": n_run,
                               "dups": 0, "rss_mib": 0.0, "cpu_s": 0.0, "ids_checked": True,
                               "failed": True}
                    cleanup(workload, queue)
                    if not res.get("lost") or attempt == 2:
                        break
                    print(f"{name}: {res['lost']} lost; did the broker go away? once more",
                          file=sys.stderr, flush=True)
                    queue = f"cmp-{name.split()[0]}-{uuid.uuid4().hex[:6]}"
                res["load"] = loadavg()
                runs[name].append(res)
                print(f"round {r + 1}: {name:16s} handled {res['handled_rate']:>11,.0f} msg/s"
                      f"  start->last {res['start_rate']:>10,.0f}  lost {res['lost']}"
                      f"  dup {res['dups']}  RSS {res['rss_mib']:.0f} MiB"
                      f"  CPU {res['cpu_s']:.1f} s  (publish {pub:.1f} s, load {res['load']})"
                      + (f"  p50 {res['p50_ms']:.2f} p99 {res['p99_ms']:.2f} "
                         f"max {res['max_ms']:.2f} ms" if "p50_ms" in res else ""),
                      flush=True)
        for name, c in counts.items():
            if c != n:
                settings[name] += f" ({c:,} messages per run: --slow-cap / --peer-cap)"
        if workload.startswith("w4"):
            lines = summarise_latency(runs, settings)
        elif workload.startswith("w6"):
            lines = ["| contender | RSS at first failure MiB | RSS with all retries waiting "
                     "MiB | growth MiB | lost | dup | settings |", "|---|---|---|---|---|---|---|"]
            for k, v in runs.items():
                b = statistics.median(r.get("rss_before", 0.0) for r in v)
                a = statistics.median(r.get("rss_after", 0.0) for r in v)
                lines.append(f"| {k} | {b:.1f} | {a:.1f} | {a - b:+.1f} | "
                             f"{max(r['lost'] for r in v)} | {max(r['dups'] for r in v)} | "
                             f"{settings[k]} |")
        else:
            lines, med = summarise(workload, runs, settings)
            all_meds[workload] = med
        what = ("10 % fail on their first attempt and are retried after 50 ms by the "
                "framework's own mechanism; lost = never succeeded, dup = succeeded twice"
                if workload.startswith("w3") else
                "every first attempt fails and is retried in an hour by the framework's "
                "own mechanism; worker RSS" if workload.startswith("w6") else
                f"CPU-bound handler (~1 ms of pure Python, {W5_K:,} iterations), counted "
                f"per process through Redis" if workload.startswith("w5") else
                f"paced at {W4_RATE:,.0f} msg/s, latency publish -> handler start (median "
                f"of rounds of each percentile)" if workload.startswith("w4") else
                f"each awaiting {W2_SLEEP * 1000:.0f} ms at concurrency {W2_CONC} "
                f"(ideal {W2_CONC / W2_SLEEP:,.0f} msg/s)" if workload.startswith("w2")
                else "no-op task taking (int, str), sent by each framework's own producer"
                if compare_tasks.is_tasks(workload) else "no-op handler")
        report += [f"## {workload}: {n:,} messages of ~{BODY_SIZE} B, {what}, "
                   f"median of {args.rounds}", "", *lines, "",
                   f"Load average after: {loadavg()}.", ""]
        print("\n".join(lines), flush=True)
    png = Path(args.out).with_suffix(".png")
    try:
        if all_meds:
            chart(all_meds, png)
            report += [f"![msg/s per contender]({png.name})", ""]
            print(f"wrote {png}")
    except (subprocess.CalledProcessError, OSError) as e:
        print(f"chart skipped: {e}", file=sys.stderr)
    Path(args.out).write_text("\n".join(report))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
