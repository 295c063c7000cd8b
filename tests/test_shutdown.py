"""Graceful shutdown on SIGTERM / SIGINT, in a real subprocess."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from typing import Any

import pytest

WORKER = textwrap.dedent(
    """
    import asyncio, json, logging, os, sys, threading, time
    import foxtive

    logging.basicConfig(level=logging.INFO, stream=sys.stderr)

    mode, n, shutdown_timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    backend = foxtive.MemoryBackend("jobs")
    backend.publish_many_sync([str(i).encode() for i in range(n)])
    done, started = [], []
    teardown = []

    class Slow(foxtive.Worker):
        id = "slow"
        concurrency = 4

        async def process(self, message):
            started.append(message.body.decode())
            if len(started) == 4:
                print("READY", flush=True)
            if mode == "hang":
                await asyncio.sleep(3600)
            await asyncio.sleep(0.3)
            done.append(message.body.decode())

        async def teardown(self):
            teardown.append(True)

    class SyncHang:
        concurrency = 2

        def __call__(self, message):
            started.append(message.body.decode())
            if len(started) == 2:
                print("READY", flush=True)
            time.sleep(3600)

    worker = SyncHang() if mode == "sync-hang" else Slow()
    pool = (foxtive.WorkerPoolBuilder("shutdown").add_worker(worker, id="slow")
            .with_shutdown_timeout(shutdown_timeout).build())
    pool.run(backend)
    print(json.dumps({"done": done, "started": started, "qsize": backend.qsize(),
                      "unacked": backend.unacked(), "teardown": len(teardown),
                      "stats": pool.stats()}), flush=True)
    """
)


def start(mode: str, n: int, shutdown_timeout: float) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", WORKER, mode, str(n), str(shutdown_timeout)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()  # blocks until the worker is busy
    assert line.strip() == "READY", proc.stderr.read() if proc.stderr else line
    return proc


def finish(proc: subprocess.Popen[str], timeout: float) -> dict[str, Any]:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_drains_in_flight_and_hands_back_the_rest(sig: signal.Signals) -> None:
    n = 100
    proc = start("slow", n, 10.0)
    t0 = time.monotonic()
    proc.send_signal(sig)
    result = finish(proc, timeout=15)
    elapsed = time.monotonic() - t0
    assert elapsed < 5
    done = result["done"]
    # Everything that started finished; nothing was processed twice.
    assert sorted(done) == sorted(result["started"])
    assert len(set(done)) == len(done)
    # Nothing lost: processed + still queued = published; nothing left unacked.
    assert len(done) + result["qsize"] == n
    assert result["unacked"] == 0
    assert result["teardown"] == 1
    assert result["stats"]["processed"] == len(done)


def test_shutdown_timeout_bounds_a_hanging_handler() -> None:
    n = 20
    proc = start("hang", n, 1.0)
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    result = finish(proc, timeout=15)
    assert 0.9 <= time.monotonic() - t0 < 5
    assert result["done"] == []
    assert result["qsize"] == n  # the hung messages went back, unacked
    assert result["unacked"] == 0 and result["stats"]["processed"] == 0
    assert result["teardown"] == 1


def test_second_signal_stops_at_once_without_acking() -> None:
    n = 20
    proc = start("hang", n, 60.0)
    proc.send_signal(signal.SIGTERM)
    assert proc.stderr is not None
    for line in proc.stderr:  # wait until the first signal was handled
        if "draining" in line:
            break
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    result = finish(proc, timeout=15)
    assert time.monotonic() - t0 < 5
    assert result["qsize"] == n and result["stats"]["processed"] == 0


def test_sync_handler_that_never_returns_does_not_block_shutdown() -> None:
    n = 10
    proc = start("sync-hang", n, 0.5)
    t0 = time.monotonic()
    os.kill(proc.pid, signal.SIGTERM)
    result = finish(proc, timeout=15)
    assert time.monotonic() - t0 < 5
    assert result["qsize"] == n and result["unacked"] == 0
