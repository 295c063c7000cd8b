"""``foxtive run`` of an app with five queues on one Redis holds one
command connection for all of them plus one blocking-read connection per
queue: 6 connections, not 10 (issue 14). The worker's connections are told
apart from everybody else's on the shared Redis by their local ports (the
worker's sockets in /proc); redis-py's ``CLIENT LIST`` judges them.

A ``CLIENT KILL`` of that one command connection in the middle of a drain
costs nothing: every queue drains, every task ran, the worker opens a new
command connection by itself."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from .contract.kit import local_ports
from .redis_support import REDIS_URL
from .test_tasks_connections import QUEUES, foxtive_run, stop, wait_for_marks

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc")

# test_tasks_connections's app, with a name per run (the Redis is shared),
# any number of queues and a pause in each task (to kill mid-drain).
APP = textwrap.dedent('''
    import os
    import time

    import foxtive

    NAME = os.environ["CONN_APP"]
    app = foxtive.App(NAME, broker=os.environ["CONN_BROKER"])
    MARKS = os.environ["CONN_MARKS"]
    PAUSE = float(os.environ.get("CONN_PAUSE", "0"))

    def make(i):
        def mark(n: int) -> None:
            time.sleep(PAUSE)
            with open(os.path.join(MARKS, f"q{i}-{n}"), "w"):
                pass
        return app.task(queue=f"{NAME}-q{i}", name=f"mark{i}")(mark)

    TASKS = [make(i) for i in range(int(os.environ["CONN_QUEUES"]))]
''')


class Worker:
    """The app in a temporary directory: send its tasks, run ``foxtive run``."""

    def __init__(self, tmp: Path, queues: int, pause: float = 0.0) -> None:
        self.name = f"conn-{uuid.uuid4().hex[:8]}"
        self.queues = [f"{self.name}-q{i}" for i in range(queues)]
        self.marks = tmp / "marks"
        self.marks.mkdir()
        (tmp / "conn_app.py").write_text(APP)
        self.tmp = tmp
        self.env = {**os.environ, "CONN_BROKER": REDIS_URL, "CONN_MARKS": str(self.marks),
                    "CONN_APP": self.name, "CONN_QUEUES": str(queues),
                    "CONN_PAUSE": str(pause), "PYTHONPATH": str(tmp),
                    "PYTHONUNBUFFERED": "1"}
        self.proc: subprocess.Popen[str] | None = None
        self._stack = contextlib.ExitStack()  # the worker, killed if left running

    def send(self, per_queue: int) -> None:
        send = subprocess.run(
            [sys.executable, "-c",
             "import conn_app\n"
             f"for t in conn_app.TASKS: t.send_many_sync([(n,) for n in range({per_queue})])\n"
             "conn_app.app.close()"],
            cwd=self.tmp, env=self.env, capture_output=True, text=True, timeout=120)
        assert send.returncode == 0, send.stderr

    def start(self) -> subprocess.Popen[str]:
        self.proc = self._stack.enter_context(foxtive_run(self.tmp, self.env))
        return self.proc

    def stop(self) -> str:
        """SIGTERM: the worker drains and exits 0; its stderr."""
        assert self.proc is not None
        return stop(self.proc)

    def kill(self) -> None:
        self._stack.close()


@pytest.fixture
def judge() -> Iterator[redis.Redis]:
    r = redis.Redis.from_url(REDIS_URL)
    r.client_setname("foxtive-conn-judge")
    yield r
    r.close()


def clients_of(r: redis.Redis, pid: int) -> list[dict[str, Any]]:
    """The ``CLIENT LIST`` rows of process ``pid``'s connections."""
    ports = local_ports(pid, 6379)
    return [c for c in r.client_list() if int(str(c["addr"]).rsplit(":", 1)[1]) in ports]


def command_clients(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows that are not a blocking reader (readers only ever XREADGROUP)."""
    return [c for c in rows if c["cmd"] != "xreadgroup"]


def drained(r: redis.Redis, streams: list[str]) -> bool:
    """Every stream empty, with nothing pending in the app's group."""
    for s in streams:
        if r.xlen(s) or r.xpending(s, "foxtive")["pending"]:
            return False
    return True


def cleanup(r: redis.Redis, names: list[str]) -> None:
    keys = [k for n in names for k in r.scan_iter(match=f"{n}*", count=1000)]
    if keys:
        r.delete(*keys)


@pytest.mark.skipif(not REDIS_URL.startswith("redis://127.0.0.1:6379"),
                    reason="counts the connections to 127.0.0.1:6379")
def test_five_queues_six_connections(tmp_path: Path, judge: redis.Redis) -> None:
    w = Worker(tmp_path, QUEUES)
    try:
        w.send(1)
        assert all(judge.xlen(q) == 1 for q in w.queues)
        proc = w.start()
        wait_for_marks(w.marks, QUEUES, proc)  # every queue's pool is consuming
        rows = clients_of(judge, proc.pid)
        # One blocking reader per queue, one command connection for all.
        assert len(rows) == QUEUES + 1, rows
        assert len(command_clients(rows)) == 1, rows
        w.stop()
        assert drained(judge, w.queues)
    finally:
        w.kill()
        cleanup(judge, [w.name])


@pytest.mark.skipif(not REDIS_URL.startswith("redis://127.0.0.1:6379"),
                    reason="counts the connections to 127.0.0.1:6379")
def test_killing_the_shared_command_connection_mid_drain_loses_nothing(
        tmp_path: Path, judge: redis.Redis) -> None:
    per_queue = 300
    w = Worker(tmp_path, 3, pause=0.01)
    try:
        w.send(per_queue)
        total = 3 * per_queue
        proc = w.start()
        wait_for_marks(w.marks, 3 * 20, proc)  # well under way on every queue
        assert {m.split("-")[0] for m in os.listdir(w.marks)} == {"q0", "q1", "q2"}
        before = command_clients(clients_of(judge, proc.pid))
        assert len(before) == 1, before
        assert judge.client_kill_filter(_id=before[0]["id"]) == 1
        assert len(os.listdir(w.marks)) < total, "the drain ended before the kill"
        # Nothing lost: every task of every queue runs (at least once).
        wait_for_marks(w.marks, total, proc, timeout=120)
        want = {f"q{i}-{n}" for i in range(3) for n in range(per_queue)}
        assert set(os.listdir(w.marks)) == want
        # Every entry acknowledged (and deleted): the acks found their way.
        deadline = time.monotonic() + 30
        while not drained(judge, w.queues):
            assert time.monotonic() < deadline, [judge.xpending(q, "foxtive") for q in w.queues]
            time.sleep(0.1)  # polling another process's acks in Redis
        after = command_clients(clients_of(judge, proc.pid))
        assert len(after) == 1, after
        assert after[0]["id"] != before[0]["id"], "the worker reconnected by itself"
        w.stop()
    finally:
        w.kill()
        cleanup(judge, [w.name])


# One queue with results: 200 async tasks that finish together, so 200 final
# writes are in flight at once on the worker's loop.
RESULTS_APP = textwrap.dedent('''
    import asyncio
    import os

    import foxtive

    NAME = os.environ["CONN_APP"]
    app = foxtive.App(NAME, broker=os.environ["CONN_BROKER"], results=True)
    MARKS = os.environ["CONN_MARKS"]

    @app.task(queue=f"{NAME}-q0", name="together")
    async def together(n: int) -> int:
        await asyncio.sleep(0.5)
        with open(os.path.join(MARKS, f"q0-{n}"), "w"):
            pass
        return n

    TASKS = [together]
''')


@pytest.mark.skipif(not REDIS_URL.startswith("redis://127.0.0.1:6379"),
                    reason="counts the connections to 127.0.0.1:6379")
def test_result_writes_of_many_tasks_at_once_use_a_bounded_pool(
        tmp_path: Path, judge: redis.Redis) -> None:
    from foxtive.results import WRITE_CONNECTIONS

    tasks = 200
    w = Worker(tmp_path, 1)
    (tmp_path / "conn_app.py").write_text(RESULTS_APP)
    ids: list[str] = []
    try:
        send = subprocess.run(
            [sys.executable, "-c",
             "import conn_app\n"
             f"hs = conn_app.together.send_many_sync([(n,) for n in range({tasks})])\n"
             "print(' '.join(h.id for h in hs))\n"
             "conn_app.app.close()"],
            cwd=tmp_path, env=w.env, capture_output=True, text=True, timeout=120)
        assert send.returncode == 0, send.stderr
        ids = send.stdout.split()
        assert len(ids) == tasks
        proc = w.start()
        wait_for_marks(w.marks, tasks, proc)
        # Every final record written (the writes done, their connections
        # idle in the pool: redis-py keeps what it opened).
        deadline = time.monotonic() + 30
        while judge.exists(*(f"foxtive:result:{i}:done" for i in ids)) < tasks:
            assert time.monotonic() < deadline, "not every result was written"
            time.sleep(0.1)  # polling another process's writes in Redis
        rows = clients_of(judge, proc.pid)
        # The reader, the shared command connection, the writes' pool (and
        # the sync client, if anything used it): not one per task.
        assert len(rows) <= 2 + WRITE_CONNECTIONS + 1, rows
        w.stop()
    finally:
        w.kill()
        cleanup(judge, [w.name])
        for chunk in range(0, len(ids), 100):
            judge.delete(*(f"foxtive:result:{t}{end}" for t in ids[chunk:chunk + 100]
                           for end in ("", ":done")))
