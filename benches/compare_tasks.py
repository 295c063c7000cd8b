"""Tasks in benches/compare.py (issue 14): the "execute" workloads.

    python benches/compare.py --workloads tasks-rabbitmq,tasks-redis

50,000 no-op tasks taking ``(int, str)`` are sent before the timed window,
then drained: foxtive's App (``@app.task`` routed by its header, arguments
decoded and checked against the annotations) next to foxtive's raw message
drain of the same backend settings (the reference: the task layer may cost
at most 20 %) and the peers' own tasks, each sent through the peer's own
producer API with the same two arguments. compare.py runs every contender
as for W1; this module holds the foxtive task side (publisher, consumer)
and the contender list.
"""

from __future__ import annotations

from typing import Any

FOX = "foxtive"
PEER = "peers"

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
            else:
                for i in range(n):
                    await noop.send(i, TASK_STR)
            elapsed = time.perf_counter() - t
            await app.aclose()
            return elapsed
        return asyncio.run(go())
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
        for r in range(args.rounds):
            for name in names:
                if broker not in SENDERS[name]:
                    continue
                queue = f"send-{name.split()[0]}-{uuid.uuid4().hex[:6]}"
                py = sys.executable if name.startswith("foxtive") else str(compare.PEERS_PY)
                out = subprocess.run([py, __file__, "send-child", name, "--brokers", broker,
                                      "--queue", queue, "-n", str(args.n)],
                                     capture_output=True, text=True, timeout=1800)
                compare.cleanup(f"tasks-{broker}", queue)
                try:
                    elapsed = json.loads(out.stdout.strip().splitlines()[-1])["seconds"]
                except (ValueError, IndexError, KeyError):
                    print(f"{name}: failed\n{out.stderr[-2000:]}", file=sys.stderr)
                    continue
                rates.setdefault(name, []).append(args.n / elapsed)
                print(f"{broker} round {r + 1}: {name:24s} {args.n / elapsed:10,.0f} tasks/s "
                      f"(load {compare.loadavg()})", flush=True)
        print(f"\n| {broker}: sender | tasks/s median (min-max) |\n|---|---:|")
        for name, v in rates.items():
            print(f"| {name} | {statistics.median(v):,.0f} ({min(v):,.0f}-{max(v):,.0f}) |")
        print()


# --------------------------------------------------------------------------
# Round trip: send -> result() on Redis, paced (python benches/compare_tasks.py roundtrip)
# --------------------------------------------------------------------------


def roundtrip_app(queue: str, redis_url: str) -> tuple[Any, Any]:
    import foxtive

    app = foxtive.App("bench-rt", broker=redis_url, results=True)

    @app.task(name=TASK_NAME, queue=queue)
    async def echo(i: int, s: str) -> int:
        return i

    return app, echo


def roundtrip_worker(queue: str) -> None:
    import compare

    app, _ = roundtrip_app(queue, compare.REDIS_URL)
    app.run([queue])


def roundtrip_sender(queue: str, n: int, rate: float) -> list[float]:
    """Latency (s) of each send -> result(), one task every 1/rate seconds."""
    import asyncio
    import time

    import compare

    app, echo = roundtrip_app(queue, compare.REDIS_URL)

    async def go() -> list[float]:
        for _ in range(20):  # warm-up: connections up, the worker is running
            h = await echo.send(-1, TASK_STR)
            await h.result(timeout=30)
        lat = []
        t0 = time.perf_counter()
        for i in range(n):
            delay = t0 + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            t = time.perf_counter()
            h = await echo.send(i, TASK_STR)
            value = await h.result(timeout=10)
            lat.append(time.perf_counter() - t)
            assert value == i, (value, i)
        await app.aclose()
        return lat
    return asyncio.run(go())


def pingpong_worker(queue: str) -> None:
    """The floor under a round trip: a redis-py process answering each
    request pushed on ``queue`` (BLPOP -> LPUSH), no framework."""
    import compare
    import redis

    r = redis.Redis.from_url(compare.REDIS_URL)
    while True:
        item = r.blpop([f"{queue}:req"], timeout=5)
        if item is not None:
            r.lpush(f"{queue}:rep", item[1])


def pingpong_sender(queue: str, n: int, rate: float) -> list[float]:
    import time

    import compare
    import redis

    r = redis.Redis.from_url(compare.REDIS_URL)
    for _ in range(20):
        r.lpush(f"{queue}:req", b"w")
        r.blpop([f"{queue}:rep"], timeout=30)
    lat = []
    t0 = time.perf_counter()
    for i in range(n):
        delay = t0 + i / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        t = time.perf_counter()
        r.lpush(f"{queue}:req", b"%d" % i)
        reply = r.blpop([f"{queue}:rep"], timeout=10)
        lat.append(time.perf_counter() - t)
        assert reply is not None and reply[1] == b"%d" % i
    return lat


def run_roundtrip(args: Any) -> None:
    import json
    import subprocess
    import sys
    import uuid

    import compare

    for r, who in [(r, who) for r in range(args.rounds) for who in ("foxtive", "redis-py")]:
        queue = f"rt-{uuid.uuid4().hex[:6]}"
        prefix = "rt" if who == "foxtive" else "pp"
        worker = subprocess.Popen([sys.executable, __file__, f"{prefix}-worker", "--queue", queue],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            out = subprocess.run([sys.executable, __file__, f"{prefix}-sender", "--queue", queue,
                                  "-n", str(args.n), "--rate", str(args.rate)],
                                 capture_output=True, text=True, timeout=600)
        finally:
            worker.terminate()
            worker.wait(30)
            compare.cleanup("tasks-redis", queue)
        try:
            lat = sorted(json.loads(out.stdout.strip().splitlines()[-1])["latency"])
        except (ValueError, IndexError, KeyError):
            print(f"round trip failed\n{out.stderr[-2000:]}", file=sys.stderr)
            continue
        p50 = lat[len(lat) // 2] * 1000
        p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000
        what = ("foxtive send -> result()" if who == "foxtive"
                else "redis-py LPUSH -> BLPOP ping-pong (floor)")
        print(f"round {r + 1}: {what} at {args.rate:g}/s, {len(lat)}: "
              f"p50 {p50:.2f} ms  p99 {p99:.2f} ms  max {lat[-1] * 1000:.2f} ms "
              f"(load {compare.loadavg()})", flush=True)


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
    ap.add_argument("mode", choices=["send", "roundtrip", "memory", "send-child", "rt-worker",
                                     "rt-sender", "pp-worker", "pp-sender"])
    ap.add_argument("name", nargs="?", default="")
    ap.add_argument("-n", type=int, default=N_DEFAULT)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--brokers", default="redis,rabbitmq")
    ap.add_argument("--only", default="")
    ap.add_argument("--queue", default="")
    ap.add_argument("--rate", type=float, default=100.0)
    args = ap.parse_args()
    if args.mode == "send":
        run_send(args)
    elif args.mode == "roundtrip":
        run_roundtrip(args)
    elif args.mode == "memory":
        run_memory(args)
    elif args.mode == "send-child":
        print(json.dumps({"seconds": send_child(args.name, args.brokers, args.queue, args.n)}))
    elif args.mode == "rt-worker":
        roundtrip_worker(args.queue)
    elif args.mode == "pp-worker":
        pingpong_worker(args.queue)
    elif args.mode == "pp-sender":
        print(json.dumps({"latency": pingpong_sender(args.queue, args.n, args.rate)}))
    else:
        print(json.dumps({"latency": roundtrip_sender(args.queue, args.n, args.rate)}))


if __name__ == "__main__":
    main()
