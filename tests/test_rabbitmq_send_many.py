"""A big ``send_many`` / ``publish_many`` on RabbitMQ arrives complete, in
order, persistent, each with its id: the backend writes many publishes at
once (a window of them queued in lapin) and awaits every confirm. Real
broker; aio-pika judges."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import aio_pika
import pytest

import foxtive

try:
    from tests.rabbit_support import URL, backend, delete_queues, unique
except ImportError:  # tests/ is not a package
    from rabbit_support import URL, backend, delete_queues, unique  # type: ignore[no-redef]

#: More than the backend's write window (1,024), so several windows follow
#: each other within one call.
N = 3_000


@pytest.fixture
def queue(request: pytest.FixtureRequest) -> Iterator[str]:
    name = unique(request.node.name[5:25].replace("_", "-"))
    yield name
    delete_queues(name)


async def drain_with_pika(queue: str, n: int) -> list[aio_pika.abc.AbstractIncomingMessage]:
    """Every message of ``queue`` (exactly ``n`` expected), in queue order, acked."""
    conn = await aio_pika.connect(URL)
    try:
        ch = await conn.channel()
        q = await ch.declare_queue(queue, durable=True, passive=True)
        assert q.declaration_result.message_count == n
        got = []
        while True:
            m = await q.get(no_ack=False, fail=False)
            if m is None:
                break
            await m.ack()
            got.append(m)
        return got
    finally:
        await conn.close()


def test_send_many_arrives_complete_in_order(queue: str) -> None:
    async def go() -> None:
        app = foxtive.App("sendmany", broker=lambda q: backend(q))

        @app.task(name="t.send_many", queue=queue)
        async def work(i: int, s: str) -> None:
            pass

        handles = await work.send_many([(i, f"s{i}") for i in range(N)])
        await app.aclose()
        assert len({h.id for h in handles}) == N
        got = await drain_with_pika(queue, N)
        assert [json.loads(m.body)["args"] for m in got] == [[i, f"s{i}"] for i in range(N)]
        assert [m.message_id for m in got] == [h.id for h in handles]
        assert all(m.delivery_mode == aio_pika.DeliveryMode.PERSISTENT for m in got)
        assert all(m.headers.get("foxtive-task") == "t.send_many" for m in got)

    asyncio.run(go())


def test_publish_many_keeps_order_and_ids(queue: str) -> None:
    async def go() -> None:
        b = backend(queue)
        ids = [f"id-{i}" for i in range(N)]
        bodies: list[Any] = [b"m%d" % i for i in range(N)]
        assert await b.publish_many(bodies, headers={"h": "v"}, message_ids=ids) == ids
        await b.close()
        got = await drain_with_pika(queue, N)
        assert [m.body for m in got] == bodies
        assert [m.message_id for m in got] == ids
        assert all(m.headers.get("h") == "v" for m in got)

    asyncio.run(go())
