"""Sends on Redis without the runtime's thread hop: ``send_sync`` writes on
the calling thread's own connection (one per thread, ``CLIENT SETNAME
foxtive-sender``), ``await send`` on the running loop's own connection
(an asyncio Protocol). Judge: redis-py (the stream, the records, CLIENT
LIST)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import tempfile
import threading
import uuid
from typing import Any

import pytest
import redis

import foxtive
from foxtive import _core
from foxtive.errors import BackendError
from foxtive.redis_loop import LoopLink

from .redis_support import REDIS_URL, PrivateRedis, TlsRedis, delete_keys, status_in, wait_for

SENDER = "foxtive-sender"


def _queue() -> str:
    return f"foxtive-test:direct:{uuid.uuid4().hex[:12]}"


def senders(client: redis.Redis) -> set[int]:
    """The ids of the direct connections Redis sees now."""
    return {int(c["id"]) for c in client.client_list() if c.get("name") == SENDER}


def _cleanup(client: redis.Redis, queue: str, ids: list[str]) -> None:
    delete_keys(client, queue)
    if ids:
        client.delete(*(f"foxtive:result:{i}" for i in ids))


def _app(name: str, queue: str, url: str = REDIS_URL) -> tuple[foxtive.App, Any]:
    app = foxtive.App(name, broker=url, results=True, result_ttl=60)

    @app.task(queue=queue, name=f"direct.{name}")
    async def noop(n: int) -> None: ...

    return app, noop


def test_sends_from_many_threads_all_arrive_with_their_pending_records(
        rclient: redis.Redis) -> None:
    queue = _queue()
    app, noop = _app("threads", queue)
    ids: list[str] = []
    lock = threading.Lock()
    errors: list[BaseException] = []

    def sender(k: int) -> None:
        try:
            for i in range(50):
                h = noop.send_sync(k * 100 + i)
                with lock:
                    ids.append(h.id)
        except BaseException as e:  # reported below
            errors.append(e)

    try:
        threads = [threading.Thread(target=sender, args=(k,)) for k in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        assert len(ids) == 400 and len(set(ids)) == 400
        assert rclient.xlen(queue) == 400
        assert all(status_in(rclient, i) == "pending" for i in ids)
        sent = {json.loads(f[b"body"])["args"][0]
                for _, f in rclient.xrange(queue, count=1000)}
        assert sent == {k * 100 + i for k in range(8) for i in range(50)}
        # The direct path was taken: no thread hop, the sender connections.
        assert app._publisher._marks[queue] is not None
    finally:
        app.close()
        _cleanup(rclient, queue, ids)


def test_a_thread_that_ends_drops_its_connection_and_close_drops_the_rest(
        rclient: redis.Redis) -> None:
    queue = _queue()
    app, noop = _app("ends", queue)
    ids: list[str] = []
    seen: dict[str, set[int]] = {}

    def one_send() -> None:
        before = senders(rclient)
        ids.append(noop.send_sync(1).id)
        seen["thread"] = senders(rclient) - before

    try:
        t = threading.Thread(target=one_send)
        t.start()
        t.join()
        assert len(seen["thread"]) == 1, "the thread opened one connection"
        wait_for(lambda: not (seen["thread"] & senders(rclient)), 10,
                 "the ended thread's connection to close")
        before = senders(rclient)
        ids.append(noop.send_sync(2).id)
        mine = senders(rclient) - before
        assert len(mine) == 1
        ids.append(noop.send_sync(3).id)
        assert senders(rclient) - before == mine, "the thread's connection is reused"
        app.close()
        wait_for(lambda: not (mine & senders(rclient)), 10, "close to drop the connection")
        assert rclient.xlen(queue) == 3
    finally:
        app.close()
        _cleanup(rclient, queue, ids)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_sends_on_a_connection_of_its_own(rclient: redis.Redis) -> None:
    queue = _queue()
    app, noop = _app("fork", queue)
    ids: list[str] = []
    try:
        before = senders(rclient)
        ids.append(noop.send_sync(1).id)
        parent = senders(rclient) - before
        assert len(parent) == 1
        ready_r, ready_w = os.pipe()
        go_r, go_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: send, report, wait to be looked at, leave
            code = 1
            try:
                task_id = noop.send_sync(2).id
                os.write(ready_w, task_id.encode() + b"\n")
                os.read(go_r, 1)
                code = 0
            finally:
                os._exit(code)
        os.close(ready_w)
        os.close(go_r)
        with os.fdopen(ready_r) as r:
            child_id = r.readline().strip()
        ids.append(child_id)
        during = senders(rclient) - before
        assert parent < during and len(during) == 2, "the child opened its own"
        os.write(go_w, b"x")
        os.close(go_w)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        wait_for(lambda: senders(rclient) - before == parent, 10,
                 "the child's connection to close")
        ids.append(noop.send_sync(3).id)
        assert senders(rclient) - before == parent, "the parent's connection still serves"
        assert rclient.xlen(queue) == 3
        assert all(status_in(rclient, i) == "pending" for i in ids)
    finally:
        app.close()
        _cleanup(rclient, queue, ids)


def test_auth_and_a_database_take_the_direct_path() -> None:
    with tempfile.TemporaryDirectory() as d:
        server = PrivateRedis(d, "--requirepass", "s3cret-direct")
        if not server.start():
            pytest.skip("redis-server not installed")
        url = f"redis://:s3cret-direct@127.0.0.1:{server.port}/3"
        client = redis.Redis.from_url(url)
        try:
            queue = _queue()
            app, noop = _app("auth", queue, url)
            try:
                h = noop.send_sync(1)
                assert len(senders(client)) == 1, "the thread's own connection (AUTH, db 3)"

                async def send() -> str:
                    try:
                        got = (await noop.send(2)).id
                        assert len(senders(client)) == 2, "and the loop's"
                        return got
                    finally:
                        await app.aclose()
                other = asyncio.run(send())
                assert client.xlen(queue) == 2
                assert status_in(client, h.id) == "pending"
                assert status_in(client, other) == "pending"
                commands = _core.RedisCommands(url)
                assert commands.direct_address() == ("tcp", "127.0.0.1", server.port)
                assert "s3cret" not in repr(commands)
            finally:
                app.close()
        finally:
            client.close()
            server.stop()


def test_tls_falls_back_to_the_runtime(monkeypatch: pytest.MonkeyPatch) -> None:
    """No direct path over TLS: sends (results off: the broker alone) go
    through the core's runtime, as before."""
    with tempfile.TemporaryDirectory() as d:
        server = TlsRedis(d)
        if not server.start():
            pytest.skip("redis-server with TLS or openssl not available")
        monkeypatch.setenv("SSL_CERT_FILE", server.ca)  # the core trusts the test's CA
        url = f"rediss://127.0.0.1:{server.port}/0"
        client = redis.Redis(host="127.0.0.1", port=server.port, ssl=True,
                             ssl_cert_reqs="none")
        try:
            assert _core.RedisCommands(url).direct_address() is None
            queue = _queue()
            app = foxtive.App("tls", broker=url)

            @app.task(queue=queue, name="direct.tls")
            async def noop(n: int) -> None: ...

            try:
                noop.send_sync(1)
                native = app._publisher._natives[queue]
                assert native.publish_now(_core.RedisPublish(b"x")) is None
                assert native.publish_commands(_core.RedisPublish(b"x")) is None

                async def send() -> None:
                    try:
                        await noop.send(2)
                    finally:
                        await app.aclose()
                asyncio.run(send())
                assert client.xlen(queue) == 2
            finally:
                app.close()
                client.delete(queue)
        finally:
            client.close()
            server.stop()


class StallingProxy:
    """A TCP proxy to the test Redis that can stop forwarding (a Redis that
    stops answering) and cut every connection."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.flowing = threading.Event()
        self.flowing.set()
        self.loop = asyncio.new_event_loop()
        self.server: asyncio.base_events.Server | None = None
        self.writers: list[asyncio.StreamWriter] = []
        self.port = 0
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> StallingProxy:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self.flowing.set()
        asyncio.run_coroutine_threadsafe(self._stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    async def _start(self) -> None:
        self.server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _stop(self) -> None:
        self.cut_now()
        if self.server is not None:
            self.server.close()

    def cut_now(self) -> None:
        for w in self.writers:
            w.transport.abort()
        self.writers.clear()

    def cut(self) -> None:
        self.loop.call_soon_threadsafe(self.cut_now)

    async def _pipe(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            while data := await r.read(65536):
                while not self.flowing.is_set():
                    await asyncio.sleep(0.005)  # the proxy's own pause, not the test's
                w.write(data)
                await w.drain()
        w.transport.abort()

    async def _client(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        ur, uw = await asyncio.open_connection(*self.target)
        self.writers += [w, uw]
        await asyncio.gather(self._upstream(r, uw), self._pipe(ur, w))

    async def _upstream(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        """Client to Redis (a subclass may cut there)."""
        await self._pipe(r, w)


def _target() -> tuple[str, int]:
    kw = redis.Redis.from_url(REDIS_URL).connection_pool.connection_kwargs
    return kw.get("host", "127.0.0.1"), int(kw.get("port", 6379))


def _db() -> int:
    return int(redis.Redis.from_url(REDIS_URL).connection_pool.connection_kwargs.get("db", 0))


def _echo(text: str) -> bytes:
    parts = [b"ECHO", text.encode()]
    out = b"*%d\r\n" % len(parts)
    for p in parts:
        out += b"$%d\r\n%s\r\n" % (len(p), p)
    return out


def test_a_redis_that_stops_answering_does_not_freeze_the_loop_and_cancel_stays_in_step(
        ) -> None:
    with StallingProxy(_target()) as proxy:
        link = LoopLink(_core.RedisCommands(f"redis://127.0.0.1:{proxy.port}/{_db()}"))

        async def main() -> None:
            assert await link.run(_echo("warm"), 1) == [b"warm"]
            proxy.flowing.clear()
            ticks = 0
            stalled = asyncio.ensure_future(link.run(_echo("stalled"), 1))
            cancelled = asyncio.ensure_future(link.run(_echo("cancelled"), 1))
            while ticks < 20:  # the loop keeps running other tasks
                await asyncio.sleep(0.01)
                ticks += 1
            assert not stalled.done() and not cancelled.done()
            cancelled.cancel()
            proxy.flowing.set()
            assert await stalled == [b"stalled"]
            # The cancelled send's reply is read and dropped: the next
            # replies are the next sends'.
            got = await asyncio.gather(*(link.run(_echo(f"after-{i}"), 1) for i in range(5)))
            assert got == [[f"after-{i}".encode()] for i in range(5)]
            # A dropped connection fails the waiting sends with a clear error...
            proxy.flowing.clear()
            pending = asyncio.ensure_future(link.run(_echo("lost"), 1))
            await asyncio.sleep(0.05)
            proxy.cut()
            with pytest.raises(BackendError, match="connection lost"):
                await pending
            proxy.flowing.set()
            # ...and the next send opens a new one.
            assert await link.run(_echo("again"), 1) == [b"again"]
            link.close()

        asyncio.run(main())


def test_await_send_uses_the_loops_connection_and_close_drops_it(
        rclient: redis.Redis) -> None:
    queue = _queue()
    app, noop = _app("loop", queue)
    ids: list[str] = []

    async def main() -> set[int]:
        before = senders(rclient)
        handles = await asyncio.gather(*(noop.send(i) for i in range(50)))
        ids.extend(h.id for h in handles)
        opened = senders(rclient) - before
        for i in range(10):
            ids.append((await noop.send(100 + i)).id)
        assert senders(rclient) - before == opened, "one connection for the loop, reused"
        await app.aclose()
        return opened

    try:
        opened = asyncio.run(main())
        assert len(opened) == 1
        wait_for(lambda: not (opened & senders(rclient)), 10, "aclose to drop it")
        assert rclient.xlen(queue) == 60
        assert all(status_in(rclient, i) == "pending" for i in ids)
    finally:
        app.close()
        _cleanup(rclient, queue, ids)


def test_a_send_whose_loop_connection_is_cut_is_sent_again_through_the_runtime(
        rclient: redis.Redis) -> None:
    queue = _queue()
    with StallingProxy(_target()) as proxy:
        app = foxtive.App("cut", broker=f"redis://127.0.0.1:{proxy.port}/{_db()}")

        @app.task(queue=queue, name="direct.cut")
        async def noop(n: int) -> None: ...

        async def main() -> list[str]:
            warm = await noop.send(0)  # opens the loop's connection
            proxy.flowing.clear()  # the next send's bytes stop at the proxy
            sending = asyncio.ensure_future(noop.send(1))
            await asyncio.sleep(0.05)
            proxy.cut()
            proxy.flowing.set()
            cut = await asyncio.wait_for(sending, 30)  # not an error: sent again
            await app.aclose()
            return [warm.id, cut.id]

        try:
            ids = asyncio.run(main())
            arrived = {fields[b"id"] for _, fields in rclient.xrange(queue)}
            assert {i.encode() for i in ids} <= arrived, (ids, arrived)
        finally:
            app.close()
            _cleanup(rclient, queue, [])
