"""``python benches/compare_tasks.py send``: tasks/s of each sender, N tasks
from one process (foxtive's send_many, send loops, sync sends; the peers'
own producers; aio-pika with and without publisher confirms on RabbitMQ,
Dramatiq with and without them, and the plain-lapin ceiling of confirmed
publishing), each sender a child process timing its own loop."""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import time
import uuid
from typing import Any

from harness.accounting import loadavg
from harness.binaries import ceiling_binary
from harness.brokers import cleanup
from harness.children import child, last_json
from harness.config import AMQP_URL, FOX, PEER, PREFETCH, REDIS_URL, TASKS_PY
from harness.mode import set_mode
from harness.peer_apps import celery_app, dramatiq_actor, taskiq_broker
from harness.redis_contenders import arq_sender, rq_job, taskiq_redis_sender
from harness.tasks import TASK_NAME, TASK_STR, bench_app

#: The lapin ceiling's arguments (mode, channels, window) per contender.
LAPIN_CEILINGS = {
    "lapin ceiling awaited": ("awaited", 1, 1),
    "lapin ceiling pipelined": ("pipelined", 1, 1024),
    "lapin ceiling pipelined x4 channels": ("pipelined", 4, 1024),
    "lapin ceiling wait_for_confirms": ("wait", 1, 1024),
    "lapin no-confirm pipelined": ("unconfirmed", 1, 1024),
}
#: Senders whose every message the broker confirmed before their clock stops
#: (all foxtive's, aio-pika's confirm senders, the lapin ceilings, and on
#: RabbitMQ taskiq-aio-pika, whose write channel has aio-pika's default
#: publisher confirms); the rest fire and forget.
CONFIRMED_PEERS = ("taskiq kiq loop", "dramatiq send loop confirmed")


def confirmed(name: str, broker: str) -> bool:
    if name.startswith(("foxtive", "lapin ceiling", "aio-pika confirm")):
        return True
    return broker == "rabbitmq" and name in CONFIRMED_PEERS


def is_peer(name: str) -> bool:
    return not name.startswith(("foxtive", "aio-pika", "lapin", "redis round-trip floor"))


#: name -> brokers it runs on; each runs as its own process.
SENDERS = {
    "foxtive send_many": ("rabbitmq", "redis"),
    "foxtive send loop": ("rabbitmq", "redis"),
    "foxtive send_sync loop": ("rabbitmq", "redis"),
    # Not a sender: the round trip every send loop waits for once per send
    # (a PING on a raw socket, nothing encoded or parsed): the floor of any
    # loop of sends that each wait for Redis's reply.
    "redis round-trip floor (raw PING loop)": ("redis",),
    # RabbitMQ: is the publisher confirm the bound of a send loop? foxtive's
    # sends with 100 in flight (confirms overlap), and the same loop in
    # aio-pika with and without confirms (persistent, durable queue).
    "foxtive send x100 in flight": ("rabbitmq",),
    "aio-pika confirm loop": ("rabbitmq",),
    "aio-pika no-confirm loop": ("rabbitmq",),
    # Confirmed against confirmed (issue 14): many confirmed publishes at
    # once in aio-pika, and the plain-lapin bound of confirmed persistent
    # publishing (examples/rabbitmq_publish_ceiling.rs).
    "aio-pika confirm gather": ("rabbitmq",),
    "lapin ceiling awaited": ("rabbitmq",),
    "lapin ceiling pipelined": ("rabbitmq",),
    "lapin ceiling pipelined x4 channels": ("rabbitmq",),
    "lapin ceiling wait_for_confirms": ("rabbitmq",),
    # a yardstick, not a contender: the same writes with nothing confirmed
    "lapin no-confirm pipelined": ("rabbitmq",),
    "celery apply_async loop": ("rabbitmq", "redis"),
    "dramatiq send loop": ("rabbitmq", "redis"),
    "dramatiq send loop confirmed": ("rabbitmq",),
    "taskiq kiq loop": ("rabbitmq", "redis"),
    "arq enqueue_job loop": ("redis",),
    "rq enqueue_many": ("redis",),
}


def send_child(name: str, broker: str, queue: str, n: int) -> float:
    """Seconds to send n tasks (after one untimed send: connections are up)."""
    workload = f"tasks-{broker}"
    set_mode(workload)
    redis_ = broker == "redis"
    if name.startswith("foxtive"):
        app, noop = bench_app(workload, queue, AMQP_URL, REDIS_URL, PREFETCH)
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
    if name.startswith("redis round-trip floor"):
        return ping_loop(n)
    if name.startswith("aio-pika"):
        import aio_pika

        async def go_pika() -> float:
            conn = await aio_pika.connect(AMQP_URL)
            ch = await conn.channel(publisher_confirms="no-confirm" not in name)
            await ch.declare_queue(queue, durable=True)
            ex = ch.default_exchange
            body = b'{"args":[%d,"' + TASK_STR.encode() + b'"],"kwargs":{}}'
            await ex.publish(aio_pika.Message(body % -1), routing_key=queue)

            def message(i: int) -> Any:
                return aio_pika.Message(
                    body % i, message_id=f"m-{i}", content_type="application/json",
                    headers={"foxtive-task": TASK_NAME, "foxtive-envelope": 1},
                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT)
            t = time.perf_counter()
            if name == "aio-pika confirm gather":
                # every publish started at once; each awaits its own confirm
                await asyncio.gather(*(ex.publish(message(i), routing_key=queue)
                                       for i in range(n)))
            else:
                for i in range(n):
                    await ex.publish(message(i), routing_key=queue)
            elapsed = time.perf_counter() - t
            await conn.close()
            return elapsed
        return asyncio.run(go_pika())
    if name.startswith("celery"):
        capp = celery_app(queue, None, redis_)
        task = capp.tasks["bench.noop"]
        with capp.producer_or_acquire() as producer:
            task.apply_async(args=[-1, TASK_STR], queue=queue, producer=producer)
            t = time.perf_counter()
            for i in range(n):
                task.apply_async(args=[i, TASK_STR], queue=queue, producer=producer)
            return time.perf_counter() - t
    if name == "dramatiq send loop confirmed":
        actor = confirmed_dramatiq_actor(queue)
        actor.send(-1, TASK_STR)
        t = time.perf_counter()
        for i in range(n):
            actor.send(i, TASK_STR)
        elapsed = time.perf_counter() - t
        actor.broker.close()
        return elapsed
    if name.startswith("dramatiq"):
        actor = dramatiq_actor(queue, None, redis_)
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

        q = Queue(queue, connection=Redis.from_url(REDIS_URL))
        q.enqueue_many([rq_job(queue, -1)])
        t = time.perf_counter()
        for start in range(0, n, 1000):
            q.enqueue_many([rq_job(queue, i) for i in range(start, min(n, start + 1000))])
        return time.perf_counter() - t
    sender = {"arq": arq_sender, "taskiq": taskiq_redis_sender}
    if name.startswith("taskiq") and not redis_:
        async def go_taskiq() -> float:
            broker_, task = taskiq_broker(queue, None)
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


def ping_loop(n: int) -> float:
    """Seconds for n PING round trips on one raw TCP socket (after one untimed)."""
    import socket
    from urllib.parse import urlsplit

    url = urlsplit(REDIS_URL)
    sock = socket.create_connection((url.hostname or "127.0.0.1", url.port or 6379))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    ping = b"*1\r\n$4\r\nPING\r\n"
    sock.sendall(ping)
    sock.recv(64)
    t = time.perf_counter()
    for _ in range(n):
        sock.sendall(ping)
        if not sock.recv(64).startswith(b"+PONG"):
            raise RuntimeError("redis: not a PONG")
    elapsed = time.perf_counter() - t
    sock.close()
    return elapsed


def confirmed_dramatiq_actor(queue: str) -> Any:
    """Dramatiq's RabbitMQ actor with ``confirm_delivery=True``: each send
    waits for the broker's confirm (its default is False)."""
    import dramatiq
    from dramatiq.brokers.rabbitmq import RabbitmqBroker

    dramatiq.set_broker(RabbitmqBroker(url=AMQP_URL, confirm_delivery=True))

    @dramatiq.actor(queue_name=queue, max_retries=0)
    def noop(i: int, s: str = "") -> None:
        pass
    return noop


def lapin_ceiling(name: str, queue: str, n: int) -> subprocess.CompletedProcess[str]:
    """Run examples/rabbitmq_publish_ceiling.rs (JSON with ``seconds``), or
    say how to build it."""
    try:
        binary = ceiling_binary("rabbitmq_publish_ceiling")
    except SystemExit as e:
        return subprocess.CompletedProcess([], 1, "", str(e))
    mode, channels, window = LAPIN_CEILINGS[name]
    return subprocess.run([binary, mode, queue, str(n), str(channels), str(window)],
                          capture_output=True, text=True, timeout=1800,
                          env={**os.environ, "AMQP_URL": AMQP_URL})


def run_send(args: Any) -> None:
    names = [s for s in SENDERS if not args.only or s in args.only.split(",")]
    for broker in args.brokers.split(","):
        rates: dict[str, list[float]] = {}
        counts: dict[str, int] = {}
        for r in range(args.rounds):
            for name in names:
                if broker not in SENDERS[name]:
                    continue
                queue = f"send-{name.split()[0]}-{uuid.uuid4().hex[:6]}"
                kind = FOX if name.startswith(("foxtive", "aio-pika", "redis round-trip")) else PEER
                n = sender_n(name, broker, args)
                if name in LAPIN_CEILINGS:
                    out = lapin_ceiling(name, queue, n)
                else:
                    out = subprocess.run(child(kind, TASKS_PY, "send-child", name,
                                               "--brokers", broker, "--queue", queue,
                                               "-n", str(n)),
                                         capture_output=True, text=True, timeout=1800)
                cleanup(f"tasks-{broker}", queue)
                elapsed = last_json(out, name, key="seconds")
                if elapsed is None:
                    continue
                rates.setdefault(name, []).append(n / elapsed)
                counts[name] = n
                print(f"{broker} round {r + 1}: {name:28s} {n:7,} tasks {n / elapsed:10,.0f} "
                      f"tasks/s (load {loadavg()})", flush=True)
        print(f"\n| {broker}: sender | confirmed | tasks per run | tasks/s median (min-max) "
              f"| vs fastest peer | vs fastest confirmed peer |\n|---|---|---:|---:|---:|---:|")
        peers = {k: statistics.median(v) for k, v in rates.items() if is_peer(k)}
        best = max(peers.values(), default=0.0)
        best_conf = max((r for k, r in peers.items() if confirmed(k, broker)), default=0.0)
        for name, v in rates.items():
            med = statistics.median(v)
            print(f"| {name} | {'yes' if confirmed(name, broker) else 'no'} | "
                  f"{counts[name]:,} | {med:,.0f} ({min(v):,.0f}-{max(v):,.0f}) | "
                  f"{_ratio(med, best)} | {_ratio(med, best_conf)} |")
        print()


def _ratio(rate: float, reference: float) -> str:
    """``rate / reference``, or a dash when there is no such reference (no
    peer confirms its sends on Redis)."""
    return f"{rate / reference:.2f}" if reference else "-"


def sender_n(name: str, broker: str, args: Any) -> int:
    """Tasks per run: -n for ``foxtive send_many``, aio-pika's gather, the
    lapin ceilings and every foxtive sender on Redis; ``--cap`` for the rest
    (the peers, and the one-by-one confirmed loops on RabbitMQ, ~100-1,000
    tasks/s: their rates are per task all the same)."""
    if not args.cap or name in ("foxtive send_many", "aio-pika confirm gather") or \
            name in LAPIN_CEILINGS or (
            broker == "redis" and name.startswith(("foxtive", "redis round-trip floor"))):
        return int(args.n)
    return int(min(args.n, args.cap))
