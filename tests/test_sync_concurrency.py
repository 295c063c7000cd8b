"""Plain ``def`` workers: ``concurrency`` is honoured for blocking handlers,
threads grow while handlers wait off the CPU, and a timed-out message says
what timed out and after how long (issue 11, items 1 and 6).

Events and barriers judge what runs at once, never timings."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

import foxtive

from .conftest import fast_retries

#: Generous for a loaded 2-core machine: how long a blocked handler waits to
#: be released before it gives up (and fails the test by raising).
_HOLD = 30.0


class Gate:
    """Counts handlers that started and are running; holds them until released."""

    def __init__(self, target: int) -> None:
        self.lock = threading.Lock()
        self.started = 0
        self.active = 0
        self.peak = 0
        self.target = target
        self.reached = threading.Event()
        self.release = threading.Event()

    def enter(self) -> None:
        with self.lock:
            self.started += 1
            self.active += 1
            self.peak = max(self.peak, self.active)
            if self.active >= self.target:
                self.reached.set()

    def leave(self) -> None:
        with self.lock:
            self.active -= 1

    def handler(self, message: foxtive.Message) -> None:
        self.enter()
        try:
            if not self.release.wait(_HOLD):
                raise RuntimeError("never released")
        finally:
            self.leave()


def sync_worker(wid: str, handler: Any, concurrency: int | None) -> foxtive.Worker:
    class SyncWorker(foxtive.Worker):
        id = wid

        def process(self, message: foxtive.Message) -> None:  # type: ignore[override]
            handler(message)

    w = SyncWorker()
    w.concurrency = concurrency
    return w


@contextlib.contextmanager
def until_idle(pool: foxtive.WorkerPool, backend: Any, *gates: Gate,
               timeout: float = 90) -> Iterator[list[bool]]:
    """Run ``pool.run_until_idle`` in a thread; on exit release every gate
    and wait for the run to end. The list holds its answer."""
    result: list[bool] = []
    errors: list[BaseException] = []

    def target() -> None:
        try:
            result.append(pool.run_until_idle(backend, timeout=timeout))
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    try:
        yield result
    finally:
        for g in gates:
            g.release.set()
        thread.join(timeout=timeout + 30)
        assert not thread.is_alive(), "the pool did not stop"
        if errors:
            raise errors[0]


# ------------------------------------------------------------ concurrency set


def test_concurrency_5_starts_5_blocking_handlers(memory: foxtive.MemoryBackend) -> None:
    """Handlers that block until released: all five start, from the first
    batch (main started two and never grew: growth looked at finished ones)."""
    gate = Gate(5)
    memory.publish_many_sync([b"x"] * 10)
    pool = (foxtive.WorkerPoolBuilder("p")
            .add_worker(sync_worker("blocking", gate.handler, 5)).build())
    with until_idle(pool, memory, gate) as result:
        assert gate.reached.wait(20), f"only {gate.active} of 5 handlers started"
        with gate.lock:
            assert gate.active == 5 and gate.started == 5
        gate.release.set()
    assert result == [True]
    assert gate.peak == 5
    assert pool.stats()["processed"] == 10


def test_concurrency_8_runs_8_at_once(memory: foxtive.MemoryBackend) -> None:
    """16 messages, concurrency 8: two rounds of eight handlers at once. A
    barrier of eight is the judge: if eight never run together it breaks, the
    handlers fail and their messages are dead-lettered."""
    barrier = threading.Barrier(8, timeout=20)
    gate = Gate(8)

    def handler(m: foxtive.Message) -> None:
        gate.enter()
        try:
            barrier.wait()
        finally:
            gate.leave()

    memory.publish_many_sync([b"x"] * 16)
    pool = (foxtive.WorkerPoolBuilder("p").add_worker(sync_worker("http", handler, 8))
            .with_middleware(fast_retries(0)).build())
    assert pool.run_until_idle(memory, timeout=90)
    assert memory.dead_letters() == []
    assert gate.peak == 8
    s = pool.stats()
    assert (s["processed"], s["dead_lettered"]) == (16, 0)


def test_pool_limit_caps_a_larger_worker_concurrency(memory: foxtive.MemoryBackend) -> None:
    """The pool's limit wins over a worker's larger concurrency: four run."""
    gate = Gate(4)
    memory.publish_many_sync([b"x"] * 12)
    pool = (foxtive.WorkerPoolBuilder("p").with_concurrency_limit(4)
            .add_worker(sync_worker("capped", gate.handler, 8)).build())
    with until_idle(pool, memory, gate) as result:
        assert gate.reached.wait(20), f"only {gate.active} of 4 handlers started"
        gate.release.set()
    assert result == [True]
    assert gate.peak == 4
    assert pool.stats()["processed"] == 12


def test_two_workers_each_get_their_concurrency(memory: foxtive.MemoryBackend) -> None:
    """Two blocking workers of concurrency 3 under a pool limit of 6: both
    run three at once, together six."""
    a, b = Gate(3), Gate(3)
    memory.publish_many_sync([b"x"] * 12)
    pool = (foxtive.WorkerPoolBuilder("p").with_concurrency_limit(6)
            .add_worker(sync_worker("a", a.handler, 3))
            .add_worker(sync_worker("b", b.handler, 3)).build())
    with until_idle(pool, memory, a, b) as result:
        assert a.reached.wait(20), f"worker a: only {a.active} of 3 started"
        assert b.reached.wait(20), f"worker b: only {b.active} of 3 started"
        a.release.set()
        b.release.set()
    assert result == [True]
    assert (a.peak, b.peak) == (3, 3)
    assert a.started + b.started == 12
    assert pool.stats()["processed"] == 12


def test_concurrency_5_on_redis(request: pytest.FixtureRequest) -> None:
    """The same guarantee over a real broker: five blocked handlers at once;
    redis-py then sees every entry acknowledged."""
    redis = pytest.importorskip("redis")
    from .redis_support import REDIS_URL, delete_keys, redis_answers, unique_stream

    client = redis.Redis.from_url(REDIS_URL)
    if not redis_answers(client):
        pytest.skip(f"no Redis at {REDIS_URL}")
    stream = unique_stream("sync-concurrency")
    try:
        for i in range(10):
            client.xadd(stream, {"body": f"m{i}"})
        backend = foxtive.RedisStreamBackend(REDIS_URL, foxtive.RedisStreamConsumerConfig(
            stream_name=stream, group_name="g", block_ms=200))
        gate = Gate(5)
        pool = (foxtive.WorkerPoolBuilder("p")
                .add_worker(sync_worker("slow-query", gate.handler, 5)).build())
        with until_idle(pool, backend, gate) as result:
            assert gate.reached.wait(20), f"only {gate.active} of 5 handlers started"
            with gate.lock:
                assert gate.active == 5
            gate.release.set()
        assert result == [True]
        assert gate.peak == 5 and gate.started == 10
        assert int(client.xpending(stream, "g")["pending"]) == 0
        assert pool.stats()["processed"] == 10
    finally:
        delete_keys(client, stream)
        client.close()


# --------------------------------------------------------- concurrency unset


def test_unset_concurrency_grows_while_handlers_block(memory: foxtive.MemoryBackend) -> None:
    """No concurrency set, handlers that never finish until released: the
    pool still grows (running handlers that wait off the CPU drive growth),
    up to its default of 32 threads."""
    gate = Gate(12)
    memory.publish_many_sync([b"x"] * 60)
    pool = foxtive.WorkerPoolBuilder("p").add_worker(gate.handler, id="io").build()
    with until_idle(pool, memory, gate) as result:
        assert gate.reached.wait(20), f"only {gate.active} handlers started"
        gate.release.set()
    assert result == [True]
    assert 12 <= gate.peak <= 32
    assert pool.stats()["processed"] == 60


def test_unset_concurrency_cpu_bound_long_handlers_stay_few(
        memory: foxtive.MemoryBackend) -> None:
    """Long handlers that compute are running but on the CPU: they must not
    make the pool grow (the monitor that grows for blocked handlers looks at
    each handler's own CPU time)."""
    names: set[str] = set()

    def compute(m: foxtive.Message) -> None:
        names.add(threading.current_thread().name)
        deadline = time.thread_time() + 0.15  # 150 ms of this thread's own CPU
        while time.thread_time() < deadline:
            pass

    memory.publish_many_sync([b"x"] * 12)
    pool = foxtive.WorkerPoolBuilder("p").add_worker(compute, id="cpu").build()
    assert pool.run_until_idle(memory, timeout=90)
    assert pool.stats()["processed"] == 12
    assert len(names) <= 4, sorted(names)


# ------------------------------------------------------------------ timeouts


def _timing_out_pool(sync: bool, via: str, release: threading.Event) -> foxtive.WorkerPool:
    if sync:
        def handler(m: foxtive.Message) -> None:
            release.wait(_HOLD)
    else:
        async def handler(m: foxtive.Message) -> None:  # type: ignore[misc]
            await asyncio.sleep(_HOLD)

    b = foxtive.WorkerPoolBuilder("p")
    if via == "attribute":
        worker: Any = sync_worker("send_email", handler, None)
        if not sync:
            class AsyncWorker(foxtive.Worker):
                id = "send_email"

                async def process(self, message: foxtive.Message) -> None:
                    await handler(message)  # type: ignore[misc]

            worker = AsyncWorker()
        worker.timeout = 0.25
        b = b.add_worker(worker)
    else:
        b = b.add_worker(handler, id="send_email").with_middleware(
            foxtive.TimeoutMiddleware(seconds=0.25))
    return b.with_middleware(fast_retries(0)).build()


@pytest.mark.parametrize("via", ["attribute", "middleware"])
@pytest.mark.parametrize("sync", [False, True], ids=["async", "sync"])
def test_timed_out_dead_letter_says_what_and_how_long(
        memory: foxtive.MemoryBackend, sync: bool, via: str) -> None:
    release = threading.Event()
    memory.publish_sync(b"mail")
    pool = _timing_out_pool(sync, via, release)
    try:
        assert pool.run_until_idle(memory, timeout=20)
    finally:
        release.set()
    [dead] = memory.dead_letters()
    assert dead.error_type == "TimeoutError"
    assert "send_email" in dead.error_message, dead.error_message
    assert "0.25 s" in dead.error_message, dead.error_message
    assert dead.worker_id == "send_email"


def test_blocked_loop_sync_worker_leaves_others_their_threads(
        memory: foxtive.MemoryBackend) -> None:
    """With Python middleware, ``def`` handlers run on threads driven from the
    loop. A worker whose handlers block must not take another worker's
    threads, and gets its own concurrency (on main all shared one pool of
    64: the blocked worker's 100 messages filled it and queued behind it,
    and the other worker's messages queued behind those, never to run)."""
    blocked = Gate(100)
    done = threading.Event()
    lock = threading.Lock()
    count = 0

    def fast(m: foxtive.Message) -> None:
        nonlocal count
        with lock:
            count += 1
            if count == 200:
                done.set()

    memory.publish_many_sync([b"x"] * 400)
    pool = (foxtive.WorkerPoolBuilder("p").with_middleware(foxtive.Middleware())
            .add_worker(sync_worker("blocked", blocked.handler, 100))
            .add_worker(sync_worker("fast", fast, 4)).build())
    with until_idle(pool, memory, blocked) as result:
        assert blocked.reached.wait(20), f"only {blocked.active} blocked handlers started"
        assert done.wait(20), f"the other worker ran {count} of its 200 messages"
        blocked.release.set()
    assert result == [True]
    assert pool.stats()["processed"] == 400
