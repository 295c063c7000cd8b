"""``python benches/compare.py``: the flags, the child modes the parent
re-runs the script in (--publish, --consume, --paced-publish), and the
parent's loop: every workload, round and contender on a fresh queue, the
report written at the end."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from harness import postgres, tasks
from harness.accounting import loadavg
from harness.availability import available
from harness.brokers import cleanup, wait_for_brokers
from harness.config import BODY_SIZE, HERE, PEER, W4_RATE
from harness.consumers import consume
from harness.contenders import CONTENDERS, SLOW
from harness.peers_venv import ensure_peers_venv
from harness.prepublish import prepublish
from harness.publishers import paced_publish, publish
from harness.report import chart, describe, summarise, summarise_latency, summarise_w6
from harness.runs import run_contender


def parse_args(description: str) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--quick", action="store_true",
                    help="10,000 messages per RabbitMQ run, 100,000 in memory, 1 round")
    ap.add_argument("-n", type=int, default=None, help="messages per run (default 100,000; "
                    "memory 1,000,000)")
    ap.add_argument("--workloads", default=",".join([*CONTENDERS, "enqueue-postgres"]))
    ap.add_argument("--only", default="", help="comma-separated contender names")
    ap.add_argument("--idle-timeout", type=float, default=30.0)
    ap.add_argument("--slow-cap", type=int, default=20_000,
                    help="messages per run for the slowest peers (RQ, arq), whose 100k runs "
                         "would take ~5 min each; their rates are per message all the same")
    ap.add_argument("--peer-cap", type=int, default=0,
                    help="messages per run for every peer (0: no cap); their rates are per "
                         "message all the same")
    ap.add_argument("--out", default=str(HERE / "RESULTS-compare.md"))
    ap.add_argument("--no-install", action="store_true")
    # child modes
    ap.add_argument("--publish", default=None)
    ap.add_argument("--consume", default=None)
    ap.add_argument("--queue", default="")
    ap.add_argument("--result", default="")
    ap.add_argument("--workload", default="")
    ap.add_argument("--paced-publish", default=None)
    ap.add_argument("--rate", type=float, default=W4_RATE)
    ap.add_argument("--w4-seconds", type=float, default=20.0)
    return ap.parse_args()


def main(description: str) -> None:
    args = parse_args(description)
    if args.paced_publish:
        return paced_publish(args.workload, args.paced_publish, args.queue, args.n, args.rate)
    if args.publish:
        return publish(args.workload, args.publish, args.queue, args.n)
    if args.consume:
        return consume(args.workload, args.consume, args.queue, args.n, args.result,
                       args.idle_timeout)

    if not args.no_install:
        ensure_peers_venv()
    if args.quick and "--rounds" not in sys.argv:
        args.rounds = 1
    only = {s.strip() for s in args.only.split(",") if s.strip()}
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    load_before = loadavg()
    report = [f"# foxtive against its peers ({started})", "",
              f"Command: `python benches/compare.py {' '.join(sys.argv[1:])}`", "",
              f"Machine: {os.cpu_count()} cores, {os.uname().sysname} {os.uname().release}, "
              f"CPython {sys.version.split()[0]}; load average at start {load_before}.", ""]
    all_meds: dict[str, dict[str, float]] = {}
    for workload in [w.strip() for w in args.workloads.split(",") if w.strip()]:
        if workload == "enqueue-postgres":
            postgres.run_enqueue(args.rounds, only, report)
            continue
        run_workload(workload, args, only, report, all_meds)
    png = Path(args.out).with_suffix(".png")
    try:
        if all_meds:
            chart(all_meds, png)
            report += [f"![msg/s per contender]({png.name})", ""]
            print(f"wrote {png}")
    except (subprocess.CalledProcessError, OSError) as e:
        print(f"chart skipped: {e}", file=sys.stderr)
    Path(args.out).write_text("\n".join(report))
    print(f"\nwrote {args.out}")


def messages_for(workload: str, args: argparse.Namespace) -> int:
    """Messages per run: -n, or the workload's default (smaller with --quick)."""
    if args.n:
        return int(args.n)
    if workload == "w1-memory":
        return 100_000 if args.quick else 1_000_000
    if workload.startswith("w2"):
        return 5_000 if args.quick else 50_000
    if workload.startswith("w6"):
        return 10_000 if args.quick else 100_000
    if workload.startswith("w3"):
        return 10_000 if args.quick else 100_000
    if workload.startswith("w5"):
        return 2_000 if args.quick else 20_000
    if workload.startswith("w4"):
        return int(W4_RATE * (5 if args.quick else args.w4_seconds))
    if tasks.is_tasks(workload):
        return 10_000 if args.quick else tasks.N_DEFAULT
    return 10_000 if args.quick else 100_000


def run_workload(workload: str, args: argparse.Namespace, only: set[str], report: list[str],
                 all_meds: dict[str, dict[str, float]]) -> None:
    """Every round of every available contender; its section of the report
    (and its medians for the chart, except W4 / W6)."""
    contenders = [c for c in CONTENDERS[workload] if (not only or c[0] in only)
                  and available(workload, c[0], report)]
    n = messages_for(workload, args)
    runs: dict[str, list[dict[str, Any]]] = {c[0]: [] for c in contenders}
    settings = {c[0]: c[2] for c in contenders}
    print(f"\n== {workload}: {n:,} messages x {args.rounds} rounds "
          f"(load {loadavg()})", flush=True)
    counts = {c[0]: min(n, args.slow_cap)
              if workload.endswith(("redis", "sqlite", "postgres")) and c[0] in SLOW
              else min(n, args.peer_cap) if args.peer_cap and c[1] == PEER
              else n for c in contenders}
    for r in range(args.rounds):
        for name, kind, _ in contenders:
            res, pub = run_once(workload, name, kind, counts[name], args.idle_timeout)
            res["load"] = loadavg()
            runs[name].append(res)
            print(f"round {r + 1}: {name:16s} handled {res['handled_rate']:>11,.0f} msg/s"
                  f"  start->last {res['start_rate']:>10,.0f}  lost {res['lost']}"
                  f"  dup {res['dups']}  RSS {res['rss_mib']:.0f} MiB"
                  f"  CPU {res['cpu_s']:.1f} s  (publish {pub:.1f} s, load {res['load']})"
                  + (f"  p50 {res['p50_ms']:.2f} p99 {res['p99_ms']:.2f} "
                     f"max {res['max_ms']:.2f} ms" if "p50_ms" in res else ""),
                  flush=True)
    for name, c in counts.items():
        if c != n:
            settings[name] += f" ({c:,} messages per run: --slow-cap / --peer-cap)"
    if workload.startswith("w4"):
        lines = summarise_latency(runs, settings)
    elif workload.startswith("w6"):
        lines = summarise_w6(runs, settings)
    else:
        lines, med = summarise(workload, runs, settings)
        all_meds[workload] = med
    report += [f"## {workload}: {n:,} messages of ~{BODY_SIZE} B, {describe(workload)}, "
               f"median of {args.rounds}", "", *lines, "",
               f"Load average after: {loadavg()}.", ""]
    print("\n".join(lines), flush=True)


def run_once(workload: str, name: str, kind: str, n: int,
             idle: float) -> tuple[dict[str, Any], float]:
    """One contender's run on a fresh queue, and the seconds its pre-publish
    took. A run that lost messages is tried again (up to three times): a
    broker restarted by someone else, wait for it and redo."""
    queue = f"cmp-{name.split()[0]}-{uuid.uuid4().hex[:6]}"
    pub = 0.0
    for attempt in range(3):
        wait_for_brokers(workload)
        try:
            t = time.time()
            prepublish(workload, name, kind, queue, n)
            pub = time.time() - t
            res = run_contender(workload, name, kind, queue, n, idle)
        except (subprocess.SubprocessError, OSError, ValueError) as e:
            print(f"{name}: run failed: {e}", file=sys.stderr, flush=True)
            res = {"handled_rate": 0.0, "start_rate": 0.0, "lost": n,
                   "dups": 0, "rss_mib": 0.0, "cpu_s": 0.0, "ids_checked": True,
                   "failed": True}
        cleanup(workload, queue)
        if not res.get("lost") or attempt == 2:
            break
        print(f"{name}: {res['lost']} lost; did the broker go away? once more",
              file=sys.stderr, flush=True)
        queue = f"cmp-{name.split()[0]}-{uuid.uuid4().hex[:6]}"
    return res, pub
