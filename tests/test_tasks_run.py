"""``foxtive run module:app`` in a subprocess on the real Redis: it runs every
queue of the app, results come back to the sending process, and SIGTERM
drains it to exit code 0. Also the memory demo of examples/tasks_email.py."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import redis

from .redis_support import REDIS_URL, delete_keys

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_example_runs_on_memory() -> None:
    proc = subprocess.run([sys.executable, str(EXAMPLES / "tasks_email.py")],
                          capture_output=True, text=True, timeout=60, cwd=EXAMPLES)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("result: user") == 3
    assert "failed for good: PermanentError: not an address" in proc.stdout


def test_foxtive_run_app_sends_results_back_and_drains_on_sigterm() -> None:
    queue = f"foxtive-test:tasks-run:{uuid.uuid4().hex[:12]}"
    env = {**os.environ, "FOXTIVE_BROKER": REDIS_URL, "TASKS_EMAIL_QUEUE": queue,
           "PYTHONUNBUFFERED": "1"}
    worker = subprocess.Popen([sys.executable, "-m", "foxtive", "run", "tasks_email:app"],
                              cwd=EXAMPLES, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    ids: list[str] = []
    try:
        sender = subprocess.run(
            [sys.executable, str(EXAMPLES / "tasks_email.py"), "send", "ann@example.com",
             "bob@example.com"],
            cwd=EXAMPLES, env=env, capture_output=True, text=True, timeout=60)
        assert sender.returncode == 0, sender.stderr
        ids = re.findall(r"task (\w+): sent", sender.stdout)
        assert len(ids) == 2
        assert "sent to ann@example.com" in sender.stdout
        assert "sent to bob@example.com" in sender.stdout
        worker.send_signal(signal.SIGTERM)
        out, err = worker.communicate(timeout=60)
        assert worker.returncode == 0, err
        assert "Sending 'Welcome, ann!' to ann@example.com" in out
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.communicate()
        client = redis.Redis.from_url(REDIS_URL)
        delete_keys(client, queue)
        for task_id in ids:
            client.delete(f"foxtive:result:{task_id}", f"foxtive:result:{task_id}:done")
        client.close()
