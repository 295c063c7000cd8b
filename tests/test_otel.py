"""foxtive.OpenTelemetryMiddleware with the SDK's in-memory exporter: one
producer span per publish, one consumer span per message, each consumer
span the child of its message's producer span across real RabbitMQ and
Redis (the context travels in ``traceparent``); a failing handler's span
records the error; no hook (no span work) until a middleware is built."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
import redis

import foxtive
from foxtive import _tracecontext

from .conftest import fast_retries
from .rabbit_support import URL as AMQP_URL
from .rabbit_support import judge, unique
from .redis_support import REDIS_URL, delete_keys, unique_stream

sdk = pytest.importorskip("opentelemetry.sdk.trace")
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (  # noqa: E402
    InMemorySpanExporter,
)
from opentelemetry.trace import SpanKind, StatusCode  # noqa: E402


@pytest.fixture
def traced() -> Iterator[tuple[foxtive.OpenTelemetryMiddleware, InMemorySpanExporter]]:
    assert _tracecontext.producer_hook is None, "no span work before a middleware exists"
    exporter = InMemorySpanExporter()
    provider = sdk.TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    mw = foxtive.OpenTelemetryMiddleware(tracer_provider=provider, system="test")
    try:
        yield mw, exporter
    finally:
        mw.uninstall()
        assert _tracecontext.producer_hook is None


def run(backend: Any, mw: foxtive.OpenTelemetryMiddleware, n: int, fail: bool = False) -> None:
    async def publish() -> None:
        for i in range(n):
            await backend.publish(f"body-{i}".encode(), message_id=f"otel-{i}")
        await backend.close()

    asyncio.run(publish())

    async def handler(m: foxtive.Message) -> None:
        if fail:
            raise foxtive.PermanentError("nope")

    pool = (foxtive.WorkerPoolBuilder("otel").with_middleware(fast_retries(0))
            .with_middleware(mw).add_worker(handler, id="h").build())
    assert pool.run_until_idle(backend, timeout=60)


def check(exporter: InMemorySpanExporter, queue: str, n: int) -> list[Any]:
    spans = exporter.get_finished_spans()
    producers = [s for s in spans if s.kind == SpanKind.PRODUCER]
    consumers = [s for s in spans if s.kind == SpanKind.CONSUMER]
    assert len(producers) == n and len(consumers) == n, [s.name for s in spans]
    by_id = {p.context.span_id: p for p in producers}
    parents = []
    for c in consumers:
        assert c.parent is not None and c.parent.span_id in by_id, "child of its producer"
        assert c.context.trace_id == by_id[c.parent.span_id].context.trace_id
        parents.append(c.parent.span_id)
        assert c.name == f"process {queue}"
        assert c.attributes["messaging.destination.name"] == queue
        assert c.attributes["messaging.operation.type"] == "process"
        assert c.attributes["messaging.system"] == "test"
    assert len(set(parents)) == n, "one consumer span per message"
    assert sorted(c.attributes["messaging.message.id"] for c in consumers) == [
        f"otel-{i}" for i in range(n)]
    assert all(p.attributes["messaging.operation.type"] == "send" for p in producers)
    return consumers


def test_redis_consumer_spans_are_children_of_producer_spans(traced: Any) -> None:
    mw, exporter = traced
    stream = unique_stream("otel")
    try:
        run(foxtive.RedisStreamBackend(
            REDIS_URL, foxtive.RedisStreamConsumerConfig(stream_name=stream)), mw, 3)
        check(exporter, stream, 3)
    finally:
        delete_keys(redis.Redis.from_url(REDIS_URL), stream)


def test_rabbitmq_consumer_spans_are_children_of_producer_spans(traced: Any) -> None:
    mw, exporter = traced
    queue = unique("otel")

    async def body() -> None:
        async with judge(queue):
            backend = foxtive.RabbitMqBackend(
                AMQP_URL, foxtive.RabbitMqConsumerConfig(queue_name=queue))
            await asyncio.to_thread(run, backend, mw, 3, True)

    asyncio.run(body())
    consumers = check(exporter, queue, 3)
    for c in consumers:  # the handler failed: recorded on the span
        assert c.status.status_code == StatusCode.ERROR
        assert any(e.name == "exception" for e in c.events)
