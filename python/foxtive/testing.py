"""foxtive's pytest plugin: fixtures for testing your workers.

It is registered as a ``pytest11`` entry point, so ``pip install foxtive``
is enough: the fixtures are there in every test, nothing to import.

``foxtive_memory_backend``
    A fresh :class:`foxtive.MemoryBackend` with a unique name.

``foxtive_runner``
    A :class:`Runner`. ``runner.drain(pool, backend, timeout=10)`` runs the
    pool until the backend is idle (``pool.run_until_idle``) and returns
    ``pool.stats()``. By default the first exception a handler raised is
    raised again from ``drain`` (the pool stops at that failure instead of
    retrying it), so a bug in a handler fails the test with its own
    traceback. ``raise_errors=False`` lets the failure policy run as in
    production; what the handlers raised is in ``runner.errors`` either way.
    ``require_idle=True`` (the default) raises ``TimeoutError`` when the
    pool was not idle within ``timeout``. ``await runner.drain_async(...)``
    is the same inside ``async def`` tests::

        def test_sends_email(foxtive_memory_backend, foxtive_runner):
            foxtive_memory_backend.publish_sync(b'{"to": "ann@example.com"}')
            pool = foxtive.WorkerPoolBuilder("t").add_worker(send_email).build()
            stats = foxtive_runner.drain(pool, foxtive_memory_backend)
            assert stats["processed"] == 1

``foxtive_rabbitmq_url`` / ``foxtive_redis_url``
    The broker URLs (session-wide): ``FOXTIVE_TEST_RABBITMQ_URL``, default
    ``amqp://guest:guest@127.0.0.1:5672/%2f``, and ``FOXTIVE_TEST_REDIS_URL``,
    default ``redis://127.0.0.1:6379/0``. When the broker does not accept a
    TCP connection the test is **skipped** with the reason, unless the ``CI``
    environment variable is set: then it **fails**, so that a CI job whose
    broker did not start cannot pass by skipping everything.

``foxtive_rabbitmq_queue``
    A unique queue name. Afterwards the queue and its dead-letter queue
    ``{queue}.dlq`` are deleted (retry-delay queues ``{queue}.retry.*``
    expire by themselves). Needs ``aio-pika`` for the clean-up.

``foxtive_redis_stream``
    A unique stream name. Afterwards the stream and every ``{stream}:*`` key
    (dead letters, delayed retries) are deleted. Needs ``redis`` (redis-py).

The helpers behind the clean-up, :func:`delete_rabbitmq_queues` and
:func:`delete_redis_stream`, can be called directly too.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import re
import socket
import threading
import urllib.parse
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest

from ._core import redact_url
from .backends import MemoryBackend

if TYPE_CHECKING:
    from ._core import Message
    from .pool import WorkerPool

__all__ = [
    "HandlerError",
    "Runner",
    "delete_rabbitmq_queues",
    "delete_redis_stream",
    "unique_name",
]

DEFAULT_RABBITMQ_URL = "amqp://guest:guest@127.0.0.1:5672/%2f"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


def unique_name(prefix: str = "foxtive-test") -> str:
    """``{prefix}-{8 hex digits}``: a name no other test run uses."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _prefix_for(request: pytest.FixtureRequest) -> str:
    """``foxtive-test-<test name>``, shortened to what every broker accepts."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", request.node.name).strip("-")[:40]
    return f"foxtive-test-{name}" if name else "foxtive-test"


# ------------------------------------------------------------------ runner
@dataclasses.dataclass(frozen=True)
class HandlerError:
    """One exception a handler raised during :meth:`Runner.drain`."""

    worker_id: str
    message_id: str
    body: bytes
    attempt: int
    error: BaseException


class Runner:
    """Runs pools in tests and reports what their handlers raised."""

    def __init__(self) -> None:
        #: Every handler exception of the last ``drain``, in order.
        self.errors: list[HandlerError] = []
        self._lock = threading.Lock()

    def drain(self, pool: WorkerPool, backend: Any = None, timeout: float = 10.0, *,
              raise_errors: bool = True, require_idle: bool = True) -> dict[str, Any]:
        """Run ``pool`` over ``backend`` until idle; return ``pool.stats()``.

        ``raise_errors`` (default): the first handler exception stops the pool
        and is raised again here. ``require_idle``: raise ``TimeoutError`` when
        the pool was not idle after ``timeout`` seconds."""
        return asyncio.run(self.drain_async(pool, backend, timeout, raise_errors=raise_errors,
                                            require_idle=require_idle))

    async def drain_async(self, pool: WorkerPool, backend: Any = None, timeout: float = 10.0,
                          *, raise_errors: bool = True,
                          require_idle: bool = True) -> dict[str, Any]:
        """:meth:`drain` inside a running event loop."""
        self.errors = []

        def record(worker_id: str, message: Message, error: BaseException) -> None:
            with self._lock:
                first = not self.errors
                self.errors.append(HandlerError(worker_id, message.id, message.body,
                                                message.attempt, error))
            if first and raise_errors:
                pool.shutdown()  # stop at the first failure: no retries to wait for

        pool.on_failure(record)
        try:
            idle = await pool.run_until_idle_async(backend, timeout)
        finally:
            pool.failure_listeners.remove(record)
        if raise_errors and self.errors:
            first = self.errors[0]
            first.error.add_note(
                f"(raised by worker {first.worker_id!r} on message {first.message_id!r}, "
                f"attempt {first.attempt}; re-raised by foxtive_runner.drain — "
                "pass raise_errors=False to let the failure policy handle it)"
            )
            raise first.error
        if require_idle and not idle:
            raise TimeoutError(
                f"pool {pool.name!r} was not idle after {timeout:g} s: {pool.stats()}"
            )
        return pool.stats()


# ------------------------------------------------------------------ brokers
def _unreachable(what: str, url: str, reason: str) -> None:
    """Dramatiq's rule: skip locally, fail in CI (``CI`` set)."""
    text = f"{what} is not reachable at {redact_url(url)} ({reason})"
    if os.environ.get("CI"):
        pytest.fail(f"{text}; CI is set, so this fails instead of skipping", pytrace=False)
    pytest.skip(f"{text}; start it or set the URL in the environment")


def _check_reachable(what: str, url: str, default_port: int) -> None:
    parts = urllib.parse.urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or default_port
    try:
        with socket.create_connection((host, port), timeout=2.0):
            pass
    except OSError as exc:
        _unreachable(what, url, f"{type(exc).__name__}: {exc}")


def _require(module: str, what: str, url: str) -> None:
    try:
        __import__(module)
    except ImportError:
        _unreachable(what, url, f"the {module!r} package is needed: pip install {module}")


async def delete_rabbitmq_queues(url: str, *queues: str) -> None:
    """Delete ``queues`` and their ``.dlq`` queues (missing ones are fine); uses aio-pika."""
    import aio_pika

    conn = await aio_pika.connect(url)
    try:
        channel = await conn.channel()
        for queue in queues:
            for name in (queue, f"{queue}.dlq"):
                await channel.queue_delete(name)
    finally:
        await conn.close()


async def delete_redis_stream(url: str, *streams: str) -> None:
    """Delete ``streams`` and every ``{stream}:*`` key; uses redis-py."""
    import redis.asyncio as aioredis

    client = aioredis.from_url(url)
    try:
        for stream in streams:
            keys = [stream.encode()]
            async for key in client.scan_iter(match=f"{_glob_escape(stream)}:*"):
                keys.append(key)
            await client.delete(*keys)
    finally:
        await client.aclose()


def _run_sync(coro: Any) -> None:
    """Run a coroutine to completion, in a thread if this one has a running loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        asyncio.run(coro)
        return
    errors: list[BaseException] = []

    def target() -> None:
        try:
            asyncio.run(coro)
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=target, name="foxtive-testing-cleanup")
    t.start()
    t.join()
    if errors:
        raise errors[0]


def _glob_escape(text: str) -> str:
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)


# ----------------------------------------------------------------- fixtures
@pytest.fixture
def foxtive_memory_backend(request: pytest.FixtureRequest) -> MemoryBackend:
    """A fresh in-process backend with a unique name."""
    return MemoryBackend(unique_name(_prefix_for(request)))


@pytest.fixture
def foxtive_runner() -> Runner:
    """Drains pools in tests; re-raises the first handler error by default."""
    return Runner()


@pytest.fixture(scope="session")
def foxtive_rabbitmq_url() -> str:
    """The RabbitMQ URL; skips (fails in CI) when RabbitMQ is not reachable."""
    url = os.environ.get("FOXTIVE_TEST_RABBITMQ_URL", DEFAULT_RABBITMQ_URL)
    _check_reachable("RabbitMQ", url, 5672)
    return url


@pytest.fixture(scope="session")
def foxtive_redis_url() -> str:
    """The Redis URL; skips (fails in CI) when Redis is not reachable."""
    url = os.environ.get("FOXTIVE_TEST_REDIS_URL", DEFAULT_REDIS_URL)
    _check_reachable("Redis", url, 6379)
    return url


@pytest.fixture
def foxtive_rabbitmq_queue(request: pytest.FixtureRequest,
                           foxtive_rabbitmq_url: str) -> Iterator[str]:
    """A unique RabbitMQ queue name; the queue and ``{queue}.dlq`` are deleted afterwards."""
    _require("aio_pika", "RabbitMQ", foxtive_rabbitmq_url)
    name = unique_name(_prefix_for(request))
    yield name
    _run_sync(delete_rabbitmq_queues(foxtive_rabbitmq_url, name))


@pytest.fixture
def foxtive_redis_stream(request: pytest.FixtureRequest, foxtive_redis_url: str) -> Iterator[str]:
    """A unique Redis stream name; the stream and ``{stream}:*`` are deleted afterwards."""
    _require("redis", "Redis", foxtive_redis_url)
    name = unique_name(_prefix_for(request))
    yield name
    _run_sync(delete_redis_stream(foxtive_redis_url, name))
