"""foxtive.SqliteBackend against real SQLite files: transactional enqueue,
URLs, several worker processes on one file, SIGKILL mid-job. The judge is
the stdlib ``sqlite3`` module (through the contract kit)."""

from __future__ import annotations

import asyncio
import collections
import datetime as dt
import os
import signal
import sqlite3
import time
from pathlib import Path

import pytest

import foxtive
from foxtive import _core
from foxtive._native import native_of
from foxtive.backends import NativeBackend

from .contract.kits.sqlite import LEASE, SqliteKit, kit_fixture
from .contract.process import Worker

kit = kit_fixture()


def drain(backend: foxtive.SqliteBackend) -> list[tuple[bytes, int]]:
    seen: list[tuple[bytes, int]] = []

    async def handler(m: foxtive.Message) -> None:
        seen.append((m.body, m.attempt))

    pool = foxtive.WorkerPoolBuilder("sqlite-test").add_worker(handler, id="h").build()
    assert pool.run_until_idle(backend, timeout=30)
    return seen


# ------------------------------------------------------- the native seam


def test_the_backend_is_a_native_backend_with_settings_checked_in_core(kit: SqliteKit) -> None:
    backend = kit.backend()
    assert isinstance(backend, NativeBackend)
    assert native_of(backend) is backend._native
    assert isinstance(backend._native, _core.NativeBackend)
    assert (backend.name, backend.state, backend.path) == (kit.queue, "connected", kit.path)
    assert backend._native.busy_timeout == 10.0  # the core default
    # Type errors and rule errors alike come from the core, naming the setting.
    for options, error in [({"lease_timeout": "1"}, "lease_timeout: expected a number of sec"),
                           ({"lease_timeout": 0.1}, "lease_timeout: must be >= 0.3"),
                           ({"busy_timeout": -1}, "busy_timeout: must be a finite, non-neg"),
                           ({"queue": ""}, "queue: must be a non-empty"),
                           ({"path": 3}, "path: expected a string"),
                           ({"poll_max": 0.0}, "poll_max: must be >=")]:
        with pytest.raises(foxtive.ConfigError, match=error):
            foxtive.SqliteBackend(**{"path": kit.path, **options})  # type: ignore[arg-type]
    assert foxtive.SqliteBackend(kit.path, lease_timeout=dt.timedelta(seconds=2)).lease_timeout \
        == 2.0
    with pytest.raises(foxtive.ConfigError, match=r"unknown option\(s\) 'prefetch' for SQLite "
                                                  r".*it takes: lease_timeout, busy_timeout"):
        _core.SqliteBackend(kit.path, "q", {"prefetch": 3})
    # The core opens it from a URL too (the registry's generic path).
    opened = _core.open_backend(f"sqlite:///{kit.path}", kit.queue, {"lease_timeout": 2})
    assert isinstance(opened, _core.NativeBackend) and opened.name == kit.queue
    assert opened.dead_letter_store() is not None
    # The dead-letter queue is the base class's: the backend's own table.
    asyncio.run(backend.publish(b"x"))
    assert backend.dead_letter_queue().get_failed_messages(10) == []
    assert backend.dead_letters() == []


# ------------------------------------------------------- transactional enqueue


def business_conn(kit: SqliteKit) -> sqlite3.Connection:
    conn = sqlite3.connect(kit.path, timeout=10, isolation_level=None)
    conn.execute("CREATE TABLE IF NOT EXISTS orders (id INTEGER PRIMARY KEY, item TEXT)")
    return conn


def test_enqueue_rolled_back_with_the_business_write_never_runs(kit: SqliteKit) -> None:
    backend = kit.backend()
    conn = business_conn(kit)
    conn.execute("BEGIN")
    conn.execute("INSERT INTO orders (item) VALUES ('book')")
    job_id = asyncio.run(backend.publish(b"ship-book", headers={"n": 1},
                                         message_id="order-1", transaction=conn))
    assert job_id == "order-1"
    conn.execute("ROLLBACK")
    assert conn.execute("SELECT count(*) FROM orders").fetchone() == (0,)
    assert kit.waiting() == 0
    assert drain(backend) == []
    conn.close()


def test_enqueue_committed_with_the_business_write_runs_once(kit: SqliteKit) -> None:
    backend = kit.backend()
    conn = business_conn(kit)
    conn.execute("BEGIN")
    conn.execute("INSERT INTO orders (item) VALUES ('pen')")
    ids = asyncio.run(backend.publish_many([b"ship-pen", b"mail-pen"], transaction=conn))
    assert len(set(ids)) == 2
    # Not visible to anyone before the commit.
    assert kit.waiting() == 0
    conn.execute("COMMIT")
    assert kit.waiting() == 2
    seen: list[tuple[str, bytes, int, dict[str, object]]] = []

    async def handler(m: foxtive.Message) -> None:
        seen.append((m.id, m.body, m.attempt, dict(m.headers)))

    pool = foxtive.WorkerPoolBuilder("sqlite-tx").add_worker(handler, id="h").build()
    assert pool.run_until_idle(backend, timeout=30)
    assert sorted((i, b, a) for i, b, a, _ in seen) == sorted(
        [(ids[0], b"ship-pen", 1), (ids[1], b"mail-pen", 1)])
    assert kit.waiting() == 0
    conn.close()


def test_enqueue_refuses_what_is_not_a_sqlite3_connection(kit: SqliteKit) -> None:
    with pytest.raises(foxtive.ConfigError, match=r"sqlite3\.Connection"):
        asyncio.run(kit.backend().publish(b"x", transaction=object()))  # type: ignore[arg-type]


def test_a_stdlib_connection_closed_next_to_the_backend_loses_nothing(kit: SqliteKit) -> None:
    """One SQLite library in the process: with a second copy (bundled), closing
    a stdlib connection deleted the WAL under the backend's connection and
    every later publish went into the deleted file."""
    backend = kit.backend()

    async def scenario() -> None:
        await backend.publish(b"before")
        conn = sqlite3.connect(kit.path)
        conn.execute("SELECT count(*) FROM foxtive_jobs").fetchall()
        conn.close()
        await backend.publish_many([b"after-1", b"after-2"])

    asyncio.run(scenario())
    assert kit.waiting() == 3
    assert sorted(b for b, _ in drain(backend)) == [b"after-1", b"after-2", b"before"]


# ------------------------------------------------------------------- URLs


def test_urls_are_read_as_sqlalchemy_does(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    rel = foxtive.backend_from_url("sqlite:///jobs.db", "emails", lease_timeout=5.0)
    assert isinstance(rel, foxtive.SqliteBackend)
    assert (rel.path, rel.name, rel.lease_timeout) == ("jobs.db", "emails", 5.0)
    asyncio.run(rel.publish(b"x"))
    assert (tmp_path / "jobs.db").exists()
    absolute = foxtive.backend_from_url(f"sqlite:///{tmp_path}/abs.db", "q")
    assert isinstance(absolute, foxtive.SqliteBackend)
    assert absolute.path == f"{tmp_path}/abs.db"
    with pytest.raises(foxtive.ConfigError, match="unknown option"):
        foxtive.backend_from_url("sqlite:///jobs.db", "q", prefetch_count=3)
    with pytest.raises(foxtive.ConfigError, match="no host"):
        foxtive.backend_from_url("sqlite://host/jobs.db", "q")


# ------------------------------------------------------- worker processes


def test_three_processes_on_one_file_drain_20000_jobs_once_each(kit: SqliteKit) -> None:
    n = 20_000
    sent = [f"j-{i}" for i in range(n)]
    # Every process is polling before the jobs arrive, and each job takes
    # 5 ms: a release build would otherwise let the first process drain the
    # queue before the third has started.
    workers = [Worker(kit, "--concurrency", "50", "--delay", "0.005") for _ in range(3)]
    asyncio.run(kit.backend().publish_many([s.encode() for s in sent]))
    try:
        deadline = time.monotonic() + 180
        while sum(len(w.lines.done()) for w in workers) < n:
            assert time.monotonic() < deadline, "the workers did not drain the queue in time"
            time.sleep(0.1)
        for w in workers:
            w.stop()
    finally:
        for w in workers:
            w.kill()
    started = collections.Counter(b for w in workers for b, _ in w.events("start"))
    done = collections.Counter(b for w in workers for b, _ in w.events("done"))
    assert set(done) == set(sent), "none lost"
    assert max(started.values()) == 1 and max(done.values()) == 1, "none run twice"
    assert all(len(w.events("done")) > 0 for w in workers), "every process took a share"
    assert kit.waiting() == 0
    assert kit.dead_letters() == []


def test_sigkill_mid_job_brings_it_back_after_the_lease_as_attempt_2(kit: SqliteKit) -> None:
    backend = kit.backend()
    asyncio.run(backend.publish(b"slow", message_id="slow-1"))
    victim = Worker(kit, "--delay", "60", "--concurrency", "1")
    try:
        victim.lines.wait_count(1, "start slow", timeout=30)
    finally:
        victim.kill()
    killed_at = time.monotonic()
    assert victim.proc.returncode == -signal.SIGKILL
    # The job is still leased: nothing hands it out before the lease ends.
    assert kit.waiting() == 1
    asyncio.run(backend.publish_many([f"quick-{i}".encode() for i in range(20)]))
    heir = Worker(kit)
    try:
        heir.lines.wait_count(1, "done slow", timeout=30)
        back_after = time.monotonic() - killed_at
        heir.lines.wait_count(21, "done ", timeout=30)
        heir.stop()
    finally:
        heir.kill()
    assert victim.events("start") == [("slow", 1)]
    # The last renewal was at most LEASE/3 before the kill.
    assert back_after >= LEASE * 2 / 3 - 0.2, back_after
    starts = heir.events("start")
    assert ("slow", 2) in starts
    assert sorted(b for b, a in starts if b != "slow") == sorted(f"quick-{i}" for i in range(20))
    assert all(a == 1 for b, a in starts if b != "slow"), "nothing else is disturbed"
    assert kit.waiting() == 0
    assert os.path.exists(kit.path)
