"""``python benches/compare_tasks.py roundtrip``: send -> result() on Redis,
paced; p50 / p99 / max of each contender (a worker process and a sender
process each), foxtive next to the peers that keep results and a redis-py
ping-pong floor."""

from __future__ import annotations

import asyncio
import statistics
import subprocess
import time
import uuid
from typing import Any

from harness.accounting import loadavg
from harness.brokers import cleanup
from harness.children import child, last_json
from harness.config import FOX, PEER, REDIS_URL, TASKS_PY
from harness.latency import percentiles_ms
from harness.tasks import TASK_NAME, TASK_STR

#: name -> (interpreter, tasks per round (0: -n), how it waits for the result).
#: Every contender is a worker process and a sender process; the sender sends
#: one task every 1/rate s and waits for its result before the next. Peers
#: whose defaults poll every 0.2-0.5 s run 100 tasks (each takes that long),
#: and again with their poll intervals at 1 ms ("poll 1 ms"): their best.
RT_CONTENDERS: dict[str, tuple[str, int, str]] = {
    "foxtive": (FOX, 0, "App(results=True): the worker writes the record and pushes "
                        "to a list; result() blocks on BLMOVE"),
    "redis-py ping-pong (floor)": (FOX, 0, "LPUSH -> BLPOP -> LPUSH -> BLPOP, no framework"),
    "celery": (PEER, 0, "redis broker + redis result backend, 8 threads; "
                        "AsyncResult.get() (pub/sub)"),
    "dramatiq": (PEER, 0, "RedisBroker + Results(RedisBackend), 8 threads; "
                          "get_result(block=True) (BRPOPLPUSH)"),
    "taskiq-redis": (PEER, 100, "RedisStreamBroker + RedisAsyncResultBackend; "
                                "wait_result() (default check_interval 0.2 s)"),
    "taskiq-redis poll 1 ms": (PEER, 0, "as above, wait_result(check_interval=0.001)"),
    "arq": (PEER, 100, "defaults: worker poll_delay 0.5 s, job.result(poll_delay=0.5)"),
    "arq poll 1 ms": (PEER, 0, "worker poll_delay 0.001, job.result(poll_delay=0.001)"),
}


def roundtrip_app(queue: str, redis_url: str) -> tuple[Any, Any]:
    import foxtive

    # ids carry no queue name: a short TTL, so a run leaves no records behind
    app = foxtive.App("bench-rt", broker=redis_url, results=True, result_ttl=120)

    @app.task(name=TASK_NAME, queue=queue)
    async def echo(i: int, s: str) -> int:
        return i

    return app, echo


async def paced_async(n: int, rate: float, call: Any) -> list[float]:
    """Latency (s) of each ``await call(i)`` (which checks its result), one
    every 1/rate s; 20 untimed calls first (connections up, worker running)."""

    for _ in range(20):
        await call(-1)
    lat = []
    t0 = time.perf_counter()
    for i in range(n):
        delay = t0 + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        t = time.perf_counter()
        await call(i)
        lat.append(time.perf_counter() - t)
    return lat


def paced_sync(n: int, rate: float, call: Any) -> list[float]:

    for _ in range(20):
        call(-1)
    lat = []
    t0 = time.perf_counter()
    for i in range(n):
        delay = t0 + i / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        t = time.perf_counter()
        call(i)
        lat.append(time.perf_counter() - t)
    return lat


def _check(value: Any, i: int) -> None:
    if value != i:
        raise AssertionError(f"result {value!r} for task {i}")


def rt_celery(queue: str) -> Any:
    from celery import Celery

    app = Celery("bench-rt", broker=REDIS_URL, backend=REDIS_URL)
    app.conf.update(task_acks_late=True, worker_prefetch_multiplier=4,
                    worker_enable_remote_control=False, worker_send_task_events=False,
                    task_default_queue=queue, worker_hijack_root_logger=False,
                    broker_connection_retry_on_startup=True, result_expires=600,
                    broker_transport_options={"global_keyprefix": f"{queue}:"})

    @app.task(name=TASK_NAME)
    def echo(i: int, s: str) -> int:
        return i
    return app


def rt_dramatiq(queue: str) -> Any:
    import dramatiq
    from dramatiq.brokers.redis import RedisBroker
    from dramatiq.results import Results
    from dramatiq.results.backends import RedisBackend

    broker = RedisBroker(url=REDIS_URL, namespace=f"dramatiq-{queue}")
    broker.add_middleware(Results(backend=RedisBackend(
        url=REDIS_URL, namespace=f"dramatiq-results-{queue}")))
    dramatiq.set_broker(broker)

    @dramatiq.actor(queue_name=queue, store_results=True, max_retries=0)
    def echo(i: int, s: str) -> int:
        return i
    return echo


def rt_taskiq(queue: str) -> tuple[Any, Any]:
    from taskiq_redis import RedisAsyncResultBackend, RedisStreamBroker

    broker = RedisStreamBroker(REDIS_URL, queue_name=queue, consumer_group_name="g")
    broker = broker.with_result_backend(RedisAsyncResultBackend(
        REDIS_URL, result_ex_time=600))

    @broker.task(task_name=TASK_NAME)
    async def echo(i: int, s: str) -> int:
        return i
    return broker, echo


async def rt_arq_echo(ctx: dict[str, Any], i: int, s: str) -> int:
    return i


def roundtrip_worker(name: str, queue: str) -> None:


    if name == "foxtive":
        app, _ = roundtrip_app(queue, REDIS_URL)
        app.run([queue])
    elif name.startswith("redis-py"):
        import redis

        r = redis.Redis.from_url(REDIS_URL)
        while True:
            item = r.blpop([f"{queue}:req"], timeout=5)
            if item is not None:
                r.lpush(f"{queue}:rep", item[1])
    elif name == "celery":
        rt_celery(queue).worker_main(["worker", "--pool=threads", "-c", "8", "-Q", queue,
                                      "--without-gossip", "--without-mingle",
                                      "--without-heartbeat", "-l", "WARNING"])
    elif name == "dramatiq":
        import time

        from dramatiq import Worker

        Worker(rt_dramatiq(queue).broker, worker_threads=8).start()
        while True:
            time.sleep(1)
    elif name.startswith("taskiq"):
        from taskiq.acks import AcknowledgeType
        from taskiq.receiver import Receiver

        async def go() -> None:
            broker, _ = rt_taskiq(queue)
            broker.is_worker_process = True
            await broker.startup()
            await Receiver(broker, max_async_tasks=100,
                           ack_type=AcknowledgeType.WHEN_EXECUTED).listen(asyncio.Event())
        asyncio.run(go())
    elif name.startswith("arq"):
        from arq import Worker, func
        from arq.connections import RedisSettings

        asyncio.set_event_loop(asyncio.new_event_loop())
        Worker(functions=[func(rt_arq_echo, name="echo")], queue_name=queue,
               redis_settings=RedisSettings.from_dsn(REDIS_URL), max_jobs=100,
               keep_result=600, handle_signals=False,
               poll_delay=0.001 if "1 ms" in name else 0.5).run()
    else:
        raise SystemExit(f"no round-trip worker {name!r}")


def roundtrip_sender(name: str, queue: str, n: int, rate: float) -> list[float]:
    """Latency (s) of each send -> result(), one task every 1/rate seconds.
    Task ids carry the queue name where the API takes one, so cleanup finds
    every key the run left."""

    if name == "foxtive":
        app, echo = roundtrip_app(queue, REDIS_URL)

        async def go() -> list[float]:
            async def call(i: int) -> None:
                h = await echo.send(i, TASK_STR)
                _check(await h.result(timeout=30), i)
            lat = await paced_async(n, rate, call)
            await app.aclose()
            return lat
        return asyncio.run(go())
    if name.startswith("redis-py"):
        import redis

        r = redis.Redis.from_url(REDIS_URL)

        def ping(i: int) -> None:
            r.lpush(f"{queue}:req", b"%d" % i)
            reply = r.blpop([f"{queue}:rep"], timeout=30)
            _check(None if reply is None else int(reply[1]), i)
        return paced_sync(n, rate, ping)
    if name == "celery":
        import uuid

        task = rt_celery(queue).tasks[TASK_NAME]

        def celery_call(i: int) -> None:
            res = task.apply_async(args=[i, TASK_STR], queue=queue,
                                   task_id=f"{queue}-{uuid.uuid4().hex}")
            _check(res.get(timeout=30), i)
            res.forget()
        return paced_sync(n, rate, celery_call)
    if name == "dramatiq":
        actor = rt_dramatiq(queue)

        def dramatiq_call(i: int) -> None:
            _check(actor.send(i, TASK_STR).get_result(block=True, timeout=30_000), i)
        lat = paced_sync(n, rate, dramatiq_call)
        actor.broker.close()
        return lat
    if name.startswith("taskiq"):
        interval = 0.001 if "1 ms" in name else None

        async def go_taskiq() -> list[float]:
            import uuid

            broker, echo = rt_taskiq(queue)
            await broker.startup()

            async def call(i: int) -> None:
                t = await echo.kicker().with_task_id(f"{queue}-{uuid.uuid4().hex}").kiq(
                    i, TASK_STR)
                res = await (t.wait_result(timeout=30) if interval is None
                             else t.wait_result(timeout=30, check_interval=interval))
                _check(res.return_value, i)
            lat = await paced_async(n, rate, call)
            await broker.shutdown()
            return lat
        return asyncio.run(go_taskiq())
    if name.startswith("arq"):
        poll = 0.001 if "1 ms" in name else 0.5

        async def go_arq() -> list[float]:
            import uuid

            from arq import create_pool
            from arq.connections import RedisSettings
            from arq.jobs import ResultNotFound

            pool = await create_pool(RedisSettings.from_dsn(REDIS_URL))

            async def call(i: int) -> None:
                job = await pool.enqueue_job("echo", i, TASK_STR, _queue_name=queue,
                                             _job_id=f"{queue}-{uuid.uuid4().hex}")
                assert job is not None
                while True:
                    # arq 0.25 reads the result and the queue outside its
                    # pipeline: a job the worker holds but has not finished
                    # is "not found"; a user has to poll again, as here.
                    try:
                        _check(await job.result(timeout=30, poll_delay=poll), i)
                        return
                    except ResultNotFound:
                        await asyncio.sleep(poll)
            lat = await paced_async(n, rate, call)
            await pool.aclose()
            return lat
        return asyncio.run(go_arq())
    raise SystemExit(f"no round-trip sender {name!r}")


def run_roundtrip(args: Any) -> None:
    names = [s for s in RT_CONTENDERS if not args.only or s in args.only.split(",")]
    rows: dict[str, list[tuple[float, float, float]]] = {}
    for r in range(args.rounds):
        for name in names:
            kind, cap, _ = RT_CONTENDERS[name]
            n = min(args.n, cap) if cap else args.n
            queue = f"rt-{name.split()[0]}-{uuid.uuid4().hex[:6]}"
            load = loadavg()
            worker = subprocess.Popen(child(kind, TASKS_PY, "rt-worker", name, "--queue", queue),
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                out = subprocess.run(child(kind, TASKS_PY, "rt-sender", name, "--queue", queue,
                                           "-n", str(n), "--rate", str(args.rate)),
                                     capture_output=True, text=True, timeout=900)
            finally:
                worker.terminate()
                try:
                    worker.wait(30)
                except subprocess.TimeoutExpired:
                    worker.kill()
                    worker.wait()
                cleanup("tasks-redis", queue)
            lat = last_json(out, name, "round trip failed", key="latency")
            if lat is None:
                continue
            pct = percentiles_ms(lat)
            p50, p99, worst = pct["p50_ms"], pct["p99_ms"], pct["max_ms"]
            rows.setdefault(name, []).append((p50, p99, worst))
            print(f"round {r + 1}: {name:28s} at {args.rate:g}/s, {len(lat)}: "
                  f"p50 {p50:7.2f} ms  p99 {p99:7.2f} ms  max {worst:7.2f} ms "
                  f"(load {load})", flush=True)
    print("\n| contender | tasks per round | p50 ms | p99 ms | max ms | how it waits |\n"
          "|---|---:|---:|---:|---:|---|")
    for name, v in rows.items():
        kind, cap, how = RT_CONTENDERS[name]
        med = [statistics.median(x[k] for x in v) for k in range(3)]
        print(f"| {name} | {min(args.n, cap) if cap else args.n:,} | {med[0]:.2f} | "
              f"{med[1]:.2f} | {med[2]:.2f} | {how} |")
    print(f"\n(median over {args.rounds} round(s) of each percentile)")
