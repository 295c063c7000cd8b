"""What the task envelope's AMQP properties cost the broker and lapin, with
no foxtive on the consumer side (issue 14, "Execute" on RabbitMQ).

    cargo build --release -p foxtive-core --example rabbitmq_ceiling
    python benches/rabbitmq_header_cost.py -n 50000 --kinds plain,ctype,headers,foxtive,...

Each kind fills a fresh durable queue with n persistent messages of the
tasks' body (aio-pika with confirms; ``foxtive``: the App's ``send_many``),
then the plain lapin consumer (``examples/rabbitmq_ceiling.rs drain``,
prefetch 1000) drains it. Printed: its rate and the CPU the RabbitMQ server
(``beam.smp``, found with pgrep) spent per message during the drain; the
server is shared, so that figure includes whatever else it served then.

Kinds: ``plain`` (message id only), ``ctype`` (+ JSON content type),
``hdr_only`` (+ the envelope's two headers, no content type), ``headers``
(id, content type and the two headers: the envelope by another client),
``foxtive`` (the envelope as foxtive sends it), ``typed`` (id, content type
and the task name in the AMQP ``type`` property, no header table: not the
envelope, a measure of what a table-less one would cost), ``idlong`` (a
message id as long as ``typed``'s id, content type and type together: the
same header frame size with one property).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import uuid

from harness.binaries import ceiling_binary
from harness.brokers import cleanup
from harness.config import AMQP_URL, PREFETCH, REDIS_URL
from harness.tasks import TASK_NAME, TASK_STR, publish

BODY = json.dumps({"args": [12345, TASK_STR], "kwargs": {}}, separators=(",", ":")).encode()


def beam_cpu(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def fill(queue: str, kind: str, n: int, arguments: dict[str, object]) -> None:
    import aio_pika

    conn = await aio_pika.connect(AMQP_URL)
    ch = await conn.channel(publisher_confirms=True)
    await ch.declare_queue(queue, durable=True, arguments=arguments)  # type: ignore[arg-type]
    for start in range(0, n, 1000):
        sends = []
        for _ in range(start, min(n, start + 1000)):
            kw: dict[str, object] = {"delivery_mode": aio_pika.DeliveryMode.PERSISTENT,
                                     "message_id": uuid.uuid4().hex}
            if kind == "idlong":
                kw["message_id"] = uuid.uuid4().hex + "-" * (len("application/json") + len(
                    TASK_NAME) + 2)
            if kind in ("ctype", "headers", "typed"):
                kw["content_type"] = "application/json"
            if kind in ("hdr_only", "headers"):
                kw["headers"] = {"foxtive-task": TASK_NAME, "foxtive-envelope": 1}
            if kind == "typed":
                kw["type"] = TASK_NAME
            sends.append(ch.default_exchange.publish(aio_pika.Message(BODY, **kw),  # type: ignore[arg-type]
                                                     routing_key=queue))
        await asyncio.gather(*sends)
    await conn.close()


def paged(queue: str) -> str:
    """Where the filled queue holds its messages before the drain: how many
    of them are in RAM (the rest were paged out to disk; rabbitmqctl)."""
    out = subprocess.run(["rabbitmqctl", "-q", "list_queues", "--no-table-headers", "name",
                          "messages", "messages_ram"],
                         capture_output=True, text=True).stdout
    for line in out.splitlines():
        name, *counts = line.split()
        if name == queue and len(counts) == 2:
            return f"in RAM {counts[1]} of {counts[0]}"
    return "in RAM ?"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-n", type=int, default=50_000)
    ap.add_argument("--kinds", default="plain,foxtive,headers,plain,foxtive,headers")
    ap.add_argument("--queue-arguments", default="{}", type=json.loads,
                    help='the queues\' x-arguments as JSON, e.g. \'{"x-queue-version": 2}\' '
                         "(aio-pika's kinds only: foxtive's App declares its own)")
    args = ap.parse_args()
    beam = int(subprocess.run(["pgrep", "-o", "beam.smp"], capture_output=True, text=True,
                              check=True).stdout.split()[0])
    for kind in args.kinds.split(","):
        queue = f"header-cost-{kind}-{uuid.uuid4().hex[:6]}"
        if kind == "foxtive":
            publish("tasks-rabbitmq", queue, args.n, AMQP_URL, REDIS_URL, PREFETCH)
        else:
            asyncio.run(fill(queue, kind, args.n, args.queue_arguments))
        load = open("/proc/loadavg").read().split()[0]
        held = paged(queue)
        before = beam_cpu(beam)
        try:
            out = subprocess.run([ceiling_binary(), "drain", queue, str(args.n), str(PREFETCH)],
                                 capture_output=True, text=True, check=True)
        finally:
            used = beam_cpu(beam) - before
            cleanup("tasks-rabbitmq", queue)
        rate = json.loads(out.stdout.strip().splitlines()[-1])["rate"]
        print(f"{kind:9s} {rate:9,.0f} msg/s  broker {used / args.n * 1e6:5.1f} CPU-us/msg  "
              f"{held}  (load {load})", flush=True)


if __name__ == "__main__":
    main()
