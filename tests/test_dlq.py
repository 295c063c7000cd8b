"""Dead-letter stores: MemoryDLQ, FileDLQ and RedisDLQ (real Redis on 127.0.0.1:6379,
judged with redis-py) behind the pool, replay, purge, and a store that cannot write."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import stat
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

import foxtive

from .conftest import fast_retries

REDIS_URL = "redis://127.0.0.1:6379/0"
KINDS = ["memory", "file", "redis"]


@pytest.fixture
def judge() -> Iterator[redis.Redis]:
    r = redis.Redis.from_url(REDIS_URL)
    yield r
    r.close()


@pytest.fixture
def redis_key(judge: redis.Redis) -> Iterator[str]:
    key = f"foxtive-test:dlq:{uuid.uuid4().hex}"
    yield key
    judge.delete(key)


def make_store(kind: str, tmp_path: Path, redis_key: str) -> foxtive.DeadLetterQueue:
    if kind == "memory":
        return foxtive.MemoryDLQ()
    if kind == "file":
        return foxtive.FileDLQ(tmp_path / "dead.jsonl")
    return foxtive.RedisDLQ(REDIS_URL, redis_key)


@pytest.fixture(params=KINDS)
def dlq(request: pytest.FixtureRequest, tmp_path: Path, redis_key: str) -> foxtive.DeadLetterQueue:
    return make_store(request.param, tmp_path, redis_key)


def pool_with(handler: Any, dlq: foxtive.DeadLetterQueue, retries: int = 2) -> foxtive.WorkerPool:
    retry = fast_retries(retries).with_dead_letter_queue(dlq)
    return foxtive.WorkerPoolBuilder("p").add_worker(handler, id="h").with_middleware(retry).build()


BODY = b"\x00\xff\x80 not utf-8 \n"
HEADERS: dict[str, Any] = {"who": "me", "n": 5, "ratio": 2.0, "raw": b"\x01\x02", "none": None,
                           "flag": True, "nested": {"k": [1, "two"]}}


def test_exhausted_retries_land_in_the_store(
    dlq: foxtive.DeadLetterQueue, memory: foxtive.MemoryBackend
) -> None:
    attempts: list[int] = []

    async def handler(m: foxtive.Message) -> None:
        attempts.append(m.attempt)
        raise ValueError("smtp down")

    memory.publish_sync(BODY, headers=HEADERS, message_id="m1")
    pool = pool_with(handler, dlq)
    assert pool.run_until_idle(memory, timeout=10)
    assert attempts == [1, 2, 3]
    [dead] = dlq.get_failed_messages()
    assert (dead.original_id, dead.body, dead.source_queue) == ("m1", BODY, memory.name)
    assert dead.headers == HEADERS
    assert type(dead.headers["ratio"]) is float and type(dead.headers["n"]) is int
    assert (dead.attempts, dead.error_type, dead.error_message) == (3, "ValueError", "smtp down")
    assert dead.worker_id == "h" and dead.poison_pill is False
    assert dead.failed_at > 1.7e9
    assert len(dlq) == 1 and dlq.last_error is None
    # Kept by the store, so acked in the backend and not also in its own DLQ.
    assert memory.dead_letters() == []
    assert (memory.qsize(), memory.unacked()) == (0, 0)
    assert pool.stats()["dead_lettered"] == 1


def test_replay_round_trip(dlq: foxtive.DeadLetterQueue, memory: foxtive.MemoryBackend) -> None:
    healthy = False
    seen: list[tuple[str, int, bytes, Any]] = []

    async def handler(m: foxtive.Message) -> None:
        seen.append((m.id, m.attempt, m.body, dict(m.headers)))
        if not healthy:
            raise RuntimeError("not yet")

    for mid in ("m1", "m2", "m3"):
        memory.publish_sync(BODY, headers={"who": mid}, message_id=mid)
    pool = pool_with(handler, dlq, retries=1)
    assert pool.run_until_idle(memory, timeout=10)
    assert sorted(d.original_id for d in dlq.get_failed_messages()) == ["m1", "m2", "m3"]
    assert all(d.attempts == 2 for d in dlq.get_failed_messages())

    healthy = True
    seen.clear()
    # Only the chosen ones; `to` defaults to the backend the pool ran on.
    assert asyncio.run(dlq.replay(ids=["m2"])) == 1
    assert sorted(d.original_id for d in dlq.get_failed_messages()) == ["m1", "m3"]
    assert memory.qsize() == 1
    assert pool.run_until_idle(memory, timeout=10)
    assert seen == [("m2", 1, BODY, {"who": "m2"})]  # a fresh message: attempt 1

    seen.clear()
    assert asyncio.run(dlq.replay(to=memory)) == 2
    assert len(dlq) == 0
    assert pool.run_until_idle(memory, timeout=10)
    assert sorted((s[0], s[1]) for s in seen) == [("m1", 1), ("m3", 1)]
    assert asyncio.run(dlq.replay()) == 0


def test_purge(dlq: foxtive.DeadLetterQueue, memory: foxtive.MemoryBackend) -> None:
    async def handler(m: foxtive.Message) -> None:
        raise foxtive.PermanentError("no")

    memory.publish_many_sync([b"a", b"b"])
    assert pool_with(handler, dlq).run_until_idle(memory, timeout=10)
    assert len(dlq) == 2
    assert asyncio.run(dlq.purge()) == 2
    assert len(dlq) == 0 and dlq.get_failed_messages() == []
    assert asyncio.run(dlq.purge()) == 0


def test_get_failed_messages_limit_and_order(
    dlq: foxtive.DeadLetterQueue, memory: foxtive.MemoryBackend
) -> None:
    async def handler(m: foxtive.Message) -> None:
        raise foxtive.PermanentError("no")

    memory.publish_many_sync([b"%d" % i for i in range(5)])
    pool = foxtive.WorkerPoolBuilder("p").add_worker(handler, id="h").with_concurrency_limit(1) \
        .with_middleware(fast_retries().with_dead_letter_queue(dlq)).build()
    assert pool.run_until_idle(memory, timeout=10)
    assert [d.body for d in dlq.get_failed_messages(limit=3)] == [b"0", b"1", b"2"]
    assert len(dlq.get_failed_messages(limit=0)) == 0
    with pytest.raises(foxtive.ConfigError, match="limit"):
        dlq.get_failed_messages(limit=-1)


class Collecting(foxtive.Backend):
    """A backend written in Python that keeps what is published to it."""

    name = "collecting"

    def __init__(self, fail_after: int | None = None) -> None:
        self.got: list[tuple[bytes, dict[str, Any] | None, str | None]] = []
        self.fail_after = fail_after

    async def publish(self, body: bytes, headers: dict[str, Any] | None = None,
                      delay: Any = None, message_id: str | None = None) -> str:
        if self.fail_after is not None and len(self.got) >= self.fail_after:
            raise ConnectionError("broker went away")
        self.got.append((body, headers, message_id))
        return message_id or "x"


async def test_replay_to_a_backend_written_in_python() -> None:
    dlq = foxtive.MemoryDLQ()
    source = foxtive.MemoryBackend("src")

    async def handler(m: foxtive.Message) -> None:
        raise foxtive.PermanentError("no")

    for mid in ("a", "b", "c"):
        source.publish_sync(mid.encode(), headers={"k": mid}, message_id=mid)
    assert await pool_with(handler, dlq).run_until_idle_async(source, timeout=10)

    flaky = Collecting(fail_after=1)
    with pytest.raises(ConnectionError):
        await dlq.replay(to=flaky)
    # The one published is removed; the others stay: nothing lost, nothing twice.
    assert [g[2] for g in flaky.got] == ["a"]
    assert sorted(d.original_id for d in dlq.get_failed_messages()) == ["b", "c"]

    target = Collecting()
    assert await dlq.replay(to=target) == 2
    assert target.got == [(b"b", {"k": "b"}, "b"), (b"c", {"k": "c"}, "c")]
    assert len(dlq) == 0


def test_file_dlq_on_disk(tmp_path: Path, memory: foxtive.MemoryBackend) -> None:
    path = tmp_path / "dead.jsonl"
    dlq = foxtive.FileDLQ(path)
    assert not path.exists()  # nothing is touched before the first dead letter

    async def handler(m: foxtive.Message) -> None:
        raise foxtive.PermanentError("no")

    memory.publish_sync(BODY, headers=HEADERS, message_id="first")
    memory.publish_sync(b"second", message_id="second")
    pool = foxtive.WorkerPoolBuilder("p").add_worker(handler, id="h").with_concurrency_limit(1) \
        .with_middleware(fast_retries().with_dead_letter_queue(dlq)).build()
    assert pool.run_until_idle(memory, timeout=10)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600

    lines = path.read_bytes().splitlines()
    assert len(lines) == 2
    record = json.loads(lines[0])
    assert base64.b64decode(record["body"]) == BODY  # binary survives as base64

    # A crash half-way through a third record: the torn line is ignored and
    # the records before it stay intact, also for the next writer.
    torn = lines[1][: len(lines[1]) // 2]
    with open(path, "ab") as f:
        f.write(torn)
    reopened = foxtive.FileDLQ(str(path))
    assert [d.original_id for d in reopened.get_failed_messages()] == ["first", "second"]
    [first, _] = reopened.get_failed_messages()
    assert first.body == BODY and first.headers == HEADERS

    memory.publish_sync(b"third", message_id="third")
    pool2 = pool_with(handler, reopened)
    assert pool2.run_until_idle(memory, timeout=10)
    assert [d.original_id for d in foxtive.FileDLQ(path).get_failed_messages()] == [
        "first", "second", "third"]

    # Replay rewrites the file atomically and keeps mode 0600.
    assert asyncio.run(reopened.replay(ids=["second"], to=memory)) == 1
    assert [d.original_id for d in reopened.get_failed_messages()] == ["first", "third"]
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def unwritable_paths(tmp_path: Path) -> list[Path]:
    """Places no process can write a file to; a read-only directory too when
    not root (root ignores permissions)."""
    paths = [Path("/proc/foxtive-no-such-dir/dead.jsonl")]
    if os.geteuid() != 0:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        paths.append(ro / "dead.jsonl")
    return paths


async def test_an_unwritable_file_dlq_keeps_the_message_and_the_loop_goes_on(
    tmp_path: Path,
) -> None:
    for path in unwritable_paths(tmp_path):
        await check_unwritable(path)


async def check_unwritable(path: Path) -> None:
    memory = foxtive.MemoryBackend(f"unwritable-{uuid.uuid4().hex[:8]}")
    dlq = foxtive.FileDLQ(path)
    done: list[str] = []

    async def handler(m: foxtive.Message) -> None:
        if m.id == "bad":
            raise foxtive.PermanentError("poisoned")
        done.append(m.id)

    memory.publish_sync(b"bad", message_id="bad")
    memory.publish_many_sync([b"1", b"2", b"3"])
    pool = pool_with(handler, dlq)
    run = asyncio.ensure_future(pool.run_async(memory, handle_signals=False))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while (len(done) < 3 or dlq.last_error is None) and loop.time() < deadline:
        await asyncio.sleep(0.01)
    pool.shutdown()
    await run

    assert len(done) == 3, "the other messages were processed"
    error = dlq.last_error
    assert error is not None and "cannot write to" in error and str(path) in error
    # Not acked, not lost: handed back to the backend, waiting to come back.
    assert memory.qsize() == 1 and memory.unacked() == 0
    assert memory.dead_letters() == []
    assert len(dlq) == 0


def test_redis_dlq_as_redis_sees_it(
    judge: redis.Redis, redis_key: str, memory: foxtive.MemoryBackend
) -> None:
    dlq = foxtive.RedisDLQ(REDIS_URL, redis_key)

    async def handler(m: foxtive.Message) -> None:
        raise foxtive.PermanentError("no")

    memory.publish_sync(BODY, message_id="m1")
    assert pool_with(handler, dlq).run_until_idle(memory, timeout=10)
    assert judge.type(redis_key) == b"stream"
    [(_, fields)] = judge.xrange(redis_key)
    record = json.loads(fields[b"record"])
    assert record["original_id"] == "m1"
    assert base64.b64decode(record["body"]) == BODY
    assert asyncio.run(dlq.replay(to=memory)) == 1
    assert judge.xlen(redis_key) == 0


def test_redis_dlq_hides_its_password() -> None:
    dlq = foxtive.RedisDLQ("redis://user:hunter2@127.0.0.1:1/0", "k")
    assert "hunter2" not in repr(dlq) and "hunter2" not in dlq.url
    with pytest.raises(foxtive.BackendError) as info:
        len(dlq)
    assert "hunter2" not in str(info.value) and "127.0.0.1:1" in str(info.value)


def test_bad_settings_name_the_argument(tmp_path: Path) -> None:
    with pytest.raises(foxtive.ConfigError, match="dead_letter_queue"):
        foxtive.RetryHandler(dead_letter_queue="dead.jsonl")
    with pytest.raises(foxtive.ConfigError, match="key"):
        foxtive.RedisDLQ(REDIS_URL, "")
    with pytest.raises(foxtive.ConfigError, match="url"):
        foxtive.RedisDLQ("not a url", "k")
    with pytest.raises(foxtive.ConfigError, match="path"):
        foxtive.FileDLQ(42)  # type: ignore[arg-type]
    dlq = foxtive.FileDLQ(tmp_path / "x.jsonl")
    with pytest.raises(foxtive.ConfigError, match="to"):
        asyncio.run(dlq.replay())  # no pool ran with it: no default target
    with pytest.raises(foxtive.ConfigError, match="ids"):
        asyncio.run(dlq.replay("m1", to=foxtive.MemoryBackend()))  # type: ignore[arg-type]
    assert repr(dlq) == f"FileDLQ({str(tmp_path / 'x.jsonl')!r})"
    assert repr(foxtive.MemoryDLQ()) == "MemoryDLQ()"


def test_replay_over_rabbitmq() -> None:
    """Retries through RabbitMQ, dead letter kept by the store (not `{queue}.dlq`),
    replayed to the queue as a fresh message."""
    import aio_pika

    try:
        from tests.rabbit_support import backend, judge, list_queues, publish_with_pika, unique
    except ImportError:  # tests/ is not a package
        from rabbit_support import (  # type: ignore[no-redef]
            backend,
            judge,
            list_queues,
            publish_with_pika,
            unique,
        )

    queue = unique("dlq-replay")
    dlq = foxtive.MemoryDLQ()
    healthy = False
    seen: list[tuple[str, int]] = []

    async def handler(m: foxtive.Message) -> None:
        seen.append((m.id, m.attempt))
        if not healthy:
            raise RuntimeError("not yet")

    async def scenario() -> None:
        nonlocal healthy
        async with judge(queue) as channel:
            await publish_with_pika(channel, queue, [aio_pika.Message(
                body=b"payload", message_id="r1", headers={"custom": 5})])
            rabbit = backend(queue)
            pool = pool_with(handler, dlq, retries=2)
            assert await pool.run_until_idle_async(rabbit, timeout=30)
            assert seen == [("r1", 1), ("r1", 2), ("r1", 3)]
            [dead] = dlq.get_failed_messages()
            assert (dead.original_id, dead.attempts, dead.body) == ("r1", 3, b"payload")
            assert dead.headers["custom"] == 5
            assert list_queues().get(f"{queue}.dlq", (0, 0)) == (0, 0)

            healthy = True
            seen.clear()
            assert await dlq.replay() == 1  # to the queue the pool ran on
            assert len(dlq) == 0
            assert await pool.run_until_idle_async(rabbit, timeout=30)
            assert seen == [("r1", 1)]  # attempt count reset
            assert list_queues()[queue] == (0, 0)

    asyncio.run(scenario())
