"""RabbitMQ cluster failover: time from stopping a node to the first message
processed again, median of N rounds, for two victims: the node the consumer
is connected to, and (separately) the quorum queue's leader.

    python benches/rabbitmq_failover.py [--rounds 5] [--messages 3000]

Starts its own 3-node cluster (tests/cluster/rabbitmq.py: fx1-3@localhost on
5701-5703, never the shared broker on 5672) and tears it down at the end.
Each round: a new quorum queue (declared through fx2, so its leader starts
there), ``--messages`` published, a foxtive worker process draining it
(prefetch 50, 50 ms per message), the victim stopped (SIGTERM: an orderly
``rabbitmqctl stop``) once 500 are done, then started again. The time is
from the stop to the first message processed again (``resume_seconds``: the
first message handled on a new connection when the worker reconnected, else
the end of the longest pause that began while the node went down); every
round also checks that every id was processed and the queue is empty at the
end."""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.cluster.rabbitmq import (
    RabbitCluster,
    declare_and_publish,
    delete_queue,
    read_lines,
    ready_count,
    resume_seconds,
    start_worker,
    stop_worker,
    wait_for,
    worker_log,
)

PREFETCH = 50
DELAY = 0.05


def one_round(cluster: RabbitCluster, base: Path, kind: str, messages: int) -> dict[str, float]:
    queue = f"foxtive-bench-failover-{kind}-{uuid.uuid4().hex[:8]}"
    ids = [f"m-{i}" for i in range(messages)]
    asyncio.run(declare_and_publish(cluster.nodes[1], queue, ids))
    leader = cluster.leader(queue) if kind == "leader" else None
    nodes = [n for n in cluster.nodes if n is not leader]
    out = base / f"{queue}.txt"
    worker = start_worker(cluster.url(nodes), queue, out, delay=DELAY, prefetch=PREFETCH)
    try:
        wait_for(lambda: len(read_lines(out)) >= 500, 120, "500 processed")
        victim = leader if leader is not None else cluster.connected_node(worker.pid)
        epoch_before = max(x.epoch_end for x in read_lines(out))
        t0 = time.time()
        cluster.stop_node(victim)
        t_down = time.time()
        wait_for(lambda: len({x.id for x in read_lines(out)}) >= messages, 300, "the drain")
    finally:
        stop_worker(worker)
    lines = read_lines(out)
    seen = {x.id for x in lines}
    survivor = cluster.any_running()
    left = asyncio.run(ready_count(survivor, queue))
    asyncio.run(delete_queue(survivor, queue))
    if seen != set(ids) or left:
        raise SystemExit(f"{kind}: lost messages ({len(seen)} of {messages}, {left} left)\n"
                         f"{worker_log(out)}")
    resume = resume_seconds(lines, t0, t_down, epoch_before)
    reconnected = any(x.epoch_start > epoch_before for x in lines)
    cluster.restart_node(victim)
    return {"resume": resume, "stop": t_down - t0, "duplicates": len(lines) - len(seen),
            "reconnected": float(reconnected)}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--messages", type=int, default=3000)
    args = ap.parse_args()
    load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    print(f"load before: {load}")
    base = Path(tempfile.mkdtemp(prefix="foxtive-failover-"))
    results: dict[str, list[dict[str, float]]] = {"consumer": [], "leader": []}
    started = time.monotonic()
    with RabbitCluster(base / "cluster") as cluster:
        print(f"cluster up in {time.monotonic() - started:.0f}s", flush=True)
        for r in range(args.rounds):
            for kind in ("consumer", "leader"):
                res = one_round(cluster, base, kind, args.messages)
                results[kind].append(res)
                print(f"round {r + 1} {kind:8}: resumed after {res['resume']:.2f}s "
                      f"(node gone after {res['stop']:.2f}s), "
                      f"{res['duplicates']:.0f} duplicates, "
                      f"reconnected: {bool(res['reconnected'])}",
                      flush=True)
    load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    print(f"load after: {load}")
    print("\n| node stopped | median resume (s) | min | max | duplicates (max) |")
    print("|---|---|---|---|---|")
    for kind, label in (("consumer", "the consumer's node"), ("leader", "the queue leader")):
        times = [x["resume"] for x in results[kind]]
        dups = max(x["duplicates"] for x in results[kind])
        print(f"| {label} | {statistics.median(times):.2f} | {min(times):.2f} | "
              f"{max(times):.2f} | {dups:.0f} |")
    print(f"\n(python {sys.version.split()[0]}, pid {os.getpid()}, {args.rounds} rounds, "
          f"{args.messages} messages, prefetch {PREFETCH}, handler {DELAY * 1000:.0f} ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
