"""`foxtive run --processes 2` on RabbitMQ: every message processed, a killed
child restarted, both drained on SIGTERM."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

import aio_pika

from .rabbit_support import URL, list_queues, publish_with_pika, unique

APP = textwrap.dedent(
    """
    import asyncio, os
    import foxtive

    OUT = os.environ["OUT_FILE"]

    async def handle(message):
        await asyncio.sleep(0.002)
        with open(OUT, "a") as f:
            f.write(message.id + "\\n")

    def make_pool():
        backend = foxtive.RabbitMqBackend(
            "amqp://guest:guest@127.0.0.1:5672/%2f",
            foxtive.RabbitMqConsumerConfig(queue_name=os.environ["QUEUE"], prefetch_count=20),
        )
        return (foxtive.WorkerPoolBuilder("multi").with_concurrency_limit(20)
                .add_worker(handle, id="h").with_backend(backend).build())
    """
)


def wait_for(predicate: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_two_processes_kill_one_then_drain_both(tmp_path: Path) -> None:
    queue = unique("procs")
    n = 3000
    ids = [f"p-{i}" for i in range(n)]

    async def publish() -> None:
        conn = await aio_pika.connect(URL)
        ch = await conn.channel()
        await ch.declare_queue(queue, durable=True)
        await publish_with_pika(ch, queue, [
            aio_pika.Message(body=b"x", message_id=i,
                             delivery_mode=aio_pika.DeliveryMode.PERSISTENT) for i in ids])
        await conn.close()

    async def cleanup() -> None:
        conn = await aio_pika.connect(URL)
        ch = await conn.channel()
        for q in list_queues():
            if q == queue or q.startswith(queue + "."):
                await ch.queue_delete(q)
        await conn.close()

    asyncio.run(publish())
    (tmp_path / "procs_app.py").write_text(APP)
    out = tmp_path / "done.txt"
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "QUEUE": queue, "OUT_FILE": str(out)}
    parent = subprocess.Popen(
        [sys.executable, "-m", "foxtive", "run", "procs_app:make_pool", "--processes", "2",
         "--shutdown-timeout", "5", "--log-level", "WARNING"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    pids: dict[int, int] = {}
    try:
        assert parent.stdout is not None
        while len(pids) < 2:
            line = parent.stdout.readline()
            m = re.match(r"foxtive: child (\d) started \(pid (\d+)\)", line)
            assert m, line
            pids[int(m.group(1))] = int(m.group(2))

        def done() -> list[str]:
            return out.read_text().split() if out.exists() else []

        wait_for(lambda: len(done()) >= 300, 60, "300 messages processed")
        os.kill(pids[0], signal.SIGKILL)
        line = parent.stdout.readline()  # the parent restarts the dead child
        m = re.match(r"foxtive: child 0 started \(pid (\d+)\)", line)
        assert m and int(m.group(1)) != pids[0], line
        wait_for(lambda: set(done()) >= set(ids), 120, "every message processed")
        wait_for(lambda: list_queues().get(queue, (0, 0)) == (0, 0), 60, "an empty queue")
        t0 = time.monotonic()
        parent.send_signal(signal.SIGTERM)
        assert parent.wait(timeout=30) == 0, parent.stderr.read() if parent.stderr else ""
        assert time.monotonic() - t0 < 15
        counts = Counter(done())
        duplicates = sum(c - 1 for c in counts.values())
        assert duplicates <= 20  # only what the killed child held (its prefetch)
        for pid in pids.values():  # no child survives the parent
            assert not Path(f"/proc/{pid}").exists() or \
                Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    finally:
        if parent.poll() is None:
            parent.kill()
        asyncio.run(cleanup())


def test_bad_io_threads_setting_is_a_config_error() -> None:
    """FOXTIVE_IO_THREADS is read when the runtime first starts: a bad value
    fails that first use with a ConfigError naming the setting."""
    code = (
        "import foxtive\n"
        "pool = foxtive.WorkerPoolBuilder('p').add_worker(lambda m: None, id='w').build()\n"
        "try:\n"
        "    pool.run_until_idle(foxtive.MemoryBackend(), timeout=5)\n"
        "except foxtive.ConfigError as e:\n"
        "    print('ConfigError:', e)\n"
    )
    env = dict(os.environ, FOXTIVE_IO_THREADS="many")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, timeout=60)
    assert "ConfigError: FOXTIVE_IO_THREADS" in out.stdout, out.stdout + out.stderr
