"""W5, CPU-bound: ``foxtive run benches/w5_app.py:pool --processes 1|2``, a
sync handler burning ~1 ms of pure Python per message (``W5_K`` iterations,
calibrated once per run on this machine), counted per process through a
Redis hash rather than by a recorder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from harness.accounting import cpu_seconds
from harness.config import HERE, REDIS_URL


def calibrate_k(target_s: float = 0.001) -> int:
    sys.path.insert(0, str(HERE))
    from w5_app import burn

    # The fastest of several runs: one run is at the mercy of whatever else
    # the machine does at that moment, and a wrong k skews every W5 figure.
    k = 20_000
    best = float("inf")
    for _ in range(7):
        t = time.perf_counter()
        burn(k)
        best = min(best, time.perf_counter() - t)
    return max(1000, int(k * target_s / best))


W5_K = 0  # iterations of burn() per message, once calibrate_k() ran


def run_w5(workload: str, name: str, queue: str, n: int, idle: float) -> dict[str, Any]:
    import signal

    import redis

    global W5_K
    if not W5_K:
        W5_K = calibrate_k()
    processes = 2 if "2" in name else 1
    key = f"w5-{queue}"
    r = redis.Redis.from_url(REDIS_URL)
    env = dict(os.environ, W5_QUEUE=queue, W5_K=str(W5_K), W5_KEY=key,
               W5_BROKER=workload.split("-", 1)[1],
               PYTHONPATH=str(HERE) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    foxtive_cli = str(Path(sys.executable).parent / "foxtive")
    spawn = time.time()
    proc = subprocess.Popen([foxtive_cli, "run", "w5_app:pool", "--processes", str(processes)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    total, progress, last_total = 0, time.monotonic(), -1
    vals: list[list[float]] = []
    while total < n and time.monotonic() - progress < idle:
        time.sleep(0.1)
        vals = [json.loads(v) for v in r.hgetall(key).values()]
        total = int(sum(v[0] for v in vals))
        if total != last_total:
            progress, last_total = time.monotonic(), total
    os.killpg(proc.pid, signal.SIGTERM)
    _, _, ru = os.wait4(proc.pid, 0)
    r.delete(key)
    first = min((v[1] for v in vals if v[0]), default=0.0)
    last = max((v[2] for v in vals), default=0.0)
    return {"rss_mib": ru.ru_maxrss / 1024, "cpu_s": cpu_seconds(ru),
            "exit": proc.returncode, "handled_rate": total / max(last - first, 1e-9),
            "start_rate": total / max(last - spawn, 1e-9), "lost": max(0, n - total),
            "dups": max(0, total - n), "ids_checked": False}
