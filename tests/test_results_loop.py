"""Result records and waits on the running loop's own connections to Redis
(``redis_loop.LoopLink``): the worker's record write on the loop's shared
connection, each ``result()`` wait (``BLMOVE``) on a connection of its own
from the loop's free list. Judge: redis-py (the records, CLIENT LIST)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import uuid
from typing import Any

import pytest
import redis

import foxtive
from foxtive import redis_loop
from foxtive.redis_loop import LoopLink
from foxtive.results import RedisResultStore, succeeded

from .conftest import fast_retries
from .redis_support import REDIS_URL, delete_keys, own_clients, wait_for
from .test_tasks_send_direct import StallingProxy, _db, _target

SENDER = "foxtive-sender"

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc/self/fd"),
                                reason="counts its own connections through /proc")


def blocked_waits(client: redis.Redis) -> set[int]:
    """This process's wait connections blocked in a BLMOVE now."""
    return {int(c["id"]) for c in own_clients(client)
            if c.get("cmd") == "blmove" and "b" in c.get("flags", "")}


def loop_connections(client: redis.Redis) -> set[int]:
    return {int(c["id"]) for c in own_clients(client)}


def _ids(n: int) -> list[str]:
    run = uuid.uuid4().hex[:8]
    return [f"rtloop-{run}-{i}" for i in range(n)]


def _drop(client: redis.Redis, ids: list[str]) -> None:
    keys = [k for i in ids for k in (f"foxtive:result:{i}", f"foxtive:result:{i}:done")]
    for at in range(0, len(keys), 500):
        client.delete(*keys[at:at + 500])


def _push_like_a_worker(client: redis.Redis, task_id: str, value: Any) -> None:
    """A final record as another process's worker writes it (redis-py)."""
    key = f"foxtive:result:{task_id}"
    record = json.dumps({"status": "succeeded", "value": value}).encode()
    with client.pipeline(transaction=True) as pipe:
        pipe.set(key, record, px=60_000).delete(f"{key}:done")
        pipe.rpush(f"{key}:done", record).pexpire(f"{key}:done", 60_000).execute()


async def test_two_hundred_concurrent_waits_on_one_loop_each_get_their_own_record(
        rclient: redis.Redis) -> None:
    store = RedisResultStore(REDIS_URL, 60)
    link = store._loop_link()
    assert link is not None, "a plain Redis has the loop's path"
    ids = _ids(200)
    before = loop_connections(rclient)
    try:
        waits = [asyncio.ensure_future(store.wait(i, 30)) for i in ids]
        # All 200 blocked in Redis, each on a connection of its own.
        deadline = asyncio.get_running_loop().time() + 30
        while len(blocked_waits(rclient) - before) < 200:
            assert asyncio.get_running_loop().time() < deadline, "the waits to block"
            await asyncio.sleep(0.02)
        assert not any(w.done() for w in waits)
        # Half written by this loop's worker path (store.finish on the shared
        # connection), half by another process's worker (redis-py), in an
        # order unlike the waits'.
        order = list(range(200))[::-1]
        for n in order:
            if n % 2:
                await store.finish(ids[n], succeeded(n))
            else:
                await asyncio.to_thread(_push_like_a_worker, rclient, ids[n], n)
        assert await asyncio.gather(*waits) == list(range(200))
        # A few idle wait connections stay for the next waits; the rest close.
        idle = link._idle[asyncio.get_running_loop()]
        assert 0 < len(idle) <= redis_loop.IDLE_BLOCKING
        wait_for(lambda: len(loop_connections(rclient) - before)
                 <= redis_loop.IDLE_BLOCKING + 1, 10, "the extra wait connections to close")
        # A later wait takes an idle connection: no new one is opened.
        kept = loop_connections(rclient) - before
        assert await store.wait(ids[7], 5) == 7
        assert loop_connections(rclient) - before == kept
    finally:
        await store.close()
        _drop(rclient, ids)


async def test_a_cancelled_wait_closes_its_connection_and_later_waits_stay_right(
        rclient: redis.Redis) -> None:
    store = RedisResultStore(REDIS_URL, 60)
    first, second, third = ids = _ids(3)
    before = loop_connections(rclient)
    try:
        cancelled = asyncio.ensure_future(store.wait(first, 30))
        deadline = asyncio.get_running_loop().time() + 10
        while not (blocked_waits(rclient) - before):
            assert asyncio.get_running_loop().time() < deadline, "the wait to block"
            await asyncio.sleep(0.02)
        mid_blmove = blocked_waits(rclient) - before
        cancelled.cancel()
        with pytest.raises(asyncio.CancelledError):
            await cancelled
        # Its reply would now come (the record is written): had the
        # connection gone back to the free list, the next wait would read
        # the first task's record as its own.
        await store.finish(first, succeeded("first"))
        waiting = asyncio.ensure_future(store.wait(second, 30))
        await store.finish(second, succeeded("second"))
        assert await waiting == "second"
        assert await store.wait(first, 5) == "first"
        wait_for(lambda: not (mid_blmove & loop_connections(rclient)), 10,
                 "the cancelled wait's connection to close")
        # A timeout is a TimeoutError (Redis's nil), and leaves its connection
        # in step for the next wait.
        with pytest.raises(TimeoutError, match="no result within"):
            await store.wait(third, 0.2)
        await store.finish(third, succeeded("third"))
        assert await store.wait(third, 5) == "third"
    finally:
        await store.close()
        _drop(rclient, ids)


async def test_waits_cancelled_while_their_connection_opens_leave_none_open(
        rclient: redis.Redis) -> None:
    """A wait cancelled at any point of opening its connection (connect, the
    handshake's replies) closes it: none is left open, held by nobody."""
    store = RedisResultStore(REDIS_URL, 60)
    ids = _ids(40)
    before = loop_connections(rclient)
    try:
        for turns, task_id in enumerate(ids, start=1):
            waiting = asyncio.ensure_future(store.wait(task_id, 30))
            for _ in range(turns):  # cancelled after 1, 2, ... loop turns
                await asyncio.sleep(0)
            waiting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await waiting
        wait_for(lambda: not (loop_connections(rclient) - before), 10,
                 "every cancelled wait's connection to close")
    finally:
        await store.close()
        _drop(rclient, ids)


async def test_the_store_sends_and_waits_share_one_link_per_redis() -> None:
    """One LoopLink per Redis and process, whichever RedisCommands finds it."""
    app = foxtive.App("rtloop-share", broker=REDIS_URL, results=True)
    queue = f"foxtive-test:rtloop:{uuid.uuid4().hex[:12]}"

    @app.task(queue=queue, name="rtloop.share")
    async def noop() -> None: ...

    try:
        store = app._result_store()
        assert isinstance(store, RedisResultStore)
        native = app._publisher._native_redis(queue, app.backend(queue))
        assert native is not None
        assert app._publisher._loop_link(queue, native) is store._loop_link()
        commands = foxtive._core.RedisCommands(REDIS_URL)
        try:
            assert LoopLink.of(commands) is store._loop_link()
        finally:
            commands.close()
    finally:
        await app.aclose()


async def test_closing_one_app_leaves_another_apps_loop_connection_open() -> None:
    """The link is the process's: an app's close() gives up its own hold,
    and the connections close with the last holder (another app's sends
    are not cut, and sent twice, by it)."""
    queue = f"foxtive-test:rtloop:{uuid.uuid4().hex[:12]}"
    apps = [foxtive.App(f"rtloop-hold-{i}", broker=REDIS_URL, results=True) for i in range(2)]
    tasks = [app.task(queue=queue, name="rtloop.hold")(_noop) for app in apps]
    client = redis.Redis.from_url(REDIS_URL)
    ids: list[str] = []
    before = loop_connections(client)  # earlier tests' loops may still hold some
    try:
        ids += [(await t.send()).id for t in tasks]
        ours = loop_connections(client) - before
        assert len(ours) == 1, "one loop connection, shared by both apps"
        await apps[0].aclose()
        ids.append((await tasks[1].send()).id)
        assert ours <= loop_connections(client), "the other app's connection stayed"
        await apps[1].aclose()
        wait_for(lambda: not (ours & loop_connections(client)), 10,
                 "the last holder to close it")
        assert client.xlen(queue) == 3
    finally:
        for app in apps:
            await app.aclose()
        client.delete(queue)
        _drop(client, ids)
        client.close()


async def _noop() -> None: ...


class CuttingProxy(StallingProxy):
    """A StallingProxy that cuts every connection when a client first sends
    ``trigger`` (then forwards as usual): the worker's record write is cut
    before Redis sees it."""

    def __init__(self, target: tuple[str, int], trigger: bytes) -> None:
        super().__init__(target)
        self.trigger = trigger
        self.armed = False
        self.cuts = 0

    async def _upstream(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            while data := await r.read(65536):
                if self.armed and self.trigger in data:
                    self.armed = False
                    self.cuts += 1
                    self.cut_now()  # this write is dropped with its connection
                    return
                w.write(data)
                await w.drain()
        w.transport.abort()


async def test_a_worker_whose_loop_connection_is_cut_still_writes_every_record(
        rclient: redis.Redis) -> None:
    queue = f"foxtive-test:rtloop:{uuid.uuid4().hex[:12]}"
    with CuttingProxy(_target(), b"MULTI") as proxy:
        url = f"redis://127.0.0.1:{proxy.port}/{_db()}"
        # No retries: a record write that failed would leave its task
        # failed with no record, not written by a second run.
        app = foxtive.App("rtloop-cut", broker=url, results=True, result_ttl=60,
                          retry=fast_retries(0))

        @app.task(queue=queue, name="rtloop.cut")
        async def echo(n: int) -> int:
            if n == 10:  # the next record write (this one's, or a neighbour's) is cut
                proxy.armed = True
            return n

        handles = [await echo.send(n) for n in range(30)]
        pool = app.pool(queue)
        runner = asyncio.ensure_future(pool.run_async(handle_signals=False))

        def records() -> list[Any]:
            raw = rclient.mget([f"foxtive:result:{h.id}" for h in handles])
            return [None if r is None else json.loads(r) for r in raw]

        try:
            await asyncio.to_thread(
                wait_for, lambda: all(r is not None and r["status"] == "succeeded"
                                      for r in records()), 60, "every record")
            assert proxy.cuts == 1, "the cut happened under a record write"
            assert [r["value"] for r in records()] == list(range(30))
            for h in handles:
                done = rclient.lrange(f"foxtive:result:{h.id}:done", 0, -1)
                assert len(done) == 1 and json.loads(done[0])["status"] == "succeeded"
        finally:
            pool.shutdown()
            await runner
            await app.aclose()
            delete_keys(rclient, queue)
            _drop(rclient, [h.id for h in handles])


async def test_a_wait_whose_connection_is_cut_waits_on_through_redis_py(
        rclient: redis.Redis) -> None:
    (task_id,) = ids = _ids(1)
    with CuttingProxy(_target(), b"BLMOVE") as proxy:
        store = RedisResultStore(f"redis://127.0.0.1:{proxy.port}/{_db()}", 60)
        try:
            proxy.armed = True  # the loop's BLMOVE is cut before Redis sees it
            waiting = asyncio.ensure_future(store.wait(task_id, 30))
            deadline = asyncio.get_running_loop().time() + 10
            # redis-py's BLMOVE (through the proxy) blocks in Redis once the
            # loop's was cut.
            while not (proxy.cuts and any(c.get("cmd") == "blmove" and c.get("name") != SENDER
                                          for c in own_clients(rclient, named=None))):
                assert asyncio.get_running_loop().time() < deadline, "the second BLMOVE"
                await asyncio.sleep(0.02)
            await asyncio.to_thread(_push_like_a_worker, rclient, task_id, "after the cut")
            assert await waiting == "after the cut"
            assert proxy.cuts == 1
        finally:
            await store.close()
            _drop(rclient, ids)


async def test_without_the_direct_path_writes_and_waits_go_as_before(
        rclient: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    """``FOXTIVE_REDIS_DIRECT=0`` (and TLS: no direct address): the core's
    runtime writes, redis-py waits; no loop connection is opened."""
    assert RedisResultStore("rediss://127.0.0.1:1/0", 60)._loop_link() is None
    monkeypatch.setenv("FOXTIVE_REDIS_DIRECT", "0")
    store = RedisResultStore(REDIS_URL, 60)
    first, second = ids = _ids(2)
    before = loop_connections(rclient)
    try:
        assert store._loop_link() is None
        waiting = asyncio.ensure_future(store.wait(first, 30))
        await store.finish(first, succeeded(1))
        assert await waiting == 1
        with pytest.raises(TimeoutError):
            await store.wait(second, 0.2)
        assert json.loads(rclient.get(f"foxtive:result:{first}"))["value"] == 1
        assert loop_connections(rclient) - before == set()
    finally:
        await store.close()
        _drop(rclient, ids)
