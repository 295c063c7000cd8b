"""Wake-up latency on PostgreSQL (issue 13): how long an idle worker takes to
start a job after the enqueueing transaction commits.

    python benches/postgres_wakeup.py [--samples 20] [--poll-interval 30]

A worker process (``PostgresBackend`` with ``poll_interval`` 30 s, so its
safety-net poll never fires during a sample) sits idle on a fresh schema.
This process then, ``--samples`` times: waits 0.2-0.6 s (random, so samples
do not line up with the pool's 0.5 s receive cycle), inserts one job with
``publish(..., transaction=conn)`` through a psycopg 3 connection and
commits. The worker writes ``time.time()`` when its handler starts; the
latency is that minus the time just before ``COMMIT`` was sent (commit round
trip included). Only the NOTIFY sent at commit can wake the worker sooner
than its next receive cycle (the pool asks the backend again every 0.5 s), so
a median far below 250 ms is NOTIFY at work. Prints the figures and one JSON
line. The schema is dropped afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from pathlib import Path

PG_URL = os.environ.get("PG_URL", "postgresql://postgres@127.0.0.1:5432/test")

WORKER = textwrap.dedent(
    """
    import os, sys, time
    import foxtive

    url, schema, out, poll = sys.argv[1:5]
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_APPEND)

    async def handle(message):
        os.write(fd, f"start {message.body.decode()} {time.time()!r}\\n".encode())

    backend = foxtive.PostgresBackend(url, "wake", schema=schema, poll_interval=float(poll))
    pool = foxtive.WorkerPoolBuilder("pg-wake").add_worker(handle, id="h").build()
    os.write(fd, b"ready - 0\\n")
    pool.run(backend)
    """
)


def starts(path: Path) -> dict[str, float]:
    out = {}
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == "start":
            out[parts[1]] = float(parts[2])
    return out


def wait_line(path: Path, key: str, proc: subprocess.Popen[str], timeout: float) -> float:
    deadline = time.monotonic() + timeout
    while True:
        got = starts(path).get(key)
        if got is not None:
            return got
        if proc.poll() is not None:
            raise SystemExit(f"the worker died: {proc.stderr.read() if proc.stderr else ''}")
        if time.monotonic() > deadline:
            raise SystemExit(f"job {key} did not start within {timeout}s")
        time.sleep(0.001)


async def measure(samples: int, poll: float, tmp: Path) -> list[float]:
    import psycopg

    import foxtive

    schema = f"fxbench_wake_{uuid.uuid4().hex[:8]}"
    backend = foxtive.PostgresBackend(PG_URL, "wake", schema=schema)
    await backend.ensure_schema()
    out = tmp / "worker.log"
    out.touch()
    script = tmp / "wake_worker.py"
    script.write_text(WORKER)
    proc = subprocess.Popen([sys.executable, str(script), PG_URL, schema, str(out), str(poll)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    latencies = []
    try:
        while "ready" not in out.read_text():
            if proc.poll() is not None:
                raise SystemExit(proc.stderr.read() if proc.stderr else "worker failed")
            time.sleep(0.01)
        async with await psycopg.AsyncConnection.connect(PG_URL) as conn:
            for i in range(samples + 1):  # the first one warms the worker up
                await asyncio.sleep(random.uniform(0.2, 0.6))  # the worker is idle
                async with conn.transaction():
                    await backend.publish(f"w{i}".encode(), transaction=conn)
                    sent = time.time()  # COMMIT is sent as the block ends
                started = wait_line(out, f"w{i}", proc, 60.0)
                if i:
                    latencies.append(started - sent)
    finally:
        proc.terminate()
        proc.wait(60)
        with psycopg.connect(PG_URL, autocommit=True) as admin:
            admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    return latencies


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--samples", type=int, default=20)
    ap.add_argument("--poll-interval", type=float, default=30.0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        lat = asyncio.run(measure(args.samples, args.poll_interval, Path(tmp)))
    ms = sorted(x * 1000 for x in lat)
    res = {"samples": len(ms), "median_ms": statistics.median(ms),
           "p90_ms": ms[int(len(ms) * 0.9) - 1], "min_ms": ms[0], "max_ms": ms[-1],
           "poll_interval_s": args.poll_interval, "load": os.getloadavg()[0]}
    print("latencies ms:", " ".join(f"{x:.1f}" for x in ms))
    print(f"median {res['median_ms']:.1f} ms, p90 {res['p90_ms']:.1f} ms, "
          f"max {res['max_ms']:.1f} ms over {len(ms)} samples (target: median <= 50 ms)")
    print(json.dumps(res))


if __name__ == "__main__":
    main()
