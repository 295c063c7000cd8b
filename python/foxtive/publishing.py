"""Publishing: how an app's tasks reach their broker, and their "pending"
result record with them.

An :class:`~foxtive.App` owns one :class:`Publisher`; a task's ``send``,
``send_sync`` and ``send_many`` end here. It picks, per queue, the cheapest
path the broker and the result store allow: one pipelined round trip on
Redis, the caller's thread for foxtive's native backends, the caller's
transaction with ``transaction=conn``, the app's loop thread otherwise.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Coroutine, Iterable, Mapping
from typing import Any, Protocol, TypeVar

from . import _core
from . import postgres as _postgres
from . import sqlite as _sqlite
from ._tracecontext import inject
from .backends import NativeBackend, check_publish_options
from .errors import BackendError, ConfigError
from .redis_loop import LoopLink, direct_enabled, raise_error_reply
from .results import RedisResultStore, ResultStore
from .results_sql import PostgresResultStore, SqliteResultStore

__all__ = ["Publisher", "PublishingApp"]

_T = TypeVar("_T")


class PublishingApp(Protocol):
    """What publishing needs from its app (``foxtive.App``)."""

    results: bool | str | None
    broker: Any

    def backend(self, queue: str) -> Any: ...

    def _result_store(self) -> ResultStore: ...

    def _run_sync(self, coro: Coroutine[Any, Any, _T]) -> _T: ...


class Publisher:
    """Sends an app's tasks (see the module's docstring)."""

    def __init__(self, app: PublishingApp) -> None:
        self._app = app
        self._blocks: dict[str, bool] = {}
        self._marks: dict[str, Any] = {}
        self._natives: dict[str, Any] = {}
        #: Per queue, the event loops' connections to its Redis, each held
        #: (LoopLink.acquire) until forget() (None: no direct path).
        self._links: dict[str, LoopLink | None] = {}
        #: Sends on Redis from the caller's own connection (its thread's for
        #: send_sync, its loop's for send) rather than through the core's
        #: runtime; FOXTIVE_REDIS_DIRECT=0 turns that off (the same sends,
        #: each with two thread hand-offs more).
        self.direct = direct_enabled()

    def forget(self) -> None:
        """Drop what was learned of the app's backends (they were closed),
        closing the event loops' own connections to Redis."""
        self._blocks = {}
        self._marks = {}
        self._natives = {}
        links, self._links = self._links, {}
        for link in links.values():  # closed when no other app or store holds it
            if link is not None:
                link.release()

    async def _publish_direct(self, queue: str, native: Any, body: bytes,
                              headers: dict[str, Any] | None, delay: float | None, task_id: str,
                              mark: dict[str, Any] | None) -> str:
        """Publish on foxtive's own Redis backend (``native``), with the
        task's "pending" record in the same round trip when ``mark`` is
        given: on the running loop's own connection to Redis when the
        commands fit one pipeline on one node (see ``redis_loop``), else
        through the core's runtime when that connection cannot be opened
        (nothing was sent on it) or fails under the send (the runtime's
        path reconnects and sends again, as its own sends do: at least
        once, never lost)."""
        prepared = _core.RedisPublish(body, headers, delay, task_id, **(mark or {}))
        link = self._loop_link(queue, native)
        commands = native.publish_commands(prepared) if link else None
        if commands is not None and link is not None:
            try:
                replies = await link.run(*commands)
            except BackendError:  # not opened, lost or silent: an error reply is not raised
                pass
            else:
                raise_error_reply(replies)
                return task_id
        got: str = await native.publish_prepared(prepared)
        return got

    def _loop_link(self, queue: str, native: Any) -> LoopLink | None:
        """The event loops' connections to ``native``'s Redis (the queue
        ``queue``'s), found through its ``RedisCommands`` once per queue (the
        same link as the result store's writes and waits on that Redis) and
        held until :meth:`forget`; None: no direct path (TLS,
        ``FOXTIVE_REDIS_DIRECT=0``)."""
        try:
            return self._links[queue]
        except KeyError:
            link = self._links[queue] = LoopLink.acquire(native.commands)
            return link

    # A task's "pending" record: a send without dedup_key writes it before
    # the publish (a worker's later writes then overwrite it, never the
    # reverse); a send with dedup_key writes it after, only when its own
    # message was enqueued, and only where no live record is (mark_new): a
    # deduplicated send enqueued nothing, leaves no record of its own, and
    # its handle is the first task's (id, status, result).
    #
    # On Redis, a task whose id was generated here (``fresh``: no record of
    # it can exist but a worker's) has its "pending" written with SET NX
    # *while* it is published, both done before the send returns: the
    # record is there from send on, a worker's write that landed first is
    # never overwritten, and the send costs one round trip, not two. When
    # the store is the broker's own Redis, the SET NX goes in the publish's
    # own pipeline on the core's command connection (``_marking``): one
    # call into Rust and one wake-up per send, no redis-py. An id
    # the sender chose may name an earlier task's record, which "pending"
    # must replace: those keep the write-then-publish order.
    async def publish(self, queue: str, body: bytes, headers: dict[str, Any],
                       delay: float | None, task_id: str,
                       options: Mapping[str, Any] | None = None, *,
                       fresh: bool = False) -> str:
        """Publish one task; its id on the broker (the first task's id when
        ``dedup_key`` found one). ``fresh``: the id was generated for this
        send (not the caller's ``message_id``)."""
        backend = self._app.backend(queue)
        dedup = False
        if options:
            check_publish_options(backend, options)
            dedup = options.get("dedup_key") is not None
            if dedup and not backend.native_dedup:
                return await self._publish_once(backend, queue, body, headers, delay, task_id,
                                                options)
            if self._app.results and options.get("transaction") is not None:
                return await self._publish_in_transaction_async(backend, body, headers, delay,
                                                                task_id, options)
        store = self._app._result_store() if self._app.results else None
        if store is not None and not dedup:
            if fresh and isinstance(store, RedisResultStore):
                native = None if options else self._marking(queue, backend, store)
                if native is not None:
                    await self._publish_direct(queue, native, body, inject(headers), delay,
                                               task_id,
                                               store.pending_mark(task_id))
                    return task_id
                await _both(store.mark_new(task_id, "pending"),
                            backend.publish(body, headers=headers, delay=delay,
                                            message_id=task_id, **(options or {})))
                return task_id
            await store.mark(task_id, "pending")
        elif store is None and not options:
            native = self._native_redis(queue, backend)
            if native is not None:
                return await self._publish_direct(queue, native, body, inject(headers), delay,
                                                  task_id,
                                                  None)
        got = await backend.publish(body, headers=headers, delay=delay, message_id=task_id,
                                    **(options or {}))
        got_id = got if isinstance(got, str) else task_id
        if store is not None and dedup and got_id == task_id:
            await store.mark_new(task_id, "pending")
        return got_id

    def _local_store(self, backend: Any) -> PostgresResultStore | SqliteResultStore | None:
        """The result store when it lives in the broker's own database: a
        send with ``transaction=conn`` then writes the "pending" records
        through ``conn``, so they commit or roll back with the tasks (and a
        second connection never waits on the caller's SQLite write lock)."""
        if not self._app.results or not isinstance(self._app.broker, str):
            return None
        store = self._app._result_store()
        if isinstance(store, SqliteResultStore):
            path = getattr(backend, "path", None)
            return store if path is not None and os.path.abspath(path) == store.path else None
        if isinstance(store, PostgresResultStore) and self._app.results in (True, self._app.broker):
            return store
        return None

    async def _pending_in(self, backend: Any, conn: Any, task_ids: list[str],
                          only_new: bool) -> None:
        """Write "pending" for ``task_ids`` in the caller's transaction
        (``conn``) when the store lives there, else in the store."""
        local = self._local_store(backend)
        if isinstance(local, SqliteResultStore):
            _pending_in_sqlite(local, conn, task_ids, only_new)
            return
        if local is not None:
            if not backend._schema_ready:  # DDL on the backend's own connection
                await backend.ensure_schema()
            await _postgres._execute(conn, *local.pending_statement(task_ids, "pending",
                                                                      only_new=only_new))
            return
        store = self._app._result_store()
        if only_new:
            await store.mark_new(task_ids[0], "pending")
        else:
            await store.mark_many(task_ids, "pending")

    def _pending_in_sync(self, backend: Any, conn: Any, task_ids: list[str],
                         only_new: bool) -> None:
        """:meth:`_pending_in` on the caller's thread (its sync connection)."""
        local = self._local_store(backend)
        if isinstance(local, SqliteResultStore):
            _pending_in_sqlite(local, conn, task_ids, only_new)
            return
        if local is not None:
            _postgres._execute_sync(conn, *local.pending_statement(task_ids, "pending",
                                                                     only_new=only_new))
            return
        store = self._app._result_store()
        if only_new:
            self._app._run_sync(store.mark_new(task_ids[0], "pending"))
        else:
            self._app._run_sync(store.mark_many(task_ids, "pending"))

    async def _publish_in_transaction_async(self, backend: Any, body: bytes,
                                            headers: dict[str, Any], delay: float | None,
                                            task_id: str, options: Mapping[str, Any]) -> str:
        opts = dict(options)
        conn = opts.pop("transaction")
        dedup = opts.get("dedup_key") is not None
        if not dedup:
            await self._pending_in(backend, conn, [task_id], only_new=False)
        got = await backend.publish(body, headers=headers, delay=delay, message_id=task_id,
                                    transaction=conn, **opts)
        got_id = got if isinstance(got, str) else task_id
        if dedup and got_id == task_id:
            await self._pending_in(backend, conn, [task_id], only_new=True)
        return got_id

    async def _publish_once(self, backend: Any, queue: str, body: bytes,
                            headers: dict[str, Any], delay: float | None, task_id: str,
                            options: Mapping[str, Any]) -> str:
        """``dedup_key`` on a broker with no store of its own (RabbitMQ):
        the key is taken in the app's Redis result store (``SET NX``), then
        the task is published. Not atomic: a process that dies between the
        two leaves the key taken and no task for ``dedup_ttl``; a failed
        publish gives the key back."""
        store = self._app._result_store() if self._app.results else None
        if not isinstance(store, RedisResultStore):
            raise ConfigError(
                f"dedup_key: {type(backend).__name__} keeps no state to deduplicate with; "
                f"give the app a Redis result store: App(..., results='redis://...')")
        opts = dict(options)
        key = f"{store.prefix}dedup:{queue}:{opts.pop('dedup_key')}"
        ttl_ms = max(1, int(opts.pop("dedup_ttl") * 1000))
        client = store._client()
        held = await client.set(key, task_id, nx=True, px=ttl_ms, get=True)
        if held is not None:
            return held.decode() if isinstance(held, bytes) else str(held)
        try:
            await store.mark(task_id, "pending")
            await backend.publish(body, headers=headers, delay=delay, message_id=task_id, **opts)
        except BaseException:
            await client.delete(key)
            raise
        return task_id

    def publish_sync(self, queue: str, body: bytes, headers: dict[str, Any],
                      delay: float | None, task_id: str,
                      options: Mapping[str, Any] | None = None, *,
                      fresh: bool = False) -> str:
        backend = self._app.backend(queue)
        if options and options.get("transaction") is not None:
            return self._publish_in_transaction(backend, body, headers, delay, task_id, options)
        if self._blocking(queue, backend):
            return self._publish_blocking(backend, queue, body, headers, delay, task_id,
                                          options, fresh)
        return self._app._run_sync(self.publish(queue, body, headers, delay, task_id, options,
                                            fresh=fresh))

    def _blocking(self, queue: str, backend: Any) -> bool:
        """Whether ``send_sync`` publishes on ``queue`` from the caller's
        thread (the core's runtime, waited on with the GIL released) rather
        than through the app's loop thread: foxtive's own native backends,
        not one driving a backend written in Python (cached per queue)."""
        known = self._blocks.get(queue)
        if known is None:
            known = self._blocks[queue] = (isinstance(backend, NativeBackend)
                                           and backend.publishes_blocking)
        return known

    def _native_redis(self, queue: str, backend: Any) -> Any:
        """foxtive's own ``RedisStreamBackend`` behind ``backend`` (the core
        object: its direct and one-round-trip publishes), or None: another
        backend, or one driving a backend written in Python. Cached per
        queue."""
        known = self._natives.get(queue, _UNKNOWN)
        if known is _UNKNOWN:
            native = getattr(backend, "_native", None)
            known = None
            if isinstance(native, _core.RedisStreamBackend) and backend.publishes_blocking:
                known = native
            self._natives[queue] = known
        return known

    def _marking(self, queue: str, backend: Any, store: RedisResultStore) -> Any:
        """The native Redis backend that writes a fresh task's "pending"
        record in its publish's own round trip (``SET NX`` pipelined with
        the ``XADD``: one call, one round trip, no redis-py), or None: only
        foxtive's own ``RedisStreamBackend`` on the store's Redis (same
        server, credentials, database), not on a cluster. Cached per queue."""
        known = self._marks.get(queue, _UNKNOWN)
        if known is _UNKNOWN:
            native = self._native_redis(queue, backend)
            known = None
            if store._cluster is None and native is not None and native.same_redis(store.url):
                known = native
            self._marks[queue] = known
        return known

    def _publish_blocking(self, backend: NativeBackend, queue: str, body: bytes,
                          headers: dict[str, Any], delay: float | None, task_id: str,
                          options: Mapping[str, Any] | None, fresh: bool) -> str:
        """:meth:`_publish` on the caller's thread: the app's loop thread is
        never used (nor started), so many threads send at once without
        queueing behind it; "pending" is written through the store's sync
        client, concurrently with the publish where :meth:`_publish` does."""
        dedup = False
        opts: dict[str, Any] = {}
        if options:
            check_publish_options(backend, options)
            dedup = options.get("dedup_key") is not None
            if dedup and not backend.native_dedup:
                return self._app._run_sync(self._publish_once(backend, queue, body, headers, delay,
                                                         task_id, options))
            opts = dict(options)
        store = self._app._result_store() if self._app.results else None
        if store is None:
            native = None if opts else self._native_redis(queue, backend)
            if native is not None and self.direct:
                # The caller's own connection to Redis, GIL released (None:
                # no direct path, or its connection failed: the runtime's).
                got = native.publish_now(_core.RedisPublish(body, inject(headers), delay, task_id))
                if got is not None:
                    return str(got)
            return backend.publish_begin(body, headers, delay, task_id, **opts).wait()[0]
        if dedup:
            got = backend.publish_begin(body, headers, delay, task_id, **opts).wait()[0]
            if got == task_id:
                store.mark_new_sync(task_id, "pending")
            return got
        if fresh and isinstance(store, RedisResultStore):
            native = None if opts else self._marking(queue, backend, store)
            if native is not None:
                prepared = _core.RedisPublish(body, inject(headers), delay, task_id,
                                              **store.pending_mark(task_id))
                # The caller's own connection to Redis, GIL released (None:
                # no direct path, or its connection failed: the runtime's).
                if not self.direct or native.publish_now(prepared) is None:
                    native.publish_prepared_begin(prepared).wait()
                return task_id
            publishing = backend.publish_begin(body, headers, delay, task_id, **opts)
            try:
                store.mark_new_sync(task_id, "pending")
            finally:
                publishing.wait()  # both done before the send returns
            return task_id
        store.mark_sync([task_id], "pending")
        return backend.publish_begin(body, headers, delay, task_id, **opts).wait()[0]

    def publish_many_sync(self, queue: str, items: list[tuple[bytes, str]],
                           headers: dict[str, Any], delay: float | None,
                           options: Mapping[str, Any] | None) -> None:
        """``send_many_sync``: on foxtive's native backends one batch from
        the caller's thread (see :meth:`_publish_blocking`), else through
        the app's loop thread."""
        backend = self._app.backend(queue)
        if not self._blocking(queue, backend):
            self._app._run_sync(self.publish_many(queue, items, headers, delay, options))
            return
        if options:
            check_publish_options(backend, options)
        bodies = [body for body, _ in items]
        ids = [task_id for _, task_id in items]
        store = self._app._result_store() if self._app.results else None
        if isinstance(store, RedisResultStore):
            publishing = backend.publish_many_begin(bodies, headers, delay, message_ids=ids,
                                                    **(options or {}))
            try:
                store.mark_new_many_sync(ids, "pending")
            finally:
                publishing.wait()
            return
        if store is not None:
            store.mark_sync(ids, "pending")
        backend.publish_many_begin(bodies, headers, delay, message_ids=ids,
                                   **(options or {})).wait()

    def _publish_in_transaction(self, backend: Any, body: bytes, headers: dict[str, Any],
                                delay: float | None, task_id: str,
                                options: Mapping[str, Any]) -> str:
        """``send_sync`` with ``transaction=conn``: the caller's connection
        belongs to the calling thread, so the row is inserted here, not on
        the app's loop thread."""
        check_publish_options(backend, options)
        if not getattr(backend, "_schema_ready", True):  # PostgreSQL: DDL on its own link
            self._app._run_sync(backend.ensure_schema())
        opts = dict(options)
        conn = opts.pop("transaction")
        dedup = opts.get("dedup_key") is not None
        if self._app.results and not dedup:
            self._pending_in_sync(backend, conn, [task_id], only_new=False)
        got: str = backend.enqueue_sync(conn, body, headers, delay, task_id, **opts)
        if self._app.results and dedup and got == task_id:
            self._pending_in_sync(backend, conn, [task_id], only_new=True)
        return got

    def publish_many_in_transaction(self, queue: str, items: list[tuple[bytes, str]],
                                     headers: dict[str, Any], delay: float | None,
                                     options: Mapping[str, Any]) -> None:
        """``send_many_sync`` with ``transaction=conn``: one batched insert
        through the caller's connection, on the calling thread."""
        backend = self._app.backend(queue)
        check_publish_options(backend, options)
        if not getattr(backend, "_schema_ready", True):  # PostgreSQL: DDL on its own link
            self._app._run_sync(backend.ensure_schema())
        opts = dict(options)
        conn = opts.pop("transaction")
        ids = [task_id for _, task_id in items]
        if self._app.results:
            self._pending_in_sync(backend, conn, ids, only_new=False)
        backend.enqueue_many_sync(conn, [body for body, _ in items], headers, delay,
                                  message_ids=ids, **opts)

    async def publish_many(self, queue: str, items: Iterable[tuple[bytes, str]],
                            headers: dict[str, Any], delay: float | None,
                            options: Mapping[str, Any] | None = None) -> None:
        # The task id is the message id: native backends take one id per
        # message in publish_many; a backend written in Python gets each
        # message published on its own, concurrently.
        items = list(items)
        bodies = [body for body, _ in items]
        ids = [task_id for _, task_id in items]
        backend = self._app.backend(queue)
        if options:
            check_publish_options(backend, options)
        if self._app.results:
            conn = options.get("transaction") if options else None
            store = self._app._result_store()
            if conn is not None:
                await self._pending_in(backend, conn, ids, only_new=False)
            elif isinstance(store, RedisResultStore) and isinstance(backend, NativeBackend):
                # Every id is fresh (send_many takes no message_id): "pending"
                # with SET NX while the batch is published (see _publish).
                await _both(store.mark_new_many(ids, "pending"),
                            backend.publish_many(bodies, headers=headers, delay=delay,
                                                 message_ids=ids, **(options or {})))
                return
            else:
                await store.mark_many(ids, "pending")
        if isinstance(backend, NativeBackend):
            # One batch, each message with its task id (one round trip; with
            # transaction=conn, one statement through the caller's connection).
            await backend.publish_many(bodies, headers=headers, delay=delay, message_ids=ids,
                                       **(options or {}))
            return
        await asyncio.gather(*(backend.publish(body, headers=headers, delay=delay,
                                               message_id=task_id) for body, task_id in items))

#: Not looked up yet (``Publisher._marks``: None means "no such backend").
_UNKNOWN: Any = object()


async def _both(first: Awaitable[Any], second: Awaitable[Any]) -> None:
    """Run two writes at once and wait for both (neither is left running
    when the other fails); raise the second's error first (the publish:
    the task was not sent), else the first's."""
    results = await asyncio.gather(first, second, return_exceptions=True)
    for r in reversed(results):
        if isinstance(r, BaseException):
            raise r


def _pending_in_sqlite(store: SqliteResultStore, conn: Any, task_ids: list[str],
                       only_new: bool) -> None:
    """"pending" for ``task_ids`` through the caller's sqlite3 connection
    (the same call from async and sync sends: sqlite3 is synchronous)."""
    _sqlite.ensure_tables(conn)
    sql, rows = store.pending_statement(task_ids, "pending", only_new=only_new)
    conn.executemany(sql, rows)
