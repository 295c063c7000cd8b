"""RabbitMQ drain throughput: the pure-Rust lapin ceiling, foxtive, raw aio-pika.

Each contender drains N pre-published persistent 100-byte messages from its
own fresh durable queue, with the same prefetch and manual acks, in the same
run. The rate is timed from the first delivery to the last one handled.

    cargo build -p foxtive-core --example rabbitmq_ceiling     # same profile as `maturin develop`
    python benches/rabbitmq_throughput.py [-n 100000] [--prefetch 1000] [--rounds 3]

Prints a table and ratios (foxtive / ceiling, foxtive / aio-pika); the
median round counts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import time
import uuid
from pathlib import Path

import aio_pika

import foxtive

URL = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f")
ROOT = Path(__file__).resolve().parent.parent
TARGET = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))


def ceiling_binary() -> str:
    for profile in ("debug", "release"):
        p = TARGET / profile / "examples" / "rabbitmq_ceiling"
        if p.exists():
            return str(p)
    raise SystemExit("build it first: cargo build -p foxtive-core --example rabbitmq_ceiling")


def prepublish(queue: str, n: int) -> None:
    subprocess.run([ceiling_binary(), "publish", queue, str(n), "100"], check=True)


async def delete(queue: str) -> None:
    conn = await aio_pika.connect(URL)
    ch = await conn.channel()
    await ch.queue_delete(queue)
    await conn.close()


def run_ceiling(queue: str, n: int, prefetch: int) -> float:
    out = subprocess.run([ceiling_binary(), "drain", queue, str(n), str(prefetch)],
                         check=True, capture_output=True, text=True).stdout
    return float(json.loads(out.strip().splitlines()[-1])["rate"])


def run_foxtive(queue: str, n: int, prefetch: int) -> float:
    first = 0.0
    last = 0.0
    count = 0

    async def handler(message: foxtive.Message) -> None:
        nonlocal first, last, count
        count += 1
        if count == 1:
            first = time.perf_counter()
        elif count == n:
            last = time.perf_counter()
            pool.shutdown()

    pool = foxtive.WorkerPoolBuilder("bench").add_worker(handler, id="noop").build()
    backend = foxtive.RabbitMqBackend(
        URL, foxtive.RabbitMqConsumerConfig(queue_name=queue, prefetch_count=prefetch))
    asyncio.run(pool.run_async(backend, handle_signals=False))
    assert count == n, (count, n)
    return n / (last - first)


async def run_aio_pika(queue: str, n: int, prefetch: int) -> float:
    conn = await aio_pika.connect(URL)
    ch = await conn.channel()
    await ch.set_qos(prefetch_count=prefetch)
    q = await ch.declare_queue(queue, durable=True)
    done = asyncio.Event()
    state = {"count": 0, "first": 0.0, "last": 0.0}

    async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        state["count"] += 1
        if state["count"] == 1:
            state["first"] = time.perf_counter()
        await message.ack()
        if state["count"] == n:
            state["last"] = time.perf_counter()
            done.set()

    tag = await q.consume(on_message)
    await done.wait()
    await q.cancel(tag)
    await conn.close()
    return n / (state["last"] - state["first"])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=100_000)
    ap.add_argument("--prefetch", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    rates: dict[str, list[float]] = {"lapin ceiling": [], "foxtive": [], "aio-pika": []}
    for r in range(args.rounds):
        for name in rates:
            queue = f"bench-{name.split()[0]}-{uuid.uuid4().hex[:6]}"
            prepublish(queue, args.n)
            try:
                if name == "lapin ceiling":
                    rate = run_ceiling(queue, args.n, args.prefetch)
                elif name == "foxtive":
                    rate = run_foxtive(queue, args.n, args.prefetch)
                else:
                    rate = asyncio.run(run_aio_pika(queue, args.n, args.prefetch))
            finally:
                asyncio.run(delete(queue))
            rates[name].append(rate)
            print(f"round {r + 1}: {name:14s} {rate:10.0f} msg/s", flush=True)
    med = {k: statistics.median(v) for k, v in rates.items()}
    print(f"\nN={args.n}, 100-byte persistent messages, prefetch {args.prefetch}, "
          f"median of {args.rounds} rounds")
    print(f"{'contender':16s}{'msg/s':>10s}")
    for k, v in med.items():
        print(f"{k:16s}{v:10.0f}")
    print(f"\nfoxtive / lapin ceiling = {med['foxtive'] / med['lapin ceiling']:.2f}")
    print(f"foxtive / aio-pika      = {med['foxtive'] / med['aio-pika']:.2f}")


if __name__ == "__main__":
    main()
