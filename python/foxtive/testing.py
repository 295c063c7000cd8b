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

``foxtive_app``
    Tasks under test, the way Dramatiq's ``StubBroker`` + ``join`` and
    Celery's eager mode are used: ``t = foxtive_app(app)`` moves ``app`` to
    an isolated ``memory://`` broker with in-memory results for this test
    (its tasks, plain handlers and retry policy stay), and puts it back as it
    was afterwards. Send tasks as the code under test does, then
    ``t.drain()`` runs every queue of the app until nothing is left (tasks
    that send tasks included) and returns the summed pool stats; results are
    read with ``handle.result_sync()``. ``drain`` re-raises the first
    exception a task raised, like ``foxtive_runner``; with
    ``raise_errors=False`` the failure policy runs and ``t.dead_letters()``
    lists the tasks that failed for good, with ``error_type`` and
    ``error_message``::

        def test_welcome(foxtive_app):
            t = foxtive_app(app)
            handle = send_welcome.send_sync("ann@example.com")
            t.drain()
            assert handle.result_sync(timeout=0).to == "ann@example.com"

    :func:`isolated` is the same as a context manager (outside pytest), and
    :func:`drain` drains any app where it is.

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
import contextlib
import dataclasses
import os
import re
import socket
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

import pytest

from ._core import redact_url
from .app import App
from .backends import MemoryBackend

if TYPE_CHECKING:
    from ._core import DeadLetter, Message
    from .policies import RetryHandler
    from .pool import WorkerPool

__all__ = [
    "AppRunner",
    "HandlerError",
    "Runner",
    "delete_rabbitmq_queues",
    "delete_redis_stream",
    "drain",
    "drain_async",
    "isolated",
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
    #: The task's name (its ``foxtive-task`` header), for tasks of an app.
    task: str | None = None


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


# --------------------------------------------------------------------- apps
#: Counters that :func:`drain` sums over the app's pools (and rounds).
_COUNTS = ("received", "processed", "failed", "retried", "dead_lettered")

#: What an isolated app keeps of the real one: what it is (its name, tasks,
#: plain handlers, policy). Everything else (broker, results, publishing
#: backends, loop thread, threads...) comes from a fresh memory:// app, so
#: nothing of the test touches the real broker.
_KEPT = frozenset({"name", "_tasks", "_plain", "retry", "result_ttl"})


async def drain_async(app: App, queues: Iterable[str] | None = None, timeout: float = 10.0,
                      *, raise_errors: bool = True,
                      errors: list[HandlerError] | None = None) -> dict[str, int]:
    """Run ``app``'s queues (default: all) until every one is empty, then
    stop; return the pools' counters summed (``received``, ``processed``,
    ``failed``, ``retried``, ``dead_lettered``).

    The queues run concurrently, in rounds: a task that sends another task
    to a queue already idle gets that queue another round, so a chain of
    tasks runs to its end. Retries that come due are waited for (a task sent
    with a long ``delay`` holds ``drain`` until it is due or ``timeout``).
    ``raise_errors`` (default): the first exception a task raises stops the
    pools and is raised again here, with its traceback; ``False`` lets the
    app's failure policy retry and dead-letter as in production. What the
    tasks raised is appended to ``errors`` when given. ``TimeoutError`` when
    the queues were not empty within ``timeout`` seconds."""
    names = list(queues) if queues is not None else app.queues
    deadline = time.monotonic() + timeout
    totals = dict.fromkeys(_COUNTS, 0)
    seen: list[HandlerError] = errors if errors is not None else []
    first_new = len(seen)
    lock = threading.Lock()
    pools: list[WorkerPool] = []

    def record(worker_id: str, message: Message, error: BaseException) -> None:
        with lock:
            first = len(seen) == first_new
            seen.append(HandlerError(worker_id, message.id, message.body,
                                     message.attempt, error, _task_of(message)))
        if first and raise_errors:
            for p in pools:  # stop at the first failure: no retries to wait for
                p.shutdown()

    while True:
        pools[:] = [app.pool(q) for q in names]
        for p in pools:
            p.on_failure(record)
        left = max(0.0, deadline - time.monotonic())
        try:
            idle = await asyncio.gather(*(p.run_until_idle_async(timeout=left) for p in pools))
        finally:
            for p in pools:
                p.failure_listeners.remove(record)
        received = 0
        for p in pools:
            stats = p.stats()
            for key in _COUNTS:
                totals[key] += int(stats.get(key, 0))
            received += int(stats.get("received", 0))
        if raise_errors and len(seen) > first_new:
            failure = seen[first_new]
            what = f"task {failure.task!r}" if failure.task else f"worker {failure.worker_id!r}"
            failure.error.add_note(
                f"(raised by {what} on message {failure.message_id!r}, attempt "
                f"{failure.attempt}; re-raised by foxtive.testing.drain: pass "
                "raise_errors=False to let the failure policy retry and dead-letter it)")
            raise failure.error
        more = _waiting(app, names) if _countable(app, names) else received > 0
        if not all(idle) or (more and time.monotonic() >= deadline):
            raise TimeoutError(f"app {app.name!r}: queues {', '.join(names)} not empty after "
                               f"{timeout:g} s: {totals}")
        if not more:
            return totals


def drain(app: App, queues: Iterable[str] | None = None, timeout: float = 10.0, *,
          raise_errors: bool = True, errors: list[HandlerError] | None = None) -> dict[str, int]:
    """Blocking form of :func:`drain_async` (no event loop may be running)."""
    return asyncio.run(drain_async(app, queues, timeout, raise_errors=raise_errors,
                                   errors=errors))


def _countable(app: App, names: list[str]) -> bool:
    """Whether every queue's backend can say how much waits (memory)."""
    return all(isinstance(app.backend(q), MemoryBackend) for q in names)


def _waiting(app: App, names: list[str]) -> bool:
    """Whether a memory queue still holds messages (ready, delayed or unsettled)."""
    for q in names:
        b = app.backend(q)
        if isinstance(b, MemoryBackend) and (b.qsize() or b.unacked()):
            return True
    return False


def _task_of(message: Message) -> str | None:
    name = message.header("foxtive-task")
    if isinstance(name, bytes):
        return name.decode("utf-8", "replace")
    return None if name is None else str(name)


class AppRunner:
    """An app moved to an isolated ``memory://`` broker for a test (made by
    :func:`isolated` or the ``foxtive_app`` fixture)."""

    def __init__(self, app: App) -> None:
        self.app = app
        #: Every exception a task raised during the last :meth:`drain`, in order.
        self.errors: list[HandlerError] = []

    def __repr__(self) -> str:
        return f"AppRunner({self.app!r})"

    def drain(self, queues: Iterable[str] | None = None, timeout: float = 10.0, *,
              raise_errors: bool = True) -> dict[str, int]:
        """Run the app's queues until they are empty (see :func:`drain_async`)."""
        self.errors = []
        return drain(self.app, queues, timeout, raise_errors=raise_errors, errors=self.errors)

    async def drain_async(self, queues: Iterable[str] | None = None, timeout: float = 10.0,
                          *, raise_errors: bool = True) -> dict[str, int]:
        """:meth:`drain` inside a running event loop (``async def`` tests)."""
        self.errors = []
        return await drain_async(self.app, queues, timeout, raise_errors=raise_errors,
                                 errors=self.errors)

    def dead_letters(self, queue: str | None = None) -> list[DeadLetter]:
        """The tasks that failed for good (on ``queue``, default: every queue
        of the app): ``error_type``, ``error_message``, ``attempts``, the
        task's name in ``headers["foxtive-task"]``."""
        names = [queue] if queue is not None else self.app.queues
        out: list[DeadLetter] = []
        for q in names:
            out.extend(self._memory(q).dead_letters())
        return out

    def qsize(self, queue: str | None = None) -> int:
        """Tasks waiting (ready or delayed) on ``queue``, default: all queues."""
        names = [queue] if queue is not None else self.app.queues
        return sum(self._memory(q).qsize() for q in names)

    def _memory(self, queue: str) -> MemoryBackend:
        backend = self.app.backend(queue)
        if not isinstance(backend, MemoryBackend):  # restored, or isolated() bypassed
            raise RuntimeError(f"app {self.app.name!r} is not isolated (queue {queue!r} is on "
                               f"{type(backend).__name__})")
        return backend


@contextlib.contextmanager
def isolated(app: App, *, results: bool = True,
             retry: RetryHandler | None = None) -> Iterator[AppRunner]:
    """Move ``app`` to a fresh ``memory://`` broker for the ``with`` block,
    then put it back exactly as it was (its real broker untouched).

    Its tasks, plain handlers, ``result_ttl`` and retry policy stay (``retry``
    replaces the policy for the block, e.g. without backoff). ``results``
    (default True): results are kept in memory even when the app keeps none,
    so a test can read ``handle.result_sync()``."""
    if not isinstance(app, App):
        raise TypeError(f"isolated: expected a foxtive.App, got {type(app).__name__}")
    saved = dict(vars(app))
    fresh = App(app.name, broker="memory://", results=True if results else None,
                result_ttl=app.result_ttl, retry=retry if retry is not None else app.retry)
    state = dict(saved)
    state.update((k, v) for k, v in vars(fresh).items() if k not in _KEPT)
    if retry is not None:
        state["retry"] = retry
    vars(app).update(state)
    try:
        yield AppRunner(app)
    finally:
        try:
            _close_app(app)
        finally:
            vars(app).clear()
            vars(app).update(saved)


def _close_app(app: App) -> None:
    """``app.close()``, on a thread of its own when this one runs a loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        app.close()
        return
    t = threading.Thread(target=app.close, name="foxtive-testing-close")
    t.start()
    t.join()


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


@pytest.fixture
def foxtive_app() -> Iterator[Callable[..., AppRunner]]:
    """``foxtive_app(app, results=True, retry=None)``: ``app`` on an isolated
    memory:// broker for this test (:func:`isolated`), restored afterwards."""
    with contextlib.ExitStack() as stack:
        def isolate(app: App, *, results: bool = True,
                    retry: RetryHandler | None = None) -> AppRunner:
            return stack.enter_context(isolated(app, results=results, retry=retry))

        yield isolate


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
