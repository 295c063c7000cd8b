"""Faults with a real worker process: SIGTERM and SIGKILL mid-drain, and the
broker stopping and starting under a running worker (rabbitmqctl)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import aio_pika
import pytest

try:
    from tests.rabbit_support import (
        URL,
        delete_queues,
        list_queues,
        publish_with_pika,
        start_worker,
        unique,
    )
except ImportError:  # tests/ is not a package
    from rabbit_support import (  # type: ignore[no-redef]
        URL,
        delete_queues,
        list_queues,
        publish_with_pika,
        start_worker,
        unique,
    )

@pytest.fixture
def queue() -> Iterator[str]:
    name = unique("faults")
    yield name
    delete_queues(name)


def publish(queue: str, n: int) -> list[str]:
    ids = [f"m-{i}" for i in range(n)]

    async def go() -> None:
        conn = await aio_pika.connect(URL)
        ch = await conn.channel()
        await publish_with_pika(ch, queue, [
            aio_pika.Message(body=b"x" * 100, message_id=i,
                             delivery_mode=aio_pika.DeliveryMode.PERSISTENT)
            for i in ids
        ])
        await conn.close()

    asyncio.run(go())
    return ids



def processed(out: Path) -> list[str]:
    return out.read_text().split() if out.exists() else []


def wait_for(predicate: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def queue_counts(queue: str) -> tuple[int, int]:
    return list_queues().get(queue, (0, 0))


def test_sigterm_mid_drain_loses_nothing_and_repeats_nothing(queue: str, tmp_path: Path) -> None:
    n = 2000
    ids = publish(queue, n)
    out = tmp_path / "done.txt"
    proc = start_worker(queue, out, "--delay", "0.02", "--shutdown-timeout", "5")
    wait_for(lambda: len(processed(out)) >= 200, 30, "200 messages processed")
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    rc = proc.wait(timeout=15)
    took = time.monotonic() - started
    assert rc == 0, proc.stderr.read() if proc.stderr else rc
    assert took < 5 + 3, took
    done = processed(out)
    counts = Counter(done)
    assert max(counts.values()) == 1, [k for k, v in counts.items() if v > 1][:5]
    wait_for(lambda: queue_counts(queue)[1] == 0, 10, "no unacked messages")
    ready, unacked = queue_counts(queue)
    assert unacked == 0
    assert len(done) + ready == n
    assert set(done) <= set(ids)


def test_sigkill_mid_drain_then_restart_processes_everything(queue: str, tmp_path: Path) -> None:
    n = 2000
    prefetch = 50
    ids = publish(queue, n)
    out = tmp_path / "done.txt"
    proc = start_worker(queue, out, "--delay", "0.01", "--prefetch", str(prefetch))
    wait_for(lambda: len(processed(out)) >= 300, 30, "300 messages processed")
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    # A fresh worker drains the rest, including what the dead one held.
    again = start_worker(queue, out, "--prefetch", str(prefetch), "--until-idle")
    assert again.wait(timeout=120) == 0, again.stderr.read() if again.stderr else ""
    done = processed(out)
    assert set(done) == set(ids)
    duplicates = len(done) - len(set(done))
    # Only what the killed worker held (at most the prefetch) can repeat.
    assert duplicates <= prefetch, duplicates
    assert queue_counts(queue) == (0, 0)


@pytest.mark.timeout(240)
def test_broker_stop_and_start_mid_drain_the_worker_finishes(queue: str, tmp_path: Path) -> None:
    n = 3000
    ids = publish(queue, n)
    out = tmp_path / "done.txt"
    proc = start_worker(queue, out, "--delay", "0.01", "--shutdown-timeout", "5")
    try:
        wait_for(lambda: len(processed(out)) >= 300, 30, "300 messages processed")
        subprocess.run(["rabbitmqctl", "stop_app"], check=True, capture_output=True, timeout=60)
        try:
            stalled = len(processed(out))
            time.sleep(1.0)  # the broker is down for a while; nothing to wait on
            assert len(processed(out)) - stalled <= 50  # at most what was already in hand
        finally:
            subprocess.run(["rabbitmqctl", "start_app"], check=True, capture_output=True,
                           timeout=120)
        wait_for(lambda: set(processed(out)) >= set(ids), 120, "every message processed")
        # Deliveries whose acks died with the old channel come back once more
        # (at-least-once); the worker settles those too before the queue is empty.
        wait_for(lambda: queue_counts(queue) == (0, 0), 60, "an empty queue")
        assert proc.poll() is None, "the worker kept running through the outage"
    finally:
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=30)
    assert rc == 0, proc.stderr.read() if proc.stderr else rc
    assert os.path.exists(out)


def test_resilient_backend_reports_the_broker_restart(queue: str, tmp_path: Path) -> None:
    n = 2000
    ids = publish(queue, n)
    out, states = tmp_path / "done.txt", tmp_path / "states.txt"
    proc = start_worker(queue, out, "--delay", "0.01", "--resilient", str(states))
    try:
        wait_for(lambda: len(processed(out)) >= 200, 30, "200 messages processed")
        port = int(states.read_text().split("port ")[1].split()[0])

        def ready() -> int:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=5) as r:
                    return int(r.status)
            except urllib.error.HTTPError as e:
                return int(e.code)

        assert ready() == 200
        subprocess.run(["rabbitmqctl", "stop_app"], check=True, capture_output=True, timeout=60)
        try:
            wait_for(lambda: "connected->reconnecting" in states.read_text(), 30,
                     "the reconnecting state")
            wait_for(lambda: ready() == 503, 30, "/ready to answer 503 while the broker is down")
        finally:
            subprocess.run(["rabbitmqctl", "start_app"], check=True, capture_output=True,
                           timeout=120)
        wait_for(lambda: "reconnecting->connected" in states.read_text(), 60,
                 "the connected state again")
        wait_for(lambda: ready() == 200, 30, "/ready to answer 200 after the reconnect")
        wait_for(lambda: set(processed(out)) >= set(ids), 120, "every message processed")
        assert proc.poll() is None
    finally:
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=30)
    assert rc == 0, proc.stderr.read() if proc.stderr else rc
    assert states.read_text().splitlines()[-1].endswith("->closed")
