"""One AMQP connection per process and broker, not one per queue (issue 14).

The backends of one process that connect the same way (nodes, credentials,
vhost, TLS, heartbeat, ``connection_name``, ``connect_timeout``) share one
connection, each with its own channels. ``rabbitmqctl list_connections``
judges what the broker sees; aio-pika publishes and cleans up.

* ``foxtive run`` of the five-queue app of ``test_tasks_connections``
  (SQLite there, RabbitMQ here): one connection from the worker process,
  with a channel per queue and more;
* ``rabbitmqctl close_connection`` of the shared connection mid-drain of
  three queues: nothing lost, and the worker is back on ONE connection;
* a channel error of one queue (a refused declaration, a consumer the broker
  cancels) leaves the other queues and the connection alone.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aio_pika
import pytest

import foxtive

from .rabbit_support import URL, delete_queues, list_queues, publish_with_pika, unique
from .test_tasks_connections import (
    APP,
    QUEUES,
    conn_app,
    foxtive_run,
    send_one_each,
    stop,
    wait_for_marks,
)

AMQP_PORT = 5672


def connections() -> list[dict[str, Any]]:
    """``rabbitmqctl list_connections``: name, the client's port, the
    ``connection_name`` the client gave (RabbitMQ 3.x keeps it in the
    client properties), channels."""
    out = subprocess.run(
        ["rabbitmqctl", "list_connections", "-q", "--formatter", "json",
         "name", "peer_port", "client_properties", "channels"],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout
    rows = []
    for row in json.loads(out or "[]"):
        given = [v for k, _, v in row["client_properties"] if k == "connection_name"]
        rows.append({"name": row["name"], "peer_port": int(row["peer_port"]),
                     "connection_name": given[0] if given else None,
                     "channels": int(row["channels"])})
    return rows


def close_connection(name: str) -> None:
    """``rabbitmqctl close_connection`` of the connection called ``name``
    (it takes the connection's process id, as the table output prints it)."""
    out = subprocess.run(
        ["rabbitmqctl", "list_connections", "-q", "--no-table-headers", "name", "pid"],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout
    pids = [line.split("\t")[1] for line in out.splitlines()
            if line.split("\t")[0] == name]
    assert len(pids) == 1, (name, out)
    subprocess.run(["rabbitmqctl", "close_connection", pids[0], "foxtive test: cut"],
                   check=True, capture_output=True, timeout=60)


def named(connection_name: str) -> list[dict[str, Any]]:
    return [c for c in connections() if c["connection_name"] == connection_name]


def amqp_client_ports(pid: int) -> set[int]:
    """The local ports of ``pid``'s TCP connections to the AMQP port: its
    socket inodes (``/proc/<pid>/fd``) matched in ``/proc/net/tcp{,6}``."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:  # closed meanwhile
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:["):-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(table):
            continue
        with open(table) as f:
            next(f)
            for line in f:
                fields = line.split()
                local, remote, state, inode = fields[1], fields[2], fields[3], fields[9]
                # state 01: established
                if (inode in inodes and state == "01"
                        and int(remote.rsplit(":", 1)[1], 16) == AMQP_PORT):
                    ports.add(int(local.rsplit(":", 1)[1], 16))
    return ports


def backend(queue: str, connection_name: str, **config: Any) -> foxtive.RabbitMqBackend:
    return foxtive.RabbitMqBackend(
        URL, foxtive.RabbitMqConsumerConfig(queue_name=queue, connection_name=connection_name,
                                            **config),
        reconnect_initial=0.2, reconnect_max=2.0,
    )


def pool_of(handler: Any) -> foxtive.WorkerPool:
    return (foxtive.WorkerPoolBuilder(unique("pool")).add_worker(handler, id="h")
            .with_shutdown_timeout(10).build())


async def until(predicate: Any, timeout: float, what: str) -> None:
    """Poll ``predicate`` (broker state another process holds) until true."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{what} not within {timeout} s")
        await asyncio.sleep(0.05)


@pytest.fixture
def prefix() -> Iterator[str]:
    """A unique prefix; every queue named ``prefix...`` is deleted afterwards."""
    name = unique("conn")
    yield name
    for q in list_queues():
        if q.startswith(name):
            delete_queues(q)


# ----------------------------------------- foxtive run: one connection


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc")
def test_foxtive_run_of_five_queues_holds_one_connection(prefix: str, tmp_path: Path) -> None:
    app = APP.replace('f"conn5-q{i}"', f'f"{prefix}-q{{i}}"')
    assert app != APP, "the app's queue names moved; follow test_tasks_connections"
    marks, env = conn_app(tmp_path, URL, app)
    send_one_each(tmp_path, env)
    assert all(list_queues()[f"{prefix}-q{i}"] == (1, 0) for i in range(QUEUES))
    with foxtive_run(tmp_path, env) as worker:
        wait_for_marks(marks, QUEUES, worker)  # every queue's pool is consuming
        ports = amqp_client_ports(worker.pid)
        assert len(ports) == 1, ports
        seen = [c for c in connections() if c["peer_port"] in ports]
        assert len(seen) == 1, seen
        # consume, publish and admin channels of each of the five queues
        assert seen[0]["channels"] >= QUEUES, seen
        stop(worker)
    counts = list_queues()
    assert all(counts[f"{prefix}-q{i}"] == (0, 0) for i in range(QUEUES)), counts
    assert not [c for c in connections() if c["peer_port"] in ports]


# ---------------------------------- the shared connection closed mid-drain


def test_closing_the_shared_connection_mid_drain_loses_nothing(prefix: str) -> None:
    name = f"{prefix}-drain"
    queues = [f"{prefix}-d{i}" for i in range(3)]
    per_queue = 600
    hold = 50  # each queue's handler holds its 50th message until the cut

    async def go() -> None:
        conn = await aio_pika.connect(URL)
        ch = await conn.channel(publisher_confirms=True)
        for q in queues:
            await publish_with_pika(
                ch, q, (aio_pika.Message(f"{q}:{i}".encode(), delivery_mode=2)
                        for i in range(per_queue)))
        await conn.close()

        seen: dict[str, set[bytes]] = {q: set() for q in queues}
        held = {q: asyncio.Event() for q in queues}
        cut = asyncio.Event()

        def handler_for(q: str) -> Any:
            async def handle(m: foxtive.Message) -> None:
                seen[q].add(m.body)
                if len(seen[q]) >= hold and not cut.is_set():
                    held[q].set()
                    await cut.wait()
            return handle

        backends = [backend(q, name, prefetch_count=20) for q in queues]
        pools = [pool_of(handler_for(q)) for q in queues]
        runs = [asyncio.ensure_future(p.run_async(b, handle_signals=False))
                for p, b in zip(pools, backends, strict=True)]
        try:
            for q in queues:
                await asyncio.wait_for(held[q].wait(), 60)
            before = await asyncio.to_thread(named, name)
            assert len(before) == 1, before
            epochs = [b._native.epoch for b in backends]
            assert sum(len(s) for s in seen.values()) < len(queues) * per_queue  # mid-drain
            await asyncio.to_thread(close_connection, before[0]["name"])
            cut.set()
            want = {q: {f"{q}:{i}".encode() for i in range(per_queue)} for q in queues}
            await until(lambda: seen == want, 120, "every message of every queue")
            after = await asyncio.to_thread(named, name)
            assert len(after) == 1, after
            assert after[0]["name"] != before[0]["name"]
            assert after[0]["channels"] >= len(queues)
            for b, epoch in zip(backends, epochs, strict=True):
                assert b._native.epoch > epoch and b.state == "connected"
        finally:
            cut.set()
            for p in pools:
                p.shutdown()
            await asyncio.gather(*runs)
        # the last backend to close closed the connection
        assert await asyncio.to_thread(named, name) == []

    asyncio.run(go())
    counts = list_queues()
    assert all(counts[q] == (0, 0) for q in queues), counts


# ------------------------------- channel errors stay on their channel


def test_a_channel_error_of_one_queue_leaves_the_others_alone(prefix: str) -> None:
    name = f"{prefix}-chan"
    good, cancelled, refused = f"{prefix}-good", f"{prefix}-cancel", f"{prefix}-refused"

    async def go() -> None:
        judge = await aio_pika.connect(URL)
        ch = await judge.channel()
        # An existing queue the config contradicts: its declare gets 406.
        await ch.declare_queue(refused, durable=True, arguments={"x-max-length": 10})

        seen: dict[str, list[bytes]] = {good: [], cancelled: []}
        arrived = asyncio.Event()

        def handler_for(q: str) -> Any:
            async def handle(m: foxtive.Message) -> None:
                seen[q].append(m.body)
                arrived.set()
            return handle

        async def delivered(q: str, body: bytes) -> None:
            while body not in seen[q]:
                arrived.clear()
                await asyncio.wait_for(arrived.wait(), 30)

        backends = {q: backend(q, name) for q in (good, cancelled)}
        pools = [pool_of(handler_for(q)) for q in backends]
        runs = [asyncio.ensure_future(p.run_async(b, handle_signals=False))
                for p, b in zip(pools, backends.values(), strict=True)]
        try:
            for q, b in backends.items():
                await b.publish(b"first")
                await delivered(q, b"first")
            conn = await asyncio.to_thread(named, name)
            assert len(conn) == 1, conn
            good_epoch = backends[good]._native.epoch
            cancelled_epoch = backends[cancelled]._native.epoch

            # 1. A declaration the broker refuses (PRECONDITION_FAILED closes
            # the channel it ran on) fails that backend only.
            bad = backend(refused, name, queue_arguments={"x-max-length": 5})
            with pytest.raises(foxtive.ConfigError, match="x-max-length"):
                await bad.connect()
            await bad.close()

            # 2. The broker cancels a consumer (its queue deleted): that
            # backend subscribes again, on the same connection.
            await ch.queue_delete(cancelled)
            await until(lambda: backends[cancelled]._native.epoch > cancelled_epoch, 30,
                        "the cancelled consumer subscribing again")
            await backends[cancelled].publish(b"again")
            await delivered(cancelled, b"again")

            await backends[good].publish(b"second")
            await delivered(good, b"second")
            assert backends[good]._native.epoch == good_epoch  # never rebuilt
            now = await asyncio.to_thread(named, name)
            assert [c["name"] for c in now] == [conn[0]["name"]], (conn, now)
        finally:
            for p in pools:
                p.shutdown()
            await asyncio.gather(*runs)
            await judge.close()

    asyncio.run(go())
