"""``python benches/compare_tasks.py execcpu``: execute on a broker, CPU per
message inside the drain window: raw vs raw on the tasks' messages vs
tasks, optionally under ``perf record``. On a shared machine the wall rates
move by +-50 % from run to run, the CPU a process spends between its first
and its last message much less."""

from __future__ import annotations

import asyncio
import json
import os
import resource
import statistics
import subprocess
import time
import uuid
from typing import Any

from harness.accounting import cpu_seconds, loadavg
from harness.brokers import cleanup
from harness.children import child, last_json
from harness.config import AMQP_URL, FOX, PREFETCH, REDIS_URL, TASKS_PY
from harness.mode import set_mode
from harness.prepublish import prepublish
from harness.tasks import bench_app, publish

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
    import foxtive

    def cpu() -> float:
        return cpu_seconds(resource.getrusage(resource.RUSAGE_SELF))

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
        app, _ = bench_app(workload, queue, AMQP_URL, REDIS_URL, PREFETCH, on_task=hit)
        asyncio.run(app.run_async(handle_signals=False))
        return

    async def handler(_m: Any) -> None:
        hit()

    pool = foxtive.WorkerPoolBuilder("bench").add_worker(handler, id="noop").build()
    if broker == "rabbitmq":
        backend: Any = foxtive.RabbitMqBackend(AMQP_URL, foxtive.RabbitMqConsumerConfig(
            queue_name=queue, prefetch_count=PREFETCH))
    else:
        backend = foxtive.RedisStreamBackend(REDIS_URL, foxtive.RedisStreamConsumerConfig(
            stream_name=queue, group_name="g", batch_size=100, delete_on_ack=True))
    asyncio.run(pool.run_async(backend, handle_signals=False))


def run_execcpu(args: Any) -> None:
    names = [s for s in EXEC_CONTENDERS if not args.only or s in args.only.split(",")]
    for broker in args.brokers.split(","):
        workload = f"tasks-{broker}"
        set_mode(workload)
        per: dict[str, list[float]] = {}
        walls: dict[str, list[float]] = {}
        for r in range(args.rounds):
            for name in names:
                queue = f"execcpu-{name.split()[0]}-{uuid.uuid4().hex[:6]}"
                if name == "raw":
                    prepublish(workload, "foxtive", FOX, queue, args.n)
                else:
                    publish(workload, queue, args.n, AMQP_URL, REDIS_URL, PREFETCH)
                perf = f"{args.perf_dir}/perf-{broker}-{name.replace(' ', '_')}-{r + 1}.data" \
                    if args.perf_dir else ""
                load = loadavg()
                cmd = child(FOX, TASKS_PY, "exec-child", name, "--brokers", broker,
                            "--queue", queue, "-n", str(args.n))
                if perf:
                    cmd = ["perf", "record", "-q", "-k", "CLOCK_MONOTONIC", "-e", "cpu-clock",
                           "-F", "1999", "-o", perf, "--", *cmd]
                try:
                    out = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
                finally:
                    cleanup(workload, queue)
                res = last_json(out, name)
                if res is None:
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
