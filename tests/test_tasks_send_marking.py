"""A send on Redis whose result store is the broker's own Redis writes its
"pending" record in the publish's round trip (``SET NX PX`` pipelined with
the ``XADD`` on the core's command connection): the record is there when
the send returns, a worker's record that landed first stays, a store on
another database gets its records there, results off write none.
Judge: redis-py."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import pytest
import redis

import foxtive
from foxtive import _core, envelope
from foxtive.tasks import new_task_id

from .redis_support import REDIS_URL, delete_keys, status_in


def _other_db(url: str) -> str:
    """The same server, another database (1, or 2 when the tests use 1)."""
    base, _, db = url.rpartition("/")
    if not db.isdigit():
        return url.rstrip("/") + "/1"
    return f"{base}/{2 if db == '1' else 1}"


OTHER_DB_URL = _other_db(REDIS_URL)


def ttl_ms(client: redis.Redis, task_id: str) -> int:
    return int(client.pttl(f"foxtive:result:{task_id}"))


def _queue() -> str:
    return f"foxtive-test:marking:{uuid.uuid4().hex[:12]}"


def test_same_redis_tells_one_server_and_database_from_another() -> None:
    cfg = _core.RedisStreamConsumerConfig(stream_name="q", group_name="g")
    backend = _core.RedisStreamBackend("redis://127.0.0.1:6379/0?wait_timeout=2", cfg)
    assert backend.same_redis("redis://127.0.0.1:6379/0")
    assert backend.same_redis("redis://127.0.0.1:6379/0?wait_replicas=0")
    assert not backend.same_redis("redis://127.0.0.1:6379/1")
    assert not backend.same_redis("redis://127.0.0.1:6380/0")
    assert not backend.same_redis("redis://u:secret@127.0.0.1:6379/0")


def test_send_and_send_sync_write_pending_with_the_ttl_in_the_publish(
        rclient: redis.Redis) -> None:
    queue = _queue()
    app = foxtive.App("marking", broker=REDIS_URL, results=True, result_ttl=90)

    @app.task(queue=queue)
    async def double(n: int) -> int:
        return n * 2

    ids: list[str] = []
    try:
        h1 = double.send_sync(1)
        ids.append(h1.id)
        # Read right after the send returned, before any worker ran.
        assert status_in(rclient, h1.id) == "pending"

        async def send() -> tuple[str, str | None]:
            h = await double.send(2)
            seen = status_in(rclient, h.id)
            await app.aclose()
            return h.id, seen
        h2_id, seen = asyncio.run(send())
        ids.append(h2_id)
        assert seen == "pending"
        # The one-round-trip path was the one taken (broker and store: one Redis).
        marks = app._publisher._marks
        assert marks == {} or all(v is not None for v in marks.values())
        assert 0 < ttl_ms(rclient, h2_id) <= 90_000
        assert rclient.xlen(queue) == 2
        assert app.pool(queue).run_until_idle(timeout=30.0)
        assert h1.result_sync(timeout=10) == 2
        assert foxtive.TaskHandle(h2_id, h1.task_name, queue, app).result_sync(
            timeout=10) == 4
    finally:
        app.close()
        delete_keys(rclient, queue)
        rclient.delete(*(f"foxtive:result:{i}{s}" for i in ids for s in ("", ":done")))


def test_the_marking_path_is_chosen_only_for_the_brokers_own_redis(
        rclient: redis.Redis) -> None:
    queue = _queue()
    same = foxtive.App("marking-same", broker=REDIS_URL, results=True, result_ttl=60)
    other = foxtive.App("marking-other", broker=REDIS_URL, results=OTHER_DB_URL,
                        result_ttl=60)
    oclient = redis.Redis.from_url(OTHER_DB_URL)

    @same.task(queue=queue, name="marking.noop")
    async def noop_same(n: int) -> None: ...

    @other.task(queue=queue, name="marking.noop")
    async def noop_other(n: int) -> None: ...

    handles: list[foxtive.TaskHandle] = []
    try:
        handles.append(noop_same.send_sync(1))
        handles.append(noop_other.send_sync(2))
        assert same._publisher._marks[queue] is not None
        assert other._publisher._marks[queue] is None  # the store lives in another database
        assert status_in(rclient, handles[0].id) == "pending"
        assert status_in(oclient, handles[1].id) == "pending"
        assert status_in(rclient, handles[1].id) is None  # not in the broker's database
        assert rclient.xlen(queue) == 2
    finally:
        same.close()
        other.close()
        delete_keys(rclient, queue)
        for c in (rclient, oclient):
            c.delete(*(f"foxtive:result:{h.id}" for h in handles))
        oclient.close()


def test_a_delayed_send_writes_pending_and_schedules_the_task(rclient: redis.Redis) -> None:
    queue = _queue()
    app = foxtive.App("marking-delay", broker=REDIS_URL, results=True, result_ttl=60)

    @app.task(queue=queue)
    async def later(n: int) -> None: ...

    handles: list[foxtive.TaskHandle] = []
    try:
        handles.append(later.options(delay=60).send_sync(1))

        async def send() -> foxtive.TaskHandle:
            try:
                return await later.options(delay=60).send(2)
            finally:
                await app.aclose()
        handles.append(asyncio.run(send()))
        assert [status_in(rclient, h.id) for h in handles] == ["pending", "pending"]
        assert rclient.zcard(f"{queue}:delayed") == 2
        assert rclient.exists(queue) == 0 or rclient.xlen(queue) == 0
    finally:
        app.close()
        delete_keys(rclient, queue)
        rclient.delete(*(f"foxtive:result:{h.id}" for h in handles))


def test_a_worker_record_that_landed_first_stays(rclient: redis.Redis) -> None:
    """The order a fast worker can produce (its final record before the
    send's "pending"), on the one-round-trip path, async and sync."""
    queue = _queue()
    app = foxtive.App("marking-order", broker=REDIS_URL, results=True, result_ttl=60)

    @app.task(queue=queue, name="marking.order")
    async def order(n: int) -> int:
        return n

    headers = envelope.headers_for("marking.order")
    first, second = new_task_id(), new_task_id()
    done = json.dumps({"status": "succeeded", "value": 1})
    try:
        for task_id in (first, second):
            rclient.set(f"foxtive:result:{task_id}", done, px=60_000)

        async def send_async() -> str:
            try:
                return await app._publisher.publish(queue, envelope.encode([1], {}), headers,
                                                    None, first, fresh=True)
            finally:
                await app.aclose()
        assert asyncio.run(send_async()) == first
        assert app._publisher.publish_sync(queue, envelope.encode([2], {}), headers, None,
                                           second, fresh=True) == second
        assert app._publisher._marks[queue] is not None
        assert rclient.xlen(queue) == 2  # both published
        assert status_in(rclient, first) == "succeeded"
        assert status_in(rclient, second) == "succeeded"
    finally:
        app.close()
        delete_keys(rclient, queue)
        rclient.delete(*(f"foxtive:result:{i}" for i in (first, second)))


def test_results_off_writes_no_record(rclient: redis.Redis) -> None:
    queue = _queue()
    app = foxtive.App("marking-off", broker=REDIS_URL)

    @app.task(queue=queue)
    async def plain(n: int) -> None: ...

    try:
        h1 = plain.send_sync(1)

        async def send() -> foxtive.TaskHandle:
            try:
                return await plain.send(2)
            finally:
                await app.aclose()
        h2 = asyncio.run(send())
        assert rclient.xlen(queue) == 2
        assert rclient.exists(f"foxtive:result:{h1.id}", f"foxtive:result:{h2.id}") == 0
    finally:
        app.close()
        delete_keys(rclient, queue)


# ------------------------------------------- the worker's write, the waiter
def test_finish_writes_the_record_and_the_waiters_list_through_the_core(
        rclient: redis.Redis) -> None:
    from foxtive.results import RedisResultStore

    store = RedisResultStore(REDIS_URL, 30.0)
    done_id, retry_id = new_task_id(), new_task_id()
    keys = [f"foxtive:result:{i}{s}" for i in (done_id, retry_id) for s in ("", ":done")]

    async def go() -> tuple[object, object]:
        try:
            await store.finish(retry_id, {"status": "retrying"})
            await store.finish(done_id, {"status": "succeeded", "value": [1, "a"]})
            # Already final: BLMOVE returns the pushed record at once.
            value = await store.wait(done_id, timeout=5)
            with pytest.raises(TimeoutError):
                await store.wait(retry_id, timeout=0)
            with pytest.raises(TimeoutError):
                await store.wait(retry_id, timeout=0.2)
            return value, await store.status(retry_id)
        finally:
            await store.close()
    try:
        value, retry_status = asyncio.run(go())
        assert value == [1, "a"] and retry_status == "retrying"
        record = json.loads(rclient.get(f"foxtive:result:{done_id}") or b"null")
        assert record == {"status": "succeeded", "value": [1, "a"]}
        assert [json.loads(x) for x in rclient.lrange(f"foxtive:result:{done_id}:done", 0, -1)
                ] == [record]
        assert 0 < rclient.pttl(f"foxtive:result:{done_id}") <= 30_000
        assert 0 < rclient.pttl(f"foxtive:result:{done_id}:done") <= 30_000
        assert rclient.exists(f"foxtive:result:{retry_id}:done") == 0  # wakes no waiter
        assert 0 < rclient.pttl(f"foxtive:result:{retry_id}") <= 30_000
    finally:
        rclient.delete(*keys)


def test_a_second_final_write_replaces_the_waiters_list(rclient: redis.Redis) -> None:
    from foxtive.results import RedisResultStore

    store = RedisResultStore(REDIS_URL, 30.0)
    task_id = new_task_id()

    async def go() -> None:
        try:
            await store.finish(task_id, {"status": "failed", "error": {"type": "E"}})
            await store.finish(task_id, {"status": "succeeded", "value": 2})
        finally:
            await store.close()
    try:
        asyncio.run(go())
        assert rclient.llen(f"foxtive:result:{task_id}:done") == 1
        assert store.wait_sync(task_id, timeout=1) == 2
    finally:
        store._sync.close()
        rclient.delete(f"foxtive:result:{task_id}", f"foxtive:result:{task_id}:done")


def test_a_prepared_publish_takes_all_three_mark_keywords_or_none() -> None:
    with pytest.raises(foxtive.ConfigError, match="all three or none"):
        _core.RedisPublish(b"x", None, None, "id-1", mark_key="k", mark_value=b"v")
    p = _core.RedisPublish(b"secret-body", {"h": "v"}, None, "id-1", mark_key="k",
                           mark_value=b"secret-record", mark_ttl=5)
    assert p.message_id == "id-1" and p.marks
    # The body and the record are the user's data: never in the repr.
    assert "secret" not in repr(p)
    assert not _core.RedisPublish(b"x").marks


def test_every_path_of_a_prepared_publish_sends_it_and_marks_only_where_no_record_is(
        rclient: redis.Redis) -> None:
    """The same prepared publish goes through the caller's thread, the
    runtime (awaited and begun from a thread) and the loop's commands;
    each enqueues the message with its id and writes the mark with SET NX
    (a record already there stays)."""
    queue = _queue()
    cfg = _core.RedisStreamConsumerConfig(stream_name=queue, group_name="g")
    backend = _core.RedisStreamBackend(REDIS_URL, cfg)
    key = f"foxtive-test:mark:{uuid.uuid4().hex}"
    kept = f"{key}:kept"
    rclient.set(kept, b"worker-was-first", px=60_000)

    def prepared(i: int, mark: str) -> _core.RedisPublish:
        return _core.RedisPublish(b"body", {"n": i}, None, f"m-{i}", mark_key=f"{mark}",
                                  mark_value=b"pending", mark_ttl=30)

    try:
        assert backend.publish_now(prepared(1, f"{key}:1")) == "m-1"
        assert backend.publish_prepared_begin(prepared(2, f"{key}:2")).wait() == ["m-2"]
        assert asyncio.run(_through_runtime(backend, prepared(3, kept))) == "m-3"
        assert asyncio.run(_through_runtime(
            backend, _core.RedisPublish(b"body", None, None, "m-4"))) == "m-4"
        commands = backend.publish_commands(prepared(5, f"{key}:5"))
        assert commands is not None and commands[1] == 2  # SET NX, then XADD
        # A delayed publish has no one-pipeline path: None, the runtime's then.
        assert backend.publish_commands(_core.RedisPublish(b"x", None, 5.0, "m-6")) is None

        assert rclient.get(f"{key}:1") == b"pending"
        assert rclient.get(f"{key}:2") == b"pending"
        assert rclient.get(kept) == b"worker-was-first"
        assert 0 < rclient.pttl(f"{key}:1") <= 30_000
        assert rclient.xlen(queue) == 4  # m-1 .. m-4; m-5's commands were not run
    finally:
        asyncio.run(_closed(backend))
        delete_keys(rclient, queue)
        rclient.delete(f"{key}:1", f"{key}:2", kept)


async def _closed(backend: _core.RedisStreamBackend) -> None:
    await backend.close()


async def _through_runtime(backend: _core.RedisStreamBackend, p: _core.RedisPublish) -> Any:
    return await backend.publish_prepared(p)
