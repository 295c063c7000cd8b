"""``foxtive.backend_from_url``: one scheme table (in the Rust core) -> the right backend.

RabbitMQ and Redis round trips run against the real brokers on unique queues,
judged by rabbitmqctl and redis-py, and cleaned up afterwards."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis

import foxtive

from .rabbit_support import URL as AMQP_URL
from .rabbit_support import judge, list_queues, unique
from .redis_support import REDIS_URL, delete_keys, redis_answers, unique_stream

AVAILABLE = ("memory://, amqp://, amqps://, redis://, rediss://, unix://, redis+unix://, "
             "redis+cluster://, rediss+cluster://, "
             "sqlite://, postgresql://, postgres://, nats://, tls://")


def pool_collecting(seen: list[tuple[bytes, str]]) -> foxtive.WorkerPool:
    async def handler(m: foxtive.Message) -> None:
        seen.append((m.body, m.queue))

    return foxtive.WorkerPoolBuilder("url-pool").add_worker(handler, id="h").build()


def test_memory_url_names_the_backend_after_the_queue() -> None:
    queue = f"mem-{uuid.uuid4().hex[:8]}"
    backend = foxtive.backend_from_url("memory://", queue)
    assert isinstance(backend, foxtive.MemoryBackend)
    assert backend.name == queue
    backend.publish_sync(b"hello")
    seen: list[tuple[bytes, str]] = []
    assert pool_collecting(seen).run_until_idle(backend, timeout=30)
    assert seen == [(b"hello", queue)]


def test_rabbitmq_url_round_trip_on_its_queue() -> None:
    queue = unique("url")
    backend = foxtive.backend_from_url(AMQP_URL, queue, prefetch_count=7,
                                       reconnect_initial=0.2, reconnect_max=2.0)
    assert isinstance(backend, foxtive.RabbitMqBackend)
    assert backend.config.queue_name == queue
    assert backend.config.prefetch_count == 7
    seen: list[tuple[bytes, str]] = []

    async def scenario() -> None:
        async with judge(queue):
            await backend.publish(b"over-amqp", message_id="u-1")
            await backend.close()
            assert list_queues()[queue] == (1, 0)
            assert await pool_collecting(seen).run_until_idle_async(backend, timeout=60)
            assert list_queues()[queue] == (0, 0)

    asyncio.run(scenario())
    assert seen == [(b"over-amqp", queue)]
    assert queue not in list_queues()


@pytest.fixture
def r() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(REDIS_URL)
    if not redis_answers(client):
        pytest.skip(f"no Redis at {REDIS_URL}")
    yield client
    client.close()


def test_redis_url_round_trip_on_its_stream_with_group_foxtive(r: redis.Redis) -> None:
    stream = unique_stream("url")
    try:
        backend = foxtive.backend_from_url(REDIS_URL, stream, block_ms=200)
        assert isinstance(backend, foxtive.RedisStreamBackend)
        assert backend.config.stream_name == stream
        assert backend.config.group_name == "foxtive"
        asyncio.run(backend.publish(b"over-redis"))
        seen: list[tuple[bytes, str]] = []
        assert pool_collecting(seen).run_until_idle(backend, timeout=60)
        assert seen == [(b"over-redis", stream)]
        groups = r.xinfo_groups(stream)
        assert [g["name"] for g in groups] == [b"foxtive"]
        assert groups[0]["pending"] == 0
    finally:
        delete_keys(r, stream)
    assert not r.exists(stream)


def test_redis_group_can_be_overridden() -> None:
    backend = foxtive.backend_from_url(REDIS_URL, "s", group_name="workers")
    assert isinstance(backend, foxtive.RedisStreamBackend)
    assert backend.config.group_name == "workers"


@pytest.mark.parametrize(("url", "cls"), [
    ("amqps://guest:guest@127.0.0.1:5671/%2f", foxtive.RabbitMqBackend),
    ("AMQP://guest:guest@127.0.0.1:5672", foxtive.RabbitMqBackend),
    ("rediss://127.0.0.1:6380/0", foxtive.RedisStreamBackend),
    ("unix:///tmp/foxtive-no-such.sock", foxtive.RedisStreamBackend),
    ("redis+unix:///tmp/foxtive-no-such.sock?db=1", foxtive.RedisStreamBackend),
])
def test_every_scheme_builds_its_class_on_the_queue(url: str, cls: type) -> None:
    backend: Any = foxtive.backend_from_url(url, "orders")
    assert type(backend) is cls
    queue = backend.config.queue_name if cls is foxtive.RabbitMqBackend \
        else backend.config.stream_name
    assert queue == "orders"


@pytest.mark.parametrize("url", ["kafka://127.0.0.1:9092", "127.0.0.1:6379", "memory:/"])
def test_an_unknown_scheme_lists_the_known_ones(url: str) -> None:
    with pytest.raises(foxtive.ConfigError) as info:
        foxtive.backend_from_url(url, "q")
    assert AVAILABLE in str(info.value)


def test_a_redis_cluster_url_builds_the_redis_backend_without_connecting() -> None:
    backend = foxtive.backend_from_url(
        "redis+cluster://user:s3cret@127.0.0.1:1,127.0.0.1:2?partitions=3&wait_replicas=1", "q")
    assert isinstance(backend, foxtive.RedisStreamBackend)
    assert "s3cret" not in backend.url and "s3cret" not in repr(backend)
    keys = backend.stream_keys
    assert len(set(keys)) == 3 and all(k.startswith("{q:p") for k in keys), keys


@pytest.mark.parametrize("url", [
    "kafka://user:s3cret@127.0.0.1:9092",
    "postgresql://user:s3cret@127.0.0.1/db?bogus=1",
    "user:s3cret@127.0.0.1:5672",
    "memory://user:s3cret@x",
    "redis://user:s3cret@127.0.0.1:notaport/0",
    "amqp://user:s3cret@127.0.0.1:notaport/%2f",
])
def test_errors_never_show_the_password(url: str) -> None:
    with pytest.raises(foxtive.ConfigError) as info:
        foxtive.backend_from_url(url, "q")
    assert "s3cret" not in str(info.value)
    assert "s3cret" not in repr(info.value)


def test_unknown_options_are_named() -> None:
    with pytest.raises(foxtive.ConfigError, match=r"'bogus', 'prefetch'.*RabbitMQ.*reconnect_max"):
        foxtive.backend_from_url(AMQP_URL, "q", prefetch=5, bogus=1)
    with pytest.raises(foxtive.ConfigError, match=r"'prefetch_count'.*Redis"):
        foxtive.backend_from_url(REDIS_URL, "q", prefetch_count=5)
    with pytest.raises(foxtive.ConfigError, match=r"'size'.*memory://.*no options"):
        foxtive.backend_from_url("memory://", "q", size=5)
    with pytest.raises(foxtive.ConfigError, match=r"stream_name: give the queue"):
        foxtive.backend_from_url(REDIS_URL, "q", stream_name="other")
    with pytest.raises(foxtive.ConfigError, match=r"queue: must be a non-empty string"):
        foxtive.backend_from_url("memory://", "")
