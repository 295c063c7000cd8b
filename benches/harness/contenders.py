"""Every workload of ``compare.py`` and its contenders: name -> (kind,
settings printed with the results). The NATS, PostgreSQL and tasks
workloads come from their own modules."""

from __future__ import annotations

from harness import jetstream, postgres, tasks
from harness.config import FOX, PEER, PREFETCH, RUST, SQLITE_BATCH

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
    **postgres.CONTENDERS,
    **jetstream.CONTENDERS,  # w1-nats, w3-nats
    **tasks.CONTENDERS,  # tasks-rabbitmq, tasks-redis: the execute workload (issue 14)
}

#: Capped by --slow-cap on Redis, SQLite and PostgreSQL.
SLOW = {"rq", "arq", "huey", *postgres.SLOW}
