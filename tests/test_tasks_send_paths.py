"""How a task gets sent: ``send_sync`` from many threads at once without the
app's loop thread (Redis, RabbitMQ, SQLite), the "pending" record written
while the task is published yet never over a worker's later write, and the
task ids. Judges: redis-py, sqlite3, and the tasks' own runs."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

import foxtive
from foxtive import envelope
from foxtive.results import RedisResultStore
from foxtive.tasks import new_task_id

from .conftest import fast_retries
from .rabbit_support import URL as AMQP_URL
from .rabbit_support import delete_queues
from .redis_support import REDIS_URL, delete_keys

THREADS = 16
PER_THREAD = 8


def redis_status(client: redis.Redis) -> Callable[[str], str | None]:
    def status(task_id: str) -> str | None:
        raw = client.get(f"foxtive:result:{task_id}")
        return None if raw is None else str(json.loads(raw)["status"])
    return status


def sqlite_status(path: str) -> Callable[[str], str | None]:
    def status(task_id: str) -> str | None:
        with sqlite3.connect(path) as conn:
            row = conn.execute("SELECT status FROM foxtive_results WHERE task_id = ?",
                               (task_id,)).fetchone()
        return None if row is None else str(row[0])
    return status


@dataclasses.dataclass
class Side:
    """An app keeping results, the queue it sends to, and a third-party
    reader of a task's status; ``sent`` collects the ids to clean up."""

    app: foxtive.App
    queue: str
    status: Callable[[str], str | None]
    sent: list[str] = dataclasses.field(default_factory=list)


@pytest.fixture(params=["redis", "rabbitmq", "sqlite"])
def side(request: pytest.FixtureRequest, rclient: redis.Redis, tmp_path: Path
         ) -> Iterator[Side]:
    kind = request.param
    if kind == "redis":
        queue = f"foxtive-test:sendpaths:{uuid.uuid4().hex[:12]}"
        app = foxtive.App("sendpaths", broker=REDIS_URL, results=True, result_ttl=120,
                          retry=fast_retries(1))
        s = Side(app, queue, redis_status(rclient))
    elif kind == "rabbitmq":
        queue = f"foxtive-test-sendpaths-{uuid.uuid4().hex[:8]}"
        app = foxtive.App("sendpaths", broker=AMQP_URL, results=REDIS_URL, result_ttl=120,
                          retry=fast_retries(1))
        s = Side(app, queue, redis_status(rclient))
    else:
        path = str(tmp_path / "send.db")
        app = foxtive.App("sendpaths", broker=f"sqlite:///{path}", results=True,
                          result_ttl=120, retry=fast_retries(1))
        s = Side(app, "default", sqlite_status(path))
    try:
        yield s
    finally:
        app.close()
        if kind == "redis":
            delete_keys(rclient, s.queue)
        elif kind == "rabbitmq":
            delete_queues(s.queue)
        if kind != "sqlite" and s.sent:
            rclient.delete(*(f"foxtive:result:{i}{x}" for i in s.sent for x in ("", ":done")))


def on_plain_threads(n: int, fn: Callable[[int], Any]) -> list[Any]:
    """``fn(i)`` on n threads at once (each with no event loop), released
    together; their results in order, or the first error raised."""
    start = threading.Barrier(n)
    out: list[Any] = [None] * n
    errors: list[BaseException] = []

    def body(i: int) -> None:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:  # pragma: no cover - the point of the helper
            raise AssertionError("the thread has a running loop")
        try:
            start.wait(30)
            out[i] = fn(i)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=body, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads), "a sender thread hung"
    if errors:
        raise errors[0]
    return out


def test_send_sync_from_16_threads(side: Side) -> None:
    app, queue, status = side.app, side.queue, side.status
    runs: list[tuple[int, int]] = []

    @app.task(queue=queue, name="sendpaths.work")
    async def work(t: int, i: int) -> int:
        runs.append((t, i))
        return t * 1000 + i

    def sender(t: int) -> list[tuple[foxtive.TaskHandle, str | None]]:
        sent = []
        for i in range(PER_THREAD):
            handle = work.send_sync(t, i)
            # Read right after send_sync returned, before any worker runs.
            sent.append((handle, status(handle.id)))
        return sent

    per_thread = on_plain_threads(THREADS, sender)
    sent = [item for items in per_thread for item in items]
    assert len(sent) == THREADS * PER_THREAD
    assert {s for _, s in sent} == {"pending"}
    handles = [h for h, _ in sent]
    side.sent.extend(h.id for h in handles)
    assert len({h.id for h in handles}) == len(handles)
    # Native backends publish from the caller's thread: no loop thread.
    assert app._loop_thread is None
    assert app.pool(queue).run_until_idle(timeout=60.0)
    expected = sorted((t, i) for t in range(THREADS) for i in range(PER_THREAD))
    assert sorted(runs) == expected  # every task ran, and once
    assert sorted(h.result_sync(timeout=10) for h in handles) == sorted(
        t * 1000 + i for t, i in expected)


def test_send_many_sync_from_threads_without_loop_thread(side: Side) -> None:
    app, queue, status = side.app, side.queue, side.status
    runs: list[int] = []

    @app.task(queue=queue, name="sendpaths.many")
    async def many(n: int) -> None:
        runs.append(n)

    batches = on_plain_threads(4, lambda t: many.send_many_sync(
        [(t * 100 + i,) for i in range(25)]))
    handles = [h for batch in batches for h in batch]
    side.sent.extend(h.id for h in handles)
    assert len({h.id for h in handles}) == 100
    assert {status(h.id) for h in handles} == {"pending"}
    assert app._loop_thread is None
    assert app.pool(queue).run_until_idle(timeout=60.0)
    assert sorted(runs) == sorted(t * 100 + i for t in range(4) for i in range(25))


def test_send_sync_on_redis_never_starts_the_loop_thread(rclient: redis.Redis) -> None:
    queue = f"foxtive-test:sendpaths:{uuid.uuid4().hex[:12]}"
    app = foxtive.App("sendpaths-noloop", broker=REDIS_URL, results=True, result_ttl=60)

    @app.task(queue=queue)
    async def noop(i: int) -> None: ...

    try:
        handles = [noop.send_sync(i) for i in range(200)]
        handles += noop.send_many_sync([(i,) for i in range(50)])
        handles.append(noop.options(priority=None, delay=0.5).send_sync(-1))
        assert app._loop_thread is None
        assert not [t for t in threading.enumerate() if t.name.startswith("foxtive-app-")]
        assert rclient.xlen(queue) == 250
        assert {redis_status(rclient)(h.id) for h in handles} == {"pending"}
    finally:
        app.close()
        delete_keys(rclient, queue)
        rclient.delete(*(f"foxtive:result:{h.id}" for h in handles))


# ------------------------------------------- "pending" never over a later write
def finish_like_a_worker(client: redis.Redis, task_id: str, value: Any) -> None:
    """The worker's final write (the record, then the list ``result()``
    blocks on), through redis-py."""
    key = f"foxtive:result:{task_id}"
    pipe = client.pipeline(transaction=True)
    pipe.set(key, json.dumps({"status": "succeeded", "value": value}), px=60_000)
    pipe.rpush(f"{key}:done", b"1")
    pipe.pexpire(f"{key}:done", 60_000)
    pipe.execute()


def test_store_pending_writes_never_overwrite_a_finished_record(rclient: redis.Redis) -> None:
    store = RedisResultStore(REDIS_URL, 60.0)
    ids = [f"sendpaths-{uuid.uuid4().hex}" for _ in range(4)]
    try:
        for n, task_id in enumerate(ids):
            finish_like_a_worker(rclient, task_id, n)
        # The sender's "pending" lands after the worker finished.
        store.mark_new_sync(ids[0], "pending")
        store.mark_new_many_sync(ids[:2], "pending")

        async def later() -> None:
            await store.mark_new(ids[2], "pending")
            await store.mark_new_many(ids[2:], "pending")
            await store.close()
        asyncio.run(later())
        assert [redis_status(rclient)(i) for i in ids] == ["succeeded"] * 4
        assert [store.wait_sync(i, timeout=1) for i in ids] == [0, 1, 2, 3]
    finally:
        store._sync.close()
        rclient.delete(*(f"foxtive:result:{i}" for i in ids),
                       *(f"foxtive:result:{i}:done" for i in ids))


def test_app_send_leaves_a_worker_write_that_landed_first(rclient: redis.Redis) -> None:
    """Force the order a fast worker can produce: its final write lands
    before the send's "pending" write; both send paths (async and sync)
    still publish and leave "succeeded"."""
    queue = f"foxtive-test:sendpaths:{uuid.uuid4().hex[:12]}"
    app = foxtive.App("sendpaths-order", broker=REDIS_URL, results=True, result_ttl=60)

    @app.task(queue=queue, name="sendpaths.order")
    async def order(n: int) -> int:
        return n

    headers = envelope.headers_for("sendpaths.order")
    first, second = new_task_id(), new_task_id()
    try:
        finish_like_a_worker(rclient, first, 1)
        finish_like_a_worker(rclient, second, 2)

        async def send_async() -> str:
            got = await app._publisher.publish(queue, envelope.encode([1], {}), headers, None,
                                               first, fresh=True)
            return got
        assert asyncio.run(send_async()) == first
        assert app._publisher.publish_sync(queue, envelope.encode([2], {}), headers, None,
                                           second, fresh=True) == second
        assert rclient.xlen(queue) == 2  # both published
        assert redis_status(rclient)(first) == "succeeded"
        assert redis_status(rclient)(second) == "succeeded"
    finally:
        app.close()
        delete_keys(rclient, queue)
        rclient.delete(*(f"foxtive:result:{i}{s}" for i in (first, second)
                         for s in ("", ":done")))


def test_a_chosen_message_id_resets_an_earlier_record_to_pending(rclient: redis.Redis) -> None:
    """An id the sender chose may name a finished task: sending it again
    writes "pending" over that record (write, then publish), so the handle
    does not report the earlier run's outcome."""
    queue = f"foxtive-test:sendpaths:{uuid.uuid4().hex[:12]}"
    app = foxtive.App("sendpaths-reuse", broker=REDIS_URL, results=True, result_ttl=60)

    @app.task(queue=queue)
    async def reuse(n: int) -> int:
        return n

    task_id = f"sendpaths-{uuid.uuid4().hex}"
    try:
        finish_like_a_worker(rclient, task_id, 0)
        h = reuse.options(message_id=task_id).send_sync(7)
        assert h.id == task_id and redis_status(rclient)(task_id) == "pending"
        finish_like_a_worker(rclient, task_id, 0)

        async def again() -> str:
            handle = await reuse.options(message_id=task_id).send(8)
            status = await handle.status()
            await app.aclose()
            return status
        assert asyncio.run(again()) == "pending"
        # The earlier run's record is gone from the list waiters block on:
        # result() waits for this run instead of returning the old value.
        with pytest.raises(TimeoutError):
            h.result_sync(timeout=0.3)
        assert app.pool(queue).run_until_idle(timeout=30.0)
        assert h.result_sync(timeout=10) in (7, 8)
    finally:
        app.close()
        delete_keys(rclient, queue)
        rclient.delete(f"foxtive:result:{task_id}", f"foxtive:result:{task_id}:done")


def test_send_fails_when_the_publish_fails_and_nothing_is_left_running(
        rclient: redis.Redis) -> None:
    """A publish the broker refuses is the send's error (the "pending" write
    beside it has finished, not left running)."""
    queue = f"foxtive-test:sendpaths:{uuid.uuid4().hex[:12]}"
    app = foxtive.App("sendpaths-fail", broker=REDIS_URL, results=True, result_ttl=60)

    @app.task(queue=queue)
    async def fail(n: int) -> None: ...

    rclient.set(queue, b"not a stream")  # XADD on it: WRONGTYPE
    try:
        with pytest.raises(foxtive.BackendError):
            fail.send_sync(1)

        async def send() -> None:
            try:
                await fail.send(2)
            finally:
                await app.aclose()
        with pytest.raises(foxtive.BackendError):
            asyncio.run(send())
    finally:
        app.close()
        rclient.delete(queue)


def blocked_in_blmove(client: redis.Redis, key: str, timeout: float = 10.0) -> None:
    """Return once a client is blocked in BLMOVE on ``key`` (the waiter)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for c in client.client_list():
            if c.get("cmd") == "blmove" and c.get("flags", "").find("b") >= 0:
                return
        time.sleep(0.01)  # polling Redis's own view; no event exists for it
    raise AssertionError(f"no waiter blocked on {key}")


def test_a_waiter_keeps_waiting_across_a_retry(rclient: redis.Redis) -> None:
    """The "retrying" write wakes no waiter: result() returns the value of
    the attempt that succeeded (it used to wake on "retrying" and fail)."""
    queue = f"foxtive-test:sendpaths:{uuid.uuid4().hex[:12]}"
    app = foxtive.App("sendpaths-retry", broker=REDIS_URL, results=True, result_ttl=60,
                      retry=fast_retries(2))
    attempts: list[int] = []

    @app.task(queue=queue)
    async def flaky(n: int) -> int:
        attempts.append(n)
        if len(attempts) == 1:
            raise RuntimeError("first attempt fails")
        return n * 2

    h = flaky.send_sync(21)
    got: list[Any] = []
    waiter = threading.Thread(target=lambda: got.append(h.result_sync(timeout=30)))
    try:
        waiter.start()
        blocked_in_blmove(rclient, f"foxtive:result:{h.id}:done")
        assert app.pool(queue).run_until_idle(timeout=30.0)
        waiter.join(30)
        assert attempts == [21, 21] and got == [42]
    finally:
        waiter.join(30)
        app.close()
        delete_keys(rclient, queue)
        rclient.delete(f"foxtive:result:{h.id}", f"foxtive:result:{h.id}:done")


# ------------------------------------------------------------------ task ids
def test_task_ids_are_uuid4_shaped_unique_and_redrawn_after_fork() -> None:
    ids = [new_task_id() for _ in range(10_000)]
    assert len(set(ids)) == len(ids)
    for task_id in ids[:100]:
        assert len(task_id) == 32 and uuid.UUID(hex=task_id).version == 4
        assert uuid.UUID(hex=task_id).variant == uuid.RFC_4122
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.write(write, " ".join(new_task_id() for _ in range(100)).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as f:
        child = f.read().split()
    os.waitpid(pid, 0)
    assert len(child) == 100
    # The child drew its own start: no id of the parent's sequence repeats.
    mine = [new_task_id() for _ in range(100)]
    assert not set(child) & set(mine)
    assert child[0][:16] != mine[0][:16]
