"""Schedule metrics on the pool's Prometheus ``/metrics`` (the endpoint
``HealthServer`` serves, and ``foxtive run`` with a health port), with app
and schedule labels, and ``/ready`` unaffected by leadership: 200 while this
process follows another leader and 200 once it has taken the lease over.

On the real Redis: another ``foxtive run`` process of the app leads first;
it is SIGKILLed and this process takes over (lease 2 s). And ``foxtive run
APP --queues Q --health-port P`` shows the schedule series on its /metrics.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable

import pytest
from prometheus_client.parser import text_string_to_metric_families

import foxtive
from foxtive import schedules

from .redis_support import REDIS_URL
from .test_schedules_brokers import LEASE, ROOT, Cluster, RedisSide, wait_for


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample by (name, sorted labels); parsing fails on a malformed text."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


async def until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await asyncio.to_thread(check):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.2)


@pytest.mark.timeout(120)
async def test_metrics_and_ready_as_follower_then_leader(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(schedules.LEASE_ENV, LEASE)
    side = RedisSide()
    cluster = Cluster(side.url, side.app, side.queue)
    cluster.start(1)
    app = foxtive.App(side.app, broker=REDIS_URL)
    work = f"{side.queue}-work"

    @app.task(queue=work, name="schedules.tick")
    def tick() -> None: ...

    app.schedule(tick, every=1, name="per-second", queue=side.queue)
    run: asyncio.Future[None] | None = None
    try:
        await asyncio.to_thread(wait_for, side.read, lambda t: len(t) >= 1, 30,
                                "the other process's first tick")
        pool = app.pool(work)
        with foxtive.HealthServer(pool, port=0) as server:
            run = asyncio.ensure_future(app._run_scheduled([pool], handle_signals=False,
                                                           scheduler=True))
            app_l = (("app", side.app),)
            per_l = (("app", side.app), ("schedule", "per-second"))

            def metric(name: str, labels: tuple[tuple[str, str], ...]) -> float | None:
                status, text = get(f"{server.url}/metrics")
                assert status == 200
                return samples(text).get((name, labels))

            # A follower: its series are there, its gauge is 0, and it is ready.
            await until(lambda: metric("foxtive_schedule_leader", app_l) == 0.0
                        and get(f"{server.url}/ready")[0] == 200, 30, "a ready follower")
            assert metric("foxtive_schedule_ticks_enqueued_total", per_l) == 0.0
            assert app.scheduler is not None and not app.scheduler.leader
            # The leader dies: this process takes over and enqueues ticks.
            cluster.kill_all()
            await until(lambda: (metric("foxtive_schedule_ticks_enqueued_total", per_l)
                                 or 0) >= 2, 30, "ticks enqueued by this process")
            status, text = get(f"{server.url}/metrics")
            got = samples(text)
            assert got[("foxtive_schedule_leader", app_l)] == 1.0
            assert got[("foxtive_schedule_leader_changes_total", app_l)] >= 1.0
            assert ("foxtive_schedule_ticks_skipped_total", per_l) in got
            # The pool's own series are on the same page.
            assert any(name.startswith("foxtive_worker_") for name, _ in got)
            status, body = get(f"{server.url}/ready")
            assert status == 200, body
            # What /metrics counts is what reached the broker from this pid.
            mine = [i for i, _ in side.read()]
            assert len(mine) == len(set(mine))
            assert (await schedules.describe(app))["leader"]["pid"] == os.getpid()
            app.shutdown()
            await asyncio.wait_for(run, 60)
            run = None
            # The scheduler stopped: its series leave /metrics.
            status, text = get(f"{server.url}/metrics")
            assert "foxtive_schedule_leader" not in text
    finally:
        if run is not None:
            app.shutdown()
            await asyncio.wait_for(run, 60)
        cluster.kill_all()
        await app.aclose()
        side.close()


@pytest.mark.timeout(120)
def test_foxtive_run_health_port_shows_the_schedule_metrics() -> None:
    side = RedisSide()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**Cluster(side.url, side.app, side.queue).env}
    proc = subprocess.Popen(
        [sys.executable, "-m", "foxtive", "run", "tests.schedules_app:app",
         "--queues", f"{side.queue}-work", "--health-port", str(port)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    per = ("foxtive_schedule_ticks_enqueued_total",
           (("app", side.app), ("schedule", "per-second")))
    try:
        wait_for(side.read, lambda t: len(t) >= 2, 30, "two ticks")

        def enqueued() -> float:
            try:
                status, text = get(f"{url}/metrics")
            except OSError:  # not listening yet
                return 0.0
            return samples(text).get(per, 0.0) if status == 200 else 0.0

        deadline = time.monotonic() + 30
        while enqueued() < 2:
            assert time.monotonic() < deadline, "the schedule series never showed"
            time.sleep(0.2)
        status, text = get(f"{url}/metrics")
        assert status == 200
        got = samples(text)
        assert got[("foxtive_schedule_leader", (("app", side.app),))] == 1.0
        # As many as reached Redis from this, the only scheduler (read after
        # the metrics: ticks go on in between).
        assert got[per] <= len(side.read())
        assert get(f"{url}/ready")[0] == 200
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=30)
        side.close()
