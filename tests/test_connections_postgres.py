"""One pair of PostgreSQL connections per database in a process (issue 14):
the backends (queues) of one process on one DSN and schema share a claims
connection and a settlements connection instead of two each. The claims
connection LISTENs on every queue's channel and routes each NOTIFY to its
queue; a lost pair is replaced once for all the queues on it.

Sessions are counted in ``pg_stat_activity`` by ``application_name`` (a
unique one per test, given in the DSN); the tasks and handlers themselves
prove every queue is consumed. No result store is enabled here (one would
hold a connection of its own)."""

from __future__ import annotations

import asyncio
import collections
import os
import random
import statistics
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import psycopg
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
from .test_tasks_connections import (
    QUEUES,
    conn_app,
    foxtive_run,
    send_one_each,
    stop,
    wait_for_marks,
)

pytestmark = pytest.mark.skipif(postgres_answers() is not None, reason=str(postgres_answers()))

ROOT = Path(__file__).resolve().parents[1]

schema = schema_fixture("fxp_conn_")


def url_for(app: str, schema: str) -> str:
    return f"{POSTGRES_URL}?application_name={app}&schema={schema}"


def test_five_queues_hold_two_connections(tmp_path: Path, schema: str) -> None:
    """The SQLite test's app (five queues, one task each) on PostgreSQL:
    ``foxtive run`` holds two sessions, not two per queue (ten)."""
    app = f"fx_conn5_{uuid.uuid4().hex[:8]}"
    marks, env = conn_app(tmp_path, url_for(app, schema))
    # The sender's sessions are named otherwise: only the worker's count.
    send_one_each(tmp_path, {**env, "CONN_BROKER": url_for(app + "_send", schema)})
    assert sum(waiting_jobs(schema, f"conn5-q{i}") for i in range(QUEUES)) == QUEUES
    with foxtive_run(tmp_path, env) as worker:
        wait_for_marks(marks, QUEUES, worker)  # every queue's pool is consuming
        held = sessions(app)
        assert 1 <= len(held) <= 2, f"{len(held)} sessions for {QUEUES} queues"
        stop(worker)
    assert sum(waiting_jobs(schema, f"conn5-q{i}") for i in range(QUEUES)) == 0
    wait_for(lambda: not sessions(app), 10, "the worker's sessions to end")


SAMPLES = 20
POLL = 30.0


async def test_a_notify_wakes_the_queue_it_names(schema: str) -> None:
    """Three idle pools whose backends share one claims connection: a job
    committed to the third queue starts at once, woken by the NOTIFY routed
    to that queue. The safety-net poll is 30 s and the pool asks again every
    0.5 s (``RECEIVE_WAIT``): by polling alone a start would come after
    ~0.25 s on average, so most starts well under that show the NOTIFY path
    (the statistics of ``test_postgres_wakeup.py``). The job is inserted
    through a psycopg transaction, which wakes nothing in this process."""
    app = f"fx_route_{uuid.uuid4().hex[:8]}"
    url = f"{POSTGRES_URL}?application_name={app}"
    names = ["route-a", "route-b", "route-c"]
    backends = [foxtive.PostgresBackend(url, q, schema=schema, poll_interval=POLL)
                for q in names]
    await backends[0].ensure_schema()
    started: asyncio.Queue[tuple[str, bytes, float]] = asyncio.Queue()

    def handler_for(queue: str) -> Callable[[foxtive.Message], Awaitable[None]]:
        async def handler(m: foxtive.Message) -> None:
            started.put_nowait((queue, m.body, time.monotonic()))
        return handler

    pools = [foxtive.WorkerPoolBuilder(f"pg-route-{q}").add_worker(handler_for(q), id="h").build()
             for q in names]
    tasks = [asyncio.ensure_future(p.run_async(b, handle_signals=False))
             for p, b in zip(pools, backends, strict=True)]
    latencies = []
    try:
        async with await psycopg.AsyncConnection.connect(POSTGRES_URL) as conn:
            for i in range(SAMPLES + 1):  # the first one warms the worker up
                await asyncio.sleep(random.uniform(0.2, 0.6))  # idle, out of step
                body = f"r-{i}".encode()
                async with conn.transaction():
                    await backends[2].publish(body, transaction=conn)
                    assert started.empty()
                    sent = time.monotonic()  # COMMIT is sent as the block ends
                queue, got, at = await asyncio.wait_for(started.get(), 10)
                assert (queue, got) == ("route-c", body)
                if i:
                    latencies.append(at - sent)
            # Three queues, one pair of connections (two per queue before).
            held = await asyncio.to_thread(sessions, app)
            assert len(held) <= 2, f"{len(held)} sessions for 3 queues"
    finally:
        for p in pools:
            p.shutdown()
        await asyncio.wait_for(asyncio.gather(*tasks), 30)
        for b in backends:
            await b.close()
    median = statistics.median(latencies)
    fast = sum(1 for x in latencies if x < 0.15)
    summary = ", ".join(f"{x * 1000:.0f}" for x in sorted(latencies))
    assert median < 0.5, f"median {median * 1000:.0f} ms: {summary}"
    assert max(latencies) < POLL / 10, f"a start waited for the safety-net poll: {summary}"
    # Woken by polling alone, P(start < 150 ms) = 0.3 per job, and 15 of 20
    # such starts would happen with probability ~2e-5.
    assert fast >= 15, f"only {fast} of {SAMPLES} started within 150 ms (ms: {summary})"
    assert started.empty(), "a job started twice or on another queue"


PER_QUEUE = 1500
KILLS = 3

KILL_APP = textwrap.dedent('''
    import asyncio
    import os

    import foxtive

    URL, SCHEMA = os.environ["PG_URL"], os.environ["PG_SCHEMA"]
    fd = os.open(os.environ["PG_OUT"], os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    app = foxtive.App("pgkill", broker=lambda q: foxtive.PostgresBackend(
        URL, q, schema=SCHEMA, lease_timeout=6.0))

    def make(i):
        async def work(n: int) -> None:
            # One write per event, unbuffered.
            os.write(fd, f"start q{i}-{n} 0\\n".encode())
            await asyncio.sleep(0.01)
            os.write(fd, f"done q{i}-{n} 0\\n".encode())
        return app.task(queue=f"kill-q{i}", name=f"work{i}")(work)

    TASKS = [make(i) for i in range(3)]
''')


def test_shared_connections_terminated_mid_drain_lose_nothing(tmp_path: Path,
                                                              schema: str) -> None:
    """``pg_terminate_backend`` of the worker's shared pair while three
    queues drain, again and again: every job of every queue runs once, and
    the worker reconnects by itself, with one pair again (not one per
    queue). Why once: see ``test_postgres_restart.py``."""
    app = f"fx_kill_{uuid.uuid4().hex[:8]}"
    out = tmp_path / "worker.log"
    (tmp_path / "kill_app.py").write_text(KILL_APP)
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "PYTHONUNBUFFERED": "1",
           "PG_SCHEMA": schema, "PG_OUT": str(out)}
    queues = [f"kill-q{i}" for i in range(3)]
    send = subprocess.run(
        [sys.executable, "-c",
         "import kill_app\n"
         f"for t in kill_app.TASKS: t.send_many_sync([(n,) for n in range({PER_QUEUE})])\n"
         "kill_app.app.close()"],
        cwd=tmp_path, env={**env, "PG_URL": f"{POSTGRES_URL}?application_name={app}_send",
                           "PG_OUT": str(tmp_path / "sender.log")},
        capture_output=True, text=True, timeout=120)
    assert send.returncode == 0, send.stderr
    assert [waiting_jobs(schema, q) for q in queues] == [PER_QUEUE] * 3
    total = 3 * PER_QUEUE
    killed: list[list[int]] = []
    # Four at a time per queue: the drain lasts over the kills.
    with foxtive_run(tmp_path, {**env, "PG_URL": f"{POSTGRES_URL}?application_name={app}"},
                     "kill_app:app", "--concurrency", "4") as worker:
        for k in range(1, KILLS + 1):
            mark = total * k // (KILLS + 2)
            wait_for(lambda mark=mark: len(events(out, "done")) >= mark
                     or worker.poll() is not None, 120, f"{mark} jobs done")
            assert worker.poll() is None, worker.stderr.read() if worker.stderr else ""
            # Back by itself after the previous kill: end its sessions again.
            wait_for(lambda: sessions(app), 30, "the worker to reconnect")
            killed.append(terminate_sessions(app))
            assert len(events(out, "done")) < total, "the drain ended before the kills"
        wait_for(lambda: sum(waiting_jobs(schema, q) for q in queues) == 0, 120,
                 "the queues to drain")
        wait_for(lambda: len(events(out, "done")) >= total, 30, "the last handlers")
        wait_for(lambda: sessions(app), 30, "the worker to reconnect after the last kill")
        after = sessions(app)
        assert len(after) <= 2, f"{len(after)} sessions after reconnecting"
        assert not set(after) & {pid for pids in killed for pid in pids}
        stop(worker)
    # Each kill ended the shared pair (or what of it was up): never one per queue.
    assert all(1 <= len(pids) <= 2 for pids in killed), killed
    sent = {f"q{i}-{n}" for i in range(3) for n in range(PER_QUEUE)}
    done = collections.Counter(body for body, _ in events(out, "done"))
    started = collections.Counter(body for body, _ in events(out, "start"))
    assert set(done) == sent, f"lost: {sorted(sent - set(done))[:10]}"
    twice = sorted(b for b, c in started.items() if c > 1)
    assert not twice, f"{len(twice)} jobs started twice, e.g. {twice[:5]}"
    with judge_connection() as conn:
        dead = conn.execute(f'SELECT count(*) FROM "{schema}".dead_letters').fetchone()
    assert dead is not None and dead[0] == 0
