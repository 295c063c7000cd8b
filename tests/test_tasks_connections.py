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


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc")
def test_sqlite_five_queues_one_connection(tmp_path: Path) -> None:
    db = tmp_path / "conn.db"
    marks = tmp_path / "marks"
    marks.mkdir()
    (tmp_path / "conn_app.py").write_text(APP)
    env = {**os.environ, "CONN_BROKER": f"sqlite:///{db}", "CONN_MARKS": str(marks),
           "PYTHONPATH": str(tmp_path), "PYTHONUNBUFFERED": "1"}
    send = subprocess.run(
        [sys.executable, "-c",
         "import conn_app\nfor t in conn_app.TASKS: t.send_sync(1)\nconn_app.app.close()"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert send.returncode == 0, send.stderr
    with sqlite3.connect(db) as judge:
        assert judge.execute("SELECT count(DISTINCT queue) FROM foxtive_jobs").fetchone() == (5,)
    worker = subprocess.Popen(
        [sys.executable, "-m", "foxtive", "run", "conn_app:app", "--no-scheduler"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_marks(marks, QUEUES, worker)  # every queue's pool is consuming
        assert open_count(worker.pid, db) == 1
        worker.send_signal(signal.SIGTERM)
        _, err = worker.communicate(timeout=60)
        assert worker.returncode == 0, err
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.communicate()
    with sqlite3.connect(db) as judge:
        assert judge.execute("SELECT count(*) FROM foxtive_jobs").fetchone() == (0,)
