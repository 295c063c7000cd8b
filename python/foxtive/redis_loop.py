"""An event loop's own connection to a Redis, driven by the loop itself.

``await task.send(...)`` on Redis used to hand each publish to the core's
tokio runtime and be woken back through ``call_soon_threadsafe``: two
thread hand-offs per send, most of its cost on a Redis answering in ~30 µs.
Here the loop writes the commands on a non-blocking socket of its own and
reads the replies when the loop sees them (an :class:`asyncio.Protocol`):
no other thread, and an ``await`` never blocks the loop, whatever Redis
does. The commands are encoded and the replies parsed in Rust (one call
each way); concurrent sends of one loop are pipelined, their replies
matched in FIFO order.

* A cancelled send leaves its replies to be read and dropped: the stream
  stays in step for the sends after it.
* A connection that drops (or a reply that takes longer than
  ``REPLY_TIMEOUT``) fails every send waiting on it with ``BackendError``;
  the send may or may not have reached Redis (retry: at least once). The
  next send opens a new connection.
* One connection per loop and process: a forked child never uses its
  parent's. :meth:`LoopLink.close` closes them all (``App.close()``).
* Plain TCP and unix sockets; a ``rediss://`` Redis has no direct path
  (the core's ``direct_address()`` is None) and sends go through the
  runtime as before.

One :class:`LoopLink` per Redis and process (:meth:`LoopLink.of`, found
through the Redis's ``RedisCommands``): the publisher's sends, the result
store's record writes and ``result()``'s waits all find the same per-loop
connections.

A blocking command (a waiter's ``BLMOVE``) holds its connection in Redis
until it answers, so it never goes on the shared connection:
:meth:`LoopLink.block` takes a connection of the loop's own for it from a
small free list (one per concurrent waiter; a few are kept idle, the rest
closed), and a wait that is cancelled or lost closes its connection (its
reply would otherwise come to the next waiter).
"""

from __future__ import annotations

import asyncio
import collections
import math
import os
import threading
import time
import weakref
from typing import Any, ClassVar

from . import _core
from .errors import BackendError

__all__ = ["ConnectFailed", "LoopLink", "direct_enabled", "raise_error_reply"]

#: How long a reply may take before the connection is given up.
REPLY_TIMEOUT = 10.0
#: How long connecting (and the AUTH/SELECT handshake) may take.
CONNECT_TIMEOUT = 5.0
#: Seconds a link waits after a failed connection before trying again
#: (meanwhile its callers take the runtime's path, or redis-py's).
RETRY_CONNECT_AFTER = 5.0
#: Idle connections for blocking commands a loop keeps per Redis (more
#: concurrent waits open more; those beyond this are closed when done).
IDLE_BLOCKING = 4


def direct_enabled() -> bool:
    """Whether Redis commands may go on the caller's own connections (its
    loop's, its thread's) rather than through the core's runtime:
    ``FOXTIVE_REDIS_DIRECT=0`` turns that off everywhere."""
    return os.environ.get("FOXTIVE_REDIS_DIRECT", "1") != "0"


def raise_error_reply(replies: list[Any]) -> None:
    """Raise the first error reply among ``replies`` (the parser gives
    them as exception instances, not raised; a ``MULTI``'s ``EXEC`` list
    included), and a discarded transaction (a nil ``EXEC``)."""
    for reply in replies:
        if isinstance(reply, BaseException):
            raise reply
        if isinstance(reply, list):
            raise_error_reply(reply)
    if len(replies) > 1 and replies[-1] is None:
        raise BackendError("Redis discarded the transaction (MULTI)")


class ConnectFailed(BackendError):
    """The loop's connection could not be opened: nothing was sent (the
    caller may take another path)."""


class _Replies(asyncio.Protocol):
    """The loop's connection: requests in, replies matched in order."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.pid = os.getpid()
        self.parser = _core.RespReplies()
        self.transport: asyncio.Transport | None = None
        #: (future, replies expected, answer due by) per request, oldest first.
        self.waiting: collections.deque[tuple[asyncio.Future[list[Any]], int, float]] = (
            collections.deque())
        self.got: list[Any] = []
        self.lost: BaseException | None = None
        self.watch: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            replies = self.parser.feed(data)
        except BackendError as e:  # a stream out of step: give the connection up
            self._fail(e)
            return
        waiting = self.waiting
        got = self.got
        for reply in replies:
            got.append(reply)
            if not waiting:
                self._fail(BackendError("Redis: a reply nobody asked for"))
                return
            fut, n, _ = waiting[0]
            if len(got) == n:
                waiting.popleft()
                if not fut.done():  # a cancelled send's replies are dropped
                    fut.set_result(got)
                self.got = got = []

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(BackendError(f"Redis connection lost{f': {exc}' if exc else ''}; "
                                "the send may not have reached Redis"))

    def _fail(self, err: BaseException) -> None:
        if self.lost is None:
            self.lost = err
        if self.watch is not None:
            self.watch.cancel()
            self.watch = None
        waiting, self.waiting = self.waiting, collections.deque()
        for fut, _, _ in waiting:
            if not fut.done():
                fut.set_exception(err)
        if self.transport is not None:
            self.transport.abort()

    def request(self, data: bytes, replies: int,
                patience: float = REPLY_TIMEOUT) -> asyncio.Future[list[Any]]:
        """Write ``data`` (``replies`` commands); a future of their replies,
        which must come within ``patience`` seconds (``math.inf``: no limit)
        or the connection is given up."""
        fut: asyncio.Future[list[Any]] = self.loop.create_future()
        if self.lost is not None or self.transport is None:
            fut.set_exception(self.lost or BackendError("Redis connection not open"))
            return fut
        due = self.loop.time() + patience
        self.waiting.append((fut, replies, due))
        self.transport.write(data)
        watch = self.watch
        if watch is None or due < watch.when():
            self._watch_until(due)
        return fut

    def _watch_until(self, due: float) -> None:
        """One timer per connection, at the time the oldest answer is due
        (none while the oldest may wait for ever), not one tick a second:
        200 blocked waiters cost no timers until their own timeouts."""
        if self.watch is not None:
            self.watch.cancel()
            self.watch = None
        if due != math.inf:
            self.watch = self.loop.call_at(due, self._check)

    def _check(self) -> None:
        """Give up a connection whose oldest reply is overdue
        (``REPLY_TIMEOUT`` for a plain command, a blocking one's own
        timeout plus that); else watch again until the oldest is due."""
        self.watch = None
        if not self.waiting:
            return
        due = self.waiting[0][2]
        if self.loop.time() >= due:
            self._fail(BackendError("Redis did not answer in time; "
                                    "the send may not have reached Redis"))
            return
        self._watch_until(due)

    def usable(self) -> bool:
        return self.lost is None and self.pid == os.getpid()

    def close(self) -> None:
        """Close the connection now (on its loop's thread); a request still
        waiting fails with ``BackendError``."""
        self._fail(BackendError("Redis connection closed"))


class LoopLink:
    """A Redis's connections per event loop (see the module's docstring)."""

    #: One per Redis and process: by where direct connections go and what
    #: they send first (server, credentials, database).
    _all: ClassVar[dict[tuple[Any, Any], LoopLink]] = {}
    _all_lock: ClassVar[threading.Lock] = threading.Lock()
    _users: int

    @classmethod
    def of(cls, commands: _core.RedisCommands) -> LoopLink:
        """The link of ``commands``' Redis: the same object for every
        ``RedisCommands`` of that Redis in the process (a queue's backend's,
        a result store's), so they share each loop's connections."""
        key = (commands.direct_address(), commands.direct_handshake())
        link = cls._all.get(key)
        if link is None:
            with cls._all_lock:
                link = cls._all.setdefault(key, cls(commands))
        return link

    @classmethod
    def acquire(cls, commands: _core.RedisCommands) -> LoopLink | None:
        """:meth:`of`, held by the caller until it calls :meth:`release`
        (an app closing its link closes the connections only when no other
        app or store of the process on that Redis still holds it); None,
        and nothing held, when there is no direct path (TLS) or
        ``FOXTIVE_REDIS_DIRECT=0``."""
        if not direct_enabled():
            return None
        link = cls.of(commands)
        if not link.available:
            return None
        with cls._all_lock:
            link._users += 1
        return link

    def release(self) -> None:
        """Give up a hold of :meth:`acquire`; the last one closes every
        loop's connections."""
        with LoopLink._all_lock:
            self._users = max(0, self._users - 1)
            last = self._users == 0
        if last:
            self.close()

    def __init__(self, commands: _core.RedisCommands) -> None:
        # Where to connect and the handshake, not the commands object: a
        # link lives as long as the process and must not keep the core's
        # connections to the Redis alive.
        self._address = commands.direct_address()
        self._handshake = commands.direct_handshake()
        self._by_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Replies] = (
            weakref.WeakKeyDictionary())
        self._connecting: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop,
                                                    asyncio.Future[_Replies]] = (
            weakref.WeakKeyDictionary())
        #: Each loop's idle connections for blocking commands, and those in use.
        self._idle: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, list[_Replies]] = (
            weakref.WeakKeyDictionary())
        self._busy: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, set[_Replies]] = (
            weakref.WeakKeyDictionary())
        #: No new connection before this (time.monotonic()): one just failed.
        self._failed_until = 0.0
        #: Publishers and result stores holding this link (see acquire).
        self._users = 0

    @property
    def available(self) -> bool:
        """Whether there is a direct path (not TLS)."""
        return self._address is not None

    async def run(self, data: bytes, replies: int) -> list[Any]:
        """Write ``data`` (``replies`` commands) on the running loop's
        connection; their replies (an error reply as a ``BackendError``
        instance, not raised)."""
        loop = asyncio.get_running_loop()
        proto = self._by_loop.get(loop)
        if proto is None or not proto.usable():
            proto = await self._connect(loop)
        return await proto.request(data, replies)

    async def block(self, data: bytes, patience: float) -> Any:
        """Run one blocking command (``data``) on a connection of the
        running loop's own, not shared while it waits; its reply (an error
        reply as a ``BackendError`` instance). ``patience``: how long the
        reply may take (the command's own timeout plus a margin;
        ``math.inf``: for ever). Raises :class:`ConnectFailed` when no
        connection could be opened (nothing was sent), ``BackendError`` when
        it was lost (the command may have run). A cancelled call closes its
        connection: its reply must not reach the next one."""
        loop = asyncio.get_running_loop()
        idle = self._idle.get(loop)
        proto = None
        while idle:
            candidate = idle.pop()  # the most recently used: the warmest
            if candidate.usable():
                proto = candidate
                break
            if candidate.pid == os.getpid():  # a parent's is the parent's to close
                candidate.close()
        if proto is None:
            proto = await self._open_new(loop)
        busy = self._busy.setdefault(loop, set())
        busy.add(proto)
        try:
            replies = await proto.request(data, 1, patience)
        except BaseException:  # cancelled, lost or overdue: out of step
            busy.discard(proto)
            proto.close()
            raise
        busy.discard(proto)
        idle = self._idle.get(loop)
        if idle is None:
            idle = self._idle[loop] = []
        if busy is self._busy.get(loop) and len(idle) < IDLE_BLOCKING and proto.usable():
            idle.append(proto)
        else:  # the link was closed meanwhile, or enough are idle
            proto.close()
        return replies[0]

    async def _connect(self, loop: asyncio.AbstractEventLoop) -> _Replies:
        pending = self._connecting.get(loop)
        if pending is not None:  # one connection attempt at a time per loop
            return await asyncio.shield(pending)
        fut: asyncio.Future[_Replies] = loop.create_future()
        self._connecting[loop] = fut
        try:
            proto = await self._open_new(loop)
            self._by_loop[loop] = proto
            fut.set_result(proto)
            return proto
        except BaseException as e:
            if isinstance(e, asyncio.CancelledError):
                fut.cancel()
            else:
                fut.set_exception(e)
                fut.exception()  # retrieved: nobody else may be waiting
            raise
        finally:
            del self._connecting[loop]

    async def _open_new(self, loop: asyncio.AbstractEventLoop) -> _Replies:
        """A new connection, handshake done; :class:`ConnectFailed` if not."""
        if time.monotonic() < self._failed_until:
            raise ConnectFailed("Redis direct connection: failed moments ago")
        self._forget_closed_loops()
        try:
            # asyncio.timeout, not wait_for: on 3.11 wait_for may drop a
            # connection that opened as the timeout fell.
            async with asyncio.timeout(CONNECT_TIMEOUT):
                return await self._open(loop)
        except (OSError, BackendError) as e:  # TimeoutError is an OSError
            # Not again for a moment: a Redis that refuses (an ACL without
            # CLIENT SETNAME, say) would otherwise cost every send a failed
            # connection before the runtime's path.
            self._failed_until = time.monotonic() + RETRY_CONNECT_AFTER
            raise ConnectFailed(f"Redis direct connection: {e}") from None

    def _forget_closed_loops(self) -> None:
        """Drop the connections of loops that were closed without closing
        them (``asyncio.run`` after ``asyncio.run``): a connection holds its
        loop, so the weak keys alone never let either go."""
        for table in (self._by_loop, self._idle, self._busy, self._connecting):
            for loop in [loop for loop in list(table.keys()) if loop.is_closed()]:
                table.pop(loop, None)

    async def _open(self, loop: asyncio.AbstractEventLoop) -> _Replies:
        address = self._address
        if address is None:
            raise BackendError("no direct path to this Redis (TLS)")
        if address[0] == "unix":
            _, proto = await loop.create_unix_connection(lambda: _Replies(loop), address[1])
        else:
            _, proto = await loop.create_connection(lambda: _Replies(loop), address[1],
                                                    address[2])
        handshake = self._handshake
        if handshake is None:
            return proto
        try:
            for reply in await proto.request(*handshake):
                if isinstance(reply, BaseException):
                    raise BackendError("Redis refused the connection's handshake "
                                       "(AUTH, SELECT or CLIENT SETNAME)")
        except BaseException:  # refused, lost, or the caller cancelled: nobody holds it
            proto.close()
            raise
        return proto

    def close(self) -> None:
        """Close every loop's connections (each on its own loop's thread);
        a blocking command still waiting keeps its connection until it is
        answered, then closes it. The next use opens new ones."""
        by_loop, self._by_loop = self._by_loop, weakref.WeakKeyDictionary()
        idle, self._idle = self._idle, weakref.WeakKeyDictionary()
        self._busy = weakref.WeakKeyDictionary()
        closing: list[tuple[asyncio.AbstractEventLoop, _Replies]] = list(by_loop.items())
        closing += [(loop, proto) for loop, protos in idle.items() for proto in protos]
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        for loop, proto in closing:
            if proto.transport is None or proto.pid != os.getpid() or loop.is_closed():
                continue
            if running is loop:
                proto.transport.close()
            else:
                try:
                    loop.call_soon_threadsafe(proto.transport.close)
                except RuntimeError:  # the loop closed meanwhile
                    pass
