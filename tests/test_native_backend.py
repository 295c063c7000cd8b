"""The native-backend seam: every backend that runs in Rust is a subclass of
one base, ``_core.NativeBackend``, so a new one needs no change to how the
pool, the DLQ tools or ``ResilientBackend`` recognise it (no list of classes).
Each native backend runs a pool and reaches its own dead-letter queue
through that base, against its real broker."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

import foxtive
from foxtive import _core
from foxtive._native import native_of
from foxtive.backends import NativeBackend

from .conftest import fast_retries
from .rabbit_support import URL as AMQP_URL
from .rabbit_support import delete_queues, unique
from .redis_support import REDIS_URL, delete_keys, unique_stream

#: The native classes foxtive ships today; a new one is found by scanning.
SHIPPED = {"MemoryBackend", "RabbitMqBackend", "RedisStreamBackend", "ResilientBackend"}


def native_classes() -> dict[str, type]:
    return {name: cls for name, cls in vars(_core).items()
            if isinstance(cls, type) and issubclass(cls, _core.NativeBackend)
            and cls is not _core.NativeBackend}


def test_every_native_class_subclasses_the_one_base() -> None:
    found = native_classes()
    assert SHIPPED <= set(found), found
    for name in found:
        # Each has a Python front of the same name on the Python base.
        front = getattr(foxtive, name)
        assert issubclass(front, NativeBackend), name
    with pytest.raises(TypeError):
        _core.NativeBackend()  # the base is abstract: only subclasses are built


def test_the_error_for_a_non_backend_lists_the_registry_backends() -> None:
    message = _core.not_a_backend("int")
    for name in ("MemoryBackend", "RabbitMqBackend", "RedisStreamBackend"):
        assert name in message
    builder = foxtive.WorkerPoolBuilder("p").add_worker(lambda m: None, id="h")
    with pytest.raises(foxtive.ConfigError, match=r"RedisStreamBackend.*got int"):
        builder.with_backend(3).build()  # type: ignore[arg-type]


@pytest.fixture
def redis_client() -> Iterator[Any]:
    client = redis.Redis.from_url(REDIS_URL)
    yield client
    client.close()


def memory_backend() -> tuple[foxtive.Backend, Callable[[], None]]:
    return foxtive.MemoryBackend(unique("native")), lambda: None


def rabbit_backend() -> tuple[foxtive.Backend, Callable[[], None]]:
    queue = unique("native")
    backend = foxtive.RabbitMqBackend(AMQP_URL, foxtive.RabbitMqConsumerConfig(queue_name=queue))
    return backend, lambda: delete_queues(queue)


def redis_backend() -> tuple[foxtive.Backend, Callable[[], None]]:
    stream = unique_stream("native")
    config = foxtive.RedisStreamConsumerConfig(stream_name=stream, group_name="g", block_ms=50)
    backend = foxtive.RedisStreamBackend(REDIS_URL, config)

    def cleanup() -> None:
        client = redis.Redis.from_url(REDIS_URL)
        delete_keys(client, stream)
        client.close()

    return backend, cleanup


def resilient_backend() -> tuple[foxtive.Backend, Callable[[], None]]:
    inner, cleanup = redis_backend()
    return foxtive.ResilientBackend(inner, foxtive.ReconnectStrategy.fixed(0.05)), cleanup


MAKERS = {"memory": memory_backend, "rabbitmq": rabbit_backend, "redis": redis_backend,
          "resilient": resilient_backend}


@pytest.mark.parametrize("kind", sorted(MAKERS))
def test_the_pool_and_the_dlq_take_every_native_backend_through_the_base(kind: str) -> None:
    backend, cleanup = MAKERS[kind]()
    try:
        native = native_of(backend)
        assert isinstance(native, _core.NativeBackend)
        assert backend.state in ("connected", "reconnecting", "closed")  # type: ignore[attr-defined]
        seen: list[bytes] = []

        def handle(message: foxtive.Message) -> None:
            if message.body == b"bad":
                raise ValueError("for the dead-letter queue")
            seen.append(message.body)

        async def publish() -> None:
            await backend.publish_many([b"a", b"b", b"bad"])

        asyncio.run(publish())
        pool = (foxtive.WorkerPoolBuilder(f"native-{kind}").add_worker(handle, id="h")
                .with_middleware(fast_retries(0)).build())
        # The bare native object is a backend too: no front needed.
        target = native if kind == "memory" else backend
        assert pool.run_until_idle(target, timeout=20)
        assert sorted(seen) == [b"a", b"b"]
        dlq = backend.dead_letter_queue()  # type: ignore[attr-defined]
        letters = dlq.get_failed_messages(10)
        assert [d.body for d in letters] == [b"bad"]
        assert letters[0].error_type == "ValueError"
    finally:
        cleanup()


def test_publish_many_gives_each_message_its_own_id(tmp_path: Any) -> None:
    """One batch, one id per body (what App.send_many sends as task ids);
    a count that does not match is refused before anything is published."""
    backend = foxtive.SqliteBackend(str(tmp_path / "ids.db"), "ids")
    ids = asyncio.run(backend.publish_many([b"a", b"b"], message_ids=["id-a", "id-b"]))
    assert ids == ["id-a", "id-b"]
    with pytest.raises(foxtive.ConfigError, match="fewer ids than bodies"):
        asyncio.run(backend.publish_many([b"c", b"d"], message_ids=["id-c"]))
    memory = foxtive.MemoryBackend("ids")
    with pytest.raises(foxtive.ConfigError, match="more ids than bodies"):
        memory.publish_many_sync([b"c"], message_ids=["x", "y"])
    assert memory.qsize() == 0
    assert memory.publish_many_sync([b"c"], message_ids=["id-c"]) == ["id-c"]
    seen: list[str] = []
    pool = foxtive.WorkerPoolBuilder("ids").add_worker(lambda m: seen.append(m.id)).build()
    assert pool.run_until_idle(memory, timeout=10)
    assert seen == ["id-c"]
