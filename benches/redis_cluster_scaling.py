"""Redis Cluster: throughput with 1, 2 and 4 worker processes on a 4-partition
queue, and failover time (SIGKILL a master -> first message processed again).

    python benches/redis_cluster_scaling.py --messages 40000 --rounds 5

Starts its own 3-master + 3-replica cluster on 127.0.0.1:7000-7005 (the one
of tests/cluster), in a temporary directory, and kills it at the end.

Throughput: the queue is filled first (publishing is not timed), then N worker
processes (each one pool, no-op async handler) drain it; the rate is taken
over the middle 80% of the drain (90% left -> 10% left, from XLEN: acked
entries are deleted), leaving out process start-up and idle detection. CPU:
user+system seconds of the workers and of the six redis-server processes
over that window, from /proc (the same figures ``pidstat`` prints), divided
by the wall time: "busy cores"; "machine cores" is the same for the whole
machine (/proc/stat), other people's work included. On a 2-core machine, once workers + Redis use ~2
cores the cores are the limit, not foxtive.

Failover: a worker process consumes the queue (partitions=4); the bench
publishes one message every 10 ms to the partition whose master it then
kills (a partition_key chosen for it), and measures from the SIGKILL to
the first message published after the kill that the worker reports
processed. Median of ``--rounds``; the killed node is restarted (it rejoins
as a replica) between rounds.
"""

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
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import foxtive  # noqa: E402
from tests.cluster.redis_cluster import RedisClusterProcesses, wait_until  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICKS


def system_busy() -> float:
    """Busy jiffies of the whole machine (all processes, every core)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]
    return (sum(fields[:8]) - idle) / TICKS


def worker(url: str, queue: str, mode: str) -> None:
    """A worker process: drain (``idle``) or consume and print (``print``)."""
    backend = foxtive.backend_from_url(url, queue, group_name="g", partitions=4,
                                       batch_size=200, claim_idle=2.0)

    if mode == "idle":
        async def noop(m: foxtive.Message) -> None:
            return None

        pool = foxtive.WorkerPoolBuilder("w").add_worker(noop, id="h").build()
        ok = pool.run_until_idle(backend, timeout=600)
        print("idle" if ok else "timeout", flush=True)
        return

    async def report(m: foxtive.Message) -> None:
        print(f"done {m.body.decode()} {time.time():.6f}", flush=True)

    pool = foxtive.WorkerPoolBuilder("w").add_worker(report, id="h").build()
    pool.run(backend)


def spawn(url: str, queue: str, mode: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, __file__, "--worker", url, queue, mode],
                            stdout=subprocess.PIPE, text=True, cwd=ROOT)


def fill(url: str, queue: str, n: int) -> None:
    backend = foxtive.backend_from_url(url, queue, group_name="g", partitions=4)

    async def run() -> None:
        body = b"x" * 64
        for i in range(0, n, 2000):
            await backend.publish_many([body] * min(2000, n - i))

    asyncio.run(run())


def throughput(cluster: RedisClusterProcesses, n: int, procs: int) -> dict[str, Any]:
    queue = f"bench-{uuid.uuid4().hex[:8]}"
    fill(cluster.url, queue, n)
    keys = foxtive.backend_from_url(cluster.url, queue, group_name="g",
                                    partitions=4).stream_keys
    judge = cluster.client()
    redis_pids = [p.pid for p in cluster.procs.values() if p.poll() is None]
    workers = [spawn(cluster.url, queue, "idle") for _ in range(procs)]

    def cpu() -> tuple[float, float, float]:
        return (sum(cpu_seconds(w.pid) for w in workers),
                sum(cpu_seconds(p) for p in redis_pids), system_busy())

    # The rate over the middle of the drain (90% left -> 10% left): process
    # start-up and idle detection are left out. With delete_on_ack, XLEN is
    # what is left.
    marks: dict[str, tuple[float, float, float, float]] = {}
    while any(w.poll() is None for w in workers) and "end" not in marks:
        left = sum(judge.xlen(k) for k in keys)
        if "start" not in marks and left <= 0.9 * n:
            marks["start"] = (time.monotonic(), *cpu())
        if "start" in marks and left <= 0.1 * n:
            marks["end"] = (time.monotonic(), *cpu())
        time.sleep(0.02)
    for w in workers:
        w.wait(600)
    outs = [w.stdout.read().strip() if w.stdout else "" for w in workers]
    (t0, w0, r0, s0), (t1, w1, r1, s1) = marks["start"], marks["end"]
    elapsed = t1 - t0
    left = sum(judge.xlen(k) for k in keys)
    return {"procs": procs, "rate": 0.8 * n / elapsed, "elapsed": elapsed, "outs": outs,
            "worker_cpu": (w1 - w0) / elapsed, "redis_cpu": (r1 - r0) / elapsed,
            "machine_cpu": (s1 - s0) / elapsed,
            "left": left}


def failover_once(cluster: RedisClusterProcesses) -> float:
    queue = f"fail-{uuid.uuid4().hex[:8]}"
    # No wait_replicas here: the killed master's replica, once promoted, has
    # no replica of its own until the killed node rejoins.
    publisher = foxtive.backend_from_url(cluster.url, queue, group_name="g", partitions=4)
    target = publisher.stream_keys[0]
    victim = cluster.master_of_key(target)
    # A partition key that lands on partition 0 (the one whose master dies).
    key = next(k for k in (f"k{i}" for i in range(10_000))
               if int(cluster.client().keyslot(k)) % 4 == 0)
    proc = spawn(cluster.url, queue, "print")
    assert proc.stdout is not None
    done_at: dict[str, float] = {}

    import threading

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            parts = line.split()
            if len(parts) == 3 and parts[0] == "done":
                done_at[parts[1]] = float(parts[2])

    reader = threading.Thread(target=read, daemon=True)
    reader.start()

    async def run() -> float:
        i = 0

        give_up = time.monotonic() + 120

        async def send() -> str:
            nonlocal i
            i += 1
            body = f"m{i}"
            while True:
                if time.monotonic() > give_up:
                    raise AssertionError("no publish went through for 120 s")
                try:
                    await publisher.publish(body.encode(), headers={"partition_key": key})
                    return body
                except foxtive.FoxtiveError:
                    await asyncio.sleep(0.01)

        first = await send()
        await asyncio.to_thread(wait_until, lambda: first in done_at, 30, "the worker to start")
        killed = time.time()
        cluster.kill(victim)
        after: list[str] = []
        while time.monotonic() < give_up:
            after.append(await send())
            hits = [done_at[b] for b in after if b in done_at]
            if hits:
                return min(hits) - killed
            await asyncio.sleep(0.01)
        raise AssertionError("nothing processed within 120 s of the kill")

    try:
        took = asyncio.run(run())
    finally:
        proc.kill()
        proc.wait(30)
    cluster.restart(victim)
    return took


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(sys.argv[2], sys.argv[3], sys.argv[4])
        return
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=40_000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--procs", default="1,2,4")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cluster = RedisClusterProcesses(Path(tmp))
        try:
            cluster.start()
            print(f"uptime: {uptime()}")
            base = None
            print(f"{args.messages:,} messages, 4 partitions, 3 masters + 3 replicas")
            print("procs      msg/s   ratio  worker cores  redis cores  machine cores  left")
            for procs in (int(p) for p in args.procs.split(",")):
                r = throughput(cluster, args.messages, procs)
                base = base or r["rate"]
                print(f"{procs:5d} {r['rate']:10,.0f} {r['rate'] / base:7.2f} "
                      f"{r['worker_cpu']:13.2f} {r['redis_cpu']:12.2f} {r['machine_cpu']:14.2f} "
                      f"{r['left']:5d}  {r['outs']}")
            times = []
            for _ in range(args.rounds):
                times.append(failover_once(cluster))
                print(f"failover: {times[-1]:.2f} s")
            print(f"failover median of {len(times)}: {statistics.median(times):.2f} s "
                  f"(min {min(times):.2f}, max {max(times):.2f})")
            print(f"uptime: {uptime()}")
        finally:
            cluster.stop()


if __name__ == "__main__":
    main()
