"""foxtive.RedisStreamBackend against the real Redis (127.0.0.1:6379, or
FOXTIVE_REDIS_URL). redis-py is the independent judge: it writes entries
as a third-party client would and checks what is left in Redis. Every test
uses its own keys and deletes them."""

from __future__ import annotations

import asyncio
import collections
import os
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis

import foxtive

from .redis_support import (
    REDIS_URL,
    PrivateRedis,
    TlsRedis,
    delete_keys,
    ensure_redis,
    redis_answers,
    restart_redis,
    running_pool,
    spawn_worker,
    unique_stream,
    wait_for,
)


@pytest.fixture
def r() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(REDIS_URL)
    if not redis_answers(client):
        pytest.skip(f"no Redis at {REDIS_URL}")
    yield client
    ensure_redis(client)
    client.close()


@pytest.fixture
def stream(r: redis.Redis, request: pytest.FixtureRequest) -> Iterator[str]:
    name = unique_stream(request.node.name[:40])
    yield name
    ensure_redis(r)
    delete_keys(r, name)


def backend_for(stream: str, **overrides: Any) -> foxtive.RedisStreamBackend:
    config = foxtive.RedisStreamConsumerConfig(stream_name=stream, group_name="g",
                                               block_ms=200, **overrides)
    return foxtive.RedisStreamBackend(REDIS_URL, config)


def pending(r: redis.Redis, stream: str) -> int:
    return int(r.xpending(stream, "g")["pending"])


# ------------------------------------------------------------------ config


def test_config_defaults_and_derived_names() -> None:
    c = foxtive.RedisStreamConsumerConfig()
    assert (c.stream_name, c.group_name, c.batch_size, c.block_ms) == (
        "worker_stream", "worker_group", 100, 1000)
    assert c.claim_idle == 60.0 and c.claim_interval == 15.0
    assert c.maxlen is None and c.delete_on_ack is True and c.max_deliveries == 10
    assert c.dead_letter_stream == "worker_stream:dlq"
    assert c.consumer_name and c.consumer_name != foxtive.RedisStreamConsumerConfig().consumer_name
    assert str(os.getpid()) in c.consumer_name
    d = c.with_stream_name("emails").with_claim_idle(2.0)
    assert d.dead_letter_stream == "emails:dlq", "derived defaults follow with_*"
    assert d.claim_interval == 0.5
    assert d.consumer_name == c.consumer_name
    e = foxtive.RedisStreamConsumerConfig(stream_name="a", dead_letter_stream="dead")
    assert e.with_stream_name("b").dead_letter_stream == "dead", "explicit values are kept"
    with pytest.raises(dataclasses_frozen_error()):
        c.batch_size = 5  # type: ignore[misc]


def dataclasses_frozen_error() -> type[BaseException]:
    import dataclasses

    return dataclasses.FrozenInstanceError


@pytest.mark.parametrize(("kwargs", "name"), [
    ({"batch_size": 0}, "batch_size"),
    ({"batch_size": "10"}, "batch_size"),
    ({"block_ms": -1}, "block_ms"),
    ({"claim_idle": 0.01}, "claim_idle"),
    ({"claim_idle": "soon"}, "claim_idle"),
    ({"claim_interval": 0}, "claim_interval"),
    ({"maxlen": 0}, "maxlen"),
    ({"delete_on_ack": "yes"}, "delete_on_ack"),
    ({"stream_name": ""}, "stream_name"),
    ({"group_name": None}, "group_name"),
    ({"stream_name": "s", "dead_letter_stream": "s"}, "dead_letter_stream"),
    ({"max_deliveries": 0}, "max_deliveries"),
])
def test_bad_config_names_the_argument(kwargs: dict[str, Any], name: str) -> None:
    with pytest.raises(foxtive.ConfigError, match=rf"^{name}\b"):
        foxtive.RedisStreamConsumerConfig(**kwargs)


def test_timedelta_durations() -> None:
    import datetime

    c = foxtive.RedisStreamConsumerConfig(claim_idle=datetime.timedelta(seconds=8))
    assert c.claim_idle == 8.0 and c.claim_interval == 2.0


def test_password_never_shown_and_state_reports_failures() -> None:
    b = foxtive.RedisStreamBackend("redis://user:hunter2@127.0.0.1:1/0",
                                   foxtive.RedisStreamConsumerConfig(stream_name="x"))
    assert "hunter2" not in repr(b) and "user:***@" in repr(b)
    assert b.state == "connected" and b.consecutive_failures == 0
    with pytest.raises(foxtive.BackendError) as info:
        asyncio.run(b.publish(b"x"))
    assert "hunter2" not in str(info.value)
    assert b.state == "reconnecting"
    assert b.consecutive_failures >= 1
    with pytest.raises(foxtive.ConfigError, match=r"^url") as bad:
        foxtive.RedisStreamBackend("http://user:hunter2@host/0")
    assert "hunter2" not in str(bad.value)


# --------------------------------------------------------------- consuming


def test_ten_thousand_third_party_entries_each_processed_once(
    r: redis.Redis, stream: str
) -> None:
    n = 10_000
    pipe = r.pipeline(transaction=False)
    for i in range(n):
        pipe.xadd(stream, {"body": f"m{i}"})
    pipe.execute()
    seen: collections.Counter[bytes] = collections.Counter()

    async def handler(message: foxtive.Message) -> None:
        seen[message.body] += 1
        assert message.queue == stream and message.attempt == 1

    pool = foxtive.WorkerPoolBuilder("p").add_worker(handler, id="h").build()
    assert pool.run_until_idle(backend_for(stream), timeout=60)
    assert len(seen) == n and set(seen.values()) == {1}
    assert pool.stats()["processed"] == n
    assert pending(r, stream) == 0
    assert r.xlen(stream) == 0, "delete_on_ack leaves nothing behind"
    assert r.xinfo_consumers(stream, "g") == [], "a clean exit removes the consumer"


def test_without_delete_on_ack_the_stream_keeps_acked_entries(
    r: redis.Redis, stream: str
) -> None:
    for i in range(50):
        r.xadd(stream, {"data": f"d{i}"})
    bodies: list[bytes] = []

    async def handler(message: foxtive.Message) -> None:
        bodies.append(message.body)

    pool = foxtive.WorkerPoolBuilder("p").add_worker(handler, id="h").build()
    assert pool.run_until_idle(backend_for(stream, delete_on_ack=False, batch_size=7), timeout=30)
    assert sorted(bodies) == sorted(f"d{i}".encode() for i in range(50))
    assert pending(r, stream) == 0 and r.xlen(stream) == 50


def test_binary_bodies_headers_and_ids_survive(r: redis.Redis, stream: str) -> None:
    blob = bytes(range(256)) * 4 + b"\xff\xfe\x00"
    third_party_id = r.xadd(stream, {"body": blob, "tenant": b"\xc3\xa9t\xc3\xa9", "raw": b"\x80"})
    backend = backend_for(stream)
    headers = {"n": 7, "f": 1.5, "ok": True, "none": None, "b": b"\x00\xff", "s": "x"}
    mid = asyncio.run(backend.publish(blob, headers=headers, message_id="order-1"))
    assert mid == "order-1"
    got: list[foxtive.Message] = []

    def handler(message: foxtive.Message) -> None:
        got.append(message)

    pool = foxtive.WorkerPoolBuilder("p").add_worker(handler, id="h").build()
    assert pool.run_until_idle(backend, timeout=30)
    # Two handler threads run these two messages: order is not guaranteed.
    by_id = {m.id: m for m in got}
    assert [m.body for m in got] == [blob, blob]
    assert set(by_id) == {third_party_id.decode(), "order-1"}
    assert dict(by_id[third_party_id.decode()].headers) == {"tenant": "été", "raw": b"\x80"}
    assert dict(by_id["order-1"].headers) == headers


# ------------------------------------------------------ failures and retries


def test_dead_letters_carry_the_reason(r: redis.Redis, stream: str) -> None:
    r.xadd(stream, {"body": b"\xffnot json", "id": "job-1"})
    r.xadd(stream, {"body": b"explicit"})

    async def handler(message: foxtive.Message) -> None:
        if message.body == b"explicit":
            await message.dead_letter("customer unknown")
            return
        message.json()

    pool = foxtive.WorkerPoolBuilder("p").add_worker(handler, id="parser").build()
    backend = backend_for(stream)
    assert pool.run_until_idle(backend, timeout=30)
    assert pending(r, stream) == 0 and r.xlen(stream) == 0
    entries = r.xrange(f"{stream}:dlq")
    assert len(entries) == 2
    first = entries[0][1]
    assert first[b"body"] == b"\xffnot json"
    assert first[b"id"] == b"job-1"
    assert first[b"error_type"] == b"PayloadError"
    assert first[b"error_message"]
    assert first[b"source"] == stream.encode()
    assert first[b"worker_id"] == b"parser"
    assert first[b"poison_pill"] == b"false"
    assert first[b"attempts"] == b"1"
    assert float(first[b"failed_at"]) > time.time() - 60
    assert entries[1][1][b"error_message"] == b"customer unknown"
    letters = backend.dead_letters()
    assert letters[0].original_id == "job-1"
    assert letters[1].error_message == "customer unknown" and not letters[1].poison_pill


def test_retries_are_durable_then_dead_lettered(r: redis.Redis, stream: str) -> None:
    r.xadd(stream, {"body": b"flaky", "id": "m-1"})
    attempts: list[tuple[str, int, bool]] = []

    async def handler(message: foxtive.Message) -> None:
        attempts.append((message.id, message.attempt, message.redelivered))
        raise ValueError(f"boom {message.attempt}")

    pool = (foxtive.WorkerPoolBuilder("p").add_worker(handler, id="h")
            .with_middleware(foxtive.RetryHandler(max_retries=2, initial_backoff=0.05,
                                                  max_backoff=0.1, jitter=False))
            .build())
    assert pool.run_until_idle(backend_for(stream), timeout=30)
    assert attempts == [("m-1", 1, False), ("m-1", 2, True), ("m-1", 3, True)]
    dead = r.xrange(f"{stream}:dlq")
    assert len(dead) == 1
    assert dead[0][1][b"error_type"] == b"ValueError"
    assert dead[0][1][b"error_message"] == b"boom 3"
    assert dead[0][1][b"attempts"] == b"3"
    assert pending(r, stream) == 0 and r.zcard(f"{stream}:delayed") == 0


def test_a_long_retry_never_delays_a_short_one(r: redis.Redis, stream: str) -> None:
    r.xadd(stream, {"body": b"long"})
    r.xadd(stream, {"body": b"short"})
    seen: list[tuple[bytes, int, float]] = []
    short_again = threading.Event()

    async def handler(message: foxtive.Message) -> None:
        seen.append((message.body, message.attempt, time.monotonic()))
        if message.attempt == 1:
            raise foxtive.RetryableError(delay=20.0 if message.body == b"long" else 0.5)
        short_again.set()

    pool = foxtive.WorkerPoolBuilder("p").add_worker(handler, id="h").build()
    t0 = time.monotonic()
    with running_pool(pool, backend_for(stream)):
        assert short_again.wait(10), seen
        waited = time.monotonic() - t0
        delayed = r.zrange(f"{stream}:delayed", 0, -1, withscores=True)
        secs, micros = r.time()
        server_ms = secs * 1000 + micros / 1000
    assert 0.45 <= waited < 5, waited
    assert [(b, a) for b, a, _ in seen] == [(b"long", 1), (b"short", 1), (b"short", 2)]
    assert len(delayed) == 1, "the long retry waits in Redis, not in the worker"
    assert b"long" in delayed[0][0]
    assert 15_000 < delayed[0][1] - server_ms <= 20_000
    assert pending(r, stream) == 0


def test_delayed_publish(r: redis.Redis, stream: str) -> None:
    backend = backend_for(stream)
    mid = asyncio.run(backend.publish(b"later", delay=0.3, message_id="d-1"))
    assert mid == "d-1" and r.xlen(stream) == 0 and r.zcard(f"{stream}:delayed") == 1
    got: list[tuple[str, float]] = []
    t0 = time.monotonic()

    async def handler(message: foxtive.Message) -> None:
        got.append((message.id, time.monotonic() - t0))

    pool = foxtive.WorkerPoolBuilder("p").add_worker(handler, id="h").build()
    assert pool.run_until_idle(backend, timeout=30)
    assert got[0][0] == "d-1" and got[0][1] >= 0.3


def test_publish_many_is_pipelined_and_trims(r: redis.Redis, stream: str) -> None:
    backend = backend_for(stream, maxlen=100)
    ids = asyncio.run(backend.publish_many([b"x%d" % i for i in range(1000)]))
    assert len(ids) == 1000 and len(set(ids)) == 1000
    assert r.xlen(stream) < 1000, "MAXLEN ~ trims"


# ---------------------------------------------------------- crash and churn


def test_a_killed_consumers_batch_is_reclaimed_by_another(r: redis.Redis, stream: str) -> None:
    n = 200
    for i in range(n):
        r.xadd(stream, {"body": f"e{i}"})
    proc, lines = spawn_worker(stream, "--mode", "hang", "--consumer", "doomed",
                               "--batch-size", "50", "--concurrency", "50", "--claim-idle", "1")
    try:
        lines.wait_count(50, "start ")
        wait_for(lambda: pending(r, stream) == 50, 10, "the batch to be pending")
    finally:
        proc.kill()
        proc.wait()
    held = {x.split()[1] for x in lines.finish() if x.startswith("start ")}
    assert len(held) == 50
    seen: collections.Counter[str] = collections.Counter()
    attempts: dict[str, int] = {}

    async def handler(message: foxtive.Message) -> None:
        body = message.body.decode()
        seen[body] += 1
        attempts[body] = message.attempt

    pool = foxtive.WorkerPoolBuilder("p").add_worker(handler, id="h").build()
    assert pool.run_until_idle(backend_for(stream, claim_idle=1.0), timeout=30)
    assert set(seen) == {f"e{i}" for i in range(n)}
    assert set(seen.values()) == {1}
    assert all(attempts[b] == 2 for b in held), "the delivery count feeds attempt"
    assert pending(r, stream) == 0 and r.xlen(stream) == 0


def test_sigkill_mid_drain_then_restart_processes_everything(r: redis.Redis, stream: str) -> None:
    n = 300
    for i in range(n):
        r.xadd(stream, {"body": f"k{i}"})
    args = ["--consumer", "steady-name", "--delay", "0.02", "--concurrency", "10",
            "--batch-size", "20"]
    proc, lines = spawn_worker(stream, *args)
    lines.wait_count(40, "done ")
    proc.kill()
    proc.wait()
    first = lines.finish()
    # Same consumer name: the restart re-reads its own pending entries first.
    proc, lines = spawn_worker(stream, *args, "--until-idle")
    second = lines.finish()
    assert proc.wait(60) == 0
    assert "idle True" in second
    done = {x[5:] for x in first + second if x.startswith("done ")}
    assert done == {f"k{i}" for i in range(n)}, "every id processed at least once"
    assert pending(r, stream) == 0


def test_sigterm_mid_drain_exits_in_time_without_double_processing(
    r: redis.Redis, stream: str
) -> None:
    n = 2000
    pipe = r.pipeline(transaction=False)
    for i in range(n):
        pipe.xadd(stream, {"body": f"t{i}"})
    pipe.execute()
    proc, lines = spawn_worker(stream, "--delay", "0.05", "--concurrency", "50",
                               "--shutdown-timeout", "5")
    lines.wait_count(200, "done ")
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(15)
    elapsed = time.monotonic() - t0
    first = lines.finish()
    assert code == 0, proc.stderr.read() if proc.stderr else code
    assert elapsed < 5 + 3, elapsed
    assert "stopped" in first
    done_first = [x[5:] for x in first if x.startswith("done ")]
    assert len(done_first) < n, "stopped mid-drain"
    seen: collections.Counter[str] = collections.Counter(done_first)

    async def handler(message: foxtive.Message) -> None:
        seen[message.body.decode()] += 1

    pool = foxtive.WorkerPoolBuilder("p").add_worker(handler, id="h").build()
    # Entries handed back at shutdown are claimable at once.
    assert pool.run_until_idle(backend_for(stream), timeout=60)
    assert set(seen) == {f"t{i}" for i in range(n)}
    assert seen.most_common(1)[0][1] == 1, "no id processed twice"
    assert pending(r, stream) == 0 and r.xlen(stream) == 0


def test_an_entry_that_keeps_killing_its_worker_becomes_a_poison_pill(
    r: redis.Redis, stream: str
) -> None:
    bad = r.xadd(stream, {"body": b"bad"})
    for i in range(5):
        r.xadd(stream, {"body": f"ok{i}"})
    args = ["--mode", "kill-on-bad", "--consumer", "same", "--concurrency", "1",
            "--batch-size", "1", "--max-deliveries", "3", "--until-idle"]
    for _ in range(3):
        proc, lines = spawn_worker(stream, *args)
        assert proc.wait(30) == -signal.SIGKILL
        assert "start bad" in " ".join(lines.finish())
    proc, lines = spawn_worker(stream, *args)
    out = lines.finish()
    assert proc.wait(30) == 0, out
    assert sorted(x[5:] for x in out if x.startswith("done ")) == [f"ok{i}" for i in range(5)]
    assert not any(x.startswith("start bad") for x in out), "never handed to a handler again"
    dead = r.xrange(f"{stream}:dlq")
    assert len(dead) == 1
    fields = dead[0][1]
    assert fields[b"body"] == b"bad" and fields[b"id"] == bad
    assert fields[b"poison_pill"] == b"true"
    assert fields[b"error_type"] == b"PoisonPill"
    assert b"delivered 4 times" in fields[b"error_message"]
    assert pending(r, stream) == 0


def test_deleted_stream_is_recreated_while_running(r: redis.Redis, stream: str) -> None:
    seen: list[bytes] = []
    got = threading.Condition()

    async def handler(message: foxtive.Message) -> None:
        with got:
            seen.append(message.body)
            got.notify_all()

    def wait_seen(n: int) -> None:
        with got:
            assert got.wait_for(lambda: len(seen) >= n, 15), seen

    pool = foxtive.WorkerPoolBuilder("p").add_worker(handler, id="h").build()
    with running_pool(pool, backend_for(stream)):
        for i in range(5):
            r.xadd(stream, {"body": f"a{i}"})
        wait_seen(5)
        # Let the acks land first: a recreated stream reuses entry ids of the
        # same millisecond, so a late XDEL could hit a new entry.
        wait_for(lambda: r.xlen(stream) == 0, 10, "the first acks")
        r.delete(stream)
        for i in range(5):
            r.xadd(stream, {"body": f"b{i}"})
        wait_seen(10)
    assert sorted(seen[5:]) == [f"b{i}".encode() for i in range(5)]
    assert pending(r, stream) == 0


def test_redis_restart_mid_drain_worker_carries_on(r: redis.Redis, stream: str) -> None:
    for i in range(300):
        r.xadd(stream, {"body": f"pre{i}"})
    seen: list[str] = []
    got = threading.Condition()

    async def handler(message: foxtive.Message) -> None:
        await asyncio.sleep(0.01)
        with got:
            seen.append(message.body.decode())
            got.notify_all()

    def wait_until(pred: Any, what: str) -> None:
        with got:
            assert got.wait_for(pred, 30), f"{what}: {len(seen)} seen"

    backend = backend_for(stream)
    pool = (foxtive.WorkerPoolBuilder("p").add_worker(handler, id="h")
            .with_concurrency_limit(5).build())
    with running_pool(pool, backend):
        wait_until(lambda: len(seen) >= 20, "first entries")
        restart_redis(r)
        # Everything before the restart is gone with the server's memory;
        # what is added now must be processed by the same, running worker.
        for i in range(100):
            r.xadd(stream, {"body": f"post{i}"})
        wait_until(lambda: sum(s.startswith("post") for s in seen) >= 100, "post-restart entries")
        wait_for(lambda: backend.state == "connected", 10, "the backend to report connected")
    assert sorted(s for s in seen if s.startswith("post")) == sorted(f"post{i}" for i in range(100))
    assert backend.reconnect_attempts >= 1
    assert pending(r, stream) == 0


def test_rediss_urls_work(tmp_path: Any) -> None:
    tls = TlsRedis(str(tmp_path))
    if not tls.start():
        pytest.skip("openssl or a TLS-capable redis-server is missing")
    try:
        code = (
            "import asyncio, foxtive\n"
            f"b = foxtive.RedisStreamBackend('rediss://127.0.0.1:{tls.port}/0',"
            " foxtive.RedisStreamConsumerConfig(stream_name='tls-s', block_ms=100))\n"
            "asyncio.run(b.publish(b'secure'))\n"
            "got = []\n"
            "async def h(m): got.append(m.body)\n"
            "pool = foxtive.WorkerPoolBuilder('p').add_worker(h, id='h').build()\n"
            "assert pool.run_until_idle(b, timeout=20)\n"
            "print(got)\n"
        )
        env = dict(os.environ, SSL_CERT_FILE=tls.ca)
        import subprocess
        import sys

        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                             text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == "[b'secure']"
    finally:
        tls.stop()


def test_passwords_users_and_databases(tmp_path: Any) -> None:
    server = PrivateRedis(str(tmp_path), "--requirepass", "s3cret-pw")
    if not server.start():
        pytest.skip("redis-server is missing")
    try:
        admin = redis.Redis(port=server.port, password="s3cret-pw", db=3)
        admin.acl_setuser("fox", enabled=True, passwords=["+user-pw"], keys=["*"],
                          commands=["+@all"], channels=["*"])
        for url in (f"redis://:s3cret-pw@127.0.0.1:{server.port}/3",
                    f"redis://fox:user-pw@127.0.0.1:{server.port}/3"):
            admin.xadd("auth-s", {"body": b"hello"})
            backend = foxtive.RedisStreamBackend(
                url, foxtive.RedisStreamConsumerConfig(stream_name="auth-s", block_ms=100))
            assert "pw" not in repr(backend)
            got: list[bytes] = []

            async def handler(message: foxtive.Message, got: list[bytes] = got) -> None:
                got.append(message.body)

            pool = foxtive.WorkerPoolBuilder("p").add_worker(handler, id="h").build()
            assert pool.run_until_idle(backend, timeout=20)
            assert got == [b"hello"], url
            assert admin.xlen("auth-s") == 0, "read and acked in database 3"
        wrong = foxtive.RedisStreamBackend(
            f"redis://:wrong-pw@127.0.0.1:{server.port}/3",
            foxtive.RedisStreamConsumerConfig(stream_name="auth-s"))
        with pytest.raises(foxtive.BackendError) as info:
            asyncio.run(wrong.publish(b"x"))
        assert "wrong-pw" not in str(info.value)
    finally:
        server.stop()


# -------------------------------------------------------------- partitions


def test_partitions_on_one_server_spread_and_deliver_each_message_once(
    r: redis.Redis, stream: str
) -> None:
    """``partitions=3`` on a plain server (the cluster case is in
    tests/cluster): three tagged streams, round robin, one consumer reads all,
    dead letters go to their own partition's stream and list as one store."""
    b = backend_for(stream, partitions=3)
    keys = b.stream_keys
    try:
        assert len(set(keys)) == 3 and all(k.startswith("{" + stream) for k in keys), keys
        assert b.dead_letter_keys == [f"{k}:dlq" for k in keys]
        n = 300
        asyncio.run(b.publish_many([b"p%d" % i for i in range(n)]))
        assert [r.xlen(k) for k in keys] == [n // 3] * 3
        seen: collections.Counter[bytes] = collections.Counter()

        async def handler(m: foxtive.Message) -> None:
            if m.body in (b"p0", b"p1"):
                raise foxtive.PermanentError("bad")
            seen[m.body] += 1
            assert m.queue == stream

        pool = foxtive.WorkerPoolBuilder("p").add_worker(handler, id="h").build()
        assert pool.run_until_idle(b, timeout=60)
        assert len(seen) == n - 2 and set(seen.values()) == {1}
        assert all(r.xlen(k) == 0 and pending(r, k) == 0 for k in keys)
        # p0 and p1 went to partitions 0 and 1: each dead letter in its own DLQ.
        assert [r.xlen(f"{k}:dlq") for k in keys] == [1, 1, 0]
        dlq = b.dead_letter_queue()
        assert len(dlq) == 2
        listed = dlq.get_failed_messages()
        assert sorted(d.body for d in listed) == [b"p0", b"p1"]
        assert asyncio.run(dlq.replay()) == 2
        assert [r.xlen(f"{k}:dlq") for k in keys] == [0, 0, 0]
        assert [r.xlen(k) for k in keys] == [1, 1, 0], "each back in its own partition"
    finally:
        for k in keys:
            delete_keys(r, k)
