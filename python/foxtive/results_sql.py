"""Result stores in the broker's own SQL database.

Both keep one row per task in a table created by the backend's migrations
(``foxtive db migrate``, or on first use): PostgreSQL ``<schema>.results``,
SQLite ``foxtive_results``. A row holds the JSON record (see
:mod:`foxtive.results`), its status and ``expires_at`` (its last write +
``result_ttl``). Reads ignore expired rows; the store deletes them, 1,000
rows per statement, at most every ``min(result_ttl / 2, 60 s)``, from the
writes it makes anyway.

* :class:`PostgresResultStore` (psycopg 3, ``pip install 'foxtive[postgres]'``):
  a final write fires a row trigger that sends ``NOTIFY`` on the schema's
  results channel with the task id, so waiters ``LISTEN`` and sleep until it
  comes, whoever wrote the row. One listening connection per event loop
  (its reader hands each notification to the waiters of that id); a
  blocking waiter listens on its thread's connection only while it waits.
* :class:`SqliteResultStore` (stdlib ``sqlite3``): a waiter is woken at once
  by a final write from its own process; a write from another process is
  seen by polling the row with back-off (5 ms doubling to 250 ms), one
  indexed read of a file in WAL mode.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import os
import sqlite3
import threading
import time
import urllib.parse
import weakref
from collections.abc import Callable
from typing import Any, TypeVar

import msgspec

from . import _core
from .errors import ConfigError
from .results import FINAL, ResultStore, _outcome

__all__ = ["PostgresResultStore", "SqliteResultStore"]

_T = TypeVar("_T")

_enc = msgspec.json.Encoder()
_dec = msgspec.json.Decoder()

#: Expired rows deleted by one statement.
EXPIRE_BATCH = 1000
#: SQLite cross-process poll: first and longest pause.
POLL_MIN = 0.005
POLL_MAX = 0.25


def _expire_every(ttl: float) -> float:
    return min(max(ttl / 2, 0.2), 60.0)


def _final(raw: str | bytes | None) -> dict[str, Any] | None:
    if raw is None:
        return None
    record: dict[str, Any] = _dec.decode(raw)
    return record if record.get("status") in FINAL else None


def _run_in_thread(fn: Callable[[], Any]) -> Any:
    """Run ``fn`` on a thread of its own (it may start an event loop even
    when the caller's thread runs one)."""
    out: list[Any] = []
    err: list[BaseException] = []

    def target() -> None:
        try:
            out.append(fn())
        except BaseException as e:  # handed to the caller
            err.append(e)

    t = threading.Thread(target=target, name="foxtive-results-migrate", daemon=True)
    t.start()
    t.join()
    if err:
        raise err[0]
    return out[0]


# -- PostgreSQL ---------------------------------------------------------------

def split_schema(url: str) -> tuple[str, str | None]:
    """``url`` without foxtive's ``?schema=`` (libpq rejects it), and its value."""
    parts = urllib.parse.urlsplit(url)
    pairs = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    schema = next((v for k, v in reversed(pairs) if k == "schema"), None)
    query = urllib.parse.urlencode([(k, v) for k, v in pairs if k != "schema"])
    return urllib.parse.urlunsplit(parts._replace(query=query)), schema


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class _LoopSide:
    """One event loop's connections: one for statements, one LISTENing whose
    reader task wakes the futures waiting for each task id."""

    def __init__(self, conn: Any, listener: Any) -> None:
        self.conn = conn
        self.listener = listener
        self.waiters: dict[str, set[asyncio.Future[None]]] = {}
        self.reader: asyncio.Task[None] | None = None
        self.broken = False

    def register(self, task_id: str) -> asyncio.Future[None]:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.waiters.setdefault(task_id, set()).add(fut)
        return fut

    def unregister(self, task_id: str, fut: asyncio.Future[None]) -> None:
        futs = self.waiters.get(task_id)
        if futs is not None:
            futs.discard(fut)
            if not futs:
                del self.waiters[task_id]

    async def read(self) -> None:
        try:
            async for n in self.listener.notifies():
                for fut in self.waiters.get(n.payload, ()):
                    if not fut.done():
                        fut.set_result(None)
        except Exception:  # connection lost: waiters look again, a new side listens
            pass
        finally:
            self.broken = True
            for futs in self.waiters.values():
                for fut in futs:
                    if not fut.done():
                        fut.set_result(None)

    async def close(self) -> None:
        if self.reader is not None:
            self.reader.cancel()
            try:
                await self.reader
            except (asyncio.CancelledError, Exception):
                pass
        for c in (self.listener, self.conn):
            try:
                await c.close()
            except Exception:  # best effort
                pass


class PostgresResultStore(ResultStore):
    """Task results in ``<schema>.results`` of the broker's PostgreSQL;
    waiting is ``LISTEN``, never a poll loop."""

    def __init__(self, url: str, ttl: float, schema: str | None = None) -> None:
        try:
            import psycopg  # noqa: F401
        except ImportError:  # pragma: no cover - depends on the environment
            raise ConfigError("results on PostgreSQL need psycopg 3: "
                              "pip install 'foxtive[postgres]'") from None
        self.url = url
        self.ttl = ttl
        self._dsn, url_schema = split_schema(url)
        self.schema = schema or url_schema or "foxtive"
        self.channel = "foxtive_results_" + hashlib.md5(self.schema.encode()).hexdigest()
        s = _quote(self.schema)
        self._upsert = (
            f"INSERT INTO {s}.results (task_id, status, record, expires_at) "
            "SELECT t, %s, %s, now() + make_interval(secs => %s) FROM unnest(%s::text[]) AS t "
            "ON CONFLICT (task_id) DO UPDATE SET status = EXCLUDED.status, "
            "record = EXCLUDED.record, expires_at = EXCLUDED.expires_at")
        # The same write, but only where no live row is (an expired one is
        # replaced): the "pending" of a deduplicated send, which must not
        # overwrite what a worker already wrote for that id.
        self._insert_new = (
            f"INSERT INTO {s}.results AS r (task_id, status, record, expires_at) "
            "SELECT t, %s, %s, now() + make_interval(secs => %s) FROM unnest(%s::text[]) AS t "
            "ON CONFLICT (task_id) DO UPDATE SET status = EXCLUDED.status, "
            "record = EXCLUDED.record, expires_at = EXCLUDED.expires_at "
            "WHERE r.expires_at <= now()")
        self._select = f"SELECT record FROM {s}.results WHERE task_id = %s AND expires_at > now()"
        self._expire_sql = (
            f"DELETE FROM {s}.results WHERE task_id = ANY(ARRAY(SELECT task_id FROM {s}.results "
            "WHERE expires_at < now() ORDER BY expires_at LIMIT %s FOR UPDATE SKIP LOCKED))")
        self._lock = threading.Lock()
        self._migrated = False
        self._next_expire = 0.0
        self._sync: Any = None
        self._local = threading.local()
        self._thread_conns: list[Any] = []
        self._sides: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopSide] = (
            weakref.WeakKeyDictionary())
        self._side_locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop,
                                                    asyncio.Lock] = weakref.WeakKeyDictionary()

    def __repr__(self) -> str:
        return f"PostgresResultStore(url={_core.redact_url(self.url)!r}, schema={self.schema!r})"

    # -- connections ---------------------------------------------------------
    def _migrate_sync(self) -> None:
        if not self._migrated:
            _run_in_thread(lambda: asyncio.run(_migrate_pg(self.url, self.schema)))
            self._migrated = True

    async def _migrate(self) -> None:
        if not self._migrated:
            await _core.postgres_migrate(self.url, self.schema)
            self._migrated = True

    async def _side(self) -> _LoopSide:
        loop = asyncio.get_running_loop()
        side = self._sides.get(loop)
        if side is not None and not side.broken:
            return side
        # One opener per loop: a worker's first batch calls this from every
        # message at once, and each would otherwise open its own two
        # connections (hundreds: "too many clients").
        lock = self._side_locks.get(loop)
        if lock is None:
            lock = self._side_locks[loop] = asyncio.Lock()
        async with lock:
            side = self._sides.get(loop)
            if side is not None and not side.broken:
                return side
            return await self._open_side(loop, side)

    async def _open_side(self, loop: asyncio.AbstractEventLoop, side: _LoopSide | None
                         ) -> _LoopSide:
        import psycopg

        await self._migrate()
        conn = await psycopg.AsyncConnection.connect(self._dsn, autocommit=True)
        listener = await psycopg.AsyncConnection.connect(self._dsn, autocommit=True)
        await listener.execute(f"LISTEN {_quote(self.channel)}")
        fresh = _LoopSide(conn, listener)
        fresh.reader = loop.create_task(fresh.read())
        if side is not None:
            await side.close()
        self._sides[loop] = fresh
        return fresh

    def _writer_sync(self) -> Any:
        import psycopg

        with self._lock:
            if self._sync is None or self._sync.closed:
                self._migrate_sync()
                self._sync = psycopg.connect(self._dsn, autocommit=True)
            return self._sync

    def _thread_conn(self) -> Any:
        """This thread's connection for blocking waits (listens only while one waits)."""
        import psycopg

        conn = getattr(self._local, "conn", None)
        if conn is None or conn.closed:
            self._migrate_sync()
            conn = self._local.conn = psycopg.connect(self._dsn, autocommit=True)
            with self._lock:
                self._thread_conns.append(conn)
        return conn

    # -- writes ----------------------------------------------------------------
    def _expire_due(self) -> bool:
        now = time.monotonic()
        if now < self._next_expire:
            return False
        self._next_expire = now + _expire_every(self.ttl)
        return True

    async def _write(self, task_ids: list[str], record: dict[str, Any]) -> None:
        side = await self._side()
        await side.conn.execute(self._upsert, (record["status"], _enc.encode(record).decode(),
                                               self.ttl, task_ids))
        if self._expire_due():
            await self.expire()

    async def mark(self, task_id: str, status: str) -> None:
        await self._write([task_id], {"status": status})

    async def mark_many(self, task_ids: list[str], status: str) -> None:
        await self._write(task_ids, {"status": status})

    def mark_sync(self, task_ids: list[str], status: str) -> None:
        record = _enc.encode({"status": status}).decode()
        self._writer_sync().execute(self._upsert, (status, record, self.ttl, task_ids))

    async def mark_new(self, task_id: str, status: str) -> None:
        side = await self._side()
        await side.conn.execute(*self.pending_statement([task_id], status, only_new=True))

    def mark_new_sync(self, task_id: str, status: str) -> None:
        self._writer_sync().execute(*self.pending_statement([task_id], status, only_new=True))

    def pending_statement(self, task_ids: list[str], status: str, *, only_new: bool
                          ) -> tuple[str, list[Any]]:
        """``(sql, params)`` (psycopg ``%s`` placeholders) writing ``status``
        for ``task_ids`` in one statement, to run through the caller's
        connection so the records commit or roll back with its transaction.
        ``only_new``: leave a live record alone (see :meth:`mark_new`)."""
        record = _enc.encode({"status": status}).decode()
        return (self._insert_new if only_new else self._upsert,
                [status, record, self.ttl, task_ids])

    async def finish(self, task_id: str, record: dict[str, Any]) -> None:
        await self._write([task_id], record)

    async def expire(self) -> int:
        """Delete expired rows (every one, in batches); returns how many."""
        side = await self._side()
        total = 0
        while True:
            cur = await side.conn.execute(self._expire_sql, (EXPIRE_BATCH,))
            n = int(cur.rowcount)
            total += n
            if n < EXPIRE_BATCH:
                return total

    # -- reads -----------------------------------------------------------------
    async def status(self, task_id: str) -> str:
        side = await self._side()
        row = await (await side.conn.execute(self._select, (task_id,))).fetchone()
        return "unknown" if row is None else str(_dec.decode(row[0])["status"])

    async def wait(self, task_id: str, timeout: float | None) -> Any:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            side = await self._side()
            # Registered before the read: a NOTIFY after it is not missed.
            fut = side.register(task_id)
            try:
                row = await (await side.conn.execute(self._select, (task_id,))).fetchone()
                record = _final(row[0] if row else None)
                if record is not None:
                    return _outcome(record)
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise TimeoutError(f"task {task_id}: no result within {timeout} s")
                try:
                    await asyncio.wait_for(fut, left)
                except TimeoutError:
                    raise TimeoutError(f"task {task_id}: no result within {timeout} s") from None
            finally:
                side.unregister(task_id, fut)

    def wait_sync(self, task_id: str, timeout: float | None) -> Any:
        deadline = None if timeout is None else time.monotonic() + timeout
        conn = self._thread_conn()
        conn.execute(f"LISTEN {_quote(self.channel)}")
        try:
            while True:
                row = conn.execute(self._select, (task_id,)).fetchone()
                record = _final(row[0] if row else None)
                if record is not None:
                    return _outcome(record)
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise TimeoutError(f"task {task_id}: no result within {timeout} s")
                # Notifications that came during the read are returned first.
                for n in conn.notifies(timeout=left):
                    if n.payload == task_id:
                        break
        finally:
            conn.execute(f"UNLISTEN {_quote(self.channel)}")

    async def close(self) -> None:
        try:
            side = self._sides.pop(asyncio.get_running_loop(), None)
            if side is not None:
                await side.close()
        finally:
            with self._lock:
                conns = [self._sync, *self._thread_conns]
                self._sync, self._thread_conns = None, []
            for c in conns:
                if c is not None:
                    c.close()


async def _migrate_pg(url: str, schema: str) -> None:
    await _core.postgres_migrate(url, schema)


# -- SQLite -------------------------------------------------------------------

class _Hub:
    """Final writes of this process to one file: wakes its waiters at once."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.waiters: dict[str, list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]]] = {}

    def finished(self, task_id: str) -> None:
        with self.cond:
            self.cond.notify_all()
            for loop, fut in self.waiters.pop(task_id, []):
                loop.call_soon_threadsafe(_wake, fut)


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


_hubs: dict[str, _Hub] = {}
_hubs_lock = threading.Lock()


def _hub(path: str) -> _Hub:
    with _hubs_lock:
        hub = _hubs.get(path)
        if hub is None:
            hub = _hubs[path] = _Hub()
        return hub


class SqliteResultStore(ResultStore):
    """Task results in ``foxtive_results`` of the broker's SQLite file."""

    _UPSERT = ("INSERT INTO foxtive_results (task_id, status, record, expires_at) "
               "VALUES (?, ?, ?, ?) ON CONFLICT (task_id) DO UPDATE SET "
               "status = excluded.status, record = excluded.record, "
               "expires_at = excluded.expires_at")
    # Only where no live row is (see PostgresResultStore._insert_new).
    _INSERT_NEW = _UPSERT + " WHERE foxtive_results.expires_at <= ?"
    _SELECT = "SELECT record FROM foxtive_results WHERE task_id = ? AND expires_at > ?"
    _EXPIRE = ("DELETE FROM foxtive_results WHERE task_id IN (SELECT task_id FROM "
               "foxtive_results WHERE expires_at < ? ORDER BY expires_at LIMIT ?)")

    def __init__(self, url_or_path: str, ttl: float, busy_timeout: float = 10.0) -> None:
        path = (_core.sqlite_path_from_url(url_or_path)
                if url_or_path.lower().startswith("sqlite:") else url_or_path)
        self.path = os.path.abspath(path)
        self.ttl = ttl
        self._busy = busy_timeout
        self._local = threading.local()
        self._conns: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._migrated = False
        self._next_expire = 0.0
        self._hub = _hub(self.path)
        # The async methods run sqlite3 here, not on the event loop: a
        # write may wait up to busy_timeout for another process's lock.
        # One thread: SQLite has one writer per file anyway, and one
        # connection never contends with a sibling of this process.
        self._thread: concurrent.futures.ThreadPoolExecutor | None = None

    def __repr__(self) -> str:
        return f"SqliteResultStore(path={self.path!r})"

    async def _off_loop(self, fn: Callable[..., _T], *args: Any) -> _T:
        ex = self._thread
        if ex is None:
            with self._lock:
                if self._thread is None:
                    self._thread = concurrent.futures.ThreadPoolExecutor(
                        1, thread_name_prefix="foxtive-sqlite-results")
                ex = self._thread
        return await asyncio.get_running_loop().run_in_executor(ex, fn, *args)

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            with self._lock:
                if not self._migrated:
                    _core.sqlite_migrate(self.path)
                    self._migrated = True
            conn = sqlite3.connect(self.path, timeout=self._busy, isolation_level=None,
                                   check_same_thread=False)
            self._local.conn = conn
            with self._lock:
                self._conns.append(conn)
        return conn

    def _write(self, task_ids: list[str], record: dict[str, Any], only_new: bool = False
               ) -> None:
        conn = self._conn()
        sql, rows = self._statement(task_ids, record, only_new)
        if len(rows) == 1:
            conn.execute(sql, rows[0])
        else:
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.executemany(sql, rows)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        if record["status"] in FINAL:
            for t in task_ids:
                self._hub.finished(t)
        now = time.monotonic()
        if now >= self._next_expire:
            self._next_expire = now + _expire_every(self.ttl)
            self.expire_sync()

    def _statement(self, task_ids: list[str], record: dict[str, Any], only_new: bool
                   ) -> tuple[str, list[tuple[Any, ...]]]:
        text = _enc.encode(record).decode()
        now = time.time()
        expires = now + self.ttl
        if only_new:
            return self._INSERT_NEW, [(t, record["status"], text, expires, now)
                                      for t in task_ids]
        return self._UPSERT, [(t, record["status"], text, expires) for t in task_ids]

    def pending_statement(self, task_ids: list[str], status: str, *, only_new: bool
                          ) -> tuple[str, list[tuple[Any, ...]]]:
        """``(sql, rows)`` for ``executemany`` through the caller's
        connection (its transaction holds the records with the jobs);
        ``only_new``: leave a live record alone (see :meth:`mark_new`)."""
        return self._statement(task_ids, {"status": status}, only_new)

    def expire_sync(self) -> int:
        """Delete expired rows (every one, in batches); returns how many."""
        conn = self._conn()
        total = 0
        while True:
            n = conn.execute(self._EXPIRE, (time.time(), EXPIRE_BATCH)).rowcount
            total += n
            if n < EXPIRE_BATCH:
                return total

    async def mark(self, task_id: str, status: str) -> None:
        await self._off_loop(self._write, [task_id], {"status": status})

    async def mark_many(self, task_ids: list[str], status: str) -> None:
        await self._off_loop(self._write, task_ids, {"status": status})

    def mark_sync(self, task_ids: list[str], status: str) -> None:
        self._write(task_ids, {"status": status})

    async def mark_new(self, task_id: str, status: str) -> None:
        await self._off_loop(self._write, [task_id], {"status": status}, True)

    def mark_new_sync(self, task_id: str, status: str) -> None:
        self._write([task_id], {"status": status}, True)

    async def finish(self, task_id: str, record: dict[str, Any]) -> None:
        await self._off_loop(self._write, [task_id], record)

    def _read(self, task_id: str) -> str | None:
        row = self._conn().execute(self._SELECT, (task_id, time.time())).fetchone()
        return None if row is None else str(row[0])

    async def status(self, task_id: str) -> str:
        raw = await self._off_loop(self._read, task_id)
        return "unknown" if raw is None else str(_dec.decode(raw)["status"])

    async def wait(self, task_id: str, timeout: float | None) -> Any:
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else time.monotonic() + timeout
        pause = POLL_MIN
        while True:
            fut: asyncio.Future[None] = loop.create_future()
            with self._hub.cond:
                self._hub.waiters.setdefault(task_id, []).append((loop, fut))
            try:
                record = _final(await self._off_loop(self._read, task_id))
                if record is not None:
                    return _outcome(record)
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise TimeoutError(f"task {task_id}: no result within {timeout} s")
                try:
                    # Woken by a writer of this process; else look again
                    # after the pause (another process's write).
                    await asyncio.wait_for(fut, pause if left is None else min(pause, left))
                except TimeoutError:
                    pause = min(pause * 2, POLL_MAX)
            finally:
                with self._hub.cond:
                    waiters = self._hub.waiters.get(task_id)
                    if waiters and (loop, fut) in waiters:
                        waiters.remove((loop, fut))
                        if not waiters:
                            del self._hub.waiters[task_id]

    def wait_sync(self, task_id: str, timeout: float | None) -> Any:
        deadline = None if timeout is None else time.monotonic() + timeout
        pause = POLL_MIN
        with self._hub.cond:
            while True:
                record = _final(self._read(task_id))
                if record is not None:
                    return _outcome(record)
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise TimeoutError(f"task {task_id}: no result within {timeout} s")
                if not self._hub.cond.wait(pause if left is None else min(pause, left)):
                    pause = min(pause * 2, POLL_MAX)

    async def close(self) -> None:
        with self._lock:
            conns, self._conns = self._conns, []
            ex, self._thread = self._thread, None
        if ex is not None:
            # Its last write finishes before the connections close.
            await asyncio.get_running_loop().run_in_executor(None, ex.shutdown)
        self._local = threading.local()
        for c in conns:
            c.close()
