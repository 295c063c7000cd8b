"""A worker process for the RabbitMQ shutdown and broker-restart tests.

    python tests/rabbit_worker.py QUEUE OUT_FILE [--delay S] [--shutdown-timeout S]
        [--prefetch N] [--until-idle] [--resilient STATE_FILE] [--started FILE]

Each handled message's id is appended to OUT_FILE (one line, flushed) when
its handler finishes. SIGTERM drains gracefully (pool.run). With --started,
"<id> <attempt> <redelivered>" is appended to FILE when a handler starts."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

import foxtive

URL = "amqp://guest:guest@127.0.0.1:5672/%2f"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("queue")
    ap.add_argument("out")
    ap.add_argument("--delay", type=float, default=0.0)
    ap.add_argument("--shutdown-timeout", type=float, default=10.0)
    ap.add_argument("--prefetch", type=int, default=50)
    ap.add_argument("--until-idle", action="store_true")
    ap.add_argument("--resilient", metavar="STATE_FILE", default=None,
                    help="wrap the backend in a ResilientBackend; log its state changes here")
    ap.add_argument("--started", metavar="FILE", default=None,
                    help="append '<id> <attempt> <redelivered>' here when a handler starts")
    args = ap.parse_args()
    out = open(args.out, "a", buffering=1)
    started = open(args.started, "a", buffering=1) if args.started else None

    async def handler(message: foxtive.Message) -> None:
        if started is not None:
            started.write(f"{message.id} {message.attempt} {message.redelivered}\n")
        if args.delay:
            await asyncio.sleep(args.delay)
        out.write(message.id + "\n")

    backend = foxtive.RabbitMqBackend(
        URL, foxtive.RabbitMqConsumerConfig(queue_name=args.queue, prefetch_count=args.prefetch),
        reconnect_initial=0.2, reconnect_max=1.0,
    )
    if args.resilient:
        states = open(args.resilient, "a", buffering=1)
        backend = foxtive.ResilientBackend(backend, foxtive.ReconnectStrategy.fixed(0.2))
        backend.on_state_change(lambda old, new: states.write(f"{old}->{new}\n"))
    pool = (foxtive.WorkerPoolBuilder("worker")
            .add_worker(handler, id="h")
            .with_concurrency_limit(args.prefetch)
            .with_shutdown_timeout(args.shutdown_timeout)
            .build())
    if args.resilient:
        server = foxtive.HealthServer(pool, port=0).start()
        states.write(f"port {server.port}\n")
    print(f"ready {os.getpid()}", flush=True)
    if args.until_idle:
        ok = pool.run_until_idle(backend, timeout=120)
        return 0 if ok else 1
    pool.run(backend)
    return 0


if __name__ == "__main__":
    sys.exit(main())
