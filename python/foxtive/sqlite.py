"""SQLite: durable queues in one file, no server.

    backend = foxtive.SqliteBackend("foxtive.db", queue="emails", lease_timeout=30.0)

Everything per message runs in Rust (rusqlite, bundled SQLite): jobs are rows
of ``foxtive_jobs`` in WAL mode, claimed in batches by one ``UPDATE ...
RETURNING`` inside ``BEGIN IMMEDIATE`` (the claim counts the attempt and
leases the rows for ``lease_timeout``); leases are renewed from Rust while
handlers run, so a handler holding the GIL keeps its jobs, and a killed
worker's jobs come back after ``lease_timeout`` as the next attempt. Several
processes may share the file. Retries stay in the table with a later
``run_at`` (a long delay never holds back a due job); dead letters go to
``foxtive_dead_letters``. Idle workers poll with back-off (at most every
``poll_max`` seconds, 0.25 by default) and are woken at once by publishes
from their own process.

Transactional enqueue: ``await backend.publish(body, transaction=conn)``
with a :class:`sqlite3.Connection` on the same file inserts the job through
that connection, inside its open transaction: roll back and there is no
job; commit and it runs. From SQLAlchemy, pass the DB-API connection
(``session.connection().connection.driver_connection``); from Django,
``django.db.connection.connection``.
"""

from __future__ import annotations

import datetime as _dt
import sqlite3
import time
from collections.abc import Iterable, Sequence
from typing import Any, Self

from . import _core
from ._config import seconds
from ._tracecontext import inject
from .backends import NativeBackend
from .errors import ConfigError

__all__ = ["SqliteBackend"]


_DDL: list[str] = []


def ensure_tables(conn: sqlite3.Connection) -> None:
    """Create foxtive's tables through ``conn`` if missing (every statement
    ``IF NOT EXISTS``: a no-op once they exist), in its open transaction."""
    if not isinstance(conn, sqlite3.Connection):
        raise ConfigError(
            f"transaction: expected a sqlite3.Connection, got {type(conn).__name__}")
    if not _DDL:
        _DDL.extend(_core.sqlite_enqueue("default", [])[0])
    for statement in _DDL:
        conn.execute(statement)


def enqueue(conn: sqlite3.Connection, queue: str, bodies: Iterable[bytes | str],
            headers: dict[str, Any] | None = None,
            delay: float | _dt.timedelta | None = None,
            message_id: str | None = None, priority: int | None = None,
            dedup_key: str | None = None,
            dedup_ttl: float | _dt.timedelta | None = None, *,
            message_ids: Sequence[str] | None = None) -> list[str]:
    """Insert jobs through ``conn`` (in its current transaction) with one
    ``executemany``; the SQL comes from the core, the same the backend's own
    publish runs. ``message_ids``: one id per body. With ``dedup_key`` (one
    job), the key is taken in the same transaction, and when another job
    holds it nothing is inserted and its id is returned."""
    if not isinstance(conn, sqlite3.Connection):
        raise ConfigError(
            f"transaction: expected a sqlite3.Connection, got {type(conn).__name__}")
    ddl, insert, rows, ids = _core.sqlite_enqueue(
        queue, list(bodies), headers, delay, message_id, priority,
        None if message_ids is None else list(message_ids))
    for statement in ddl:
        conn.execute(statement)
    if dedup_key is not None:
        if len(ids) != 1 or dedup_ttl is None:
            raise ConfigError("dedup_key: one message, with dedup_ttl")
        ttl = seconds("dedup_ttl", dedup_ttl, positive=True)
        claim, held = _core.sqlite_dedup_sql()
        now = time.time()
        if conn.execute(claim, (queue, dedup_key, ids[0], now + ttl, now)).fetchone() is None:
            row = conn.execute(held, (queue, dedup_key)).fetchone()
            if row is not None:
                return [str(row[0])]
    conn.executemany(insert, rows)
    return list(ids)


class SqliteBackend(NativeBackend):
    """A queue in a SQLite file as a foxtive backend.

    ``path``: the database file, created with its tables if missing.
    ``queue``: the queue consumed and published to (``message.queue``);
    several queues may share one file. ``lease_timeout``: how long a claimed
    job stays leased without renewal (renewed every third of it while the
    handler runs). ``busy_timeout``: how long a write waits for another
    process's write lock (10 s). ``poll_max``: the longest idle pause.
    ``keep_finished``: seconds a finished (acked) job stays in
    ``foxtive_finished_jobs`` for inspection (0, the default: deleted at the
    ack); workers delete expired ones 1,000 rows per short transaction.
    The settings are checked once, by the core. Name, state, connect, close
    and the dead-letter queue (a table: a replay moves records back in one
    transaction, never lost or doubled) come from :class:`NativeBackend`.
    """

    _native: _core.SqliteBackend
    transactional = True

    def __init__(self, path: str = "foxtive.db", queue: str = "default",
                 lease_timeout: float | _dt.timedelta = 30.0, *,
                 busy_timeout: float | _dt.timedelta | None = None,
                 poll_max: float | _dt.timedelta | None = None,
                 keep_finished: float | _dt.timedelta | None = None) -> None:
        self._native = _core.SqliteBackend(path, queue, {
            "lease_timeout": lease_timeout, "busy_timeout": busy_timeout, "poll_max": poll_max,
            "keep_finished": keep_finished})

    @classmethod
    def from_url(cls, url: str, queue: str = "default", **options: Any) -> Self:
        """``sqlite:///relative.db`` (from the working directory) or
        ``sqlite:////absolute.db``, as SQLAlchemy reads them; ``options`` are
        the keywords above, checked by the core (an unknown one is a
        ``ConfigError`` listing them)."""
        backend = cls.__new__(cls)
        backend._native = _core.SqliteBackend(_core.sqlite_path_from_url(url), queue, options)
        return backend

    @property
    def path(self) -> str:
        return self._native.path

    @property
    def lease_timeout(self) -> float:
        return self._native.lease_timeout

    @property
    def keep_finished(self) -> float:
        """Seconds a finished job is kept (0: deleted at the ack)."""
        return self._native.keep_finished

    def __repr__(self) -> str:
        return repr(self._native)

    async def publish(self, body: bytes | str, headers: dict[str, Any] | None = None,
                      delay: float | _dt.timedelta | None = None,
                      message_id: str | None = None, *,
                      transaction: sqlite3.Connection | None = None,
                      priority: int | None = None, dedup_key: str | None = None,
                      dedup_ttl: float | _dt.timedelta | None = None) -> str:
        """Insert one job (due after ``delay`` seconds); returns its id
        (``message_id`` if given, else a generated one). With
        ``transaction=conn`` the row is inserted through that connection,
        in its open transaction. ``priority`` 0-9: due jobs are claimed
        highest priority first."""
        if transaction is not None:
            return enqueue(transaction, self.name, [body], inject(headers), delay,
                           message_id, priority, dedup_key, dedup_ttl)[0]
        return await super().publish(body, headers, delay, message_id, priority=priority,
                                     dedup_key=dedup_key, dedup_ttl=dedup_ttl)

    async def publish_many(self, bodies: Iterable[bytes | str],
                           headers: dict[str, Any] | None = None,
                           delay: float | _dt.timedelta | None = None, *,
                           transaction: sqlite3.Connection | None = None,
                           message_ids: Sequence[str] | None = None,
                           priority: int | None = None) -> list[str]:
        """Insert many jobs in one transaction (with ``transaction``, one
        ``executemany`` through that connection); returns their ids in order."""
        if transaction is not None:
            return self.enqueue_many_sync(transaction, bodies, headers, delay,
                                          message_ids=message_ids, priority=priority)
        return await super().publish_many(bodies, headers, delay, message_ids=message_ids,
                                          priority=priority)

    def enqueue_sync(self, transaction: sqlite3.Connection, body: bytes | str,
                     headers: dict[str, Any] | None = None,
                     delay: float | _dt.timedelta | None = None,
                     message_id: str | None = None, *, priority: int | None = None,
                     dedup_key: str | None = None,
                     dedup_ttl: float | _dt.timedelta | None = None) -> str:
        """:meth:`publish` with ``transaction=``, from sync code (the
        connection's own thread); returns the job's id (the holder's, when
        ``dedup_key`` is taken)."""
        return enqueue(transaction, self.name, [body], inject(headers), delay, message_id,
                       priority, dedup_key, dedup_ttl)[0]

    def enqueue_many_sync(self, transaction: sqlite3.Connection, bodies: Iterable[bytes | str],
                          headers: dict[str, Any] | None = None,
                          delay: float | _dt.timedelta | None = None, *,
                          message_ids: Sequence[str] | None = None,
                          priority: int | None = None) -> list[str]:
        """:meth:`publish_many` with ``transaction=``, from sync code: one
        ``executemany`` through the connection; returns the ids in order."""
        return enqueue(transaction, self.name, bodies, inject(headers), delay,
                       priority=priority, message_ids=message_ids)
