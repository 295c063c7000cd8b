"""NATS beyond the queue: task results and publish dedup in JetStream KV,
``/ready`` while the connection is down, and a handler that crashes its
process being dead-lettered through the delivery count. nats-py judges
(KV entries, stream info, the dead-letter stream)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import foxtive

from .contract.kits.nats import (
    NATS_URL,
    NatsKit,
    TcpProxy,
    judge,
    nats_answers,
    read_stream,
    stream_for,
)
from .redis_support import wait_for

pytestmark = pytest.mark.skipif(nats_answers() is not None, reason=str(nats_answers()))

ROOT = Path(__file__).resolve().parent.parent


class Names:
    """An app name and a queue, and everything foxtive makes for them on NATS."""

    def __init__(self) -> None:
        self.app = f"kv-{uuid.uuid4().hex[:10]}"
        self.queue = f"kvq-{uuid.uuid4().hex[:10]}"
        self.stream = stream_for(self.queue)

    def cleanup(self) -> None:
        from nats.js.errors import NotFoundError

        async def go(js: Any) -> None:
            s = self.stream
            for name in (s, f"{s}_DLQ", f"{s}_DELAYED", f"KV_foxtive_dedup_{s}",
                         f"KV_foxtive_results_{self.app}"):
                with contextlib.suppress(NotFoundError):
                    await js.delete_stream(name)

        judge(go)


@pytest.fixture
def names() -> Iterator[Names]:
    n = Names()
    try:
        yield n
    finally:
        n.cleanup()


def kv_entry(bucket: str, key: str) -> tuple[bytes, int] | None:
    async def go(js: Any) -> tuple[bytes, int] | None:
        from nats.js.errors import KeyNotFoundError

        kv = await js.key_value(bucket)
        try:
            e = await kv.get(key)
        except KeyNotFoundError:
            return None
        return bytes(e.value or b""), int(e.revision)

    return judge(go)


def stream_info(name: str) -> Any:
    async def go(js: Any) -> Any:
        return await js.stream_info(name)

    return judge(go)


# -- results -------------------------------------------------------------------

async def test_results_live_in_a_kv_bucket_and_a_waiter_watches_its_key(names: Names) -> None:
    app = foxtive.App(names.app, broker=NATS_URL, results=True, result_ttl=120)

    @app.task(queue=names.queue, name="kv.double")
    async def double(x: int) -> int:
        if x < 0:
            raise ValueError("negative")
        return 2 * x

    try:
        handle = await double.send(21)
        bad = await double.options(message_id="bad@2026-01-01T00:00:00Z").send(-1)
        assert await handle.status() == "pending"
        waiting = asyncio.ensure_future(handle.result(timeout=60))
        bucket = f"foxtive_results_{names.app}"
        # The waiter is a watch: a consumer on the bucket's stream, not a poll.
        await asyncio.to_thread(wait_for, lambda: stream_info(f"KV_{bucket}").state.consumer_count
                                >= 1, 20, "the waiter's watch")
        assert not waiting.done()
        assert await app.pool(names.queue).run_until_idle_async(timeout=60)
        assert await asyncio.wait_for(waiting, 30) == 42
        with pytest.raises(foxtive.TaskError) as err:
            await bad.result(timeout=30)
        assert err.value.type_name == "ValueError"
        assert await bad.status() == "failed"
        assert await handle.status() == "succeeded"
        # From sync code too (another thread, no loop of its own).
        assert await asyncio.to_thread(handle.result_sync, 10) == 42
    finally:
        await app.aclose()
    # nats-py's view: one record per task; the tick-like id is hex-encoded.
    raw, _ = kv_entry(bucket, handle.id) or (b"", 0)
    assert json.loads(raw) == {"status": "succeeded", "value": 42}
    key = "x." + bad.id.encode().hex()
    raw, _ = kv_entry(bucket, key) or (b"", 0)
    assert json.loads(raw)["error"]["type"] == "ValueError"
    config = stream_info(f"KV_{bucket}").config
    assert (config.max_age, config.max_msgs_per_subject) == (120, 1)


async def test_unknown_ids_and_timeouts(names: Names) -> None:
    app = foxtive.App(names.app, broker=NATS_URL, results=True)

    @app.task(queue=names.queue, name="kv.never")
    async def never() -> None: ...

    try:
        handle = await never.send()
        with pytest.raises(TimeoutError):
            await handle.result(timeout=0.3)
        store = app._result_store()
        assert await store.status("no-such-task") == "unknown"
        assert "***" in repr(foxtive.App("r", broker="nats://u:secret@127.0.0.1:4222",
                                         results=True)._result_store())
    finally:
        await app.aclose()


# -- dedup ---------------------------------------------------------------------

async def test_dedup_key_enqueues_once_even_from_racing_publishers(names: Names) -> None:
    apps = [foxtive.App(names.app, broker=NATS_URL) for _ in range(4)]
    tasks = []
    for a in apps:
        @a.task(queue=names.queue, name="kv.once")
        async def once(n: int) -> None: ...

        tasks.append(once)
    try:
        # 4 apps (4 connections) x 5 sends of one key, all at once.
        handles = await asyncio.gather(*(
            t.options(dedup_key="order-7", dedup_ttl=60).send(i)
            for i in range(5) for t in tasks))
        ids = {h.id for h in handles}
        assert len(ids) == 1, ids
        # A different key is its own message; the same key again returns the first.
        other = await tasks[0].options(dedup_key="order 8/ü", dedup_ttl=60).send(0)
        again = await tasks[1].options(dedup_key="order-7", dedup_ttl=60).send(99)
        assert again.id in ids and other.id not in ids
    finally:
        for a in apps:
            await a.aclose()
    assert stream_info(names.stream).state.messages == 2
    raw, _ = kv_entry(f"foxtive_dedup_{names.stream}", "order-7") or (b"", 0)
    assert raw.decode().rsplit("|", 1)[1] in ids
    assert kv_entry(f"foxtive_dedup_{names.stream}",
                    "x." + "order 8/ü".encode().hex()) is not None


async def test_a_dedup_key_is_free_again_after_its_ttl(names: Names) -> None:
    app = foxtive.App(names.app, broker=NATS_URL)

    @app.task(queue=names.queue, name="kv.ttl")
    async def ttl(n: int) -> None: ...

    try:
        first = await ttl.options(dedup_key="k", dedup_ttl=0.5).send(1)
        assert (await ttl.options(dedup_key="k", dedup_ttl=0.5).send(2)).id == first.id
        await asyncio.sleep(0.8)  # the TTL itself is what must pass
        later = await ttl.options(dedup_key="k", dedup_ttl=0.5).send(3)
    finally:
        await app.aclose()
    assert later.id != first.id
    assert stream_info(names.stream).state.messages == 2


# -- credentials ---------------------------------------------------------------

@contextlib.contextmanager
def nats_server_wanting(*auth: str) -> Iterator[int]:
    """A JetStream server of the test's own on 127.0.0.1 (the shared one on
    4222 has no auth) wanting ``auth`` (``--auth TOKEN``, ``--user U --pass P``);
    its port. Stopped, and its store removed, afterwards."""
    import shutil
    import socket
    import tempfile

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    store = tempfile.mkdtemp(prefix="foxtive-nats-auth-")
    proc = subprocess.Popen(["nats-server", "-js", "-a", "127.0.0.1", "-p", str(port),
                             "-sd", store, *auth],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def listening() -> bool:
        assert proc.poll() is None, "nats-server exited"
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0

    try:
        wait_for(listening, 20, "the test's nats-server")
        yield port
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(store, ignore_errors=True)


SECRET = "s3cr3t-" + uuid.uuid4().hex[:8]


@pytest.mark.parametrize("auth", ["token", "user"])
async def test_results_and_dedup_connect_with_the_backends_credentials(auth: str) -> None:
    from foxtive.results_nats import NatsResultStore

    server = ("--auth", SECRET) if auth == "token" else ("--user", "ann", "--pass", SECRET)
    with nats_server_wanting(*server) as port:
        bare = f"nats://127.0.0.1:{port}"
        # The token as the backend's option; user and password in the URL.
        url, token = (bare, SECRET) if auth == "token" else (
            f"nats://ann:{SECRET}@127.0.0.1:{port}", None)

        def backend(queue: str) -> foxtive.NatsBackend:
            return foxtive.NatsBackend(url, foxtive.NatsConsumerConfig(subject=queue),
                                       token=token)

        app = foxtive.App("kv-auth", broker=backend, results=True, result_ttl=60)

        @app.task(queue="authq", name="kv.auth")
        async def double(x: int) -> int:
            return 2 * x

        try:
            handle = await double.send(21)
            # The dedup bucket: through the backend's own connection.
            first = await double.options(dedup_key="k", dedup_ttl=60).send(1)
            again = await double.options(dedup_key="k", dedup_ttl=60).send(2)
            assert again.id == first.id
            assert await app.pool("authq").run_until_idle_async(timeout=60)
            assert await handle.result(timeout=30) == 42
            assert await asyncio.to_thread(handle.result_sync, 10) == 42
            store = app._result_store()
            assert SECRET not in repr(store) and SECRET not in repr(backend("authq"))
        finally:
            await app.aclose()

        # nats-py, with the credentials, judges what the stores wrote.
        import nats

        nc = await nats.connect(url, token=token)
        try:
            js = nc.jetstream()
            record = await (await js.key_value("foxtive_results_kv-auth")).get(handle.id)
            assert json.loads(record.value) == {"status": "succeeded", "value": 42}
            held = await (await js.key_value("foxtive_dedup_AUTHQ")).get("k")
            assert held.value.decode().rsplit("|", 1)[1] == first.id
            assert (await js.stream_info("AUTHQ")).state.messages == 0  # 2 handled, acked
        finally:
            await nc.close()
        # Without them the server refuses, and the error does not show them.
        refused = NatsResultStore(bare, 60, "kv-auth")
        with pytest.raises(ConnectionError) as err:
            await refused.status(handle.id)
        assert SECRET not in str(err.value)
        await refused.close()


@pytest.mark.parametrize("auth", ["token", "user"])
async def test_schedules_connect_with_the_backends_credentials(auth: str) -> None:
    """An app whose broker is a factory of NatsBackend keeps its schedule
    lease and last ticks with that backend's credentials (as its results)."""
    import nats

    from foxtive import schedules

    server = ("--auth", SECRET) if auth == "token" else ("--user", "ann", "--pass", SECRET)
    with nats_server_wanting(*server) as port:
        bare = f"nats://127.0.0.1:{port}"
        url, token = (bare, SECRET) if auth == "token" else (
            f"nats://ann:{SECRET}@127.0.0.1:{port}", None)
        queue = f"schedq-{uuid.uuid4().hex[:8]}"

        def backend(q: str) -> foxtive.NatsBackend:
            return foxtive.NatsBackend(url, foxtive.NatsConsumerConfig(subject=q), token=token)

        app = foxtive.App("sched-auth", broker=backend)

        @app.task(queue=queue, name="sched.auth")
        async def tick() -> None: ...

        app.schedule(tick, every=1, name="tick")
        nc = await nats.connect(url, token=token)
        try:
            sub = await nc.subscribe(queue)  # the tick's publish, as it happens
            runner = schedules.SchedulerRunner(app, lease=2).start()
            try:
                msg = await sub.next_msg(timeout=30)
                assert msg.headers is not None
                assert msg.headers["Nats-Msg-Id"].startswith("tick@")
                assert runner.leader
                info = await schedules.describe(app)
                assert info["leader"] is not None and info["leader"]["pid"] == os.getpid()
            finally:
                await runner.stop()
            kv = await nc.jetstream().key_value("foxtive_schedules_sched-auth")
            stored = (await kv.get("tick.tick")).value
            assert stored is not None and "|every:1\t" in stored.decode()
        finally:
            await nc.close()
            await app.aclose()

        # Without the credentials the server refuses, and the error does not show them.
        refused = foxtive.App("sched-auth", broker=lambda q: foxtive.NatsBackend(
            bare, foxtive.NatsConsumerConfig(subject=q)))
        refused.schedule(refused.task(queue=queue, name="sched.auth")(tick.fn), every=1,
                         name="tick")
        with pytest.raises(foxtive.BackendError) as err:
            await schedules.describe(refused)
        assert "authorization" in str(err.value).lower()
        assert SECRET not in str(err.value)
        await refused.aclose()


# -- readiness -----------------------------------------------------------------

def ready(port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=5) as r:
            return int(r.status)
    except urllib.error.HTTPError as e:
        return int(e.code)


async def test_ready_is_false_while_the_connection_is_down() -> None:
    kit = NatsKit()
    proxy = TcpProxy()
    try:
        backend = foxtive.NatsBackend(f"nats://127.0.0.1:{proxy.port}", kit.config())
        await backend.publish(b"first")
        handled: list[bytes] = []

        async def handler(m: foxtive.Message) -> None:
            handled.append(m.body)

        pool = (foxtive.WorkerPoolBuilder("nats-ready").add_worker(handler, id="r")
                .with_concurrency_limit(5).build())
        health = foxtive.HealthServer(pool, port=0).start()
        running = asyncio.ensure_future(pool.run_async(backend))
        try:
            def wait(code: int, what: str) -> None:
                wait_for(lambda: ready(health.port) == code, 30, what)

            await asyncio.to_thread(wait, 200, "ready while connected")
            await asyncio.to_thread(wait_for, lambda: handled == [b"first"], 30, "first")
            # Its ack is fire-and-forget: cut the link only once the server
            # has applied it, or the cut loses the ack and "first" comes back
            # after ack_wait (at-least-once, but not what this test is about).
            await asyncio.to_thread(wait_for, lambda: kit.waiting() == 0, 30, "first acked")
            proxy.down()
            await asyncio.to_thread(wait, 503, "not ready while the connection is down")
            assert backend.state == "reconnecting"
            proxy.up()
            await asyncio.to_thread(wait, 200, "ready again once reconnected")
            await foxtive.NatsBackend(NATS_URL, kit.config()).publish(b"second")
            await asyncio.to_thread(wait_for, lambda: b"second" in handled, 30, "second")
        finally:
            pool.shutdown()
            await asyncio.wait_for(running, 60)
            health.stop()
        assert handled == [b"first", b"second"]
        assert kit.waiting() == 0
    finally:
        proxy.close()
        kit.cleanup()


# -- a handler that kills its process -------------------------------------------

CRASHING_WORKER = textwrap.dedent("""
    import os, sys
    import foxtive

    subject = sys.argv[1]

    async def handler(m):
        os.write(1, f"got {m.body.decode()} {m.attempt}\\n".encode())
        if m.body == b"poison":
            os._exit(3)  # the handler takes the whole process down, unsettled

    pool = (foxtive.WorkerPoolBuilder("crash").add_worker(handler, id="crash")
            .with_concurrency_limit(1).build())
    config = foxtive.NatsConsumerConfig(subject=subject, ack_wait=1.0, max_deliver=3,
                                        prefetch=1)
    os.write(1, b"ready\\n")
    pool.run(foxtive.NatsBackend(sys.argv[2], config))  # until SIGTERM (or a crash)
""")


def test_a_handler_that_crashes_its_process_is_dead_lettered_after_max_deliver() -> None:
    kit = NatsKit()
    worker = [sys.executable, "-c", CRASHING_WORKER, kit.queue, NATS_URL]
    try:
        config = foxtive.NatsConsumerConfig(subject=kit.queue, ack_wait=1.0, max_deliver=3,
                                            prefetch=1)
        asyncio.run(foxtive.NatsBackend(NATS_URL, config).publish(b"poison"))
        lines: list[str] = []
        # A supervisor's loop: a worker again after each crash. Each one gets
        # the message back after ack_wait, as the next delivery.
        for _ in range(3):
            run = subprocess.run(worker, cwd=ROOT, capture_output=True, text=True, timeout=60)
            assert run.returncode == 3, run.stderr[-2000:]
            lines += [ln for ln in run.stdout.splitlines() if ln.startswith("got ")]
        assert lines == ["got poison 1", "got poison 2", "got poison 3"], lines
        # The 4th delivery is a poison pill: dead-lettered before any handler
        # runs; that worker lives on and stops cleanly.
        last = subprocess.Popen(worker, cwd=ROOT, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        try:
            wait_for(lambda: kit.dead_letters() != [], 30, "the poison pill's dead letter")
            last.send_signal(signal.SIGTERM)
            out, err = last.communicate(timeout=60)
        finally:
            if last.poll() is None:
                last.kill()
                last.communicate()
        assert last.returncode == 0, err[-2000:]
        assert "got " not in out, out
        (dead,) = kit.dead_letters()
        assert dead.body == b"poison"
        assert dead.error_type == "PoisonPill"
        assert dead.attempts == 4
        assert dead.raw.get("x-foxtive-poison-pill") == "true"
        assert kit.waiting() == 0

        async def read(js: Any) -> list[Any]:
            return await read_stream(js, kit.stream)

        assert judge(read) == []
    finally:
        kit.cleanup()
