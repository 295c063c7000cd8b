"""The RabbitMQ connection itself, against the real broker: frame sizes (big
headers), a link that dies right after connecting, a broker address that
accepts TCP and never answers, vhosts in URLs and several nodes.

Faults are injected with a small TCP proxy or a silent listener inside the
test; the shared broker is never stopped."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aio_pika
import pytest

import foxtive

try:
    from tests.rabbit_support import URL, judge, publish_with_pika, ready_count, unique
except ImportError:  # tests/ is not a package
    from rabbit_support import (  # type: ignore[no-redef]
        URL,
        judge,
        publish_with_pika,
        ready_count,
        unique,
    )

BIG = "h" * 20_000  # over the 16 KiB frame foxtive used to propose


def backend_for(url: str | list[str], queue: str, **config: Any) -> foxtive.RabbitMqBackend:
    return foxtive.RabbitMqBackend(
        url, foxtive.RabbitMqConsumerConfig(queue_name=queue, **config),
        reconnect_initial=0.2, reconnect_max=5.0, reconnect_jitter=0.0,
    )


def run_pool(backend: Any, seen: list[str],
             timeout: float = 30.0) -> tuple[bool, foxtive.WorkerPool]:
    async def handler(message: foxtive.Message) -> None:
        seen.append(message.id)

    pool = (foxtive.WorkerPoolBuilder(unique("pool"))
            .add_worker(handler, id="h")
            .with_middleware(foxtive.RetryHandler(max_retries=0))
            .with_shutdown_timeout(5)
            .build())
    return pool.run_until_idle(backend, timeout=timeout), pool


# ------------------------------------------------------------------ helpers


class SilentListener:
    """Accepts TCP connections and never says a word (a wrong port, a load
    balancer in front of a dead node). ``accepted`` is set on the first."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.accepted = threading.Event()
        self.conns: list[socket.socket] = []
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)
            self.accepted.set()

    def close(self) -> None:
        self.sock.close()
        for c in self.conns:
            c.close()


@pytest.fixture
def silent() -> Iterator[SilentListener]:
    s = SilentListener()
    yield s
    s.close()


def dead_port() -> int:
    """A port nothing listens on."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port: int = s.getsockname()[1]
    s.close()
    return port


class CuttingProxy:
    """Forwards to the broker and cuts every connection ``life`` seconds
    after it was accepted: a link that dies right after connecting."""

    def __init__(self, life: float) -> None:
        self.life = life
        self.accepted = 0
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        up_r, up_w = await asyncio.open_connection("127.0.0.1", 5672)

        async def pump(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            with contextlib.suppress(Exception):
                while data := await r.read(65536):
                    w.write(data)
                    await w.drain()

        tasks = [asyncio.ensure_future(pump(reader, up_w)),
                 asyncio.ensure_future(pump(up_r, writer))]
        await asyncio.sleep(self.life)
        for t in tasks:
            t.cancel()
        for w in (writer, up_w):
            w.close()

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()


def rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", *args], check=True, capture_output=True, timeout=60)


# ------------------------------------------------- item 2: frames, backoff


def test_big_header_from_aio_pika_runs_once_and_the_rest_follow() -> None:
    queue = unique("bighdr")
    ids = [f"m-{i}" for i in range(6)]

    async def publish() -> None:
        async with judge() as ch:
            await publish_with_pika(ch, queue, [
                aio_pika.Message(b"x", message_id=i,
                                 headers={"big": BIG} if i == "m-2" else {},
                                 delivery_mode=aio_pika.DeliveryMode.PERSISTENT)
                for i in ids
            ])

    asyncio.run(publish())
    seen: list[str] = []
    b = backend_for(URL, queue)
    try:
        idle, pool = run_pool(b, seen, timeout=20)
        assert idle, f"not idle: {Counter(seen)}"
        assert Counter(seen) == Counter(ids), Counter(seen)
        stats = pool.stats()
        assert stats["dead_lettered"] == 0, stats
        assert stats["processed"] == len(ids), stats

        async def left() -> int:
            async with judge(queue) as ch:
                return await ready_count(ch, queue)

        assert asyncio.run(left()) == 0
    finally:
        async def cleanup() -> None:
            async with judge(queue):
                pass

        asyncio.run(cleanup())


def test_foxtive_publishes_a_20kb_header() -> None:
    queue = unique("bigpub")

    async def go() -> None:
        b = backend_for(URL, queue)
        async with judge(queue) as ch:
            await b.publish(b"body", headers={"big": BIG})
            # The shared connection survived: a second publish works too.
            await b.publish(b"after")
            await b.close()
            q = await ch.declare_queue(queue, passive=True)
            first = await q.get(timeout=5)
            second = await q.get(timeout=5)
            assert first.headers["big"] in (BIG, BIG.encode())
            assert second.body == b"after"
            await first.ack()
            await second.ack()

    asyncio.run(go())


def test_a_link_cut_right_after_connecting_backs_off() -> None:
    queue = unique("cut")

    async def go() -> tuple[int, int, int, int]:
        proxy = CuttingProxy(life=0.3)
        await proxy.start()
        b = backend_for(f"amqp://guest:guest@127.0.0.1:{proxy.port}/%2f", queue)
        pool = (foxtive.WorkerPoolBuilder(unique("pool"))
                .add_worker(lambda m: None, id="h")
                .with_shutdown_timeout(2)
                .build())
        running = asyncio.ensure_future(pool.run_async(b, handle_signals=False))
        most_failures = 0
        started = time.monotonic()
        while time.monotonic() - started < 5.0:
            await asyncio.sleep(0.05)
            most_failures = max(most_failures, b._native.consecutive_failures)
            assert not running.done() or running.exception() is None
        attempts = b._native.reconnect_attempts
        pool.shutdown()
        await asyncio.wait_for(running, 20)
        await proxy.stop()
        async with judge(queue):
            pass
        return most_failures, attempts, proxy.accepted, pool.stats()["dead_lettered"]

    most_failures, attempts, accepted, dead = asyncio.run(go())
    # Delays 0.2, 0.4, 0.8, 1.6, 3.2 s: a handful of attempts in 5 s, not one
    # every 0.3 s, and the failures in a row are counted.
    assert most_failures >= 3, (most_failures, attempts, accepted)
    assert attempts <= 8, (most_failures, attempts, accepted)
    assert accepted <= 9, (most_failures, attempts, accepted)
    assert dead == 0


# ----------------------------------------------- item 3: a silent broker

WORKER = """
import sys, foxtive
url, queue, resilient = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
# A connect timeout far beyond the shutdown timeout: only the shutdown may end it.
fields = foxtive.RabbitMqConsumerConfig.__dataclass_fields__
extra = {"connect_timeout": 60} if "connect_timeout" in fields else {}
backend = foxtive.RabbitMqBackend(
    url, foxtive.RabbitMqConsumerConfig(queue_name=queue, **extra))
if resilient:
    backend = foxtive.ResilientBackend(backend, foxtive.ReconnectStrategy.fixed(0.2))
pool = (foxtive.WorkerPoolBuilder("silent").add_worker(lambda m: None, id="h")
        .with_shutdown_timeout(2).build())
print("ready", flush=True)
try:
    pool.run(backend)
except foxtive.BackendError as e:
    print("error", e, flush=True)
print("exited", flush=True)
"""


@pytest.mark.parametrize("resilient", [False, True], ids=["plain", "resilient"])
def test_sigterm_while_connecting_to_a_silent_broker_exits_in_time(
        silent: SilentListener, tmp_path: Path, resilient: bool) -> None:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    url = f"amqp://guest:guest@127.0.0.1:{silent.port}/%2f"
    proc = subprocess.Popen([sys.executable, str(script), url, unique("silent"),
                             "1" if resilient else "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        assert silent.accepted.wait(30), "the worker never connected to the listener"
        sent = time.monotonic()
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=2 + 8)  # shutdown_timeout + a generous margin
        except subprocess.TimeoutExpired:
            pytest.fail("SIGTERM ignored while connecting")
        took = time.monotonic() - sent
        out, err = proc.communicate()
        assert proc.returncode == 0, (proc.returncode, out, err)
        assert "exited" in out, (out, err)
        assert took < 10
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_run_until_idle_never_says_idle_without_a_connection(silent: SilentListener) -> None:
    url = f"amqp://guest:guest@127.0.0.1:{silent.port}/%2f"
    fields = foxtive.RabbitMqConsumerConfig.__dataclass_fields__
    extra = {"connect_timeout": 60} if "connect_timeout" in fields else {}
    b = backend_for(url, unique("idle"), **extra)
    seen: list[str] = []
    started = time.monotonic()
    idle, _ = run_pool(b, seen, timeout=2)
    assert idle is False
    assert time.monotonic() - started < 15
    assert seen == []


def test_connect_timeout_is_a_setting_and_is_honoured(silent: SilentListener) -> None:
    config = foxtive.RabbitMqConsumerConfig(queue_name=unique("ct"))
    assert config.connect_timeout == 10.0
    config = config.with_connect_timeout(1.0)
    assert config.connect_timeout == 1.0
    with pytest.raises(foxtive.ConfigError, match="connect_timeout"):
        config.with_connect_timeout(0)
    b = foxtive.RabbitMqBackend(f"amqp://guest:s3cret-pw@127.0.0.1:{silent.port}/", config)

    async def go() -> str:
        with pytest.raises(foxtive.BackendError) as info:
            await b.connect()
        return str(info.value)

    started = time.monotonic()
    text = asyncio.run(go())
    assert time.monotonic() - started < 8
    assert "connect_timeout" in text and "timed out" in text, text
    assert "s3cret-pw" not in text


# ------------------------------------------------------ item 4: broker URLs


async def round_trip(url: str | list[str], vhost_url: str = URL, **config: Any) -> None:
    """Publish and consume one message through foxtive on ``url``; aio-pika on
    ``vhost_url`` sees the queue where it should be, and cleans up."""
    queue = unique("url")
    b = backend_for(url, queue, **config)
    await b.publish(b"hello", message_id="one")
    await b.close()
    conn = await aio_pika.connect(vhost_url)
    try:
        ch = await conn.channel()
        assert await ready_count(ch, queue) == 1
        seen: list[str] = []
        idle, _ = await asyncio.to_thread(run_pool, backend_for(url, queue, **config), seen, 20)
        assert idle and seen == ["one"]
        assert await ready_count(ch, queue) == 0
        await ch.queue_delete(queue)
    finally:
        await conn.close()


def test_trailing_slash_means_the_default_vhost() -> None:
    asyncio.run(round_trip("amqp://guest:guest@127.0.0.1:5672/"))
    asyncio.run(round_trip("amqp://guest:guest@127.0.0.1:5672"))


def test_percent_2f_and_a_named_vhost() -> None:
    asyncio.run(round_trip("amqp://guest:guest@127.0.0.1:5672/%2F"))
    vhost = unique("vh")
    rabbitmqctl("add_vhost", vhost)
    try:
        rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
        named = f"amqp://guest:guest@127.0.0.1:5672/{vhost}"
        asyncio.run(round_trip(named, vhost_url=named))
    finally:
        rabbitmqctl("delete_vhost", vhost)


def test_several_nodes_fail_over_to_the_good_one(silent: SilentListener) -> None:
    dead = dead_port()
    one = (f"amqp://guest:guest@127.0.0.1:{dead},127.0.0.1:{silent.port},"
           "127.0.0.1:5672/")
    for _ in range(3):  # the starting node is random
        asyncio.run(round_trip(one, connect_timeout=2))
    nodes = [f"amqp://guest:guest@127.0.0.1:{dead}/", "amqp://guest:guest@127.0.0.1:5672/"]
    asyncio.run(round_trip(nodes))


def test_several_nodes_keep_passwords_out_of_reprs_and_errors() -> None:
    dead = dead_port()
    b = foxtive.RabbitMqBackend(
        [f"amqp://u:s3cret-pw@127.0.0.1:{dead}/", f"amqp://u:s3cret-pw@127.0.0.1:{dead_port()}/"],
        foxtive.RabbitMqConsumerConfig(queue_name=unique("redact"), connect_timeout=2),
    )
    assert "s3cret-pw" not in repr(b) and "s3cret-pw" not in b.url

    async def go() -> str:
        with pytest.raises(foxtive.BackendError) as info:
            await b.connect()
        return str(info.value)

    assert "s3cret-pw" not in asyncio.run(go())
    with pytest.raises(foxtive.ConfigError, match="url"):
        foxtive.RabbitMqBackend([], foxtive.RabbitMqConsumerConfig())


def test_headers_bigger_than_a_frame_are_refused_without_killing_the_connection() -> None:
    queue = unique("hugehdr")

    async def go() -> None:
        b = backend_for(URL, queue)
        async with judge(queue) as ch:
            await b.publish(b"before")
            epoch = b._native.epoch
            with pytest.raises(foxtive.BackendError, match="frame_max"):
                await b.publish(b"huge", headers={"big": "h" * 300_000})
            await b.publish(b"after")
            assert b._native.epoch == epoch  # the same connection
            await b.close()
            assert await ready_count(ch, queue) == 2

    asyncio.run(go())
