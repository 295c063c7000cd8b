"""``foxtive run`` of an app with five queues holds one connection per
broker where the broker allows it (issue 14). SQLite: the backends of one
file in one process share one write connection, so the worker process has
the database file open once, not once per queue (counted from
``/proc/<pid>/fd``; the tasks themselves prove every queue is consumed)."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

QUEUES = 5

APP = textwrap.dedent('''
    import os
    import sqlite3

    import foxtive

    app = foxtive.App("conn5", broker=os.environ["CONN_BROKER"])
    MARKS = os.environ["CONN_MARKS"]

    def make(i):
        def mark(n: int) -> None:
            with open(os.path.join(MARKS, f"q{i}-{n}"), "w"):
                pass
        return app.task(queue=f"conn5-q{i}", name=f"mark{i}")(mark)

    TASKS = [make(i) for i in range(5)]
''')


def open_count(pid: int, path: Path) -> int:
    """How many descriptors of ``pid`` are the database file itself (each
    SQLite connection opens it once; -wal and -shm are other names)."""
    target = str(path.resolve())
    n = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") == target:
                n += 1
        except OSError:  # closed meanwhile
            pass
    return n


def wait_for_marks(marks: Path, want: int, proc: subprocess.Popen[str],
                   timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while len(os.listdir(marks)) < want:
        if proc.poll() is not None:
            raise AssertionError(f"foxtive run exited: {proc.communicate()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"only {sorted(os.listdir(marks))} ran within {timeout} s")
        time.sleep(0.05)  # polling the marks the tasks write (another process)


def conn_app(tmp: Path, broker: str, app: str = APP) -> tuple[Path, dict[str, str]]:
    """``app`` as ``conn_app.py`` in ``tmp`` on ``broker``: its marks
    directory and the environment to send and run it with."""
    marks = tmp / "marks"
    marks.mkdir()
    (tmp / "conn_app.py").write_text(app)
    return marks, {**os.environ, "CONN_BROKER": broker, "CONN_MARKS": str(marks),
                   "PYTHONPATH": str(tmp), "PYTHONUNBUFFERED": "1"}


def send_one_each(tmp: Path, env: dict[str, str]) -> None:
    """One task to each of the app's queues, from a process of its own."""
    send = subprocess.run(
        [sys.executable, "-c",
         "import conn_app\nfor t in conn_app.TASKS: t.send_sync(1)\nconn_app.app.close()"],
        cwd=tmp, env=env, capture_output=True, text=True, timeout=60)
    assert send.returncode == 0, send.stderr


@contextmanager
def foxtive_run(cwd: Path, env: dict[str, str], app: str = "conn_app:app",
                *args: str) -> Iterator[subprocess.Popen[str]]:
    """``foxtive run APP --no-scheduler ARGS`` in ``cwd``; killed if the
    test leaves it running."""
    worker = subprocess.Popen(
        [sys.executable, "-m", "foxtive", "run", app, "--no-scheduler", *args],
        cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        yield worker
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.communicate()


def stop(worker: subprocess.Popen[str]) -> str:
    """SIGTERM: the worker drains and exits 0; its stderr."""
    worker.send_signal(signal.SIGTERM)
    _, err = worker.communicate(timeout=60)
    assert worker.returncode == 0, err
    return err


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc")
def test_sqlite_five_queues_one_connection(tmp_path: Path) -> None:
    db = tmp_path / "conn.db"
    marks, env = conn_app(tmp_path, f"sqlite:///{db}")
    send_one_each(tmp_path, env)
    with sqlite3.connect(db) as judge:
        assert judge.execute("SELECT count(DISTINCT queue) FROM foxtive_jobs").fetchone() == (5,)
    with foxtive_run(tmp_path, env) as worker:
        wait_for_marks(marks, QUEUES, worker)  # every queue's pool is consuming
        assert open_count(worker.pid, db) == 1
        stop(worker)
    with sqlite3.connect(db) as judge:
        assert judge.execute("SELECT count(*) FROM foxtive_jobs").fetchone() == (0,)
