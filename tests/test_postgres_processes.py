"""Several worker processes on one PostgreSQL queue, and a worker killed
mid-job: jobs are rows, leases are rows, so processes share a queue with
nothing lost and nothing run twice, and a dead worker's job comes back after
``lease_timeout`` as the next attempt. Judged with psycopg."""

from __future__ import annotations

import asyncio
import collections
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import foxtive

from .contract.kits.postgres import (
    POSTGRES_URL,
    postgres_answers,
    schema_fixture,
    waiting_jobs,
)

pytestmark = pytest.mark.skipif(postgres_answers() is not None, reason=str(postgres_answers()))

ROOT = Path(__file__).resolve().parents[1]

WORKER = textwrap.dedent(
    """
    import asyncio, os, sys, time
    import foxtive

    url, queue, schema, out, lease, delay, mode = sys.argv[1:8]
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_APPEND)

    async def handle(message):
        # One write per event, unbuffered: what a SIGKILL leaves is on disk.
        os.write(fd, f"start {message.body.decode()} {message.attempt}\\n".encode())
        if float(delay):
            await asyncio.sleep(float(delay))
        os.write(fd, f"done {message.body.decode()} {message.attempt}\\n".encode())

    def busy(message):
        # CPU-bound Python: the GIL is this thread's almost all the time.
        os.write(fd, f"start {message.body.decode()} {message.attempt}\\n".encode())
        end = time.monotonic() + float(delay)
        n = 0
        while time.monotonic() < end:
            n += sum(i * i for i in range(1000))
        os.write(fd, f"done {message.body.decode()} {message.attempt}\\n".encode())

    if mode == "busy":
        handle = busy

    backend = foxtive.PostgresBackend(url, queue, schema=schema, lease_timeout=float(lease))
    pool = (foxtive.WorkerPoolBuilder("pg-procs").add_worker(handle, id="h")
            .with_concurrency_limit(50).with_shutdown_timeout(10.0).build())
    os.write(fd, b"ready - 0\\n")
    pool.run(backend)
    """
)


schema = schema_fixture("fxp_")


def events(path: Path, kind: str) -> list[tuple[str, int]]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == kind:
            out.append((parts[1], int(parts[2])))
    return out


def wait_for(predicate: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


class Worker:
    def __init__(self, tmp: Path, n: int, queue: str, schema: str, *, lease: float = 30.0,
                 delay: float = 0.0, mode: str = "async") -> None:
        self.out = tmp / f"worker-{n}.log"
        script = tmp / "pg_worker.py"
        script.write_text(WORKER)
        self.proc = subprocess.Popen(
            [sys.executable, str(script), POSTGRES_URL, queue, schema, str(self.out),
             str(lease), str(delay), mode],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        wait_for(lambda: events(self.out, "ready") or self.proc.poll() is not None, 60,
                 "the worker to start")
        assert self.proc.poll() is None, self.proc.stderr.read() if self.proc.stderr else ""

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(60)
        assert rc == 0, self.proc.stderr.read() if self.proc.stderr else rc

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(30)


def test_four_processes_drain_20000_jobs_none_lost_none_twice(tmp_path: Path,
                                                              schema: str) -> None:
    queue = "drain"
    n = 20_000
    sent = [f"j-{i}" for i in range(n)]
    backend = foxtive.PostgresBackend(POSTGRES_URL, queue, schema=schema)

    async def publish() -> None:
        for i in range(0, n, 5000):
            await backend.publish_many([s.encode() for s in sent[i:i + 5000]])
        await backend.close()

    # All four are up and idle first, so each gets a share (woken by NOTIFY).
    workers: list[Worker] = []
    try:
        for i in range(4):
            workers.append(Worker(tmp_path, i, queue, schema))
        t0 = time.monotonic()
        asyncio.run(publish())
        wait_for(lambda: waiting_jobs(schema, queue) == 0, 240, "the queue to drain")
        elapsed = time.monotonic() - t0
        for w in workers:
            w.stop()
    finally:
        for w in workers:
            w.kill()
    done: collections.Counter[str] = collections.Counter()
    per_worker = []
    for w in workers:
        mine = events(w.out, "done")
        per_worker.append(len(mine))
        done.update(body for body, _ in mine)
    assert set(done) == set(sent), f"lost: {len(set(sent) - set(done))}"
    twice = [b for b, c in done.items() if c > 1]
    assert not twice, f"{len(twice)} jobs ran twice, e.g. {twice[:5]}"
    assert all(c > 0 for c in per_worker), f"every process took a share: {per_worker}"
    print(f"4 processes enqueued and drained {n} jobs in {elapsed:.1f}s; shares {per_worker}")


def test_sigkill_mid_job_the_job_comes_back_after_the_lease_as_attempt_2(
        tmp_path: Path, schema: str) -> None:
    queue = "kill"
    lease = 2.0
    backend = foxtive.PostgresBackend(POSTGRES_URL, queue, schema=schema)

    async def publish() -> None:
        await backend.publish(b"slow")
        await backend.close()

    asyncio.run(publish())
    victim = Worker(tmp_path, 0, queue, schema, lease=lease, delay=3600)
    try:
        wait_for(lambda: events(victim.out, "start"), 30, "the slow job to start")
    finally:
        victim.kill()
    killed_at = time.monotonic()
    assert victim.proc.returncode == -signal.SIGKILL
    heir = Worker(tmp_path, 1, queue, schema, lease=lease)
    try:
        # Something else published now runs at once: nothing else is disturbed.
        async def other() -> None:
            publisher = foxtive.PostgresBackend(POSTGRES_URL, queue, schema=schema)
            await publisher.publish(b"other")
            await publisher.close()

        asyncio.run(other())
        wait_for(lambda: ("slow", 2) in events(heir.out, "done"), 60, "the slow job again")
        back_after = time.monotonic() - killed_at
        assert ("other", 1) in events(heir.out, "done")
        heir.stop()
    finally:
        heir.kill()
    assert events(victim.out, "start") == [("slow", 1)]
    assert events(victim.out, "done") == []
    # Not before its lease ran out (the victim's renewals stopped with it).
    assert back_after >= lease * 0.5, back_after
    assert [e for e in events(heir.out, "done") if e[0] == "slow"] == [("slow", 2)]
    assert waiting_jobs(schema, queue) == 0


def test_a_gil_bound_handler_keeps_its_job_for_3x_lease_timeout(tmp_path: Path,
                                                                 schema: str) -> None:
    queue = "busy"
    lease = 1.0
    backend = foxtive.PostgresBackend(POSTGRES_URL, queue, schema=schema)

    async def publish() -> None:
        await backend.publish(b"cpu")
        await backend.close()

    asyncio.run(publish())
    busy = Worker(tmp_path, 0, queue, schema, lease=lease, delay=3 * lease, mode="busy")
    rival = None
    try:
        wait_for(lambda: events(busy.out, "start"), 30, "the busy job to start")
        # A second worker polls the queue all along; the lease is renewed from Rust.
        rival = Worker(tmp_path, 1, queue, schema, lease=lease)
        wait_for(lambda: events(busy.out, "done"), 60, "the busy job to finish")
        wait_for(lambda: waiting_jobs(schema, queue) == 0, 30, "the job to be acked")
        busy.stop()
        rival.stop()
    finally:
        busy.kill()
        if rival is not None:
            rival.kill()
    assert events(busy.out, "done") == [("cpu", 1)]
    assert rival is not None and events(rival.out, "start") == [], "handed to another worker"
