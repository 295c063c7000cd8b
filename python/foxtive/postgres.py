"""PostgreSQL: jobs as rows in your own database.

    backend = foxtive.PostgresBackend("postgresql://app@127.0.0.1/shop", queue="emails")

Everything per message runs in Rust (tokio-postgres): one
``FOR UPDATE SKIP LOCKED`` statement claims a batch of due rows and leases
them, leases of running jobs are renewed from Rust (a handler holding the GIL
keeps its job), settlements are batched (ack = DELETE, retry = a new
``run_at``, dead letter = a move to ``dead_letters``), idle workers wake on
``LISTEN/NOTIFY`` with a slow poll as a safety net, and a lost connection is
replaced by the backend itself.

The tables live in their own schema (``foxtive``, or ``schema=``, or
``?schema=`` in the URL), created on first use and versioned
(``schema_version``). A worker that dies leaves its jobs leased; they come
back after ``lease_timeout`` with the attempt counted.

Transactional enqueue: ``await backend.publish(body, transaction=conn)``
inserts the job through ``conn`` (a psycopg 3 ``Connection`` or
``AsyncConnection``, or any DB-API connection whose driver takes ``%s``
parameters), so the job exists if and only if the caller's transaction
commits; idle workers are woken at commit. From SQLAlchemy, pass the
driver connection (``session.connection().connection.driver_connection``);
from Django, ``django.db.connection.connection`` inside ``transaction.atomic()``.

Connections are not encrypted yet (no TLS): use a trusted network.
"""

from __future__ import annotations

import datetime as _dt
import inspect
from collections.abc import Iterable, Sequence
from typing import Any, Self

from . import _core
from ._config import seconds
from ._tracecontext import inject
from .backends import NativeBackend
from .errors import ConfigError

__all__ = ["PostgresBackend"]


class PostgresBackend(NativeBackend):
    """A queue of jobs in PostgreSQL.

    ``dsn``: a libpq URL, ``postgresql://user:password@host:5432/db``
    (``postgres://`` too; ``?schema=name`` picks the schema). The password is
    shown as ``***`` everywhere. ``lease_timeout``: seconds a claimed job
    stays with a worker that stopped renewing it (died). ``keep_finished``:
    seconds a finished (acked) job stays in the schema's ``finished_jobs``
    table for inspection (0, the default: deleted at the ack); workers delete
    expired ones in batches of 1,000 rows that never touch ``jobs``, so the
    queue keeps draining meanwhile. Nothing connects
    until a pool starts or the first publish. Its dead-letter queue
    (``dead_letter_queue()``, ``foxtive dlq --broker URL --queue Q``) is the
    schema's ``dead_letters`` table; a replay moves each record back into
    ``jobs`` with one statement: never lost or doubled.
    """

    _native: _core.PostgresBackend
    transactional = True

    def __init__(self, dsn: str, queue: str = "default", schema: str = "foxtive",
                 lease_timeout: float | _dt.timedelta = 30.0, *,
                 poll_interval: float | _dt.timedelta = 1.0,
                 keep_finished: float | _dt.timedelta = 0.0) -> None:
        if not isinstance(dsn, str) or not dsn:
            raise ConfigError("dsn: must be a non-empty string such as "
                              "postgresql://user@127.0.0.1:5432/db")
        if not isinstance(queue, str) or not queue:
            raise ConfigError("queue: must be a non-empty string")
        if not isinstance(schema, str) or not schema:
            raise ConfigError("schema: must be a non-empty string")
        self._native = _core.PostgresBackend(dsn, queue, schema, lease_timeout, poll_interval,
                                             keep_finished)
        self._schema_ready = False

    @classmethod
    def from_url(cls, url: str, queue: str, **options: Any) -> Self:
        """``postgresql://`` / ``postgres://`` (``?schema=``) with the options
        ``schema``, ``lease_timeout``, ``poll_interval``, ``keep_finished``; checked by the core's
        registry (an unknown option is a ConfigError naming those it takes)."""
        _core.open_backend(url, queue, options)
        return cls(url, queue, **options)

    @property
    def url(self) -> str:
        """The DSN with its password replaced by ``***``."""
        return str(self._native.url)

    @property
    def queue(self) -> str:
        return str(self._native.name)

    @property
    def schema(self) -> str:
        return str(self._native.schema)

    @property
    def lease_timeout(self) -> float:
        return float(self._native.lease_timeout)

    @property
    def keep_finished(self) -> float:
        """Seconds a finished job is kept in ``finished_jobs`` (0: not kept)."""
        return float(self._native.keep_finished)

    def __repr__(self) -> str:
        return (f"PostgresBackend(dsn={self.url!r}, queue={self.queue!r}, "
                f"schema={self.schema!r}, lease_timeout={self.lease_timeout})")

    async def ensure_schema(self) -> None:
        """Create the schema, or migrate it forward (workers do it on start)."""
        await self._native.ensure_schema()
        self._schema_ready = True

    async def publish(self, body: bytes | str, headers: dict[str, Any] | None = None,
                      delay: float | _dt.timedelta | None = None,
                      message_id: str | None = None, *, transaction: Any = None,
                      priority: int | None = None, dedup_key: str | None = None,
                      dedup_ttl: float | _dt.timedelta | None = None) -> str:
        """Insert one job (due after ``delay`` seconds); returns its id:
        ``message_id`` if given, else a generated UUID. With ``transaction``,
        the row is inserted through that connection (see the module docs).
        ``priority`` 0-9: due jobs are claimed highest priority first."""
        if transaction is not None:
            ids = await self._enqueue(transaction, [body], headers, delay, message_id, priority,
                                      dedup_key, dedup_ttl)
            return ids[0]
        return await super().publish(body, headers, delay, message_id, priority=priority,
                                     dedup_key=dedup_key, dedup_ttl=dedup_ttl)

    async def publish_many(self, bodies: Iterable[bytes | str],
                           headers: dict[str, Any] | None = None,
                           delay: float | _dt.timedelta | None = None, *,
                           transaction: Any = None,
                           message_ids: Sequence[str] | None = None,
                           priority: int | None = None) -> list[str]:
        """Insert many jobs in one statement (with ``transaction``, one
        statement through that connection); returns their ids in order."""
        if transaction is not None:
            return await self._enqueue(transaction, list(bodies), headers, delay, None,
                                       priority, message_ids=message_ids)
        return await super().publish_many(bodies, headers, delay, message_ids=message_ids,
                                          priority=priority)

    async def _enqueue(self, conn: Any, bodies: list[bytes | str],
                       headers: dict[str, Any] | None, delay: float | _dt.timedelta | None,
                       message_id: str | None, priority: int | None = None,
                       dedup_key: str | None = None,
                       dedup_ttl: float | _dt.timedelta | None = None, *,
                       message_ids: Sequence[str] | None = None) -> list[str]:
        if not self._schema_ready:
            # DDL on our own connection, never inside the caller's transaction.
            await self.ensure_schema()
        sql, params, ids = _core.postgres_enqueue(
            self.schema, self.queue, bodies, inject(headers), delay, message_id, priority,
            None if message_ids is None else list(message_ids))
        if dedup_key is not None:
            # The key is taken in the caller's transaction: it commits (or
            # rolls back) with the job.
            claim, held = self._dedup_params(ids, dedup_key, dedup_ttl)
            if await _fetchone(conn, *claim) is None:
                row = await _fetchone(conn, *held)
                if row is not None:
                    return [str(row[0])]
        await _execute(conn, sql, params)
        return list(ids)

    def _dedup_params(self, ids: list[str], key: str, ttl: float | _dt.timedelta | None
                      ) -> tuple[tuple[str, list[Any]], tuple[str, list[Any]]]:
        if len(ids) != 1 or ttl is None:
            raise ConfigError("dedup_key: one message, with dedup_ttl")
        claim, held = _core.postgres_dedup_sql(self.schema)
        return ((claim, [self.queue, key, ids[0], seconds("dedup_ttl", ttl, positive=True)]),
                (held, [self.queue, key]))

    def enqueue_many_sync(self, transaction: Any, bodies: Iterable[bytes | str],
                          headers: dict[str, Any] | None = None,
                          delay: float | _dt.timedelta | None = None, *,
                          message_ids: Sequence[str] | None = None,
                          priority: int | None = None) -> list[str]:
        """:meth:`publish_many` with ``transaction=`` from sync code: one
        INSERT of every job through the sync connection (the schema must
        exist, as for :meth:`enqueue_sync`); returns their ids in order."""
        if inspect.iscoroutinefunction(getattr(transaction, "execute", None)):
            raise ConfigError("transaction: an async connection needs the async send "
                              "(await task.options(transaction=conn).send_many(...))")
        sql, params, ids = _core.postgres_enqueue(
            self.schema, self.queue, list(bodies), inject(headers), delay, None, priority,
            None if message_ids is None else list(message_ids))
        _execute_sync(transaction, sql, params)
        return list(ids)

    def enqueue_sync(self, transaction: Any, body: bytes | str,
                     headers: dict[str, Any] | None = None,
                     delay: float | _dt.timedelta | None = None,
                     message_id: str | None = None, *, priority: int | None = None,
                     dedup_key: str | None = None,
                     dedup_ttl: float | _dt.timedelta | None = None) -> str:
        """:meth:`publish` with ``transaction=`` from sync code, through a
        sync connection (psycopg 3 ``Connection`` or DB-API); the schema must
        exist (``await ensure_schema()`` once, as ``App.send_sync`` does)."""
        if inspect.iscoroutinefunction(getattr(transaction, "execute", None)):
            raise ConfigError("transaction: an async connection needs the async send "
                              "(await task.options(transaction=conn).send(...))")
        sql, params, ids = _core.postgres_enqueue(self.schema, self.queue, [body],
                                                  inject(headers), delay, message_id, priority)
        if dedup_key is not None:
            claim, held = self._dedup_params(ids, dedup_key, dedup_ttl)
            if _fetchone_sync(transaction, *claim) is None:
                row = _fetchone_sync(transaction, *held)
                if row is not None:
                    return str(row[0])
        _execute_sync(transaction, sql, params)
        return str(ids[0])


def _fetchone_sync(conn: Any, sql: str, params: list[Any]) -> Any:
    if type(conn).__module__.startswith("psycopg") and hasattr(conn, "execute"):
        return conn.execute(sql, params).fetchone()
    cursor = conn.cursor()
    try:
        cursor.execute(sql, params)
        return cursor.fetchone()
    finally:
        cursor.close()


async def _fetchone(conn: Any, sql: str, params: list[Any]) -> Any:
    """One row of ``sql`` through the caller's connection (sync or async)."""
    if not inspect.iscoroutinefunction(getattr(conn, "execute", None)):
        return _fetchone_sync(conn, sql, params)
    cursor = await conn.execute(sql, params)
    return await cursor.fetchone()


def _execute_sync(conn: Any, sql: str, params: list[Any]) -> None:
    if type(conn).__module__.startswith("psycopg") and hasattr(conn, "execute"):
        conn.execute(sql, params)
        return
    if not hasattr(conn, "cursor"):
        raise ConfigError(
            f"transaction: expected a psycopg connection or a DB-API connection, "
            f"got {type(conn).__name__}")
    cursor = conn.cursor()
    try:
        cursor.execute(sql, params)
    finally:
        cursor.close()


async def _execute(conn: Any, sql: str, params: list[Any]) -> None:
    """Run ``sql`` through the caller's connection: psycopg 3 (sync or async)
    or a DB-API connection."""
    execute = getattr(conn, "execute", None)
    if execute is not None and type(conn).__module__.startswith("psycopg"):
        result = execute(sql, params)
        if inspect.isawaitable(result):
            await result
        return
    if not hasattr(conn, "cursor"):
        raise ConfigError(
            f"transaction: expected a psycopg connection or a DB-API connection, "
            f"got {type(conn).__name__}")
    cursor = conn.cursor()
    try:
        result = cursor.execute(sql, params)
        if inspect.isawaitable(result):
            await result
    finally:
        closed = cursor.close()
        if inspect.isawaitable(closed):
            await closed
