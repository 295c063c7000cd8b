"""PostgreSQL connections dropped mid-drain: a worker process draining
several thousand jobs has its connections terminated again and again with
``pg_terminate_backend`` (only those of this test's own ``application_name``:
the server is shared and stays up). Nothing is lost, nothing runs twice, and
the worker reconnects by itself.

Why exactly once: leases and attempts are rows, not sessions. A claim whose
reply was cut off leaves its rows leased to nobody; they come back after
``lease_timeout`` as the next attempt (run once: the handler never saw them).
A settlement cut off is retried on the next connection and names each row by
(id, attempt at claim), so it applies once. Leases of running jobs are
renewed every ``lease_timeout / 3`` over whichever connection is live, so a
job in a handler keeps its lease across a reconnect: no lapse, no second
delivery. The jobs that came back as a later attempt are reported; each was
started once all the same (asserted)."""

from __future__ import annotations

import asyncio
import collections
import signal
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

import foxtive

from .contract.kits.postgres import (
    POSTGRES_URL,
    judge_connection,
    postgres_answers,
    schema_fixture,
    sessions,
    terminate_sessions,
    waiting_jobs,
)
from .test_postgres_processes import events, wait_for

pytestmark = pytest.mark.skipif(postgres_answers() is not None, reason=str(postgres_answers()))

ROOT = Path(__file__).resolve().parents[1]
N = 5000
LEASE = 6.0
KILLS = 6

WORKER = textwrap.dedent(
    """
    import asyncio, os, sys
    import foxtive

    url, queue, schema, out, lease = sys.argv[1:6]
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_APPEND)

    async def handle(message):
        os.write(fd, f"start {message.body.decode()} {message.attempt}\\n".encode())
        await asyncio.sleep(0.004)
        os.write(fd, f"done {message.body.decode()} {message.attempt}\\n".encode())

    backend = foxtive.PostgresBackend(url, queue, schema=schema, lease_timeout=float(lease))
    pool = (foxtive.WorkerPoolBuilder("pg-restart").add_worker(handle, id="h")
            .with_concurrency_limit(4).with_shutdown_timeout(10.0).build())
    os.write(fd, b"ready - 0\\n")
    pool.run(backend)
    """
)


schema = schema_fixture("fxp_restart_")


def test_connections_dropped_mid_drain_nothing_lost_none_twice(tmp_path: Path,
                                                               schema: str) -> None:
    queue = "restart"
    app = f"fx_restart_{uuid.uuid4().hex[:8]}"
    url = f"{POSTGRES_URL}?application_name={app}"
    sent = [f"j-{i}" for i in range(N)]

    async def publish() -> None:  # 'foxtive' sessions: never terminated here
        backend = foxtive.PostgresBackend(POSTGRES_URL, queue, schema=schema)
        await backend.publish_many([s.encode() for s in sent])
        await backend.close()

    asyncio.run(publish())
    out = tmp_path / "worker.log"
    script = tmp_path / "pg_restart_worker.py"
    script.write_text(WORKER)
    proc = subprocess.Popen([sys.executable, str(script), url, queue, schema, str(out),
                             str(LEASE)], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    killed: list[list[int]] = []
    try:
        wait_for(lambda: events(out, "ready") or proc.poll() is not None, 60, "the worker")
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        for k in range(1, KILLS + 1):
            # Spread over the drain: after each further N / (KILLS + 2) jobs.
            mark = N * k // (KILLS + 2)
            wait_for(lambda mark=mark: len(events(out, "done")) >= mark, 120,
                     f"{mark} jobs done")
            # The worker's sessions are back (it reconnected by itself): end them.
            wait_for(lambda: sessions(app), 30, "the worker to reconnect")
            killed.append(terminate_sessions(app))
            assert len(events(out, "done")) < N, "the drain ended before the kills"
        wait_for(lambda: waiting_jobs(schema, queue) == 0, 120, "the queue to drain")
        wait_for(lambda: len(events(out, "done")) >= N, 30, "the last handlers")
        # Still connected afterwards, on sessions opened after the last kill.
        wait_for(lambda: sessions(app), 30, "the worker to reconnect after the last kill")
        assert not set(sessions(app)) & {pid for pids in killed for pid in pids}
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(60)
        assert rc == 0, proc.stderr.read() if proc.stderr else rc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
    assert all(killed), f"every kill found sessions of the worker: {killed}"
    done = collections.Counter(body for body, _ in events(out, "done"))
    started = collections.Counter(body for body, _ in events(out, "start"))
    assert set(done) == set(sent), f"lost: {sorted(set(sent) - set(done))[:10]}"
    twice = sorted(b for b, c in started.items() if c > 1)
    assert not twice, f"{len(twice)} jobs started twice, e.g. {twice[:5]}"
    assert all(c == 1 for c in done.values())
    # Attempt > 1: rows whose claim reply was cut off by a kill, back after
    # the lease; each ran once (started once, above), never as attempt 1.
    again = [b for b, att in events(out, "start") if att > 1]
    with judge_connection() as conn:
        dead = conn.execute(f'SELECT count(*) FROM "{schema}".dead_letters').fetchone()
    assert dead is not None and dead[0] == 0
    print(f"{KILLS} kills ({sum(map(len, killed))} sessions ended); {N} jobs each run once; "
          f"{len(again)} came back as attempt 2 after a claim was cut off")
