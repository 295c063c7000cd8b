"""Backends: where messages come from.

Native backends (memory, RabbitMQ, Redis Streams) run in Rust. A backend for
any other queue system can be written in Python by subclassing
:class:`Backend`; the core drives it through the same interface (slower, as
every call crosses into Python).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
from collections.abc import Iterable, Sequence
from typing import Any, ClassVar, Self

from . import _core
from ._config import integer
from ._tracecontext import inject
from .dlq import NativeDeadLetterQueue
from .errors import ConfigError

__all__ = ["Backend", "Incoming", "MemoryBackend", "NativeBackend", "check_publish_options"]

#: Header that carries the attempt number on retry copies.
ATTEMPT_HEADER = "x-foxtive-attempt"


@dataclasses.dataclass(slots=True)
class Incoming:
    """A message as a Python backend receives it.

    ``receipt`` is anything the backend needs to settle it later (a delivery
    tag, a lease...); foxtive hands it back untouched. ``attempt`` defaults
    to the ``x-foxtive-attempt`` header, else 1, plus one when
    ``redelivered`` (it was delivered before): a redelivered message is
    always at least attempt 2."""

    body: bytes
    id: str | None = None
    headers: dict[str, Any] | None = None
    attempt: int | None = None
    receipt: Any = None
    redelivered: bool = False


def check_publish_options(backend: Any, options: Any) -> None:
    """``ConfigError`` for a publish option ``backend`` cannot honour (the
    task layer's ``options(...)``), before anything is written."""
    if options.get("transaction") is not None and not getattr(backend, "transactional", False):
        raise ConfigError(
            f"transaction: only the PostgreSQL and SQLite brokers enqueue inside the caller's "
            f"transaction; this queue's backend is {type(backend).__name__}")
    for name in ("priority", "dedup_key"):
        if options.get(name) is not None and not isinstance(backend, NativeBackend):
            raise ConfigError(
                f"{name}: {type(backend).__name__} is a backend written in Python, whose "
                f"publish does not take it")


class Backend:
    """Base class of every backend, and the one to subclass for a new queue system.

    Override ``receive``, ``ack``, ``requeue`` and ``publish`` (plus
    ``connect``/``close`` if needed). ``retry`` and ``dead_letter`` have
    defaults built on ``publish``/``ack``: a retry publishes a copy carrying
    the next attempt number, after ``delay`` seconds, then acks the original;
    a dead letter is kept in ``self.dead_letter_records`` then acked.
    """

    name: str = "custom"
    #: Whether ``publish(..., transaction=conn)`` inserts through the
    #: caller's connection (the SQL backends).
    transactional: ClassVar[bool] = False
    #: Whether ``publish(..., dedup_key=, dedup_ttl=)`` deduplicates in the
    #: broker itself (every native backend but RabbitMQ).
    native_dedup: ClassVar[bool] = False

    async def connect(self) -> None:
        """Connect and subscribe; called when a pool starts."""

    async def receive(self, max_messages: int, timeout: float) -> Sequence[Incoming]:
        """Return up to ``max_messages``, waiting up to ``timeout`` seconds for the first."""
        raise NotImplementedError

    async def ack(self, receipt: Any) -> None:
        raise NotImplementedError

    async def requeue(self, receipt: Any) -> None:
        """Give a message back unfinished (shutdown): it must be delivered again."""
        raise NotImplementedError

    async def publish(self, body: bytes, headers: dict[str, Any] | None = None,
                      delay: float | _dt.timedelta | None = None,
                      message_id: str | None = None) -> str:
        raise NotImplementedError

    async def publish_many(self, bodies: Iterable[bytes], headers: dict[str, Any] | None = None,
                           delay: float | _dt.timedelta | None = None) -> list[str]:
        return [await self.publish(b, headers=headers, delay=delay) for b in bodies]

    async def retry(self, message: dict[str, Any]) -> None:
        headers = dict(message["headers"])
        headers[ATTEMPT_HEADER] = message["next_attempt"]
        await self.publish(message["body"], headers=headers, delay=message["delay"],
                           message_id=message["id"])
        await self.ack(message["receipt"])

    async def dead_letter(self, message: dict[str, Any]) -> None:
        records: list[dict[str, Any]] = self.__dict__.setdefault("dead_letter_records", [])
        records.append({k: v for k, v in message.items() if k != "receipt"})
        await self.ack(message["receipt"])

    async def close(self) -> None:
        """Close connections; called when a pool stops."""

    # -- driven by the core ------------------------------------------------
    async def _foxtive_receive(self, max_messages: int, timeout: float) -> list[tuple[Any, ...]]:
        out = []
        for m in await self.receive(max_messages, timeout):
            headers = dict(m.headers or {})
            attempt = m.attempt
            if attempt is None:
                try:
                    attempt = int(headers.get(ATTEMPT_HEADER, 1))
                except (TypeError, ValueError):
                    attempt = 1
                if m.redelivered:
                    attempt = max(1, attempt) + 1
            if m.redelivered:
                attempt = max(2, attempt)
            mid = m.id if m.id is not None else str(m.receipt)
            out.append((mid, m.body, headers, max(1, attempt), m.receipt, m.redelivered))
        return out

    async def _foxtive_settle(self, items: list[dict[str, Any]]) -> None:
        for item in items:
            outcome = item["outcome"]
            if outcome == "success":
                await self.ack(item["receipt"])
            elif outcome == "retried":
                await self.retry(item)
            elif outcome == "dead_lettered":
                await self.dead_letter(item)
            else:
                await self.requeue(item["receipt"])


class NativeBackend(Backend):
    """Base of the backends that run in Rust (``self._native``, a subclass of
    ``_core.NativeBackend``): what they share is written here once —
    connection state and counters (read without a round trip), connect,
    close, publish and their own dead-letter queue."""

    _native: _core.NativeBackend
    native_dedup = True

    #: foxtive's native backend classes by type name ("SqliteBackend"), for
    #: ``backend_from_url``: each registers itself by being defined.
    _by_type_name: ClassVar[dict[str, type[NativeBackend]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.__module__.startswith("foxtive."):  # not users' own subclasses
            NativeBackend._by_type_name[cls.__name__] = cls

    @classmethod
    def class_named(cls, type_name: str) -> type[NativeBackend] | None:
        """foxtive's native backend class called ``type_name``, if defined."""
        return cls._by_type_name.get(type_name)

    @classmethod
    def from_url(cls, url: str, queue: str, **options: Any) -> Self:
        """The backend ``url`` names, consuming ``queue``; ``options`` are its
        settings by name. By default the core opens it from the URL and checks
        the options (SQLite, PostgreSQL...); backends built from a typed
        config of their own override this."""
        native = _core.open_backend(url, queue, options)
        if native is None:
            scheme = url.split(":", 1)[0]
            raise ConfigError(f"{cls.__name__}.from_url: the core does not open {scheme}:// URLs; "
                              "this class must build it")
        backend = cls.__new__(cls)
        backend._native = native
        return backend

    @property
    def name(self) -> str:  # type: ignore[override]
        return self._native.name

    @property
    def state(self) -> str:
        """``"connected"``, ``"reconnecting"`` or ``"closed"``."""
        return self._native.state

    @property
    def reconnect_attempts(self) -> int:
        return self._native.reconnect_attempts

    @property
    def consecutive_failures(self) -> int:
        return self._native.consecutive_failures

    async def connect(self) -> None:
        await self._native.connect()

    async def close(self) -> None:
        """Close the connections (a pool does this when it stops)."""
        await self._native.close()

    async def publish(self, body: bytes | str, headers: dict[str, Any] | None = None,
                      delay: float | _dt.timedelta | None = None,
                      message_id: str | None = None, *, priority: int | None = None,
                      dedup_key: str | None = None,
                      dedup_ttl: float | _dt.timedelta | None = None) -> str:
        """Publish one message (durably where the broker can, after ``delay``
        seconds); returns its id: ``message_id`` if given. ``priority``: 0-9,
        9 delivered first (RabbitMQ queues with ``max_priority``, PostgreSQL,
        SQLite, memory; a ``ConfigError`` elsewhere). ``dedup_key`` +
        ``dedup_ttl``: publish only if no message took the key within the
        TTL (checked and enqueued in one atomic step); otherwise nothing is
        published and the id returned is the one holding the key."""
        return await self._native.publish(body, inject(headers), delay, message_id, priority,
                                          dedup_key, dedup_ttl)

    async def publish_many(self, bodies: Iterable[bytes | str],
                           headers: dict[str, Any] | None = None,
                           delay: float | _dt.timedelta | None = None, *,
                           message_ids: Sequence[str] | None = None,
                           priority: int | None = None) -> list[str]:
        """Publish many in one batch; returns their ids in order.
        ``message_ids``: each message's own id, one per body."""
        ids = None if message_ids is None else list(message_ids)
        return await self._native.publish_many(bodies, inject(headers), delay, ids, priority)

    @property
    def publishes_blocking(self) -> bool:
        """Whether :meth:`publish_begin` stands for :meth:`publish`: true for
        foxtive's own classes (a subclass may override ``publish``) unless
        the backend drives one written in Python (its publish needs a loop)."""
        cls = type(self)
        return NativeBackend._by_type_name.get(cls.__name__) is cls and self._native.blocking

    def publish_begin(self, body: bytes | str, headers: dict[str, Any] | None = None,
                      delay: float | _dt.timedelta | None = None,
                      message_id: str | None = None, *, priority: int | None = None,
                      dedup_key: str | None = None,
                      dedup_ttl: float | _dt.timedelta | None = None) -> _core.PublishWait:
        """:meth:`publish` from a thread with no event loop: started on the
        core's runtime at once; ``.wait()`` on the result blocks (the GIL
        released) for ``[id]``. Safe from many threads at once."""
        return self._native.publish_begin(body, inject(headers), delay, message_id, priority,
                                          dedup_key, dedup_ttl)

    def publish_many_begin(self, bodies: Iterable[bytes | str],
                           headers: dict[str, Any] | None = None,
                           delay: float | _dt.timedelta | None = None, *,
                           message_ids: Sequence[str] | None = None,
                           priority: int | None = None) -> _core.PublishWait:
        """:meth:`publish_many` from a thread with no event loop (see
        :meth:`publish_begin`); ``.wait()`` gives the ids in order."""
        ids = None if message_ids is None else list(message_ids)
        return self._native.publish_many_begin(bodies, inject(headers), delay, ids, priority)

    def dead_letter_queue(self) -> NativeDeadLetterQueue:
        """The backend's own dead-letter queue as a queue view: list, replay
        (back to the source queue, each record moved as one step), purge."""
        store = self._native.dead_letter_store()
        if store is None:
            raise ConfigError(f"{type(self).__name__} has no dead-letter queue of its own")
        return NativeDeadLetterQueue(self, store)

    def dead_letters(self, limit: int = 100) -> list[_core.DeadLetter]:
        """Up to ``limit`` dead letters, oldest first, rebuilt from what the
        backend wrote with each (nothing is consumed)."""
        return self.dead_letter_queue().get_failed_messages(limit)


class MemoryBackend(NativeBackend):
    """The in-process backend: the embedded default, and the one for tests.

    ``message.queue`` is its name. Retries and delayed messages wait inside
    the backend, not in the worker. ``qsize()`` counts waiting messages,
    ready or delayed; ``unacked()`` those delivered and not settled."""

    _native: _core.MemoryBackend

    def __init__(self, name: str = "memory") -> None:
        self._native = _core.MemoryBackend(name)

    def __repr__(self) -> str:
        return f"MemoryBackend(name={self.name!r})"

    @classmethod
    def from_url(cls, url: str, queue: str, **options: Any) -> Self:
        """``memory://`` (nothing after the scheme, no options): checked by
        the core's registry, then built as ``MemoryBackend(queue)``."""
        _core.open_backend(url, queue, options)
        return cls(queue)

    async def publish(self, body: bytes | str, headers: dict[str, Any] | None = None,
                      delay: float | _dt.timedelta | None = None,
                      message_id: str | None = None, *, priority: int | None = None,
                      dedup_key: str | None = None,
                      dedup_ttl: float | _dt.timedelta | None = None) -> str:
        return self._native.publish_sync(body, inject(headers), delay, message_id, priority,
                                         dedup_key, dedup_ttl)

    async def publish_many(self, bodies: Iterable[bytes | str],
                           headers: dict[str, Any] | None = None,
                           delay: float | _dt.timedelta | None = None, *,
                           message_ids: Sequence[str] | None = None,
                           priority: int | None = None) -> list[str]:
        return self.publish_many_sync(bodies, headers, delay, message_ids=message_ids,
                                      priority=priority)

    def publish_sync(self, body: bytes | str, headers: dict[str, Any] | None = None,
                     delay: float | _dt.timedelta | None = None,
                     message_id: str | None = None, *, priority: int | None = None,
                     dedup_key: str | None = None,
                     dedup_ttl: float | _dt.timedelta | None = None) -> str:
        """Publish without awaiting (the memory backend never waits);
        ``priority`` 0-9: higher priorities are delivered first;
        ``dedup_key``/``dedup_ttl`` as in :meth:`NativeBackend.publish`."""
        return self._native.publish_sync(body, inject(headers), delay, message_id, priority,
                                         dedup_key, dedup_ttl)

    def publish_many_sync(self, bodies: Iterable[bytes | str],
                          headers: dict[str, Any] | None = None,
                          delay: float | _dt.timedelta | None = None, *,
                          message_ids: Sequence[str] | None = None,
                          priority: int | None = None) -> list[str]:
        ids = None if message_ids is None else list(message_ids)
        return self._native.publish_many_sync(bodies, inject(headers), delay, ids, priority)

    def publish_bulk(self, bodies: Iterable[bytes]) -> int:
        """Publish bodies with nothing else, fast; ids are given on delivery."""
        return self._native.publish_bulk(bodies)

    def qsize(self) -> int:
        return self._native.qsize()

    def unacked(self) -> int:
        return self._native.unacked()

    def dead_letters(self, limit: int | None = None) -> list[_core.DeadLetter]:
        """The dead letters, oldest first (all of them, or the first ``limit``)."""
        letters = self._native.dead_letters()
        if limit is None:
            return letters
        return letters[:integer("limit", limit, minimum=0)]
