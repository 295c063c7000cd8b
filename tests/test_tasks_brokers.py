"""Tasks on the real Redis and RabbitMQ, with redis-py and aio-pika as
judges: the envelope as it sits on the broker, messages enqueued by other
clients in that shape, failures in the broker's own dead-letter queue, and
``send_sync`` from a thread that has no event loop."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
import threading
import uuid
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import aio_pika
import pytest
import redis

import foxtive

from .conftest import fast_retries
from .rabbit_support import URL as AMQP_URL
from .rabbit_support import delete_queues
from .redis_support import REDIS_URL, delete_keys


@dataclasses.dataclass
class Line:
    sku: str
    qty: int


@pytest.fixture
def stream(rclient: redis.Redis) -> Iterator[str]:
    name = f"foxtive-test:tasks:{uuid.uuid4().hex[:12]}"
    yield name
    delete_keys(rclient, name)


@pytest.fixture
def amqp_queue() -> Iterator[str]:
    name = f"foxtive-test-tasks-{uuid.uuid4().hex[:8]}"
    yield name
    delete_queues(name)


def redis_app(**kw: Any) -> foxtive.App:
    kw.setdefault("retry", fast_retries(2))
    return foxtive.App("tasks-redis", broker=REDIS_URL, **kw)


def send_from_plain_thread(fn: Any, *args: Any, **kwargs: Any) -> foxtive.TaskHandle:
    """Call ``fn`` on a new thread that has no event loop (Django, Flask)."""
    out: list[Any] = []

    def body() -> None:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:  # pragma: no cover - the point of the helper
            raise AssertionError("the thread has a running loop")
        try:
            out.append(fn(*args, **kwargs))
        except BaseException as e:
            out.append(e)

    t = threading.Thread(target=body)
    t.start()
    t.join(30)
    assert out, "send_sync did not return"
    if isinstance(out[0], BaseException):
        raise out[0]
    return out[0]


# ---------------------------------------------------------------- Redis
def test_redis_round_trip_from_plain_threads(stream: str, rclient: redis.Redis) -> None:
    app = redis_app()
    got: list[tuple[int, dt.datetime, Decimal, list[Line]]] = []

    @app.task(queue=stream, name="shop.order")
    def order(n: int, when: dt.datetime, total: Decimal, lines: list[Line]) -> None:
        got.append((n, when, total, lines))

    when = dt.datetime(2026, 5, 1, 9, 0, tzinfo=dt.UTC)
    handles = [send_from_plain_thread(order.send_sync, i, when, Decimal("9.50"),
                                      [Line("a", i)]) for i in range(3)]
    # No loop per call, and no loop thread at all: a native backend
    # publishes from the calling thread.
    loops = [t for t in threading.enumerate() if t.name == "foxtive-app-tasks-redis"]
    assert loops == []
    assert rclient.xlen(stream) == 3
    assert app.pool(stream).run_until_idle(timeout=30.0)
    assert sorted(g[0] for g in got) == [0, 1, 2]
    assert all(g[1] == when and g[2] == Decimal("9.50") for g in got)
    assert got[0][3] == [Line("a", got[0][0])]
    assert len({h.id for h in handles}) == 3
    app.close()


def test_redis_envelope_shape(stream: str, rclient: redis.Redis) -> None:
    app = redis_app()

    @app.task(queue=stream, name="shop.email")
    async def email(to: str, subject: str = "") -> None: ...

    handle = email.send_sync("ann@example.com", subject="Hi")
    [(_entry_id, fields)] = rclient.xrange(stream)
    assert json.loads(fields[b"body"]) == {"args": ["ann@example.com"],
                                           "kwargs": {"subject": "Hi"}}
    assert fields[b"id"].decode() == handle.id
    # Header values are one type byte then the value (README, Redis fields).
    assert fields[b"h:foxtive-task"] == b"sshop.email"
    assert fields[b"h:foxtive-envelope"] == b"i1"
    assert fields[b"h:content-type"] == b"sapplication/json"
    app.close()


def test_redis_message_enqueued_by_redis_py_runs(stream: str, rclient: redis.Redis) -> None:
    app = redis_app()
    got: list[tuple[int, str]] = []

    @app.task(queue=stream, name="reports.build")
    def build(report_id: int, title: str = "") -> None:
        got.append((report_id, title))

    # Another language's producer: plain fields, `data` is the body.
    rclient.xadd(stream, {"data": json.dumps({"args": [42], "kwargs": {"title": "Q3"}}),
                          "foxtive-task": "reports.build", "foxtive-envelope": "1",
                          "content-type": "application/json"})
    assert app.pool(stream).run_until_idle(timeout=30.0)
    assert got == [(42, "Q3")]
    assert rclient.xlen(f"{stream}:dlq") == 0
    app.close()


def test_redis_payload_error_and_unknown_task_dead_letters(stream: str,
                                                           rclient: redis.Redis) -> None:
    app = redis_app(retry=fast_retries(2))

    @app.task(queue=stream, name="reports.build")
    def build(report_id: int) -> None: ...

    build.send_sync("seven")  # type: ignore[arg-type]
    rclient.xadd(stream, {"data": json.dumps({"args": [], "kwargs": {}}),
                          "foxtive-task": "reports.gone"})
    assert app.pool(stream).run_until_idle(timeout=30.0)
    letters = {e[1][b"error_type"].decode(): e[1] for e in rclient.xrange(f"{stream}:dlq")}
    assert set(letters) == {"PayloadError", "UnknownTaskError"}
    assert letters["PayloadError"][b"attempts"] == b"1"
    assert b"report_id" in letters["PayloadError"][b"error_message"]
    assert letters["UnknownTaskError"][b"attempts"] == b"3"
    assert b"reports.gone" in letters["UnknownTaskError"][b"error_message"]
    app.close()


# ------------------------------------------------------------- RabbitMQ
async def test_rabbitmq_envelope_on_the_broker_and_foreign_publish(amqp_queue: str) -> None:
    app = foxtive.App("tasks-amqp", broker=AMQP_URL, retry=fast_retries(1))
    got: list[tuple[str, int]] = []

    @app.task(queue=amqp_queue, name="shop.email")
    async def email(to: str, count: int = 1) -> None:
        got.append((to, count))

    handle = await email.send("ann@example.com", count=2)
    conn = await aio_pika.connect(AMQP_URL)
    try:
        ch = await conn.channel()
        q = await ch.declare_queue(amqp_queue, durable=True)
        m = await q.get(timeout=10)
        assert m is not None
        assert m.message_id == handle.id
        assert json.loads(m.body) == {"args": ["ann@example.com"], "kwargs": {"count": 2}}
        assert m.headers["foxtive-task"] == "shop.email"
        assert m.headers["foxtive-envelope"] == 1
        assert m.headers["content-type"] == "application/json"
        await m.nack(requeue=True)
        # Another client enqueues a task in the documented shape.
        await ch.default_exchange.publish(aio_pika.Message(
            json.dumps({"args": ["bob@example.com"], "kwargs": {}}).encode(),
            content_type="application/json", message_id="from-pika",
            headers={"foxtive-task": "shop.email", "foxtive-envelope": 1},
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT), routing_key=amqp_queue)
        # And one that does not validate: dead-lettered at once.
        await ch.default_exchange.publish(aio_pika.Message(
            json.dumps({"args": ["carl@example.com"], "kwargs": {"count": "many"}}).encode(),
            headers={"foxtive-task": "shop.email", "foxtive-envelope": 1},
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT), routing_key=amqp_queue)
        assert await app.pool(amqp_queue).run_until_idle_async(timeout=30.0)
        assert sorted(got) == [("ann@example.com", 2), ("bob@example.com", 1)]
        dlq = await ch.declare_queue(f"{amqp_queue}.dlq", passive=True)
        dead = await dlq.get(timeout=10)
        assert dead is not None
        assert dead.headers["x-foxtive-error-type"] == "PayloadError"
        assert "count" in str(dead.headers["x-foxtive-error"])
        assert int(dead.headers["x-foxtive-attempts"]) == 1  # type: ignore[arg-type]
        await dead.ack()
    finally:
        await conn.close()
        await app.aclose()


def test_rabbitmq_send_sync_from_plain_thread(amqp_queue: str) -> None:
    app = foxtive.App("tasks-amqp-sync", broker=AMQP_URL)
    got: list[int] = []

    @app.task(queue=amqp_queue)
    def add(x: int, y: int) -> None:
        got.append(x + y)

    handles = [send_from_plain_thread(add.send_sync, i, 1) for i in range(5)]
    assert len({h.id for h in handles}) == 5
    assert app.pool(amqp_queue).run_until_idle(timeout=30.0)
    assert sorted(got) == [1, 2, 3, 4, 5]
    app.close()
