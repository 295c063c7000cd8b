"""RabbitMQ backend against the real broker; aio-pika and rabbitmqctl judge."""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
from collections import Counter
from collections.abc import Iterator
from typing import Any

import aio_pika
import pytest

import foxtive

try:
    from tests.rabbit_support import URL, backend, list_queues, publish_with_pika, unique
except ImportError:  # tests/ is not a package
    from rabbit_support import URL, backend, list_queues, publish_with_pika, unique  # type: ignore[no-redef]


def fast_retries(max_retries: int = 3) -> foxtive.RetryHandler:
    return foxtive.RetryHandler(max_retries=max_retries, initial_backoff=0.001,
                                max_backoff=0.01, jitter=False)


def run(coro: Any) -> Any:
    return asyncio.run(coro)


@pytest.fixture
def queue(request: pytest.FixtureRequest) -> Iterator[str]:
    name = unique(request.node.name[5:25].replace("_", "-"))
    yield name

    async def cleanup() -> None:
        conn = await aio_pika.connect(URL)
        ch = await conn.channel()
        for q in list_queues():
            if q == name or q.startswith(name + "."):
                await ch.queue_delete(q)
        await conn.close()

    run(cleanup())


async def pika_publish(queue: str, messages: list[aio_pika.Message], **declare: Any) -> None:
    conn = await aio_pika.connect(URL)
    ch = await conn.channel()
    if declare:
        await ch.declare_queue(queue, durable=True, arguments=declare)
    await publish_with_pika(ch, queue, messages, declare=not declare)
    await conn.close()


async def pika_get_all(queue: str) -> list[aio_pika.abc.AbstractIncomingMessage]:
    conn = await aio_pika.connect(URL)
    ch = await conn.channel()
    q = await ch.declare_queue(queue, passive=True)
    out = []
    while True:
        m = await q.get(no_ack=True, fail=False)
        if m is None:
            break
        out.append(m)
    await conn.close()
    return out


def pool_of(handler: Any, **kw: Any) -> foxtive.WorkerPool:
    b = foxtive.WorkerPoolBuilder("p").add_worker(handler, id="h")
    if "retry" in kw:
        b = b.with_middleware(kw["retry"])
    return b.build()


HEADERS = {
    "int": 42,
    "neg": -(1 << 40),
    "flag": True,
    "ratio": 0.25,
    "text": "héllo",
    "raw": b"\x00\xff",
    "list": [1, "two", False],
    "table": {"k": 7, "nested": {"deep": "yes"}},
}


def test_10000_messages_from_aio_pika_each_once_with_typed_headers(queue: str) -> None:
    n = 10_000
    messages = [
        aio_pika.Message(
            body=json.dumps({"n": i}).encode(),
            message_id=f"id-{i}",
            headers={**HEADERS, "raw": bytearray(HEADERS["raw"]), "seq": i},
            correlation_id=f"c-{i}",
            content_type="application/json",
            priority=3,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        )
        for i in range(n)
    ]
    run(pika_publish(queue, messages))
    seen: Counter[str] = Counter()
    bad: list[str] = []

    async def handler(m: foxtive.Message) -> None:
        seen[m.id] += 1
        h = dict(m.headers)
        seq = h.pop("seq")
        if (h != HEADERS or m.json() != {"n": seq} or m.id != f"id-{seq}"
                or m.correlation_id != f"c-{seq}" or m.content_type != "application/json"
                or m.priority != 3 or m.queue != queue or m.attempt != 1):
            bad.append(f"{m.id}: {m.headers!r} {m.correlation_id} {m.priority}")

    b = backend(queue, prefetch_count=500)
    assert pool_of(handler).run_until_idle(b, timeout=60)
    assert not bad, bad[:3]
    assert len(seen) == n
    assert set(seen.values()) == {1}
    assert list_queues()[queue] == (0, 0)


def test_a_handler_that_acks_then_returns_does_not_break_the_channel(queue: str) -> None:
    run(pika_publish(queue, [aio_pika.Message(body=str(i).encode()) for i in range(101)]))
    done: list[bytes] = []

    async def handler(m: foxtive.Message) -> None:
        await m.ack()
        done.append(m.body)

    pool = pool_of(handler)
    assert pool.run_until_idle(backend(queue), timeout=30)
    assert sorted(int(b) for b in done) == list(range(101))
    assert pool.stats()["processed"] == 101
    assert list_queues()[queue] == (0, 0)


def test_a_long_retry_does_not_delay_a_short_one(queue: str) -> None:
    """A 20 s retry and a 0.5 s one: the short one comes back first, while the
    long one waits in its own bucket queue (not in the worker)."""
    b = backend(queue)
    events: list[tuple[str, int]] = []
    short_back = threading.Event()

    async def handler(m: foxtive.Message) -> None:
        events.append((m.text(), m.attempt))
        if m.attempt == 1:
            raise foxtive.RetryableError("later", delay=20.0 if m.text() == "long" else 0.5)
        short_back.set()

    pool = pool_of(handler)
    result: dict[str, Any] = {}

    async def scenario() -> None:
        await b.publish(b"long", message_id="long")
        await b.publish(b"short", message_id="short")
        runner = asyncio.ensure_future(pool.run_async(b, handle_signals=False))
        loop = asyncio.get_running_loop()
        got = await loop.run_in_executor(None, short_back.wait, 10.0)
        result["short_back"] = got
        result["stats"] = pool.stats()
        result["queues"] = list_queues()
        pool.shutdown()
        await runner

    run(scenario())
    assert result["short_back"], events
    assert events[:2] == [("long", 1), ("short", 1)] or events[:2] == [("short", 1), ("long", 1)]
    assert ("short", 2) in events and ("long", 2) not in events
    long_bucket = b.retry_queue_for(20.0)
    short_bucket = b.retry_queue_for(0.5)
    assert long_bucket != short_bucket
    assert result["queues"][long_bucket] == (1, 0)
    assert result["queues"][queue] == (0, 0)
    assert result["stats"]["in_flight"] == 0


def test_dead_letters_keep_the_message_and_say_why(queue: str) -> None:
    run(pika_publish(queue, [aio_pika.Message(
        body=b"payload", message_id="orig-1", headers={"custom": 5, "who": "me"},
        correlation_id="corr", app_id="billing", content_type="text/plain",
    )]))

    async def handler(m: foxtive.Message) -> None:
        raise foxtive.PermanentError("cannot bill this")

    pool = pool_of(handler)
    assert pool.run_until_idle(backend(queue), timeout=30)
    assert pool.stats()["dead_lettered"] == 1
    dead = run(pika_get_all(f"{queue}.dlq"))
    assert len(dead) == 1
    d = dead[0]
    assert d.body == b"payload"
    assert d.message_id == "orig-1"
    assert d.correlation_id == "corr"
    assert d.app_id == "billing"
    assert d.content_type == "text/plain"
    assert d.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
    h = d.headers
    assert h["custom"] == 5 and h["who"] == "me"
    assert h["x-foxtive-error-type"] == "PermanentError"
    assert "cannot bill this" in str(h["x-foxtive-error"])
    assert h["x-foxtive-attempts"] == 1
    assert h["x-foxtive-worker"] == "h"
    assert h["x-foxtive-poison-pill"] is False
    assert isinstance(h["x-foxtive-failed-at"], float) and h["x-foxtive-failed-at"] > 1.7e9
    assert list_queues()[queue] == (0, 0)


def test_retries_then_dead_letter_count_attempts(queue: str) -> None:
    run(pika_publish(queue, [aio_pika.Message(body=b"x", message_id="m")]))
    attempts: list[int] = []

    async def handler(m: foxtive.Message) -> None:
        attempts.append(m.attempt)
        raise RuntimeError("always")

    pool = pool_of(handler, retry=fast_retries(2))
    assert pool.run_until_idle(backend(queue), timeout=30)
    assert attempts == [1, 2, 3]
    dead = run(pika_get_all(f"{queue}.dlq"))
    assert [d.headers["x-foxtive-attempts"] for d in dead] == [3]
    assert dead[0].headers["x-foxtive-attempt"] == 3
    assert dead[0].message_id == "m"


def test_quorum_queue_attempts_survive_broker_redelivery(queue: str) -> None:
    """Another client takes the message and gives it back (requeue): the
    quorum queue's x-delivery-count makes the next attempt 2."""
    run(pika_publish(queue, [aio_pika.Message(body=b"q", message_id="q1")],
                     **{"x-queue-type": "quorum"}))

    async def reject_once() -> None:
        conn = await aio_pika.connect(URL)
        ch = await conn.channel()
        q = await ch.declare_queue(queue, passive=True)
        m = await q.get(no_ack=False)
        await m.nack(requeue=True)
        await conn.close()

    run(reject_once())
    attempts: list[int] = []

    async def handler(m: foxtive.Message) -> None:
        attempts.append(m.attempt)
        if m.attempt < 4:
            raise RuntimeError("again")

    b = backend(queue, queue_type="quorum")
    assert pool_of(handler, retry=fast_retries(5)).run_until_idle(b, timeout=30)
    assert attempts == [2, 3, 4]
    assert list_queues()[queue] == (0, 0)


def test_an_undecodable_body_goes_to_the_dlq_and_the_loop_goes_on(queue: str) -> None:
    bodies = [b'{"ok": 1}', b"\xff\xfe not json", b'{"ok": 2}']
    run(pika_publish(queue, [aio_pika.Message(body=x) for x in bodies]))
    decoded: list[Any] = []

    async def handler(m: foxtive.Message) -> None:
        decoded.append(m.json())

    pool = pool_of(handler, retry=fast_retries(3))
    assert pool.run_until_idle(backend(queue), timeout=30)
    assert sorted(d["ok"] for d in decoded) == [1, 2]
    dead = run(pika_get_all(f"{queue}.dlq"))
    assert [d.body for d in dead] == [b"\xff\xfe not json"]
    assert dead[0].headers["x-foxtive-error-type"] == "PayloadError"
    assert dead[0].headers["x-foxtive-attempts"] == 1
    assert list_queues()[queue] == (0, 0)


def test_an_8_mb_body_arrives_intact(queue: str) -> None:
    body = bytes(range(256)) * (8 * 1024 * 1024 // 256)
    run(pika_publish(queue, [aio_pika.Message(body=body)]))
    digests: list[tuple[int, str]] = []

    async def handler(m: foxtive.Message) -> None:
        digests.append((len(m.body), hashlib.sha256(m.body).hexdigest()))

    assert pool_of(handler).run_until_idle(backend(queue), timeout=30)
    assert digests == [(len(body), hashlib.sha256(body).hexdigest())]


def test_publish_is_persistent_confirmed_and_keeps_ids(queue: str) -> None:
    b = backend(queue)

    async def scenario() -> list[str]:
        one = await b.publish(b"a", headers={"k": 1, "b": b"x"}, message_id="mine")
        many = await b.publish_many([b"b", "c"])
        await b.close()
        return [one, *many]

    ids = run(scenario())
    # Publishing again after close reconnects (publish-only).
    ids.append(run(b.publish(b"d")))
    run(b.close())
    assert ids[0] == "mine" and len(set(ids)) == 4
    got = run(pika_get_all(queue))
    assert [m.body for m in got] == [b"a", b"b", b"c", b"d"]
    assert [m.message_id for m in got] == ids
    assert all(m.delivery_mode == aio_pika.DeliveryMode.PERSISTENT for m in got)
    assert got[0].headers == {"k": 1, "b": b"x"}


def test_delayed_publish_waits_in_the_broker(queue: str) -> None:
    b = backend(queue)
    seen: list[str] = []

    async def scenario() -> None:
        await b.publish(b"late", delay=0.3, message_id="late")
        await b.publish(b"now", message_id="now")
        await b.close()

    run(scenario())

    async def handler(m: foxtive.Message) -> None:
        seen.append(m.id)

    assert pool_of(handler).run_until_idle(backend(queue), timeout=30)
    assert seen == ["now", "late"]


def test_the_password_never_shows(queue: str) -> None:
    secret = "s3cr3t-pw"
    url = f"amqp://guest:{secret}@127.0.0.1:5672/%2f"
    b = foxtive.RabbitMqBackend(url, foxtive.RabbitMqConsumerConfig(queue_name=queue))
    assert secret not in repr(b) and secret not in b.url
    assert "guest:***@127.0.0.1" in repr(b)

    async def noop(m: foxtive.Message) -> None:
        pass

    with pytest.raises(foxtive.BackendError) as info:
        pool_of(noop).run_until_idle(b, timeout=10)
    assert secret not in str(info.value)
    assert "***" in str(info.value)
    with pytest.raises(foxtive.ConfigError) as bad_url:
        foxtive.RabbitMqBackend(f"amqp://guest:{secret}@[nope", foxtive.RabbitMqConsumerConfig())
    assert secret not in str(bad_url.value)


def test_config_defaults_validation_and_with_chain() -> None:
    c = foxtive.RabbitMqConsumerConfig()
    assert c.queue_name == "worker_queue"
    assert c.prefetch_count == 100 and c.declare and c.durable and c.queue_type == "classic"
    assert c.consumer_tag and c.consumer_tag.startswith("foxtive-")
    assert c.consumer_tag != foxtive.RabbitMqConsumerConfig().consumer_tag
    assert c.dead_letter_queue_or_default == "worker_queue.dlq"
    c2 = c.with_queue_name("emails").with_prefetch_count(10)
    assert (c2.queue_name, c2.prefetch_count, c.queue_name) == ("emails", 10, "worker_queue")
    with pytest.raises(AttributeError):
        c.queue_name = "x"  # type: ignore[misc]
    for kwargs, word in [
        ({"queue_type": "stream"}, "queue_type"),
        ({"prefetch_count": 0}, "prefetch_count"),
        ({"prefetch_count": 70000}, "prefetch_count"),
        ({"queue_name": ""}, "queue_name"),
        ({"routing_key": "k"}, "routing_key"),
        ({"queue_type": "quorum", "durable": False}, "durable"),
        ({"exchange_type": "weird", "exchange": "e"}, "exchange_type"),
        ({"heartbeat": -1}, "heartbeat"),
        ({"dead_letter_queue": "worker_queue"}, "dead_letter_queue"),
    ]:
        with pytest.raises(foxtive.ConfigError, match=word):
            foxtive.RabbitMqConsumerConfig(**kwargs)
    with pytest.raises(foxtive.ConfigError, match="config"):
        foxtive.RabbitMqBackend(URL, {"queue_name": "x"})  # type: ignore[arg-type]


def test_binds_to_an_exchange(queue: str) -> None:
    exchange = f"{queue}.ex"
    seen: list[bytes] = []

    async def scenario() -> None:
        b = backend(queue, exchange=exchange, exchange_type="topic", routing_key="orders.*")
        await b.connect()
        conn = await aio_pika.connect(URL)
        ch = await conn.channel()
        ex = await ch.get_exchange(exchange)
        await ex.publish(aio_pika.Message(body=b"routed"), routing_key="orders.new")
        await conn.close()
        await b.close()

    run(scenario())

    async def handler(m: foxtive.Message) -> None:
        seen.append(m.body)
        assert m.routing_key == "orders.new"

    assert pool_of(handler).run_until_idle(backend(queue), timeout=30)
    assert seen == [b"routed"]

    async def drop_exchange() -> None:
        conn = await aio_pika.connect(URL)
        ch = await conn.channel()
        await ch.exchange_delete(exchange)
        await conn.close()

    run(drop_exchange())


def test_state_and_reconnect_counters(queue: str) -> None:
    b = backend(queue)
    assert b.state == "closed"
    seen: list[int] = []
    broke = threading.Event()

    async def handler(m: foxtive.Message) -> None:
        seen.append(int(m.body))

    pool = pool_of(handler)
    info: dict[str, Any] = {}

    async def scenario() -> None:
        await b.publish_many([str(i).encode() for i in range(50)])
        runner = asyncio.ensure_future(pool.run_async(b, handle_signals=False))
        while len(seen) < 50:
            await asyncio.sleep(0.01)
        info["before"] = (b.state, b.reconnect_attempts)
        await b._native.break_connection()
        broke.set()
        await b.publish_many([str(i).encode() for i in range(50, 100)])
        while len(set(seen)) < 100:
            await asyncio.sleep(0.01)
        info["after"] = (b.state, b.reconnect_attempts, b.consecutive_failures)
        pool.shutdown()
        await runner

    run(scenario())
    assert info["before"] == ("connected", 0)
    state, attempts, failures = info["after"]
    assert state == "connected" and attempts >= 1 and failures == 0
    assert set(seen) == set(range(100))
    assert b.state == "closed"
    assert list_queues()[queue] == (0, 0)
