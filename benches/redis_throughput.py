"""Redis Streams drain rate: foxtive against a pure-Rust ceiling and redis-py.

    python benches/redis_throughput.py [--messages 100000] [--body-size 100]
        [--batch-size 100] [--rounds 3] [--ceiling PATH] [--quiet 0.8]

Each round, for each contender, a fresh stream gets N pre-added entries of
``body-size`` bytes (one ``body`` field, added by redis-py, not timed) and a
consumer group at 0; then the contender drains it in its own process:

* ``ceiling``   — ``examples/redis_ceiling.rs``: redis-rs, XREADGROUP COUNT
  ``batch-size``, one pipelined XACK per batch. Build it first:
  ``cargo build --release -p foxtive-core --example redis_ceiling``.
* ``foxtive``   — a pool with a no-op ``async def`` handler over
  ``RedisStreamBackend(batch_size=batch-size, delete_on_ack=False)``.
* ``redis-py``  — XREADGROUP COUNT 500 + one pipelined XACK per batch.
* ``foxtive+del`` — foxtive with ``delete_on_ack=True`` (XACK + XDEL).

Timing covers connecting, draining and the last ack (foxtive: from
``run_until_idle`` to its return, the pool being stopped by the handler that
sees message N; every contender is checked to leave nothing pending). The
table gives the median of the rounds; the contenders run interleaved so
machine noise hits them alike. On a shared machine, ``--quiet F`` waits
(up to a minute) before each run until the CPUs were idle for a fraction
``F`` of the last second.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import uuid

URL = os.environ.get("FOXTIVE_REDIS_URL", "redis://127.0.0.1:6379/0")
CONTENDERS = ("ceiling", "foxtive", "redis-py", "foxtive+del")


def fill(stream: str, n: int, body_size: int) -> None:
    import redis

    r = redis.Redis.from_url(URL)
    r.delete(stream)
    body = b"x" * body_size
    pipe = r.pipeline(transaction=False)
    for i in range(n):
        pipe.xadd(stream, {"body": body})
        if i % 5000 == 4999:
            pipe.execute()
    pipe.execute()
    r.xgroup_create(stream, "g", id="0")
    assert r.xlen(stream) == n


def check_and_clean(stream: str, n: int, deleted: bool) -> None:
    import redis

    r = redis.Redis.from_url(URL)
    pending = r.xpending(stream, "g")["pending"]
    length = r.xlen(stream)
    r.delete(stream, f"{stream}:dlq", f"{stream}:delayed")
    assert pending == 0, f"{pending} entries left pending"
    assert length == (0 if deleted else n), f"stream length {length}"


def child_foxtive(stream: str, n: int, batch: int, delete: bool) -> dict[str, float]:
    import foxtive

    count = 0
    pool: foxtive.WorkerPool

    async def noop(message: foxtive.Message) -> None:
        nonlocal count
        count += 1
        if count == n:
            pool.shutdown()

    pool = foxtive.WorkerPoolBuilder("bench").add_worker(noop, id="noop").build()
    config = foxtive.RedisStreamConsumerConfig(stream_name=stream, group_name="g",
                                               batch_size=batch, delete_on_ack=delete)
    backend = foxtive.RedisStreamBackend(URL, config)
    t0 = time.perf_counter()
    pool.run_until_idle(backend, timeout=600)
    elapsed = time.perf_counter() - t0
    assert count == n, (count, n)
    return {"n": n, "seconds": elapsed, "rate": n / elapsed}


def child_redis_py(stream: str, n: int) -> dict[str, float]:
    import redis

    t0 = time.perf_counter()
    r = redis.Redis.from_url(URL)
    done = 0
    while done < n:
        reply = r.xreadgroup("g", "redis-py", {stream: ">"}, count=500, block=1000)
        if not reply:
            raise RuntimeError(f"stream ran dry after {done}")
        ids = [entry_id for entry_id, _fields in reply[0][1]]
        pipe = r.pipeline(transaction=False)
        pipe.xack(stream, "g", *ids)
        pipe.execute()
        done += len(ids)
    elapsed = time.perf_counter() - t0
    return {"n": done, "seconds": elapsed, "rate": done / elapsed}


def idle_fraction(interval: float = 1.0) -> float:
    def read() -> tuple[int, int]:
        with open("/proc/stat") as f:
            parts = [int(x) for x in f.readline().split()[1:]]
        return parts[3] + parts[4], sum(parts)

    i0, t0 = read()
    time.sleep(interval)
    i1, t1 = read()
    return (i1 - i0) / max(1, t1 - t0)


def wait_quiet(need: float, limit: float = 60.0) -> None:
    deadline = time.monotonic() + limit
    while idle_fraction() < need and time.monotonic() < deadline:
        pass


def run_contender(name: str, args: argparse.Namespace) -> dict[str, float]:
    stream = f"foxtive-bench:{name}:{uuid.uuid4().hex[:8]}"
    fill(stream, args.messages, args.body_size)
    if args.quiet:
        wait_quiet(args.quiet)
    deleted = name == "foxtive+del"
    try:
        if name == "ceiling":
            cmd = [args.ceiling, "--url", URL, "--stream", stream, "--group", "g",
                   "--count", str(args.batch_size), "--expect", str(args.messages)]
        else:
            cmd = [sys.executable, __file__, "--child", name, "--stream", stream,
                   "--messages", str(args.messages), "--batch-size", str(args.batch_size)]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"{name} failed ({done.returncode}):\n{done.stderr[-3000:]}")
        result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    finally:
        try:
            check_and_clean(stream, args.messages, deleted)
        except AssertionError as exc:
            raise SystemExit(f"{name}: {exc}") from exc
    return result


def main() -> None:
    target = os.environ.get("CARGO_TARGET_DIR", "target")
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=100_000)
    ap.add_argument("--body-size", type=int, default=100)
    ap.add_argument("--batch-size", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--ceiling", default=os.path.join(target, "release", "examples",
                                                      "redis_ceiling"))
    ap.add_argument("--quiet", type=float, default=0.0)
    ap.add_argument("--child")
    ap.add_argument("--stream")
    args = ap.parse_args()
    if args.child:
        if args.child == "redis-py":
            res = child_redis_py(args.stream, args.messages)
        else:
            res = child_foxtive(args.stream, args.messages, args.batch_size,
                                args.child == "foxtive+del")
        print(json.dumps(res))
        return
    if not os.path.exists(args.ceiling):
        raise SystemExit(f"build the ceiling first: cargo build --release -p foxtive-core "
                         f"--example redis_ceiling (looked for {args.ceiling})")
    rates: dict[str, list[float]] = {c: [] for c in CONTENDERS}
    for _ in range(args.rounds):
        for name in CONTENDERS:
            rates[name].append(run_contender(name, args)["rate"])
    med = {c: statistics.median(v) for c, v in rates.items()}
    print(f"{args.messages:,} entries of {args.body_size} bytes, batch {args.batch_size} "
          f"(redis-py: COUNT 500), median of {args.rounds} rounds")
    print(f"{'contender':12} {'entries/s':>12} {'all rounds':>30}")
    for c in CONTENDERS:
        runs = ", ".join(f"{x:,.0f}" for x in rates[c])
        print(f"{c:12} {med[c]:>12,.0f}   {runs}")
    print(f"foxtive / ceiling  = {med['foxtive'] / med['ceiling']:.3f}")
    print(f"foxtive / redis-py = {med['foxtive'] / med['redis-py']:.2f}")
    print(f"XDEL cost: foxtive+del / foxtive = {med['foxtive+del'] / med['foxtive']:.3f}")


if __name__ == "__main__":
    main()
