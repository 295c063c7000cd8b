"""What a dashboard refreshed every second costs a busy pool.

    python benches/dashboard_overhead.py [--messages N] [--rounds R]

Each round runs two fresh processes, alternating which goes first: a pool
draining N pre-published messages (async no-op handler, memory backend) with
``HealthServer(pool, dashboard=True)`` while a thread loads the whole page
every second (``/``, its script and style, ``/api/info``, ``/api/queues``,
``/api/pools``, ``/api/dead-letters``: what a browser refresh asks for), and
the same pool with a plain ``HealthServer`` polled on ``/health`` every
second. Reported: messages a second of each, and the ratio.
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import subprocess
import sys
import threading
import time

PAGE = ["/", "/static/app.js", "/static/style.css", "/api/info", "/api/queues",
        "/api/pools", "/api/schedules", "/api/dead-letters"]


def child(mode: str, n: int) -> None:
    import foxtive

    memory = foxtive.MemoryBackend("bench-dash")
    memory.publish_many_sync([b"x" * 16] * n)

    async def noop(m: foxtive.Message) -> None:
        pass

    pool = (foxtive.WorkerPoolBuilder("bench").add_worker(noop, id="w")
            .with_backend(memory).build())
    server = foxtive.HealthServer(pool, port=0, dashboard=(mode == "dashboard")).start()
    paths = PAGE if mode == "dashboard" else ["/health"]
    stop = threading.Event()
    fetched = [0]

    def poll() -> None:
        while not stop.wait(1.0):
            conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
            for path in paths:
                conn.request("GET", path)
                conn.getresponse().read()
                fetched[0] += 1
            conn.close()

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    started = time.perf_counter()
    assert pool.run_until_idle(timeout=600)
    elapsed = time.perf_counter() - started
    stop.set()
    poller.join()
    server.stop()
    print(json.dumps({"mode": mode, "rate": n / elapsed, "requests": fetched[0]}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=1_000_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--child", default=None)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.messages)
        return
    rates: dict[str, list[float]] = {"dashboard": [], "health only": []}
    for r in range(args.rounds):
        order = ["dashboard", "health only"] if r % 2 == 0 else ["health only", "dashboard"]
        for mode in order:
            out = subprocess.run([sys.executable, __file__, "--child", mode,
                                  "--messages", str(args.messages)],
                                 capture_output=True, text=True, check=True)
            result = json.loads(out.stdout.strip().splitlines()[-1])
            rates[mode].append(result["rate"])
            print(f"round {r + 1} {mode:12} {result['rate']:>10,.0f} msg/s "
                  f"({result['requests']} requests served)")
    a, b = statistics.median(rates["dashboard"]), statistics.median(rates["health only"])
    print(f"median: dashboard {a:,.0f} msg/s, health only {b:,.0f} msg/s, "
          f"ratio {a / b:.3f}")


if __name__ == "__main__":
    main()
