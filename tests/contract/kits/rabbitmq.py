"""RabbitMQ on 127.0.0.1:5672; judged by rabbitmqctl and aio-pika."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import aio_pika

import foxtive

from ...rabbit_support import URL, list_queues
from ..kit import CROSS_PROCESS, DROP_CONNECTION, BackendKit, DeadRecord, local_ports

T = TypeVar("T")


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` on a fresh loop in another thread (callers may be inside a loop)."""
    with ThreadPoolExecutor(1) as ex:
        return ex.submit(asyncio.run, coro).result(timeout=60)


def rabbitmqctl(*args: str) -> str:
    return subprocess.run(["rabbitmqctl", "-q", *args], capture_output=True, text=True,
                          check=True, timeout=60).stdout


class RabbitMqKit(BackendKit):
    name = "rabbitmq"
    capabilities = frozenset({CROSS_PROCESS, DROP_CONNECTION})

    @property
    def connection_name(self) -> str:
        return f"contract:{self.queue}"

    def available(self) -> str | None:
        async def ping() -> None:
            conn = await aio_pika.connect(URL, timeout=5)
            await conn.close()

        try:
            run_sync(ping())
        except Exception as exc:
            return f"no RabbitMQ at 127.0.0.1:5672: {exc}"
        return None

    def backend(self) -> foxtive.RabbitMqBackend:
        config = foxtive.RabbitMqConsumerConfig(queue_name=self.queue, prefetch_count=50,
                                                connection_name=self.connection_name)
        return foxtive.RabbitMqBackend(URL, config, reconnect_initial=0.2, reconnect_max=1.0)

    def _ours(self, name: str) -> bool:
        return (name == self.queue or name.startswith(self.queue + ".")) and not name.endswith(
            ".dlq")

    def waiting(self) -> int:
        # ready + unacknowledged, in the queue and its delay buckets ({queue}.retry.<ms>)
        return sum(r + u for name, (r, u) in list_queues().items() if self._ours(name))

    def dead_letters(self) -> list[DeadRecord]:
        async def read() -> list[DeadRecord]:
            conn = await aio_pika.connect(URL)
            out = []
            try:
                channel = await conn.channel()
                try:
                    q = await channel.declare_queue(f"{self.queue}.dlq", passive=True)
                except aio_pika.exceptions.ChannelClosed:
                    return []
                # Read without acking: closing the connection puts them back.
                while (m := await q.get(no_ack=False, fail=False)) is not None:
                    h = dict(m.headers or {})

                    def text(key: str, h: dict[str, Any] = h) -> str | None:
                        v = h.get(key)
                        return v.decode() if isinstance(v, bytes) else v

                    attempts = h.get("x-foxtive-attempts")
                    out.append(DeadRecord(
                        body=m.body, message_id=m.message_id,
                        error_type=text("x-foxtive-error-type"),
                        attempts=None if attempts is None else int(str(attempts)),
                        source_queue=text("x-foxtive-source-queue"), raw=h))
            finally:
                await conn.close()
            return out

        return run_sync(read())

    def drop_connections(self, pid: int) -> int:
        ports = local_ports(pid, 5672)
        closed = 0
        for line in rabbitmqctl("list_connections", "--no-table-headers", "pid", "peer_port",
                                "client_properties").splitlines():
            parts = line.split("\t")
            if len(parts) < 3 or f'"{self.connection_name}"' not in parts[2]:
                continue
            if not parts[1].strip().isdigit() or int(parts[1]) not in ports:
                continue
            rabbitmqctl("close_connection", parts[0].strip(), "foxtive contract: dropped")
            closed += 1
        return closed

    def cleanup(self) -> None:
        async def delete() -> None:
            conn = await aio_pika.connect(URL)
            channel = await conn.channel()
            for name in list_queues():
                if name == self.queue or name.startswith(self.queue + "."):
                    await channel.queue_delete(name)
            await conn.close()

        run_sync(delete())
