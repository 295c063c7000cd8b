"""A handler that runs 3x ``lease_timeout`` keeps its job: the lease is
renewed from Rust while the handler holds the GIL and blocks its event loop,
so a second worker process consuming the same file never sees the job, and
the job is settled once. Real worker processes on a real SQLite file; the
stdlib ``sqlite3`` module judges the row.

The worker processes are this module run as a script:

    python -m tests.test_sqlite_lease PATH QUEUE

printing ``ready``, then ``start|done <body> <attempt> <unix time>`` lines."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import sys
import time

import foxtive

from .contract.kits.sqlite import SqliteKit, kit_fixture
from .contract.process import WorkerProcess

LEASE = 1.0
#: How long the slow handler computes, holding the GIL.
SLOW = 3 * LEASE


def say(line: str) -> None:
    os.write(1, (line + "\n").encode())


def worker_main(path: str, queue: str) -> None:
    async def handler(m: foxtive.Message) -> None:
        body = m.body.decode()
        say(f"start {body} {m.attempt} {time.time()}")
        if body == "slow":
            # CPU-bound, in the event loop, and never letting another Python
            # thread run: nothing in Python could renew a lease meanwhile.
            sys.setswitchinterval(SLOW * 2)
            end = time.monotonic() + SLOW
            n = 0
            while time.monotonic() < end:
                n += 1
            sys.setswitchinterval(0.005)
        say(f"done {body} {m.attempt} {time.time()}")

    # One job at a time: the busy process claims nothing more while it holds
    # the slow job, so everything published meanwhile is the other's to take.
    pool = (foxtive.WorkerPoolBuilder("sqlite-lease").add_worker(handler, id="h")
            .with_concurrency_limit(1).with_shutdown_timeout(10.0).build())
    say("ready")
    pool.run(foxtive.SqliteBackend(path, queue, lease_timeout=LEASE))


class Worker(WorkerProcess):
    """This module as a worker process on the kit's file."""

    def __init__(self, kit: SqliteKit) -> None:
        super().__init__("tests.test_sqlite_lease", kit.path, kit.queue)

    def events(self, kind: str) -> list[tuple[str, int, float]]:  # type: ignore[override]
        return [(f[0], int(f[1]), float(f[2])) for f in self.fields(kind)]


kit = kit_fixture()


def slow_row(path: str, queue: str) -> tuple[int, float | None]:
    conn = sqlite3.connect(path, timeout=10)
    try:
        row = conn.execute("SELECT attempts, locked_until FROM foxtive_jobs "
                           "WHERE queue = ? AND message_id = 'slow-1'", (queue,)).fetchone()
        assert row is not None, "the slow job's row is gone before its handler finished"
        return int(row[0]), row[1]
    finally:
        conn.close()


def test_a_handler_running_three_leases_keeps_its_job_from_another_process(
        kit: SqliteKit) -> None:
    publisher = foxtive.SqliteBackend(kit.path, kit.queue, lease_timeout=LEASE)
    asyncio.run(publisher.publish(b"warm"))  # creates the file before the workers open it
    workers = [Worker(kit), Worker(kit)]
    try:
        deadline = time.monotonic() + 30
        while sum(len(w.events("done")) for w in workers) < 1:
            assert time.monotonic() < deadline, "no worker took the warm-up job"
            time.sleep(0.05)
        asyncio.run(publisher.publish(b"slow", message_id="slow-1"))
        deadline = time.monotonic() + 30
        while not any(w.events("start") and w.events("start")[-1][0] == "slow"
                      for w in workers):
            assert time.monotonic() < deadline, "no worker took the slow job"
            time.sleep(0.01)
        busy, other = workers if workers[0].events("start")[-1][0] == "slow" else workers[::-1]
        started = busy.events("start")[-1][2]
        # Jobs published while the slow one runs: the other process is
        # consuming the same file meanwhile (it takes them all: the busy one
        # has no free slot).
        asyncio.run(publisher.publish_many([f"probe-{i}".encode() for i in range(5)]))
        # Past the first lease's end, the row is still leased (renewed from
        # Rust while the handler holds the GIL) and counted once.
        while time.time() < started + 2 * LEASE:
            time.sleep(0.05)
        attempts, locked_until = slow_row(kit.path, kit.queue)
        assert attempts == 1
        assert locked_until is not None and locked_until > time.time(), \
            "the lease was not renewed while the handler ran"
        busy.lines.wait_count(1, "done slow", timeout=30)
        other.lines.wait_count(5, "done probe", timeout=30)
        for w in workers:
            w.stop()
    finally:
        for w in workers:
            w.kill()
    slow_starts = [e for w in workers for e in w.events("start") if e[0] == "slow"]
    assert slow_starts == [("slow", 1, started)], "handed to one worker, once"
    [(_, attempt, finished)] = [e for e in busy.events("done") if e[0] == "slow"]
    assert attempt == 1 and finished - started >= SLOW - 0.05
    assert not [e for e in other.events("start") if e[0] == "slow"], \
        "the other process saw the leased job"
    probes = sorted(e[0] for e in other.events("done") if e[0].startswith("probe"))
    assert probes == [f"probe-{i}" for i in range(5)]
    assert any(t < finished for body, _, t in other.events("done") if body.startswith("probe")), \
        "the other process was consuming the file while the slow job ran"
    # Settled once: acked, the row deleted; nothing dead-lettered or waiting.
    assert kit.waiting() == 0
    assert kit.dead_letters() == []


if __name__ == "__main__":
    worker_main(sys.argv[1], sys.argv[2])
