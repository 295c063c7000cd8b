"""Dead-letter stores: where messages that failed for good are kept, read and replayed.

    dlq = foxtive.FileDLQ("/var/lib/app/dead-letters.jsonl")
    pool = (foxtive.WorkerPoolBuilder("emails")
            .with_middleware(foxtive.RetryHandler(max_retries=3, dead_letter_queue=dlq))
            ...)
    dlq.get_failed_messages(limit=100)   # -> list[foxtive.DeadLetter], oldest first
    await dlq.replay(to=backend)         # republish, then remove; returns the count
    await dlq.purge()

With a store, the pool acks a dead-lettered message only once the store has
kept its record. When the store cannot (disk full, no permission, Redis
away) the message is not acked: it goes back to the broker, comes back a few
seconds later, and the error is logged; the pool goes on with the others.
Without a store, each broker's own dead-letter queue is used; reach it with
``backend.dead_letter_queue()`` (a :class:`NativeDeadLetterQueue`) or
``backend.dead_letters(limit=100)``.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Iterable
from typing import Any

from . import _core, _logs
from ._config import integer
from ._native import native_of
from .errors import ConfigError

__all__ = ["DeadLetterQueue", "FileDLQ", "MemoryDLQ", "NativeDeadLetterQueue", "RedisDLQ"]

#: Records republished before they are removed, per round, when replaying to
#: a backend written in Python.
_REPLAY_CHUNK = 256


class DeadLetterQueue:
    """What every dead-letter store offers. Use :class:`MemoryDLQ`,
    :class:`FileDLQ` or :class:`RedisDLQ`."""

    def __init__(self, native: _core.DeadLetterStore) -> None:
        self._native = native
        # The backend of the last pool run with this store: replay()'s default.
        self._last_backend: Any = None

    def get_failed_messages(self, limit: int = 100) -> list[_core.DeadLetter]:
        """Up to ``limit`` dead letters, oldest first."""
        records = self._native.records(integer("limit", limit, minimum=0))
        _logs.pump()  # e.g. the WARNING about unreadable records, now
        return records

    def __len__(self) -> int:
        return self._native.count()

    def exists(self) -> bool:
        """Whether the store is there at all (the file, the Redis key, the
        broker queue). A missing store reads as empty; this tells a typo from
        "nothing failed"."""
        return self._native.exists()

    @property
    def unreadable(self) -> int:
        """Unreadable records (torn or corrupt) the last read skipped. They
        are never dropped: the next replay or purge sets them aside (for a
        :class:`FileDLQ`, in ``<path>.corrupt``), and a WARNING says how many."""
        return self._native.skipped

    @property
    def set_aside(self) -> int:
        """Unreadable records the last replay or purge set aside."""
        return self._native.set_aside

    @property
    def last_error(self) -> str | None:
        """Why the last write failed (the pool logs it too), or None once a
        write succeeded: for health checks and alerts."""
        return self._native.last_error

    async def replay(self, ids: Iterable[str] | None = None, to: Any = None) -> int:
        """Republish dead letters, then remove them from the store; returns how many.

        ``ids``: original message ids to replay (default: all). Each is
        published with its body, headers and id as a fresh message (attempt
        1). ``to``: any foxtive backend; by default the backend of the last
        pool that ran with this store in this process. Only the records
        present when the call starts are replayed, so messages that fail again
        meanwhile are not replayed twice. A record is removed only after its
        copy was published: a failure in between can leave a duplicate (same
        message id), never a loss.
        """
        target = to if to is not None else self._last_backend
        if target is None:
            raise ConfigError(
                "to: no backend to replay to; pass replay(to=backend) "
                "(the default is the backend of the last pool run with this store)"
            )
        wanted = _ids(ids)
        try:
            if native_of(target) is not None:
                count: int = await self._native.replay(target, wanted)
                return count
            return await self._replay_through_python(target, wanted)
        finally:
            _logs.pump()

    async def _replay_through_python(self, backend: Any, ids: list[str] | None) -> int:
        # Any object with foxtive's async ``publish`` will do: the backends sit
        # above the stores (they hand out ``dead_letter_queue()``), so this
        # module does not import them.
        if not inspect.iscoroutinefunction(getattr(backend, "publish", None)):
            raise ConfigError(
                f"to: expected a foxtive backend, got {type(backend).__name__}"
            )
        plan = self._native.replay_plan(ids)
        done = 0
        for start in range(0, len(plan), _REPLAY_CHUNK):
            published: list[str] = []
            try:
                for key, body, headers, message_id in plan[start:start + _REPLAY_CHUNK]:
                    await backend.publish(body, headers=headers, message_id=message_id)
                    published.append(key)
            finally:
                # Even when a publish failed: what went out must not stay.
                if published:
                    await self._native.remove(published)
                done += len(published)
        return done

    async def purge(self) -> int:
        """Remove every dead letter; returns how many there were."""
        try:
            count: int = await self._native.purge()
        finally:
            _logs.pump()
        return count

    def _remember(self, backend: Any) -> None:
        self._last_backend = backend


def _ids(ids: Iterable[str] | None) -> list[str] | None:
    if ids is None:
        return None
    if isinstance(ids, str | bytes):
        raise ConfigError("ids: expected a list of message ids, got a single string")
    out = list(ids)
    for i in out:
        if not isinstance(i, str):
            raise ConfigError(f"ids: message ids are str, got {type(i).__name__}")
    return out


class NativeDeadLetterQueue(DeadLetterQueue):
    """A backend's own dead-letter queue (RabbitMQ ``{queue}.dlq``, Redis
    ``{stream}:dlq``, the memory backend's list), from
    ``backend.dead_letter_queue()``.

    Records are rebuilt from what the backend wrote with each dead letter
    (the ``x-foxtive-*`` headers, the entry's fields). ``replay()`` without
    ``to`` moves each record back to its source queue as one step: an AMQP
    transaction (publish and ack commit together) or one Lua script on Redis,
    so an interrupted replay never loses or doubles an entry. Listing a
    RabbitMQ DLQ takes messages without acknowledging them and hands them
    back (they are then marked redelivered).
    """

    def __init__(self, backend: Any, native: _core.DeadLetterStore) -> None:
        super().__init__(native)
        self.backend = backend
        self._last_backend = backend

    async def replay(self, ids: Iterable[str] | None = None, to: Any = None) -> int:
        """Move dead letters back to their source queue (default: all);
        returns how many. ``to``: another backend to publish to instead (then
        each is published, then removed: an interruption in between can leave
        a duplicate, never a loss)."""
        if to is None or to is self.backend or _same_native(to, self.backend):
            try:
                count: int = await self._native.replay_in_place(_ids(ids))
            finally:
                _logs.pump()
            return count
        return await super().replay(ids, to)

    def __repr__(self) -> str:
        return f"NativeDeadLetterQueue({self._native.name})"


def _same_native(a: Any, b: Any) -> bool:
    native = native_of(a)
    return native is not None and native is native_of(b)


class MemoryDLQ(DeadLetterQueue):
    """Dead letters kept in this process's memory (tests, inspection)."""

    def __init__(self) -> None:
        super().__init__(_core.DeadLetterStore.memory())

    def __repr__(self) -> str:
        return "MemoryDLQ()"


class FileDLQ(DeadLetterQueue):
    """Dead letters appended to a local file as JSON lines.

    Each batch is written with one ``write`` and ``fsync``ed before its
    messages are acked; the file is created with mode 0600; a record torn by a
    crash mid-write is skipped and never spoils earlier or later records;
    removal rewrites the file atomically (temporary file, ``fsync``, rename).
    Lines that cannot be read (torn in the middle, damaged, or written by a
    newer foxtive) are never deleted: reads skip and count them
    (:attr:`unreadable`, a WARNING), and the next replay or purge moves them,
    as they were, to :attr:`corrupt_path` (:attr:`set_aside` says how many).
    Bodies are base64, headers keep their types. Processes may share the file.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        if not isinstance(path, str | os.PathLike):
            raise ConfigError(f"path: expected a file path, got {type(path).__name__}")
        # Absolute now: a later chdir must not move the dead letters.
        self.path: str = os.path.abspath(os.fspath(path))
        super().__init__(_core.DeadLetterStore.file(self.path))

    @property
    def corrupt_path(self) -> str:
        """Where unreadable records are set aside: ``<path>.corrupt``."""
        return self.path + ".corrupt"

    def __repr__(self) -> str:
        return f"FileDLQ({self.path!r})"


class RedisDLQ(DeadLetterQueue):
    """Dead letters in a Redis stream at ``key`` (one entry per record).

    ``url`` takes the forms :class:`foxtive.RedisStreamBackend` takes; it is
    shown with every credential (``:password@``, ``?password=``, ``?pass=``)
    redacted, in ``repr`` and errors."""

    def __init__(self, url: str, key: str = "foxtive:dead-letters") -> None:
        if not isinstance(url, str) or not url:
            raise ConfigError("url: expected a redis:// URL")
        if not isinstance(key, str) or not key:
            raise ConfigError("key: must be a non-empty string")
        self.url: str = _core.redact_url(url)
        self.key: str = key
        super().__init__(_core.DeadLetterStore.redis(url, key))

    def __repr__(self) -> str:
        return f"RedisDLQ(url={self.url!r}, key={self.key!r})"
