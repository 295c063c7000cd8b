"""Schedules in one process: registering (and the errors), the next runs
across DST, a per-second schedule run by ``app.run_async`` on the memory and
SQLite brokers, and ``foxtive schedules`` listing the leader and last tick."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import foxtive
from foxtive import _core, schedules

ROOT = Path(__file__).resolve().parent.parent


def test_registering_checks_its_arguments() -> None:
    app = foxtive.App("sched-args", broker="memory://")

    @app.task
    def build(report_id: int) -> None: ...

    with pytest.raises(foxtive.ConfigError, match="exactly one of"):
        app.schedule(build, args=(1,))
    with pytest.raises(foxtive.ConfigError, match="exactly one of"):
        app.schedule(build, cron="* * * * *", every=5, args=(1,))
    with pytest.raises(foxtive.ConfigError, match="cron"):
        app.schedule(build, cron="61 * * * *", args=(1,))
    with pytest.raises(foxtive.ConfigError, match="tz"):
        app.schedule(build, cron="0 9 * * MON", tz="Mars/Olympus", args=(1,))
    with pytest.raises(foxtive.ConfigError, match="catch_up"):
        app.schedule(build, every=5, catch_up="some", args=(1,))
    with pytest.raises(foxtive.ConfigError, match="whole number of seconds"):
        app.schedule(build, every=1.5, args=(1,))
    with pytest.raises(foxtive.ConfigError, match="cannot be called"):
        app.schedule(build, every=5)
    with pytest.raises(foxtive.ConfigError, match="exactly one of"):
        app.periodic()
    s = app.schedule(build, cron="0 9 * * MON", tz="Europe/Berlin", args=(7,),
                     name="weekly-report")
    assert app.schedules == {"weekly-report": s}
    assert (s.queue, s.tz, s.catch_up, s.args) == ("default", "Europe/Berlin", "latest", (7,))
    with pytest.raises(foxtive.ConfigError, match="already registered"):
        app.schedule(build, every=dt.timedelta(minutes=10), args=(1,), name="weekly-report")
    d = app.schedule(build, every=dt.timedelta(minutes=10), args=(1,), name="digest")
    assert d.every == 600.0


def test_periodic_registers_a_task_named_like_the_function() -> None:
    app = foxtive.App("sched-periodic", broker="memory://")

    @app.periodic(cron="*/5 * * * *")
    async def purge_sessions() -> None: ...

    name = f"{__name__}.test_periodic_registers_a_task_named_like_the_function.<locals>." \
           "purge_sessions"
    assert isinstance(purge_sessions, foxtive.tasks.Task)
    assert list(app.schedules) == [name]
    assert app.schedules[name].task is purge_sessions
    runs = app.schedules[name].next_runs(3, after=dt.datetime(2026, 1, 1, 0, 1,
                                                              tzinfo=dt.UTC).timestamp())
    assert [r.minute for r in runs] == [5, 10, 15]


def test_next_runs_across_dst_from_python() -> None:
    berlin = _core.ScheduleTrigger(cron="30 2 * * *", tz="Europe/Berlin")
    start = dt.datetime(2026, 3, 28, 12, tzinfo=dt.UTC).timestamp()
    assert [berlin.local_iso(t) for t in berlin.next_ticks(start, 2)] == [
        "2026-03-29T03:00:00+02:00", "2026-03-30T02:30:00+02:00"]
    ny = _core.ScheduleTrigger(cron="30 1 * * *", tz="America/New_York")
    start = dt.datetime(2026, 10, 31, 12, tzinfo=dt.UTC).timestamp()
    assert [ny.local_iso(t) for t in ny.next_ticks(start, 2)] == [
        "2026-11-01T01:30:00-04:00", "2026-11-02T01:30:00-05:00"]


def _per_second_app(name: str, broker: str) -> tuple[foxtive.App, list[str], asyncio.Event]:
    app = foxtive.App(name, broker=broker)
    seen: list[str] = []
    enough = asyncio.Event()

    @app.task(queue="ticks", name="tick")
    async def tick(label: str) -> None:
        seen.append(label)
        if len(seen) >= 3:
            enough.set()

    app.schedule(tick, every=1, args=("t",), name="per-second")
    return app, seen, enough


async def test_app_run_async_runs_a_per_second_schedule_on_memory() -> None:
    app, seen, enough = _per_second_app("sched-mem", "memory://")
    run = asyncio.ensure_future(app.run_async(handle_signals=False))
    await asyncio.wait_for(enough.wait(), 15)
    runner = app.scheduler
    assert runner is not None and runner.leader
    text = runner.metrics_text()
    assert 'foxtive_schedule_leader{app="sched-mem"} 1' in text
    assert "foxtive_schedule_leader_changes_total" in text
    app.shutdown()
    await asyncio.wait_for(run, 30)
    assert seen[:3] == ["t", "t", "t"]
    assert app.scheduler is None
    await app.aclose()


async def test_no_scheduler_enqueues_nothing() -> None:
    app, seen, _ = _per_second_app("sched-off", "memory://")
    run = asyncio.ensure_future(app.run_async(handle_signals=False, scheduler=False))
    await asyncio.sleep(2.5)  # the time two ticks would take: nothing may arrive
    app.shutdown()
    await asyncio.wait_for(run, 30)
    assert seen == []
    assert app.backend("ticks").qsize() == 0
    await app.aclose()


async def test_sqlite_leader_and_last_tick_are_listed(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'sched.db'}"
    app, _, enough = _per_second_app("sched-sqlite", url)
    run = asyncio.ensure_future(app.run_async(handle_signals=False))
    try:
        await asyncio.wait_for(enough.wait(), 30)
        info = await schedules.describe(app)
        assert info["leader"]["pid"] == os.getpid()
        (s,) = info["schedules"]
        assert s["name"] == "per-second" and s["last_tick"].endswith("Z")
        assert len(s["next"]) == 3 and s["next"][0]["utc"].endswith("Z")
        # The CLI, from another process, sees the same leader.
        module = tmp_path / "sched_cli_app.py"
        module.write_text(
            "import foxtive\n"
            f"app = foxtive.App('sched-sqlite', broker={url!r})\n"
            "@app.task(queue='ticks', name='tick')\n"
            "async def tick(label: str) -> None: ...\n"
            "app.schedule(tick, every=1, args=('t',), name='per-second')\n")
        out = await asyncio.to_thread(
            subprocess.run, [sys.executable, "-m", "foxtive", "schedules", "sched_cli_app:app"],
            cwd=tmp_path, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert f"pid {os.getpid()}" in out.stdout
        assert "per-second" in out.stdout and "last tick: 20" in out.stdout
        assert out.stdout.count("next: ") == 3
        js = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "foxtive", "schedules", "sched_cli_app:app", "--json"],
            cwd=tmp_path, capture_output=True, text=True, timeout=60)
        assert json.loads(js.stdout)["leader"]["pid"] == os.getpid()
    finally:
        app.shutdown()
        await asyncio.wait_for(run, 30)
        await app.aclose()
    # Stopped: the lease was released.
    assert (await schedules.describe(app))["leader"] is None
