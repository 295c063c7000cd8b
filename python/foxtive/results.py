"""Result stores: where a task's outcome waits for ``handle.result()``.

A record is JSON: ``{"status": "pending"|"running"|"retrying"}`` while the
task is on its way, then ``{"status": "succeeded", "value": ...}`` or
``{"status": "failed", "error": {"type", "message", "attempts"}}``. Every
record expires ``result_ttl`` seconds after its last write.

* :class:`MemoryResultStore`: in the process (``memory://`` brokers).
* :class:`RedisResultStore`: key ``foxtive:result:<id>`` holds the record;
  a final write also pushes the record to the list ``foxtive:result:<id>:done``
  so a waiter blocks on ``BLMOVE`` (the list keeps its element for the next
  waiter) instead of polling, and has the record when it wakes. It uses
  redis-py (``pip install foxtive[redis]``).

  On a plain (not TLS, not cluster) Redis the worker's final write and a
  waiter's ``BLMOVE`` go on the running loop's own connections
  (:mod:`foxtive.redis_loop`), not through another thread: the write on
  the loop's shared connection (the one ``await send`` uses), each wait on
  a connection of its own while it blocks. ``FOXTIVE_REDIS_DIRECT=0`` turns
  that off (the core's runtime writes, redis-py waits).
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
import weakref
from typing import Any

import msgspec

from . import _core
from .errors import BackendError, ConfigError, TaskError
from .redis_loop import REPLY_TIMEOUT, LoopLink, raise_error_reply

__all__ = ["FINAL", "MemoryResultStore", "RedisResultStore", "ResultStore"]

#: Statuses after which nothing changes.
FINAL = frozenset({"succeeded", "failed"})

#: Connections a Redis result store opens per event loop for its writes
#: (blocking waits have their own; see RedisResultStore._client).
WRITE_CONNECTIONS = 8

_enc = msgspec.json.Encoder()
_dec = msgspec.json.Decoder()


def _outcome(record: dict[str, Any]) -> Any:
    """The value of a final record, or the TaskError it holds."""
    if record["status"] == "succeeded":
        return record.get("value")
    err = record.get("error") or {}
    raise TaskError(str(err.get("type", "Exception")), str(err.get("message", "")),
                    int(err.get("attempts", 0)))


def succeeded(value: Any) -> dict[str, Any]:
    return {"status": "succeeded", "value": value}


def failed(error: BaseException, attempts: int) -> dict[str, Any]:
    return {"status": "failed",
            "error": {"type": type(error).__name__, "message": str(error)[:2000],
                      "attempts": attempts}}


class ResultStore:
    """What the app and the router need from a result store."""

    ttl: float

    async def mark(self, task_id: str, status: str) -> None:
        raise NotImplementedError

    def mark_sync(self, task_ids: list[str], status: str) -> None:
        raise NotImplementedError

    async def mark_many(self, task_ids: list[str], status: str) -> None:
        for task_id in task_ids:
            await self.mark(task_id, status)

    async def mark_new(self, task_id: str, status: str) -> None:
        """Write ``status`` only if the store holds no live record for the
        id: after a deduplicated publish, the record never overwrites what
        a worker (or an earlier send of the same id) wrote."""
        raise NotImplementedError

    def mark_new_sync(self, task_id: str, status: str) -> None:
        """:meth:`mark_new` from a thread with no event loop (``send_sync``)."""
        raise NotImplementedError

    async def finish(self, task_id: str, record: dict[str, Any]) -> None:
        raise NotImplementedError

    async def status(self, task_id: str) -> str:
        raise NotImplementedError

    async def wait(self, task_id: str, timeout: float | None) -> Any:
        raise NotImplementedError

    def wait_sync(self, task_id: str, timeout: float | None) -> Any:
        raise NotImplementedError

    async def close(self) -> None:
        """Release connections."""


class MemoryResultStore(ResultStore):
    """Results in this process (thread-safe); waiters are woken, not polling."""

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self._records: dict[str, tuple[float, dict[str, Any]]] = {}
        self._cond = threading.Condition()
        self._waiters: dict[str, list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]]] = {}

    def _get(self, task_id: str) -> dict[str, Any] | None:
        item = self._records.get(task_id)
        if item is None:
            return None
        if item[0] < time.monotonic():
            del self._records[task_id]
            return None
        return item[1]

    def _put(self, task_id: str, record: dict[str, Any]) -> None:
        with self._cond:
            self._records[task_id] = (time.monotonic() + self.ttl, record)
            if record["status"] in FINAL:
                self._cond.notify_all()
                for loop, fut in self._waiters.pop(task_id, []):
                    loop.call_soon_threadsafe(_wake, fut)

    async def mark(self, task_id: str, status: str) -> None:
        self._put(task_id, {"status": status})

    def mark_sync(self, task_ids: list[str], status: str) -> None:
        for task_id in task_ids:
            self._put(task_id, {"status": status})

    async def mark_new(self, task_id: str, status: str) -> None:
        self.mark_new_sync(task_id, status)

    def mark_new_sync(self, task_id: str, status: str) -> None:
        with self._cond:
            if self._get(task_id) is None:
                self._put(task_id, {"status": status})

    async def finish(self, task_id: str, record: dict[str, Any]) -> None:
        self._put(task_id, record)

    async def status(self, task_id: str) -> str:
        with self._cond:
            record = self._get(task_id)
        return "unknown" if record is None else str(record["status"])

    async def wait(self, task_id: str, timeout: float | None) -> Any:
        loop = asyncio.get_running_loop()
        with self._cond:
            record = self._get(task_id)
            if record is not None and record["status"] in FINAL:
                return _outcome(record)
            fut: asyncio.Future[None] = loop.create_future()
            self._waiters.setdefault(task_id, []).append((loop, fut))
        try:
            await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            raise TimeoutError(f"task {task_id}: no result within {timeout} s") from None
        finally:
            with self._cond:
                waiters = self._waiters.get(task_id)
                if waiters and (loop, fut) in waiters:
                    waiters.remove((loop, fut))
        with self._cond:
            record = self._get(task_id)
        if record is None:
            raise TimeoutError(f"task {task_id}: its result expired")
        return _outcome(record)

    def wait_sync(self, task_id: str, timeout: float | None) -> Any:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while True:
                record = self._get(task_id)
                if record is not None and record["status"] in FINAL:
                    return _outcome(record)
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise TimeoutError(f"task {task_id}: no result within {timeout} s")
                self._cond.wait(left)


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def _cluster_target(url: str) -> tuple[list[tuple[str, int]], dict[str, Any]] | None:
    """``(startup nodes, client keywords)`` of a ``redis+cluster://`` URL;
    ``None`` for any other URL."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in ("redis+cluster", "rediss+cluster"):
        return None
    from urllib.parse import parse_qs, unquote

    authority, _, tail = rest.partition("/")
    authority, _, query = authority.partition("?")
    if "?" in tail:
        query = tail.split("?", 1)[1]
    userinfo, at, hosts = authority.rpartition("@")
    kwargs: dict[str, Any] = {}
    if at:
        user, colon, password = userinfo.partition(":")
        if colon:
            kwargs["password"] = unquote(password)
        if user:
            kwargs["username"] = unquote(user)
    params = parse_qs(query)
    for name, key in (("password", "password"), ("pass", "password"),
                      ("username", "username"), ("user", "username")):
        if name in params:
            kwargs[key] = params[name][0]
    if scheme.lower().startswith("rediss"):
        kwargs["ssl"] = True
    nodes: list[tuple[str, int]] = []
    for host in filter(None, (h.strip() for h in hosts.split(","))):
        name, _, port = host.rpartition(":")
        try:
            nodes.append((name or host, int(port) if name else 6379))
        except ValueError:
            raise ConfigError(f"results: {host!r} in the cluster URL is not host:port"
                              ) from None
    if not nodes:
        raise ConfigError("results: a redis+cluster:// URL names no host:port")
    return nodes, kwargs


class RedisResultStore(ResultStore):
    """Results in Redis with a TTL on every key; waiting blocks on BLMOVE.

    ``url`` may name a Redis Cluster (``redis+cluster://h1:7000,h2:7001``,
    ``rediss+cluster://`` with TLS): redis-py's ``RedisCluster`` is used and
    each task's two keys share one hash tag (``foxtive:result:{ID}`` and
    ``foxtive:result:{ID}:done``), so the final write stays one transaction
    on one shard while tasks spread over all of them."""

    def __init__(self, url: str, ttl: float, prefix: str = "foxtive:result:") -> None:
        try:
            import redis
        except ImportError:  # pragma: no cover - depends on the environment
            raise ConfigError("results on Redis need redis-py: pip install 'foxtive[redis]'"
                              ) from None
        self.url = url
        self.ttl = ttl
        self.prefix = prefix
        self._ttl_ms = max(1, int(ttl * 1000))
        #: The "pending" record, encoded once (a send writes it).
        self.pending = _enc.encode({"status": "pending"})
        self._cluster = _cluster_target(url)
        if self._cluster is not None:
            from redis.cluster import ClusterNode, RedisCluster
            nodes, kwargs = self._cluster
            self._sync: Any = RedisCluster(
                startup_nodes=[ClusterNode(h, p) for h, p in nodes],  # type: ignore[no-untyped-call]
                **kwargs)
        else:
            self._sync = redis.Redis.from_url(url)
        # The worker's final write goes through the core's command connection
        # to this Redis (made on first use; not on a cluster): one call into
        # Rust, none of redis-py's pipeline work on the worker's loop.
        self._writer: Any = None
        #: The loops' own connections to this Redis (see _loop_link).
        self._link: Any = _UNKNOWN
        # redis.asyncio clients belong to the loop that made their connections.
        self._async: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Any] = (
            weakref.WeakKeyDictionary())
        self._async_waits: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Any] = (
            weakref.WeakKeyDictionary())

    def _client(self) -> Any:
        """The loop's client for writes and reads: at most
        ``WRITE_CONNECTIONS`` connections, callers beyond that wait for one.
        redis-py opens a connection per command in flight, so a worker
        finishing a thousand tasks at once would otherwise open a thousand
        connections to Redis (per process, per pod)."""
        import redis.asyncio

        loop = asyncio.get_running_loop()
        client = self._async.get(loop)
        if client is None:
            if self._cluster is not None:
                from redis.asyncio.cluster import ClusterNode, RedisCluster
                nodes, kwargs = self._cluster
                client = RedisCluster(startup_nodes=[ClusterNode(h, p) for h, p in nodes],
                                      max_connections=WRITE_CONNECTIONS, **kwargs)
            else:
                pool = redis.asyncio.BlockingConnectionPool.from_url(
                    self.url, max_connections=WRITE_CONNECTIONS, timeout=None)
                client = redis.asyncio.Redis(connection_pool=pool)
            self._async[loop] = client
        return client

    def _waits_client(self) -> Any:
        """The loop's client for blocking waits (``BLMOVE``): a waiter holds
        its connection until the result comes, so these are not bounded
        (they would starve the writes, the worker's own included)."""
        if self._cluster is not None:
            return self._client()  # RedisCluster: its own connections per node
        import redis.asyncio

        loop = asyncio.get_running_loop()
        client = self._async_waits.get(loop)
        if client is None:
            client = redis.asyncio.Redis.from_url(self.url)
            self._async_waits[loop] = client
        return client

    def _key(self, task_id: str) -> str:
        if self._cluster is not None:
            # One hash tag per task: its result and its :done list on one shard.
            return f"{self.prefix}{{{task_id}}}"
        return f"{self.prefix}{task_id}"

    # A plain (overwriting) write of a non-final status also drops the
    # ``:done`` list an earlier run of the same id left (a sender's own
    # message_id sent again): a waiter must not wake on that run's record.
    async def mark(self, task_id: str, status: str) -> None:
        key = self._key(task_id)
        async with self._client().pipeline(transaction=True) as pipe:
            pipe.set(key, _enc.encode({"status": status}), px=self._ttl_ms)
            pipe.delete(f"{key}:done")
            await pipe.execute()

    def mark_sync(self, task_ids: list[str], status: str) -> None:
        value = _enc.encode({"status": status})
        with self._sync.pipeline(transaction=len(task_ids) == 1) as pipe:
            for task_id in task_ids:
                key = self._key(task_id)
                pipe.set(key, value, px=self._ttl_ms)
                pipe.delete(f"{key}:done")
            pipe.execute()

    async def mark_many(self, task_ids: list[str], status: str) -> None:
        value = _enc.encode({"status": status})
        async with self._client().pipeline(transaction=False) as pipe:
            for task_id in task_ids:
                key = self._key(task_id)
                pipe.set(key, value, px=self._ttl_ms)
                pipe.delete(f"{key}:done")
            await pipe.execute()

    # SET NX: written only where no record is. The task layer's dedup (no
    # orphan "pending" records), and the "pending" a send writes while it
    # publishes (a worker's write that lands first is never overwritten).
    async def mark_new(self, task_id: str, status: str) -> None:
        await self._client().set(self._key(task_id), _enc.encode({"status": status}),
                                 px=self._ttl_ms, nx=True)

    def mark_new_sync(self, task_id: str, status: str) -> None:
        """:meth:`mark_new` through the sync client (any thread)."""
        self._sync.set(self._key(task_id), _enc.encode({"status": status}),
                       px=self._ttl_ms, nx=True)

    async def mark_new_many(self, task_ids: list[str], status: str) -> None:
        """:meth:`mark_new` for many ids, one pipelined round trip."""
        value = _enc.encode({"status": status})
        async with self._client().pipeline(transaction=False) as pipe:
            for task_id in task_ids:
                pipe.set(self._key(task_id), value, px=self._ttl_ms, nx=True)
            await pipe.execute()

    def mark_new_many_sync(self, task_ids: list[str], status: str) -> None:
        """:meth:`mark_new_many` through the sync client (any thread)."""
        value = _enc.encode({"status": status})
        with self._sync.pipeline(transaction=False) as pipe:
            for task_id in task_ids:
                pipe.set(self._key(task_id), value, px=self._ttl_ms, nx=True)
            pipe.execute()

    def pending_mark(self, task_id: str) -> dict[str, Any]:
        """The keywords of ``_core.RedisPublish`` that write this
        task's "pending" record (``SET NX PX``) in the publish's round trip."""
        return {"mark_key": self._key(task_id), "mark_value": self.pending,
                "mark_ttl": self.ttl}

    def _native_writer(self) -> Any:
        """The core's commands on this Redis (``None`` on a cluster): its
        writes go through the process's shared command connection to it
        (the one the app's Redis queues in this process use too)."""
        writer = self._writer
        if writer is None and self._cluster is None:
            try:
                writer = _core.RedisCommands(self.url)
            except ConfigError:  # a URL redis-py reads and the core does not
                writer = False
            self._writer = writer
        return writer or None

    def _loop_link(self) -> LoopLink | None:
        """The running loops' own connections to this Redis (the same
        :class:`LoopLink` as the app's sends to it), or None: no direct path
        (TLS, a cluster, a URL the core does not read) or
        ``FOXTIVE_REDIS_DIRECT=0``."""
        link = self._link
        if link is _UNKNOWN:
            writer = self._native_writer()
            link = None
            if writer is not None:
                # Held until close(): closing this store leaves the link to
                # the other apps and stores of the process that hold it.
                link = LoopLink.acquire(writer)
            self._link = link
        return link  # type: ignore[no-any-return]

    async def finish(self, task_id: str, record: dict[str, Any]) -> None:
        """The worker's write after a run: one MULTI, one round trip. A
        final record is also pushed to ``<key>:done``, so that a waiter's
        ``BLMOVE`` returns the record itself (no GET after it); a
        "retrying" one is only stored (waiters keep waiting).

        Written on the running loop's own connection when there is one;
        when it cannot be opened, or is lost or silent under the write, the
        same write goes again through the core's runtime (which reconnects):
        the commands are idempotent, so a write that did land is rewritten
        to the same state, never lost."""
        key = self._key(task_id)
        value = _enc.encode(record)
        push = record.get("status") in FINAL
        writer = self._native_writer()
        if writer is not None:
            link = self._loop_link()
            if link is not None:
                try:
                    replies = await link.run(*writer.record_commands(key, value, self.ttl,
                                                                     push))
                except BackendError:  # not opened, lost or silent (a reply is not raised)
                    pass
                else:
                    raise_error_reply(replies)
                    return
            await writer.write_record(key, value, self.ttl, push)
            return
        if record.get("status") not in FINAL:
            await self._client().set(key, value, px=self._ttl_ms)
            return
        async with self._client().pipeline(transaction=True) as pipe:
            pipe.set(key, value, px=self._ttl_ms)
            pipe.delete(f"{key}:done")
            pipe.rpush(f"{key}:done", value)
            pipe.pexpire(f"{key}:done", self._ttl_ms)
            await pipe.execute()

    async def status(self, task_id: str) -> str:
        raw = await self._client().get(self._key(task_id))
        return "unknown" if raw is None else str(_dec.decode(raw)["status"])

    def _final(self, raw: Any) -> dict[str, Any] | None:
        if raw is None:
            return None
        record: dict[str, Any] = _dec.decode(raw)
        return record if record.get("status") in FINAL else None

    def _final_pushed(self, moved: Any) -> dict[str, Any] | None:
        """The final record a worker pushed to ``<key>:done``; None for the
        old marker (``b"1"``) or anything else."""
        if not moved or moved == b"1":
            return None
        try:
            return self._final(moved)
        except (msgspec.DecodeError, AttributeError):
            return None

    async def wait(self, task_id: str, timeout: float | None) -> Any:
        key = self._key(task_id)
        if timeout is not None and timeout <= 0:
            record = self._final(await self._client().get(key))
            if record is None:
                raise TimeoutError(f"task {task_id}: no result yet")
            return _outcome(record)
        # No GET first: a final record is in ``<key>:done`` as long as the
        # record itself (written in one MULTI, same TTL), so BLMOVE returns
        # it at once when the task has finished; one round trip, not two.
        # Blocks in Redis until the final write pushes (the element stays
        # for other waiters); 0 = forever.
        moved = await self._blmove(key, timeout)
        if moved is None:
            raise TimeoutError(f"task {task_id}: no result within {timeout} s")
        # The element is the final record (a worker from before that change
        # pushed b"1": read the record then).
        record = self._final_pushed(moved) or self._final(await self._client().get(key))
        if record is None:
            raise TimeoutError(f"task {task_id}: its result expired")
        return _outcome(record)

    async def _blmove(self, key: str, timeout: float | None) -> Any:
        """The waiter's ``BLMOVE`` on ``<key>:done``: the record, or None
        after ``timeout`` (None: for ever). On a connection of the running
        loop's own (``redis_loop.LoopLink.block``) where there is one;
        through redis-py where not, and where that connection cannot be
        opened or is lost (the BLMOVE moves the list's one element onto
        itself: run again, it changes nothing)."""
        link = self._loop_link()
        if link is not None:
            started = time.monotonic()
            patience = math.inf if timeout is None else timeout + REPLY_TIMEOUT
            try:
                command = self._native_writer().wait_command(key, timeout)
                moved = await link.block(command, patience)
            except BackendError:
                if timeout is not None:
                    timeout -= time.monotonic() - started
                    if timeout <= 0:
                        return None
            else:
                if isinstance(moved, BaseException):
                    raise moved
                return moved
        # redis-py types the timeout as int; Redis >= 6 takes seconds as a float.
        return await self._waits_client().blmove(f"{key}:done", f"{key}:done",
                                                 timeout or 0, "RIGHT", "RIGHT")

    def wait_sync(self, task_id: str, timeout: float | None) -> Any:
        key = self._key(task_id)
        if timeout is not None and timeout <= 0:
            record = self._final(self._sync.get(key))
            if record is None:
                raise TimeoutError(f"task {task_id}: no result yet")
            return _outcome(record)
        # As in wait: no GET first, BLMOVE returns a final record at once.
        # redis-py types the timeout as int; Redis >= 6 takes seconds as a float.
        moved = self._sync.blmove(f"{key}:done", f"{key}:done", timeout or 0,
                                  "RIGHT", "RIGHT")
        if moved is None:
            raise TimeoutError(f"task {task_id}: no result within {timeout} s")
        record = self._final_pushed(moved) or self._final(self._sync.get(key))
        if record is None:
            raise TimeoutError(f"task {task_id}: its result expired")
        return _outcome(record)

    async def close(self) -> None:
        writer, self._writer = self._writer, None
        link, self._link = self._link, _UNKNOWN
        if isinstance(link, LoopLink):
            link.release()
        if writer:
            writer.close()
        try:
            loop = asyncio.get_running_loop()
            for clients in (self._async, self._async_waits):
                client = clients.pop(loop, None)
                if client is not None:
                    await client.aclose()
        finally:
            self._sync.close()


#: Not looked up yet (``RedisResultStore._link``: None means "no direct path").
_UNKNOWN: Any = object()
