"""Memory-backend throughput: foxtive against a plain Python loop.

    python benches/memory_throughput.py [--messages N] [--body-size B]

For each handler kind (sync ``def``, ``async def``) it reports the rate of a
plain Python loop calling the same no-op handler N times (the floor: no
queue, no settlement), the rate of a foxtive pool draining N pre-published
messages (publish excluded from the timing), the ratio, and the peak RSS
over the interpreter's baseline. Each contender runs in its own fresh
process so that peak RSS is its own.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import subprocess
import sys
import time


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_one(kind: str, contender: str, n: int, body_size: int) -> dict[str, float]:
    import foxtive

    baseline = rss_mib()
    count = 0

    def sync_handler(message: foxtive.Message) -> None:
        nonlocal count
        count += 1

    async def async_handler(message: foxtive.Message) -> None:
        nonlocal count
        count += 1

    handler = sync_handler if kind == "sync" else async_handler
    if contender == "loop":
        body = b"x" * body_size
        t0 = time.perf_counter()
        if kind == "sync":
            for _ in range(n):
                sync_handler(body)  # type: ignore[arg-type]
        else:
            async def drive() -> None:
                for _ in range(n):
                    await async_handler(body)  # type: ignore[arg-type]
            asyncio.run(drive())
        elapsed = time.perf_counter() - t0
    else:
        backend = foxtive.MemoryBackend("bench")
        chunk = 100_000
        body = b"x" * body_size
        for start in range(0, n, chunk):
            backend.publish_bulk([body] * min(chunk, n - start))
        pool = (
            foxtive.WorkerPoolBuilder("bench")
            .add_worker(handler, id="noop")
            .build()
        )
        t0 = time.perf_counter()
        idle = pool.run_until_idle(backend, timeout=600)
        elapsed = time.perf_counter() - t0
        assert idle and count == n, (idle, count, n)
        assert pool.stats()["processed"] == n
    return {
        "rate": n / elapsed,
        "seconds": elapsed,
        "rss_over_baseline_mib": peak_mib() - baseline,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=1_000_000)
    ap.add_argument("--body-size", type=int, default=16)
    ap.add_argument("--child", nargs=2, metavar=("KIND", "CONTENDER"))
    args = ap.parse_args()
    if args.child:
        print(json.dumps(run_one(args.child[0], args.child[1], args.messages, args.body_size)))
        return
    print(f"{args.messages:,} messages, {args.body_size}-byte bodies, no-op handler")
    print(f"{'handler':8} {'loop msg/s':>14} {'foxtive msg/s':>14} {'ratio':>7} "
          f"{'peak RSS +MiB':>14}")
    for kind in ("sync", "async"):
        res = {}
        for contender in ("loop", "foxtive"):
            out = subprocess.run(
                [sys.executable, __file__, "--messages", str(args.messages),
                 "--body-size", str(args.body_size), "--child", kind, contender],
                check=True, capture_output=True, text=True,
            ).stdout
            res[contender] = json.loads(out.strip().splitlines()[-1])
        ratio = res["foxtive"]["rate"] / res["loop"]["rate"]
        print(f"{kind:8} {res['loop']['rate']:>14,.0f} {res['foxtive']['rate']:>14,.0f} "
              f"{ratio:>7.3f} {res['foxtive']['rss_over_baseline_mib']:>14.1f}")


if __name__ == "__main__":
    main()
