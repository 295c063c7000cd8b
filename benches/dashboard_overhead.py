"""What a dashboard refreshed every second costs a busy pool.

    python benches/dashboard_overhead.py [--messages N] [--rounds R]

Each round runs two fresh processes, alternating which goes first: a pool
draining N pre-published messages (async no-op handler, memory backend) with
``HealthServer(pool, dashboard=True)`` while a thread loads the whole page
every second (``/``, its script and style, ``/api/info``, ``/api/queues``,
``/api/pools``, ``/api/dead-letters``: what a browser refresh asks for), and
the same pool with a plain ``HealthServer`` polled on ``/health`` every
second. Reported: messages a second of each, and the ratio.

    python benches/dashboard_overhead.py --cpu [--loads K]

The same cost as CPU time, which a busy shared machine disturbs far less
than a throughput ratio: a child process runs a pool and
``HealthServer(pool, dashboard=True)``; this process (the "browser") loads
the whole page K times and reads the child's CPU time from /proc before and
after, minus what the child spends idle over as long. Reported: CPU
milliseconds per page refresh, and that as a share of one core at one
refresh a second (the most a refresh a second can take from a pool).
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


def serve(dashboard: bool) -> None:
    """The --cpu child: a running pool with (or without) the dashboard, until
    stdin closes."""
    import foxtive

    async def noop(m: foxtive.Message) -> None:
        pass

    pool = (foxtive.WorkerPoolBuilder("bench").add_worker(noop, id="w")
            .with_backend(foxtive.MemoryBackend("bench-dash-cpu")).build())
    runner = threading.Thread(target=pool.run, daemon=True)
    runner.start()
    server = foxtive.HealthServer(pool, port=0, dashboard=dashboard).start()
    print(server.port, flush=True)
    sys.stdin.read()
    server.stop()
    pool.shutdown()
    runner.join(timeout=30)


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    import os
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def idle_cpu_rate(mode: str, seconds: float = 10.0) -> float:
    """CPU seconds a second of an idle child (pool running, nobody asking)."""
    child = subprocess.Popen([sys.executable, __file__, "--child", mode],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        child.stdout.readline()
        time.sleep(2.0)
        start, t0 = cpu_seconds(child.pid), time.perf_counter()
        time.sleep(seconds)
        return (cpu_seconds(child.pid) - start) / (time.perf_counter() - t0)
    finally:
        if child.stdin is not None:
            child.stdin.close()
        child.wait(timeout=60)


def cpu_cost(loads: int) -> None:
    plain = idle_cpu_rate("serve-plain")
    with_dashboard = idle_cpu_rate("serve")
    print(f"idle child: {plain * 1000:.1f} ms CPU/s with a plain HealthServer, "
          f"{with_dashboard * 1000:.1f} ms CPU/s with the dashboard (its sampler)")
    child = subprocess.Popen([sys.executable, __file__, "--child", "serve"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdin is not None
        port = int(child.stdout.readline())

        def refresh() -> None:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            for path in PAGE:
                conn.request("GET", path)
                response = conn.getresponse()
                response.read()
                assert response.status == 200, (path, response.status)
            conn.close()

        for _ in range(3):  # warm: first imports, static files read once
            refresh()
        idle_from, t0 = cpu_seconds(child.pid), time.perf_counter()
        time.sleep(5.0)
        idle_rate = (cpu_seconds(child.pid) - idle_from) / (time.perf_counter() - t0)
        busy_from, t1 = cpu_seconds(child.pid), time.perf_counter()
        for i in range(loads):  # 4 a second: under the dashboard's request-rate bound
            refresh()
            time.sleep(max(0.0, t1 + (i + 1) * 0.25 - time.perf_counter()))
        elapsed = time.perf_counter() - t1
        spent = cpu_seconds(child.pid) - busy_from - idle_rate * elapsed
        per = spent / loads
        print(f"idle child: {idle_rate * 1000:.1f} ms CPU/s; {loads} page refreshes "
              f"({len(PAGE)} requests each) in {elapsed:.2f} s")
        standing = max(0.0, with_dashboard - plain)
        print(f"CPU per refresh: {per * 1000:.2f} ms = {per * 100:.2f} % of one core "
              f"at one refresh a second; with the sampler's {standing * 1000:.1f} ms/s, "
              f"{(per + standing) * 100:.2f} % of one core in all")
    finally:
        if child.stdin is not None:
            child.stdin.close()
        child.wait(timeout=60)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cpu", action="store_true", help="measure CPU per refresh instead")
    ap.add_argument("--loads", type=int, default=80)
    ap.add_argument("--messages", type=int, default=1_000_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--child", default=None)
    args = ap.parse_args()
    if args.child in ("serve", "serve-plain"):
        serve(dashboard=args.child == "serve")
        return
    if args.child:
        child(args.child, args.messages)
        return
    if args.cpu:
        cpu_cost(args.loads)
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
