"""``python benches/compare_tasks.py``: the modes (send, roundtrip, memory,
execcpu) and the child modes they re-run the script in."""

from __future__ import annotations

import argparse
import json

from harness.tasks import N_DEFAULT
from harness.tasks_execcpu import exec_child, run_execcpu
from harness.tasks_memory import run_memory
from harness.tasks_roundtrip import roundtrip_sender, roundtrip_worker, run_roundtrip
from harness.tasks_send import run_send, send_child


def main() -> None:
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
