"""CPU per message of the engine -> Python hand-off, split by thread (the
Python thread against the ``foxtive-io`` threads), issue 15's W1 on NATS
and the same pool on the in-memory backend.

* ``nats``: the foxtive W1 child of ``compare.py`` (same pool, same harness
  handler), on a stream filled beforehand; each thread's CPU time is read
  from ``/proc/self/task/*/schedstat`` when the recorder ends the process
  (start-up and connect included).
* ``memory``: a pool over ``MemoryBackend`` holding ``n`` messages, with a
  handler that only keeps the body, run until idle; CPU counted from the
  run's start to its end, next to a plain Python loop awaiting the same
  handler over ``n`` plain objects (what any framework must spend at least).
  No broker: what is left is the engine, the lane and the Python side.

    maturin develop --release
    python benches/handoff_cpu.py [nats|memory|both] [-n 100000] [--rounds 3]

Figures are CPU seconds per 100,000 messages: CPU time moves much less with
the load of the machine than rates do.

``HANDOFF_FIRST_HIT_FILE=path``: the NATS child writes its pid there at its
first message, for ``perf record -p`` to attach once start-up is over.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))


def thread_cpu() -> dict[str, float]:
    """CPU seconds so far of each of this process's threads, summed by
    thread name ("python" is the main thread, the event loop's)."""
    out: dict[str, float] = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/comm") as f:
                name = f.read().strip()
            with open(f"/proc/self/task/{tid}/schedstat") as f:
                ns = int(f.read().split()[0])
            with open(f"/proc/self/task/{tid}/status") as f:
                switches = next(int(line.split()[1]) for line in f
                                if line.startswith("voluntary_ctxt_switches"))
        except (OSError, ValueError, IndexError):
            continue  # ended meanwhile
        if name.startswith("foxtive-io"):
            name = "foxtive-io"
        elif tid == str(os.getpid()):
            name = "python"
        elif name == "python":
            name = "python, other threads"  # the recorder's watcher (harness)
        out[name] = out.get(name, 0.0) + ns / 1e9
        # Times it went to sleep (waiting for work, a lock, the GIL): one
        # wake-up each; not CPU seconds, reported per 100k as the rest.
        out[f"{name}: sleeps"] = out.get(f"{name}: sleeps", 0.0) + switches
    return out


def delta(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {k: v - before.get(k, 0.0) for k, v in after.items()}


# ---------------------------------------------------------------- children
def child_nats(queue: str, n: int, result: str) -> None:
    from harness import jetstream, mode
    from harness.recorder import Recorder

    mode.set_mode("w1-nats")
    rec = Recorder(n, result, 30.0)

    # Counted from the first message handled (start-up, imports and
    # connect left out, as the rate is) to the end.
    at_first: dict[str, float] = {}
    hit = rec.hit

    def first_hit(i: int, sent: float = 0.0) -> None:
        at_first.update(thread_cpu())
        if ready := os.environ.get("HANDOFF_FIRST_HIT_FILE"):
            # For a profiler attaching once messages flow (see --help).
            Path(ready).write_text(str(os.getpid()))
        del rec.hit  # the class's method again
        hit(i, sent)
    rec.hit = first_hit  # type: ignore[method-assign]

    def dump_threads() -> None:
        with open(result + ".threads", "w") as f:
            json.dump(delta(thread_cpu(), at_first), f)
    rec.at_exit.append(dump_threads)
    jetstream.foxtive_consume(queue, rec, sync=False)


def child_memory(n: int, result: str, kind: str) -> None:
    from harness.bodies import body_for

    hits: list[bytes] = []
    append = hits.append

    async def handler(message: Any) -> None:
        append(message.body)

    bodies = [body_for(i) for i in range(n)]
    if kind == "loop":
        class Msg:
            __slots__ = ("body",)

            def __init__(self, body: bytes) -> None:
                self.body = body
        msgs = [Msg(b) for b in bodies]

        async def drive() -> None:
            for m in msgs:
                await handler(m)
        before, t0 = thread_cpu(), time.perf_counter()
        asyncio.run(drive())
    else:
        import foxtive

        backend = foxtive.MemoryBackend("bench")
        backend.publish_bulk(bodies)
        pool = foxtive.WorkerPoolBuilder("bench").add_worker(handler, id="noop").build()
        before, t0 = thread_cpu(), time.perf_counter()
        assert pool.run_until_idle(backend, timeout=600), "pool did not go idle"
    wall = time.perf_counter() - t0
    cpu = delta(thread_cpu(), before)
    assert len(hits) == n, f"{len(hits)} of {n} handled"
    with open(result, "w") as f:
        json.dump({"wall": wall, "threads": cpu}, f)


# ------------------------------------------------------------------ parent
def run_child(*args: str, timeout: float = 600) -> None:
    subprocess.run([sys.executable, __file__, "--child", *args], check=True, timeout=timeout)


def nats_round(n: int) -> dict[str, Any]:
    from harness import jetstream

    queue = f"handoff-{uuid.uuid4().hex[:8]}"
    asyncio.run(jetstream.raw_fill(queue, n))
    with tempfile.TemporaryDirectory() as tmp:
        result = str(Path(tmp) / "r.json")
        try:
            run_child("nats", "--queue", queue, "-n", str(n), "--result", result)
        finally:
            jetstream.cleanup(queue)
        with open(result) as f:
            got = json.load(f)
        with open(result + ".threads") as f:
            threads = json.load(f)
    assert got["lost"] == 0 and got["dups"] == 0, got
    rate = n / max(got["last"] - got["first"], 1e-9)
    return {"rate": rate, "threads": threads}


def memory_round(n: int, kind: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        result = str(Path(tmp) / "r.json")
        run_child("memory", "--kind", kind, "-n", str(n), "--result", result)
        with open(result) as f:
            got = json.load(f)
    return {"rate": n / got["wall"], "threads": got["threads"]}


def report(name: str, rounds: list[dict[str, Any]], n: int) -> None:
    k = 100_000 / n
    names = sorted({t for r in rounds for t in r["threads"]},
                   key=lambda t: (t != "python", t != "foxtive-io", t))
    totals = [sum(v for t, v in r["threads"].items() if "sleeps" not in t) * k
              for r in rounds]
    print(f"\n{name}: CPU s per 100k, median of {len(rounds)} (min-max)")
    print(f"| thread | {name} |")
    print("|---|---:|")
    for t in names:
        v = [r["threads"].get(t, 0.0) * k for r in rounds]
        if "sleeps" in t:
            print(f"| {t} | {statistics.median(v):,.0f} ({min(v):,.0f}-{max(v):,.0f}) |")
        else:
            print(f"| {t} | {statistics.median(v):.3f} ({min(v):.3f}-{max(v):.3f}) |")
    print(f"| **process** | **{statistics.median(totals):.3f}** "
          f"({min(totals):.3f}-{max(totals):.3f}) |")
    rates = [r["rate"] for r in rounds]
    print(f"| msg/s | {statistics.median(rates):,.0f} ({min(rates):,.0f}-{max(rates):,.0f}) |")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("what", nargs="?", default="both", choices=["nats", "memory", "both"])
    ap.add_argument("-n", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--child", default=None)
    ap.add_argument("--queue", default="")
    ap.add_argument("--result", default="")
    ap.add_argument("--kind", default="foxtive")
    args = ap.parse_args()
    if args.child == "nats":
        return child_nats(args.queue, args.n, args.result)
    if args.child == "memory":
        return child_memory(args.n, args.result, args.kind)
    print(f"load at start: {os.getloadavg()[0]:.2f}", flush=True)
    got: dict[str, list[dict[str, Any]]] = {}
    for r in range(args.rounds):
        if args.what in ("memory", "both"):
            for kind in ("foxtive", "loop"):
                got.setdefault(f"memory {kind}", []).append(memory_round(args.n, kind))
        if args.what in ("nats", "both"):
            got.setdefault("nats foxtive", []).append(nats_round(args.n))
        print(f"round {r + 1} done (load {os.getloadavg()[0]:.2f})", flush=True)
    for name, rounds in got.items():
        report(name, rounds, args.n)
    print(f"\nload at end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
