"""Filling a contender's fresh queue before its timed run (parent side):
raw contenders through the Rust publisher or ``fill_stream``, frameworks
through their own producer in a child process (their wire format)."""

from __future__ import annotations

import subprocess

from harness import jetstream, postgres
from harness.binaries import ceiling_binary
from harness.brokers import fill_stream
from harness.children import compare_child
from harness.config import BODY_SIZE, FOX
from harness.tasks import SENT_AS_TASKS


def prepublish(workload: str, name: str, kind: str, queue: str, n: int) -> None:
    raw_redis = (workload.endswith("redis") and name not in SENT_AS_TASKS
                 and name.startswith(("foxtive", "redis-rs ceiling", "hiredis ceiling",
                                      "redis-py")))
    if workload == "w4-redis" and raw_redis:
        return fill_stream(queue, 0)  # the group, before the consumer starts
    if workload in ("w1-memory", "w4-rabbitmq", "w4-redis") or name == "asyncio bound":
        return  # W4 publishes while the contender runs (run_contender); no broker
    if raw_redis:
        return fill_stream(queue, n)
    if workload == "w1-postgres":
        return postgres.prepublish(name, kind, queue, n)
    if workload.endswith("nats"):
        return jetstream.prepublish(name, kind, queue, n, workload)
    if workload == "w1-sqlite":
        subprocess.run(compare_child(kind if name == "huey" else FOX, "--publish",
                                     "huey" if name == "huey" else "foxtive", "--queue", queue,
                                     "-n", str(n), "--workload", workload),
                       check=True, timeout=900)
        return
    if workload.endswith("rabbitmq") and name not in SENT_AS_TASKS and name.startswith(
            ("foxtive", "lapin ceiling", "aio-pika")):
        subprocess.run([ceiling_binary(), "publish", queue, str(n), str(BODY_SIZE)],
                       check=True, stdout=subprocess.DEVNULL)
    else:
        subprocess.run(compare_child(kind, "--publish", name, "--queue", queue, "-n", str(n),
                                     "--workload", workload), check=True, timeout=900)
