"""Tasks: a function called later, elsewhere, with its arguments checked.

A task is a message in the documented envelope (:mod:`foxtive.envelope`), so
pools, middleware, retries, dead letters and every backend apply unchanged.
``Task`` is generic over the function's parameters (``ParamSpec``): mypy and
pyright check ``send(...)`` against the function's own signature.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import datetime as _dt
import functools
import inspect
import itertools
import os
import re
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping
from typing import Any, Generic, ParamSpec, Protocol, TypeVar

from . import _core, envelope
from ._config import seconds
from .convert import ArgumentConverter
from .errors import ConfigError
from .policies import RetryHandler
from .publishing import Publisher

__all__ = ["Task", "TaskCall", "TaskHandle"]

P = ParamSpec("P")
R = TypeVar("R")
_T = TypeVar("_T")


class TaskApp(Protocol):
    """What a task needs from its app (``foxtive.App``; named here so this
    module does not import app.py, which imports it)."""

    _tasks: dict[str, Task[Any, Any]]

    _publisher: Publisher

    def _run_sync(self, coro: Coroutine[Any, Any, _T]) -> _T: ...

    def _result_store(self) -> Any: ...

    def _executor(self) -> concurrent.futures.Executor: ...

# Task ids: UUID-shaped (32 hex digits, the version-4 layout), as cheap as a
# counter. Each process starts from 122 random bits (the high half, version
# nibble set, and the counter's start), drawn again in a forked child, and
# counts up from there: unique within the process, and across processes
# unless two draw the same 60-bit high half. uuid.uuid4().hex costs ~1.5 µs
# a call (a getrandom syscall and the UUID object); this, ~0.2 µs.
_ID_LOW_MASK = (1 << 62) - 1
_ID_VARIANT = 1 << 63
_id_high = ""
_id_next: Callable[[], int] = int


def _seed_ids() -> None:
    global _id_high, _id_next
    high = (int.from_bytes(os.urandom(8), "big") & ~(0xF << 12)) | (0x4 << 12)
    _id_high = f"{high:016x}"
    # itertools.count's next() is one C call: atomic under the GIL.
    _id_next = itertools.count(int.from_bytes(os.urandom(8), "big") & _ID_LOW_MASK).__next__


_seed_ids()
os.register_at_fork(after_in_child=_seed_ids)


#: The kwargs of a call given as an argument tuple (never mutated).
_NO_KWARGS: dict[str, Any] = {}


def new_task_id() -> str:
    """A fresh task id (see above)."""
    return f"{_id_high}{_ID_VARIANT | (_id_next() & _ID_LOW_MASK):016x}"


_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*(s|sec|second|m|min|minute|h|hour)\s*$")
_PER = {"s": 1.0, "sec": 1.0, "second": 1.0, "m": 60.0, "min": 60.0, "minute": 60.0,
        "h": 3600.0, "hour": 3600.0}


class TaskHandle:
    """A sent task: its ``id`` (the message id), ``task_name`` and ``queue``."""

    __slots__ = ("_app", "id", "queue", "task_name")

    def __init__(self, id: str, task_name: str, queue: str, app: TaskApp | None = None) -> None:
        self.id = id
        self.task_name = task_name
        self.queue = queue
        self._app = app

    def __repr__(self) -> str:
        return f"TaskHandle(id={self.id!r}, task_name={self.task_name!r}, queue={self.queue!r})"

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, TaskHandle)
                and (self.id, self.task_name, self.queue)
                == (other.id, other.task_name, other.queue))

    def __hash__(self) -> int:
        return hash((self.id, self.task_name, self.queue))

    def _store(self) -> Any:
        if self._app is None:
            raise ConfigError("results: this handle belongs to no app")
        return self._app._result_store()

    async def result(self, timeout: float | _dt.timedelta | None = None) -> Any:
        """The task's return value (decoded by its return annotation), or
        ``TaskError`` once it failed for good, or ``TimeoutError``."""
        t = None if timeout is None else seconds("timeout", timeout)
        value = await self._store().wait(self.id, t)
        return self._decode(value)

    def result_sync(self, timeout: float | _dt.timedelta | None = None) -> Any:
        """:meth:`result` from sync code (no event loop needed)."""
        t = None if timeout is None else seconds("timeout", timeout)
        value = self._store().wait_sync(self.id, t)
        return self._decode(value)

    async def status(self) -> str:
        """``"pending"``, ``"running"``, ``"retrying"``, ``"succeeded"``,
        ``"failed"`` or ``"unknown"``."""
        return str(await self._store().status(self.id))

    def _decode(self, value: Any) -> Any:
        assert self._app is not None
        task = self._app._tasks.get(self.task_name)
        if task is None:
            return value
        return task._converter().convert_result(value)


class _RateLimiter:
    """A token bucket for one task in one process. Each call reserves a
    permit (the balance may go negative) and sleeps until it is due: fair,
    and bound to no event loop (pools may run on different loops)."""

    def __init__(self, per_second: float) -> None:
        self.rate = per_second
        self.capacity = max(1.0, per_second)
        self.tokens = self.capacity
        self.stamp = time.monotonic()
        self.lock = threading.Lock()

    def reserve(self) -> float:
        """Take a permit; the seconds to wait before using it."""
        with self.lock:
            now = time.monotonic()
            self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now
            self.tokens -= 1.0
            return 0.0 if self.tokens >= 0 else -self.tokens / self.rate

    async def acquire(self) -> None:
        wait = self.reserve()
        if wait > 0:
            await asyncio.sleep(wait)


_REDIS_SCHEMES = ("redis", "rediss", "unix", "redis+unix", "redis+cluster", "rediss+cluster")


def _rate_limiter(app: Any, name: str, per_second: float) -> Any:
    """The task's limiter: shared by every process through Redis when the
    app's broker is Redis (one budget per task name, key
    ``foxtive:rate:task:<app>:<name>``, GCRA on the server's clock), else a
    bucket in this process. A shared one that cannot reach Redis limits
    locally until it can (the core logs it)."""
    broker = getattr(app, "broker", None)
    if isinstance(broker, str) and broker.split(":", 1)[0].lower() in _REDIS_SCHEMES:
        burst = max(1, round(per_second))  # one second's worth, like the local bucket
        return _core.SharedRateLimiter(per_second, burst, broker,
                                       f"foxtive:rate:task:{app.name}:{name}")
    return _RateLimiter(per_second)


def parse_rate(rate: str | None) -> float | None:
    """``"100/s"``, ``"5/m"``, ``"10/h"`` -> permits per second."""
    if rate is None:
        return None
    m = _RATE.match(rate) if isinstance(rate, str) else None
    if not m or float(m.group(1)) <= 0:
        raise ConfigError(f"rate_limit: expected a rate such as '100/s', '5/m' or '10/h', "
                          f"got {rate!r}")
    return float(m.group(1)) / _PER[m.group(2)]


def _priority(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 9:
        raise ConfigError(f"priority: must be an integer 0-9 (9 runs first), got {value!r}")
    return value


class Task(Generic[P, R]):
    """A function registered with an :class:`App` by ``@app.task``.

    Calling it runs the function inline; ``send`` enqueues it."""

    def __init__(self, app: TaskApp, fn: Callable[P, R], *, name: str, queue: str,
                 max_retries: int | None, retry_backoff: RetryHandler | None,
                 timeout: float | None, rate_limit: str | None, priority: int | None) -> None:
        self.app = app
        self.fn = fn
        self.name = name
        self.queue = queue
        if max_retries is None and retry_backoff is not None:
            max_retries = retry_backoff.max_retries
        if max_retries is not None and (isinstance(max_retries, bool)
                                        or not isinstance(max_retries, int) or max_retries < 0):
            raise ConfigError(f"max_retries: must be an integer >= 0, got {max_retries!r}")
        self.max_retries = max_retries
        self.retry_backoff = retry_backoff
        self.timeout = None if timeout is None else seconds("timeout", timeout, positive=True)
        self.rate_limit = rate_limit
        per_second = parse_rate(rate_limit)
        self._limiter = None if per_second is None else _rate_limiter(app, name, per_second)
        self.priority = _priority(priority)
        self.is_async = inspect.iscoroutinefunction(fn)
        self._direct = self.is_async and self._limiter is None and self.timeout is None
        self._conv: ArgumentConverter | None = None
        self.__doc__ = fn.__doc__
        self.__name__ = getattr(fn, "__name__", name)
        self.__qualname__ = getattr(fn, "__qualname__", name)
        self.__module__ = getattr(fn, "__module__", __name__)
        self.__wrapped__ = fn

    def __repr__(self) -> str:
        return f"<Task {self.name!r} queue={self.queue!r}>"

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Run the function here, now (tests): a sync task returns its value,
        an async one a coroutine."""
        return self.fn(*args, **kwargs)

    def _converter(self) -> ArgumentConverter:
        conv = self._conv
        if conv is None:
            conv = self._conv = ArgumentConverter(self.fn)
        return conv

    def options(self, *, delay: float | _dt.timedelta | None = None,
                eta: _dt.datetime | None = None, message_id: str | None = None,
                priority: int | None = None,
                headers: Mapping[str, Any] | None = None,
                dedup_key: str | None = None,
                dedup_ttl: float | _dt.timedelta | None = None,
                transaction: Any = None) -> TaskCall[P, R]:
        """The same task sent with these options. ``priority``: 0-9, 9 runs
        first. ``dedup_key`` + ``dedup_ttl``: a second send with the same key
        within the TTL enqueues nothing and returns the first task's handle.
        ``transaction``: a psycopg 3 connection (PostgreSQL broker) or a
        ``sqlite3.Connection`` (SQLite broker): the task is inserted through it
        and exists only if that transaction commits. An option the broker
        cannot honour is a ``ConfigError`` at send."""
        return TaskCall(self, delay=delay, eta=eta, message_id=message_id,
                        priority=priority, headers=headers, dedup_key=dedup_key,
                        dedup_ttl=dedup_ttl, transaction=transaction)

    async def send(self, *args: P.args, **kwargs: P.kwargs) -> TaskHandle:
        """Enqueue a call; ``TypeError`` if an argument cannot be encoded."""
        return await TaskCall(self).send(*args, **kwargs)

    def send_sync(self, *args: P.args, **kwargs: P.kwargs) -> TaskHandle:
        """:meth:`send` from sync code (a thread with no event loop)."""
        return TaskCall(self).send_sync(*args, **kwargs)

    async def send_many(self, calls: Iterable[tuple[Any, ...] | Mapping[str, Any]]
                        ) -> list[TaskHandle]:
        """Enqueue many calls (argument tuples, or dicts of keyword arguments)."""
        return await TaskCall(self).send_many(calls)

    def send_many_sync(self, calls: Iterable[tuple[Any, ...] | Mapping[str, Any]]
                       ) -> list[TaskHandle]:
        return TaskCall(self).send_many_sync(calls)

    # -- worker side --------------------------------------------------------
    async def _run(self, body: bytes) -> Any:
        """Decode and convert the arguments, then run the function (sync ones
        on a thread), under the task's rate limit and timeout."""
        conv = self._conv or self._converter()
        call_args, call_kwargs = conv.decode_call(body)
        if self._direct:  # async, no rate limit, no timeout: the common case
            return await self.fn(*call_args, **call_kwargs)  # type: ignore[misc]
        if self._limiter is not None:
            await self._limiter.acquire()
        fn: Callable[..., Any] = self.fn
        if self.is_async:
            run: Awaitable[Any] = fn(*call_args, **call_kwargs)
        else:
            ctx = contextvars.copy_context()
            run = asyncio.get_running_loop().run_in_executor(
                self.app._executor(), functools.partial(ctx.run, fn, *call_args, **call_kwargs))
        if self.timeout is not None:
            return await asyncio.wait_for(run, self.timeout)
        return await run


class TaskCall(Generic[P, R]):
    """A task with send options bound (``task.options(...)``)."""

    __slots__ = ("_delay", "_headers", "_message_id", "_options", "_task")

    def __init__(self, task: Task[P, R], *, delay: float | _dt.timedelta | None = None,
                 eta: _dt.datetime | None = None, message_id: str | None = None,
                 priority: int | None = None,
                 headers: Mapping[str, Any] | None = None,
                 dedup_key: str | None = None,
                 dedup_ttl: float | _dt.timedelta | None = None,
                 transaction: Any = None) -> None:
        self._task = task
        if delay is not None and eta is not None:
            raise ConfigError("delay, eta: give one of them, not both")
        d: float | None = None
        if delay is not None:
            d = seconds("delay", delay)
        if eta is not None:
            if not isinstance(eta, _dt.datetime):
                raise ConfigError(f"eta: expected a datetime, got {type(eta).__name__}")
            if eta.tzinfo is None or eta.utcoffset() is None:
                raise ValueError("eta: must be timezone-aware (e.g. datetime.now(timezone.utc))")
            d = max(0.0, (eta - _dt.datetime.now(_dt.UTC)).total_seconds())
        self._delay = d or None
        if message_id is not None and (not isinstance(message_id, str) or not message_id):
            raise ConfigError("message_id: must be a non-empty string")
        self._message_id = message_id
        prio = _priority(priority)
        if prio is None:
            prio = task.priority
        self._headers = envelope.headers_for(task.name, dict(headers) if headers else {})
        #: Keywords for the backend's publish, only those given.
        options: dict[str, Any] = {}
        if transaction is not None:
            options["transaction"] = transaction
        if prio is not None:
            options["priority"] = prio
        if (dedup_key is None) != (dedup_ttl is None):
            raise ConfigError("dedup_key, dedup_ttl: give both (the key, and how long it "
                              "holds), or neither")
        if dedup_key is not None:
            if not isinstance(dedup_key, str) or not dedup_key:
                raise ConfigError("dedup_key: must be a non-empty string")
            options["dedup_key"] = dedup_key
            options["dedup_ttl"] = seconds("dedup_ttl", dedup_ttl, positive=True)
        self._options = options or None

    def _prepare(self, args: Any, kwargs: Any) -> tuple[bytes, str]:
        body = envelope.encode(args, kwargs)
        return body, self._message_id or new_task_id()

    def _handle(self, task_id: str) -> TaskHandle:
        return TaskHandle(task_id, self._task.name, self._task.queue, self._task.app)

    async def send(self, *args: P.args, **kwargs: P.kwargs) -> TaskHandle:
        body, task_id = self._prepare(args, kwargs)
        publisher = self._task.app._publisher
        task_id = await publisher.publish(self._task.queue, body, self._headers, self._delay,
                                          task_id, self._options, fresh=self._message_id is None)
        return self._handle(task_id)

    def send_sync(self, *args: P.args, **kwargs: P.kwargs) -> TaskHandle:
        body, task_id = self._prepare(args, kwargs)
        publisher = self._task.app._publisher
        task_id = publisher.publish_sync(self._task.queue, body, self._headers, self._delay,
                                         task_id, self._options, fresh=self._message_id is None)
        return self._handle(task_id)

    def _many(self, calls: Iterable[tuple[Any, ...] | Mapping[str, Any]]
              ) -> list[tuple[bytes, str]]:
        if self._message_id is not None:
            raise ConfigError("message_id: one id cannot name many tasks (send_many)")
        if self._options and "dedup_key" in self._options:
            raise ConfigError("dedup_key: one key cannot deduplicate many tasks (send_many)")
        # The per-task cost of send_many is here: one body and one id each,
        # the type checks cheapest first (tuples, then dicts).
        encode = envelope.encode
        new_id = new_task_id
        out = []
        call: Any
        for i, call in enumerate(calls):
            cls = call.__class__
            if cls is tuple or cls is list:
                out.append((encode(call, _NO_KWARGS), new_id()))
            elif cls is dict or isinstance(call, Mapping):
                out.append((encode((), call), new_id()))
            elif isinstance(call, tuple | list):
                out.append((encode(call, _NO_KWARGS), new_id()))
            else:
                raise TypeError(f"send_many: call {i} must be a tuple of arguments or a dict "
                                f"of keyword arguments, got {type(call).__name__}")
        return out

    async def send_many(self, calls: Iterable[tuple[Any, ...] | Mapping[str, Any]]
                        ) -> list[TaskHandle]:
        items = self._many(calls)
        await self._task.app._publisher.publish_many(self._task.queue, items, self._headers,
                                                      self._delay, self._options)
        return [self._handle(task_id) for _, task_id in items]

    def send_many_sync(self, calls: Iterable[tuple[Any, ...] | Mapping[str, Any]]
                       ) -> list[TaskHandle]:
        items = self._many(calls)
        publisher = self._task.app._publisher
        if self._options and "transaction" in self._options:
            # The caller's connection belongs to this thread: insert here,
            # every task in one batched statement.
            publisher.publish_many_in_transaction(self._task.queue, items, self._headers,
                                                  self._delay, self._options)
            return [self._handle(task_id) for _, task_id in items]
        publisher.publish_many_sync(self._task.queue, items, self._headers, self._delay,
                                    self._options)
        return [self._handle(task_id) for _, task_id in items]
