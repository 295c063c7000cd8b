"""The foxtive command: demo and run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path


def test_demo_prints_progress_and_stops_cleanly_on_ctrl_c() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "foxtive", "demo"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("processed"):
            break
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    text = "".join(lines) + out
    assert "sent 'Welcome!' to" in text
    assert "stopped:" in text and "sent" in text


def test_demo_with_a_message_count_finishes_on_its_own() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "foxtive", "demo", "--messages", "300"],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout
    last = next(line for line in out.splitlines() if line.startswith("stopped:"))
    sent = int(last.split()[1].replace(",", ""))
    dead = int(last.split(",")[2].split()[0])
    assert sent + dead == 300, last
    assert "0 still queued" in last


def test_run_loads_a_factory_and_drains_on_sigterm(tmp_path: Path) -> None:
    (tmp_path / "jobs_app.py").write_text(textwrap.dedent(
        """
        import asyncio, atexit, sys
        import foxtive

        backend = foxtive.MemoryBackend("jobs")
        done = []

        async def handle(message):
            done.append(message.body)
            if len(done) == 3:
                print("READY", flush=True)

        def make_pool():
            backend.publish_many_sync([b"a", b"b", b"c"])
            return (foxtive.WorkerPoolBuilder("jobs").add_worker(handle, id="h")
                    .with_backend(backend).build())

        atexit.register(lambda: print(f"DONE {len(done)} {backend.qsize()}", flush=True))
        """
    ))
    proc = subprocess.Popen(
        [sys.executable, "-m", "foxtive", "run", "jobs_app:make_pool", "--shutdown-timeout", "2"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "READY"
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "DONE 3 0" in out


def test_run_rejects_a_target_that_is_not_a_pool(tmp_path: Path) -> None:
    (tmp_path / "not_a_pool.py").write_text("thing = 42\n")
    res = subprocess.run(
        [sys.executable, "-m", "foxtive", "run", "not_a_pool:thing"],
        cwd=tmp_path, capture_output=True, text=True, timeout=30,
    )
    assert res.returncode == 2
    assert "neither a WorkerPool" in res.stderr
