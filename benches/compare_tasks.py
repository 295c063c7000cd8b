"""Tasks in benches/compare.py (issue 14): the "execute" workloads.

    python benches/compare.py --workloads tasks-rabbitmq,tasks-redis

50,000 no-op tasks taking ``(int, str)`` are sent before the timed window,
then drained: foxtive's App (``@app.task`` routed by its header, arguments
decoded and checked against the annotations) next to foxtive's raw message
drain of the same backend settings (the reference: the task layer may cost
at most 20 %) and the peers' own tasks, each sent through the peer's own
producer API with the same two arguments. compare.py runs every contender
as for W1; this module holds the foxtive task side (publisher, consumer)
and the contender list. Its own modes (figures: RESULTS.md, "Tasks, ..."):

    python benches/compare_tasks.py send -n 50000 --cap 2000 --brokers redis,rabbitmq
    python benches/compare_tasks.py roundtrip -n 1000 --rounds 1      # Redis, 100 tasks/s
    python benches/compare_tasks.py execcpu -n 50000 --rounds 3 [--perf-dir DIR]
    python benches/compare_tasks.py memory -n 200000 --rounds 3

``send``: tasks/s of each sender (foxtive, the peers, aio-pika with and
without publisher confirms on RabbitMQ). ``roundtrip``: p50 / p99 of send ->
result() for foxtive, the peers that keep results and a redis-py floor.
``execcpu``: CPU per message inside the drain window, raw vs raw on the
tasks' messages vs tasks, optionally under ``perf record``. ``memory``: the
task layer's cost with no broker.
"""

from __future__ import annotations

from typing import Any

FOX = "foxtive"
PEER = "peers"
RUST = "rust"

#: The task's second argument (the first is the id the recorder counts).
TASK_STR = "x" * 64
TASK_NAME = "bench.noop"
#: Tasks per ``send_many`` call when pre-sending (outside the timed window).
SEND_CHUNK = 5_000
N_DEFAULT = 50_000

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


# --------------------------------------------------------------------------
# Send: N tasks from one process (python benches/compare_tasks.py send)
# --------------------------------------------------------------------------

#: name -> brokers it runs on; each runs as its own process.
SENDERS = {
    "foxtive send_many": ("rabbitmq", "redis"),
    "foxtive send loop": ("rabbitmq", "redis"),
    "foxtive send_sync loop": ("rabbitmq", "redis"),
    # RabbitMQ: is the publisher confirm the bound of a send loop? foxtive's
    # sends with 100 in flight (confirms overlap), and the same loop in
    # aio-pika with and without confirms (persistent, durable queue).
    "foxtive send x100 in flight": ("rabbitmq",),
    "aio-pika confirm loop": ("rabbitmq",),
    "aio-pika no-confirm loop": ("rabbitmq",),
    "celery apply_async loop": ("rabbitmq", "redis"),
    "dramatiq send loop": ("rabbitmq", "redis"),
    "taskiq kiq loop": ("rabbitmq", "redis"),
    "arq enqueue_job loop": ("redis",),
    "rq enqueue_many": ("redis",),
}


def send_child(name: str, broker: str, queue: str, n: int) -> float:
    """Seconds to send n tasks (after one untimed send: connections are up)."""
    import asyncio
    import time

    import compare

    workload = f"tasks-{broker}"
    compare.set_mode(workload)
    redis_ = broker == "redis"
    if name.startswith("foxtive"):
        app, noop = bench_app(workload, queue, compare.AMQP_URL, compare.REDIS_URL,
                              compare.PREFETCH)
        if name == "foxtive send_sync loop":
            noop.send_sync(-1, TASK_STR)
            t = time.perf_counter()
            for i in range(n):
                noop.send_sync(i, TASK_STR)
            elapsed = time.perf_counter() - t
            app.close()
            return elapsed

        async def go() -> float:
            await noop.send(-1, TASK_STR)
            t = time.perf_counter()
            if name == "foxtive send_many":
                await noop.send_many([(i, TASK_STR) for i in range(n)])
            elif name == "foxtive send x100 in flight":
                for at in range(0, n, 100):
                    await asyncio.gather(*(noop.send(i, TASK_STR)
                                           for i in range(at, min(n, at + 100))))
            else:
                for i in range(n):
                    await noop.send(i, TASK_STR)
            elapsed = time.perf_counter() - t
            await app.aclose()
            return elapsed
        return asyncio.run(go())
    if name.startswith("aio-pika"):
        import aio_pika

        async def go_pika() -> float:
            conn = await aio_pika.connect(compare.AMQP_URL)
            ch = await conn.channel(publisher_confirms="no-confirm" not in name)
            await ch.declare_queue(queue, durable=True)
            ex = ch.default_exchange
            body = b'{"args":[%d,"' + TASK_STR.encode() + b'"],"kwargs":{}}'
            await ex.publish(aio_pika.Message(body % -1), routing_key=queue)
            t = time.perf_counter()
            for i in range(n):
                await ex.publish(aio_pika.Message(
                    body % i, message_id=f"m-{i}", content_type="application/json",
                    headers={"foxtive-task": TASK_NAME, "foxtive-envelope": 1},
                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT), routing_key=queue)
            elapsed = time.perf_counter() - t
            await conn.close()
            return elapsed
        return asyncio.run(go_pika())
    if name.startswith("celery"):
        capp = compare.celery_app(queue, None, redis_)
        task = capp.tasks["bench.noop"]
        with capp.producer_or_acquire() as producer:
            task.apply_async(args=[-1, TASK_STR], queue=queue, producer=producer)
            t = time.perf_counter()
            for i in range(n):
                task.apply_async(args=[i, TASK_STR], queue=queue, producer=producer)
            return time.perf_counter() - t
    if name.startswith("dramatiq"):
        actor = compare.dramatiq_actor(queue, None, redis_)
        actor.send(-1, TASK_STR)
        t = time.perf_counter()
        for i in range(n):
            actor.send(i, TASK_STR)
        elapsed = time.perf_counter() - t
        actor.broker.close()
        return elapsed
    if name.startswith("rq"):
        from redis import Redis
        from rq import Queue

        q = Queue(queue, connection=Redis.from_url(compare.REDIS_URL))
        q.enqueue_many([compare.rq_job(queue, -1)])
        t = time.perf_counter()
        for start in range(0, n, 1000):
            q.enqueue_many([compare.rq_job(queue, i) for i in range(start, min(n, start + 1000))])
        return time.perf_counter() - t
    sender = {"arq": compare.arq_sender, "taskiq": compare.taskiq_redis_sender}
    if name.startswith("taskiq") and not redis_:
        async def go_taskiq() -> float:
            broker_, task = compare.taskiq_broker(queue, None)
            await broker_.startup()
            await task.kiq(-1, TASK_STR)
            t = time.perf_counter()
            for i in range(n):
                await task.kiq(i, TASK_STR)
            elapsed = time.perf_counter() - t
            await broker_.shutdown()
            return elapsed
        return asyncio.run(go_taskiq())

    async def go_peer() -> float:
        async with sender[name.split()[0]](queue) as send:
            await send(-1)
            t = time.perf_counter()
            for i in range(n):
                await send(i)
            return time.perf_counter() - t
    return asyncio.run(go_peer())


def run_send(args: Any) -> None:
    import json
    import statistics
    import subprocess
    import sys
    import uuid

    import compare

    names = [s for s in SENDERS if not args.only or s in args.only.split(",")]
    for broker in args.brokers.split(","):
        rates: dict[str, list[float]] = {}
        counts: dict[str, int] = {}
        for r in range(args.rounds):
            for name in names:
                if broker not in SENDERS[name]:
                    continue
                queue = f"send-{name.split()[0]}-{uuid.uuid4().hex[:6]}"
                py = (sys.executable if name.startswith(("foxtive", "aio-pika"))
                      else str(compare.PEERS_PY))
                n = sender_n(name, broker, args)
                out = subprocess.run([py, __file__, "send-child", name, "--brokers", broker,
                                      "--queue", queue, "-n", str(n)],
                                     capture_output=True, text=True, timeout=1800)
                compare.cleanup(f"tasks-{broker}", queue)
                try:
                    elapsed = json.loads(out.stdout.strip().splitlines()[-1])["seconds"]
                except (ValueError, IndexError, KeyError):
                    print(f"{name}: failed\n{out.stderr[-2000:]}", file=sys.stderr)
                    continue
                rates.setdefault(name, []).append(n / elapsed)
                counts[name] = n
                print(f"{broker} round {r + 1}: {name:28s} {n:7,} tasks {n / elapsed:10,.0f} "
                      f"tasks/s (load {compare.loadavg()})", flush=True)
        print(f"\n| {broker}: sender | tasks per run | tasks/s median (min-max) | "
              f"vs fastest peer |\n|---|---:|---:|---:|")
        peers = [statistics.median(v) for k, v in rates.items()
                 if not k.startswith(("foxtive", "aio-pika"))]
        best = max(peers, default=0.0)
        for name, v in rates.items():
            med = statistics.median(v)
            print(f"| {name} | {counts[name]:,} | {med:,.0f} ({min(v):,.0f}-{max(v):,.0f}) | "
                  f"{med / best if best else 0:.2f} |")
        print()


def sender_n(name: str, broker: str, args: Any) -> int:
    """Tasks per run: -n for ``foxtive send_many`` and for every foxtive
    sender on Redis; ``--cap`` for the rest (the peers, and the one-by-one
    confirmed loops on RabbitMQ, ~100-1,000 tasks/s: their rates are per
    task all the same)."""
    if not args.cap or name == "foxtive send_many" or (
            broker == "redis" and name.startswith("foxtive")):
        return int(args.n)
    return int(min(args.n, args.cap))


# --------------------------------------------------------------------------
# Round trip: send -> result() on Redis, paced (python benches/compare_tasks.py roundtrip)
# --------------------------------------------------------------------------

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
    import asyncio
    import time

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
    import time

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
    import compare
    from celery import Celery

    app = Celery("bench-rt", broker=compare.REDIS_URL, backend=compare.REDIS_URL)
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
    import compare
    import dramatiq
    from dramatiq.brokers.redis import RedisBroker
    from dramatiq.results import Results
    from dramatiq.results.backends import RedisBackend

    broker = RedisBroker(url=compare.REDIS_URL, namespace=f"dramatiq-{queue}")
    broker.add_middleware(Results(backend=RedisBackend(
        url=compare.REDIS_URL, namespace=f"dramatiq-results-{queue}")))
    dramatiq.set_broker(broker)

    @dramatiq.actor(queue_name=queue, store_results=True, max_retries=0)
    def echo(i: int, s: str) -> int:
        return i
    return echo


def rt_taskiq(queue: str) -> tuple[Any, Any]:
    import compare
    from taskiq_redis import RedisAsyncResultBackend, RedisStreamBroker

    broker = RedisStreamBroker(compare.REDIS_URL, queue_name=queue, consumer_group_name="g")
    broker = broker.with_result_backend(RedisAsyncResultBackend(
        compare.REDIS_URL, result_ex_time=600))

    @broker.task(task_name=TASK_NAME)
    async def echo(i: int, s: str) -> int:
        return i
    return broker, echo


async def rt_arq_echo(ctx: dict[str, Any], i: int, s: str) -> int:
    return i


def roundtrip_worker(name: str, queue: str) -> None:
    import asyncio

    import compare

    if name == "foxtive":
        app, _ = roundtrip_app(queue, compare.REDIS_URL)
        app.run([queue])
    elif name.startswith("redis-py"):
        import redis

        r = redis.Redis.from_url(compare.REDIS_URL)
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
               redis_settings=RedisSettings.from_dsn(compare.REDIS_URL), max_jobs=100,
               keep_result=600, handle_signals=False,
               poll_delay=0.001 if "1 ms" in name else 0.5).run()
    else:
        raise SystemExit(f"no round-trip worker {name!r}")


def roundtrip_sender(name: str, queue: str, n: int, rate: float) -> list[float]:
    """Latency (s) of each send -> result(), one task every 1/rate seconds.
    Task ids carry the queue name where the API takes one, so cleanup finds
    every key the run left."""
    import asyncio

    import compare

    if name == "foxtive":
        app, echo = roundtrip_app(queue, compare.REDIS_URL)

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

        r = redis.Redis.from_url(compare.REDIS_URL)

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

            pool = await create_pool(RedisSettings.from_dsn(compare.REDIS_URL))

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
    import json
    import statistics
    import subprocess
    import sys
    import uuid

    import compare

    names = [s for s in RT_CONTENDERS if not args.only or s in args.only.split(",")]
    rows: dict[str, list[tuple[float, float, float]]] = {}
    for r in range(args.rounds):
        for name in names:
            kind, cap, _ = RT_CONTENDERS[name]
            n = min(args.n, cap) if cap else args.n
            py = sys.executable if kind == FOX else str(compare.PEERS_PY)
            queue = f"rt-{name.split()[0]}-{uuid.uuid4().hex[:6]}"
            load = compare.loadavg()
            worker = subprocess.Popen([py, __file__, "rt-worker", name, "--queue", queue],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                out = subprocess.run([py, __file__, "rt-sender", name, "--queue", queue,
                                      "-n", str(n), "--rate", str(args.rate)],
                                     capture_output=True, text=True, timeout=900)
            finally:
                worker.terminate()
                try:
                    worker.wait(30)
                except subprocess.TimeoutExpired:
                    worker.kill()
                    worker.wait()
                compare.cleanup("tasks-redis", queue)
            try:
                lat = sorted(json.loads(out.stdout.strip().splitlines()[-1])["latency"])
            except (ValueError, IndexError, KeyError):
                print(f"{name}: round trip failed\n{out.stderr[-2000:]}", file=sys.stderr)
                continue
            p50 = lat[len(lat) // 2] * 1000
            p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000
            rows.setdefault(name, []).append((p50, p99, lat[-1] * 1000))
            print(f"round {r + 1}: {name:28s} at {args.rate:g}/s, {len(lat)}: "
                  f"p50 {p50:7.2f} ms  p99 {p99:7.2f} ms  max {lat[-1] * 1000:7.2f} ms "
                  f"(load {load})", flush=True)
    print("\n| contender | tasks per round | p50 ms | p99 ms | max ms | how it waits |\n"
          "|---|---:|---:|---:|---:|---|")
    for name, v in rows.items():
        kind, cap, how = RT_CONTENDERS[name]
        med = [statistics.median(x[k] for x in v) for k in range(3)]
        print(f"| {name} | {min(args.n, cap) if cap else args.n:,} | {med[0]:.2f} | "
              f"{med[1]:.2f} | {med[2]:.2f} | {how} |")
    print(f"\n(median over {args.rounds} round(s) of each percentile)")


# --------------------------------------------------------------------------
# Execute on a broker, CPU per message inside the drain window
# (python benches/compare_tasks.py execcpu): on a shared machine the wall
# rates move by +-50 % from run to run, the CPU a process spends between its
# first and its last message much less.
# --------------------------------------------------------------------------

#: contender -> (what it drains, what it runs).
EXEC_CONTENDERS = {
    "raw": ("100-byte raw bodies, no headers", "async handler counting"),
    "raw on task messages": ("the tasks' messages (send_many)", "the same raw handler"),
    "tasks": ("the tasks' messages (send_many)", "App, @app.task async def noop(i: int, s: str)"),
}


def exec_child(name: str, broker: str, queue: str, n: int) -> None:
    """Drain n messages; CPU seconds (all threads) and wall seconds from the
    first message to the n-th, and that window in CLOCK_MONOTONIC (for
    ``perf report --time`` when the parent runs the child under perf)."""
    import asyncio
    import json
    import os
    import resource
    import time

    import compare

    import foxtive

    def cpu() -> float:
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime

    state: dict[str, Any] = {"count": 0}

    def hit(_i: int = 0) -> None:
        state["count"] += 1
        c = state["count"]
        if c == 1:
            state["t0"], state["c0"], state["m0"] = time.perf_counter(), cpu(), time.monotonic()
        elif c == n:
            t1, c1, m1 = time.perf_counter(), cpu(), time.monotonic()
            print(json.dumps({"cpu_s": c1 - state["c0"], "wall_s": t1 - state["t0"],
                              "count": c - 1, "window": [state["m0"], m1]}), flush=True)
            os._exit(0)

    workload = f"tasks-{broker}"
    if name == "tasks":
        app, _ = bench_app(workload, queue, compare.AMQP_URL, compare.REDIS_URL,
                           compare.PREFETCH, on_task=hit)
        asyncio.run(app.run_async(handle_signals=False))
        return

    async def handler(_m: Any) -> None:
        hit()

    pool = foxtive.WorkerPoolBuilder("bench").add_worker(handler, id="noop").build()
    if broker == "rabbitmq":
        backend: Any = foxtive.RabbitMqBackend(compare.AMQP_URL, foxtive.RabbitMqConsumerConfig(
            queue_name=queue, prefetch_count=compare.PREFETCH))
    else:
        backend = foxtive.RedisStreamBackend(compare.REDIS_URL, foxtive.RedisStreamConsumerConfig(
            stream_name=queue, group_name="g", batch_size=100, delete_on_ack=True))
    asyncio.run(pool.run_async(backend, handle_signals=False))


def run_execcpu(args: Any) -> None:
    import json
    import statistics
    import subprocess
    import sys
    import uuid

    import compare

    names = [s for s in EXEC_CONTENDERS if not args.only or s in args.only.split(",")]
    for broker in args.brokers.split(","):
        workload = f"tasks-{broker}"
        compare.set_mode(workload)
        per: dict[str, list[float]] = {}
        walls: dict[str, list[float]] = {}
        for r in range(args.rounds):
            for name in names:
                queue = f"execcpu-{name.split()[0]}-{uuid.uuid4().hex[:6]}"
                if name == "raw":
                    compare.prepublish(workload, "foxtive", compare.FOX, queue, args.n)
                else:
                    publish(workload, queue, args.n, compare.AMQP_URL, compare.REDIS_URL,
                            compare.PREFETCH)
                perf = f"{args.perf_dir}/perf-{broker}-{name.replace(' ', '_')}-{r + 1}.data" \
                    if args.perf_dir else ""
                load = compare.loadavg()
                cmd = [sys.executable, __file__, "exec-child", name, "--brokers", broker,
                       "--queue", queue, "-n", str(args.n)]
                if perf:
                    cmd = ["perf", "record", "-q", "-k", "CLOCK_MONOTONIC", "-e", "cpu-clock",
                           "-F", "1999", "-o", perf, "--", *cmd]
                try:
                    out = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
                finally:
                    compare.cleanup(workload, queue)
                try:
                    res = json.loads(out.stdout.strip().splitlines()[-1])
                except (ValueError, IndexError):
                    print(f"{name}: failed\n{out.stderr[-2000:]}", file=sys.stderr)
                    continue
                us = res["cpu_s"] / res["count"] * 1e6
                per.setdefault(name, []).append(us)
                if perf:  # the drain window only: perf report --time <from>,<to>
                    t0, t1 = res["window"]
                    print(f"  perf report -i {perf} --time {t0:.6f},{t1:.6f} --sort dso,sym")
                walls.setdefault(name, []).append(res["count"] / res["wall_s"])
                print(f"{broker} round {r + 1}: {name:22s} {us:6.2f} CPU-us/msg "
                      f"({res['count'] / res['wall_s']:9,.0f} msg/s wall) (load {load})",
                      flush=True)
        print(f"\n| {broker}: contender | CPU us per message, median (min-max) | "
              f"per CPU-second | vs raw | wall msg/s median |\n|---|---:|---:|---:|---:|")
        base = statistics.median(per["raw"]) if "raw" in per else 0.0
        for name, v in per.items():
            med = statistics.median(v)
            print(f"| {name} | {med:.2f} ({min(v):.2f}-{max(v):.2f}) | {1e6 / med:,.0f} | "
                  f"{base / med if base else 0:.2f} | {statistics.median(walls[name]):,.0f} |")
        print()


def run_memory(args: Any) -> None:
    """Memory backend, one process: process CPU seconds to drain n messages,
    raw bodies, the same task bodies with the task headers and ids (raw
    handler), and App tasks: what the task layer costs per message, broker
    aside."""
    import asyncio
    import time
    import uuid

    import foxtive
    from foxtive import envelope

    n = args.n
    hits: list[int] = []
    bodies = [b'{"args":[%d,"%s"],"kwargs":{}}' % (i, TASK_STR.encode()) for i in range(n)]

    async def handler(m: Any) -> None:
        hits.append(int(m.body[9:m.body.index(b",")]))

    def drain_raw(headers: bool) -> float:
        backend = foxtive.MemoryBackend(f"mem-{uuid.uuid4().hex[:6]}")
        if headers:
            h = envelope.headers_for(TASK_NAME)
            for at in range(0, n, SEND_CHUNK):
                chunk = bodies[at:at + SEND_CHUNK]
                backend.publish_many_sync(chunk, headers=h,
                                          message_ids=[uuid.uuid4().hex for _ in chunk])
        else:
            backend.publish_bulk(bodies)
        pool = foxtive.WorkerPoolBuilder("bench").add_worker(handler, id="noop").build()
        t = time.process_time()
        assert pool.run_until_idle(backend, timeout=600)
        return time.process_time() - t

    def drain_tasks() -> float:
        app = foxtive.App("mem", broker="memory://")

        @app.task(name=TASK_NAME, queue="mem")
        async def noop(i: int, s: str) -> None:
            hits.append(i)

        for at in range(0, n, SEND_CHUNK):
            noop.send_many_sync([(i, TASK_STR) for i in range(at, min(n, at + SEND_CHUNK))])
        t = time.process_time()
        assert app.run_until_idle(timeout=600)
        elapsed = time.process_time() - t
        asyncio.run(app.aclose())
        return elapsed

    for r in range(args.rounds):
        row = {}
        for what, fn in (("raw", lambda: drain_raw(False)),
                         ("raw + task headers", lambda: drain_raw(True)),
                         ("tasks", drain_tasks)):
            hits.clear()
            row[what] = n / fn()
            assert sorted(hits) == list(range(n))
        print(f"round {r + 1}: " + "  ".join(f"{k} {v:,.0f}/CPU-s" for k, v in row.items())
              + f"  tasks/raw {row['tasks'] / row['raw']:.2f}"
              + f"  tasks/(raw + headers) {row['tasks'] / row['raw + task headers']:.2f}",
              flush=True)


def main() -> None:
    import argparse
    import json
    import os
    import sys

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    ap = argparse.ArgumentParser(description="foxtive tasks: send and round-trip benchmarks")
    ap.add_argument("mode", choices=["send", "roundtrip", "memory", "execcpu", "send-child",
                                     "exec-child", "rt-worker", "rt-sender"])
    ap.add_argument("name", nargs="?", default="")
    ap.add_argument("-n", type=int, default=N_DEFAULT)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--brokers", default="redis,rabbitmq")
    ap.add_argument("--only", default="")
    ap.add_argument("--queue", default="")
    ap.add_argument("--rate", type=float, default=100.0)
    ap.add_argument("--cap", type=int, default=0,
                    help="send: tasks per run for the peers and the RabbitMQ send loops")
    ap.add_argument("--perf-dir", default="", help="execcpu: perf record each drain here")
    args = ap.parse_args()
    if args.mode == "send":
        run_send(args)
    elif args.mode == "roundtrip":
        run_roundtrip(args)
    elif args.mode == "memory":
        run_memory(args)
    elif args.mode == "execcpu":
        run_execcpu(args)
    elif args.mode == "exec-child":
        exec_child(args.name, args.brokers, args.queue, args.n)
    elif args.mode == "send-child":
        print(json.dumps({"seconds": send_child(args.name, args.brokers, args.queue, args.n)}))
    elif args.mode == "rt-worker":
        roundtrip_worker(args.name, args.queue)
    else:
        print(json.dumps({"latency": roundtrip_sender(args.name, args.queue, args.n,
                                                      args.rate)}))


if __name__ == "__main__":
    main()
