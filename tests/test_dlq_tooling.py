"""Dead-letter tooling (issue 11, items 10 and 11): missing stores are errors,
unreadable file records are set aside (never deleted), failed dead-letter
writes are neither counted nor lost, and the brokers' native dead-letter
queues are listed, shown, replayed (exactly once, even when interrupted) and
purged from Python and from ``foxtive dlq --broker``. Real RabbitMQ and Redis;
aio-pika, rabbitmqctl and redis-py judge."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

import foxtive

from .conftest import fast_retries
from .rabbit_support import URL as AMQP_URL
from .rabbit_support import judge, list_queues, unique
from .redis_support import REDIS_URL, delete_keys, unique_stream


def foxtive_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "foxtive", "--log-level", "ERROR", *args],
                          cwd=cwd, capture_output=True, text=True, timeout=120)


def failing_pool(dlq: foxtive.DeadLetterQueue | None = None) -> foxtive.WorkerPool:
    async def handler(m: foxtive.Message) -> None:
        raise foxtive.PermanentError(f"cannot ship {m.body.decode()}")

    retry = fast_retries(0)
    if dlq is not None:
        retry = retry.with_dead_letter_queue(dlq)
    return (foxtive.WorkerPoolBuilder("dlq-tooling").with_middleware(retry)
            .add_worker(handler, id="h").with_shutdown_timeout(5.0).build())


def recording_pool(seen: list[str]) -> foxtive.WorkerPool:
    async def handler(m: foxtive.Message) -> None:
        seen.append(m.id)

    return (foxtive.WorkerPoolBuilder("dlq-tooling-ok").add_worker(handler, id="ok")
            .with_shutdown_timeout(5.0).build())


# ---------------------------------------------------------------- item 10


def test_cli_missing_file_or_directory_is_an_error(tmp_path: Path) -> None:
    for missing in (tmp_path / "typo.jsonl", tmp_path / "no-such-dir" / "dead.jsonl"):
        res = foxtive_cli("dlq", "list", "--file", str(missing), cwd=tmp_path)
        assert res.returncode != 0, res.stdout
        assert "no dead-letter file" in res.stderr and str(missing) in res.stderr
        assert "0 dead letter(s)" not in res.stdout
    assert not (tmp_path / "typo.jsonl").exists(), "listing must not create the file"


def test_cli_missing_redis_key_and_broker_queue_are_errors(tmp_path: Path) -> None:
    key = unique_stream("nokey")
    res = foxtive_cli("dlq", "list", "--redis", REDIS_URL, "--key", key, cwd=tmp_path)
    assert res.returncode != 0 and "no dead-letter stream" in res.stderr, res.stderr
    for url in (AMQP_URL, REDIS_URL):
        res = foxtive_cli("dlq", "list", "--broker", url, "--queue", unique("typo"),
                          cwd=tmp_path)
        assert res.returncode != 0 and "check --queue" in res.stderr, res.stderr
        assert "guest:guest" not in res.stderr


def fill_file(path: Path, bodies: list[str]) -> None:
    dlq = foxtive.FileDLQ(path)
    memory = foxtive.MemoryBackend(unique("mem"))
    memory.publish_many_sync([b.encode() for b in bodies])
    assert failing_pool(dlq).run_until_idle(memory, timeout=20)


def test_torn_record_in_the_middle_is_set_aside_and_reported(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "dead.jsonl"
    fill_file(path, ["a", "b"])
    lines = path.read_bytes().splitlines(keepends=True)
    torn = lines[1][: len(lines[1]) // 2]
    # A record torn in the middle of the file (a crash mid-write, then more
    # appends), and one damaged line.
    path.write_bytes(lines[0] + torn)
    fill_file(path, ["c"])
    with path.open("ab") as f:
        f.write(b"{\"v\": 1, \"damaged\n")
    fill_file(path, ["d"])
    dlq = foxtive.FileDLQ(path)
    with caplog.at_level(logging.WARNING, logger="foxtive"):
        assert [d.body for d in dlq.get_failed_messages()] == [b"a", b"c", b"d"]
    assert dlq.unreadable == 2
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("skipped unreadable dead-letter records" in m and "unreadable=2" in m
               for m in warned), warned

    listed = foxtive_cli("dlq", "list", "--file", str(path), "--json", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert len(json.loads(listed.stdout)) == 3
    assert "2 unreadable record(s) skipped" in listed.stderr

    memory = foxtive.MemoryBackend(unique("target"))
    assert asyncio.run(dlq.replay(ids=[dlq.get_failed_messages()[0].original_id],
                                  to=memory)) == 1
    assert dlq.set_aside == 2
    assert any("set aside unreadable dead-letter records" in r.getMessage()
               and "set_aside=2" in r.getMessage() for r in caplog.records), caplog.text
    corrupt = Path(dlq.corrupt_path)
    assert corrupt.read_bytes() == torn + b"\n" + b"{\"v\": 1, \"damaged\n"
    assert oct(corrupt.stat().st_mode & 0o777) == "0o600"

    # Tear one more, then purge from the CLI: it says what it set aside.
    with path.open("ab") as f:
        f.write(b"garbage\n")
    purged = foxtive_cli("dlq", "purge", "--file", str(path), "--yes", cwd=tmp_path)
    assert purged.returncode == 0, purged.stderr
    assert "purged 2" in purged.stdout
    assert f"set aside 1 unreadable record(s) in {corrupt}" in purged.stderr
    assert corrupt.read_bytes().endswith(b"garbage\n")
    assert path.read_bytes() == b""


def test_failed_file_write_is_not_counted_nor_acked(tmp_path: Path) -> None:
    missing_dir = tmp_path / "gone"
    dlq = foxtive.FileDLQ(missing_dir / "dead.jsonl")
    memory = foxtive.MemoryBackend(unique("mem"))
    memory.publish_many_sync([b"x", b"y"])
    pool = failing_pool(dlq)
    assert pool.run_until_idle(memory, timeout=2.0) is False
    stats = pool.stats()
    assert stats["failed"] >= 2
    assert stats["dead_lettered"] == 0, stats
    assert stats["requeued"] >= 2, "counted as handed back to the backend"
    assert memory.qsize() == 2, "both messages wait in the backend to be written again"
    assert memory.dead_letters() == [] and dlq.last_error and "gone" in dlq.last_error
    # The store comes back: they are written, and counted, once.
    missing_dir.mkdir()
    assert pool.run_until_idle(memory, timeout=30)
    assert pool.stats()["dead_lettered"] == 2
    assert sorted(d.body for d in dlq.get_failed_messages()) == [b"x", b"y"]
    assert memory.qsize() == 0


def test_failed_redis_write_is_not_counted_nor_acked() -> None:
    r = redis.Redis.from_url(REDIS_URL)
    stream = unique_stream("dlqfail")
    try:
        dlq = foxtive.RedisDLQ("redis://127.0.0.1:1/0", "k")  # nothing listens on port 1
        backend = foxtive.RedisStreamBackend(
            REDIS_URL, foxtive.RedisStreamConsumerConfig(stream_name=stream))
        asyncio.run(backend.publish_many([b"x", b"y"]))
        pool = failing_pool(dlq)
        assert pool.run_until_idle(backend, timeout=2.0) is False
        stats = pool.stats()
        assert stats["failed"] >= 2 and stats["dead_lettered"] == 0, stats
        # Still in the broker: waiting (delayed) to be tried again, or pending.
        pending = r.xpending(stream, "worker_group")["pending"] if r.exists(stream) else 0
        assert r.zcard(f"{stream}:delayed") + pending == 2
        assert r.xlen(f"{stream}:dlq") == 0
    finally:
        delete_keys(r, stream)


# ---------------------------------------------------------------- item 11


def check_records(records: list[Any], queue: str, n: int) -> None:
    assert sorted(d.original_id for d in records) == [f"m-{i}" for i in range(n)]
    for d in records:
        i = d.original_id[2:]
        assert d.body == f"body-{i}".encode()
        assert d.source_queue == queue
        assert d.error_type == "PermanentError"
        assert d.error_message == f"cannot ship body-{i}"
        assert d.worker_id == "h" and d.attempts == 1 and d.poison_pill is False
        assert d.failed_at > time.time() - 300
        assert d.headers["tenant"] == "acme"
        assert not any(k.startswith("x-foxtive-error") for k in d.headers)


def check_cli_json(out: str, queue: str, n: int) -> None:
    records = json.loads(out)
    assert sorted(r["original_id"] for r in records) == [f"m-{i}" for i in range(n)]
    for r in records:
        assert r["source_queue"] == queue and r["error_type"] == "PermanentError"
        assert r["error_message"] == f"cannot ship body-{r['original_id'][2:]}"
        assert r["worker_id"] == "h" and r["attempts"] == 1


async def publish_three(backend: Any) -> None:
    for i in range(3):
        await backend.publish(f"body-{i}".encode(), headers={"tenant": "acme"},
                              message_id=f"m-{i}")


def rabbit_counts(queue: str) -> tuple[int, int]:
    """(ready in queue, ready in queue.dlq), unacked must be 0 in both."""
    qs = list_queues()
    main, dlq = qs.get(queue, (0, 0)), qs.get(f"{queue}.dlq", (0, 0))
    assert main[1] == 0 and dlq[1] == 0, qs
    return main[0], dlq[0]


def wait_for(cond: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.1)


def test_rabbitmq_native_dlq_list_show_replay_purge(tmp_path: Path) -> None:
    queue = unique("ndlq")

    async def body() -> None:
        async with judge(queue):
            backend = foxtive.RabbitMqBackend(
                AMQP_URL, foxtive.RabbitMqConsumerConfig(queue_name=queue))
            await publish_three(backend)
            pool = failing_pool()
            assert await asyncio.to_thread(pool.run_until_idle, backend, 30)
            assert pool.stats()["dead_lettered"] == 3
            assert backend.dead_letter_queue == f"{queue}.dlq"  # still the name
            dlq = backend.dead_letter_queue()
            check_records(backend.dead_letters(), queue, 3)
            check_records(dlq.get_failed_messages(limit=10), queue, 3)
            assert len(dlq.get_failed_messages(limit=2)) == 2
            assert len(dlq) == 3 and rabbit_counts(queue) == (0, 3), "listing consumes nothing"

            listed = await asyncio.to_thread(
                foxtive_cli, "dlq", "list", "--broker", AMQP_URL, "--queue", queue, "--json",
                cwd=tmp_path)
            assert listed.returncode == 0, listed.stderr
            check_cli_json(listed.stdout, queue, 3)
            shown = await asyncio.to_thread(
                foxtive_cli, "dlq", "show", "m-1", "--broker", AMQP_URL, "--queue", queue,
                cwd=tmp_path)
            assert shown.returncode == 0, shown.stderr
            [one] = json.loads(shown.stdout)
            assert one["body"] == "body-1" and one["headers"]["tenant"] == "acme"

            replayed = await asyncio.to_thread(
                foxtive_cli, "dlq", "replay", "m-1", "--broker", AMQP_URL, "--queue", queue,
                cwd=tmp_path)
            assert replayed.returncode == 0, replayed.stderr
            assert "replayed 1" in replayed.stdout
            assert rabbit_counts(queue) == (1, 2), "moved exactly once"
            seen: list[str] = []
            ok = recording_pool(seen)
            assert await asyncio.to_thread(ok.run_until_idle, backend, 30)
            assert seen == ["m-1"]
            assert rabbit_counts(queue) == (0, 2)

            assert await dlq.replay(ids=["m-0"]) == 1
            assert rabbit_counts(queue) == (1, 1)
            purged = await asyncio.to_thread(
                foxtive_cli, "dlq", "purge", "--yes", "--broker", AMQP_URL, "--queue", queue,
                cwd=tmp_path)
            assert purged.returncode == 0 and "purged 1" in purged.stdout, purged.stderr
            assert rabbit_counts(queue) == (1, 0)
            assert dlq.get_failed_messages() == []

    asyncio.run(body())


def test_redis_native_dlq_list_show_replay_purge(tmp_path: Path) -> None:
    r = redis.Redis.from_url(REDIS_URL)
    stream = unique_stream("ndlq")
    dead = f"{stream}:dlq"
    try:
        backend = foxtive.RedisStreamBackend(
            REDIS_URL, foxtive.RedisStreamConsumerConfig(stream_name=stream))
        asyncio.run(publish_three(backend))
        pool = failing_pool()
        assert pool.run_until_idle(backend, timeout=30)
        assert pool.stats()["dead_lettered"] == 3 and r.xlen(dead) == 3
        dlq = backend.dead_letter_queue()
        check_records(backend.dead_letters(), stream, 3)
        check_records(dlq.get_failed_messages(), stream, 3)
        assert len(dlq) == 3

        listed = foxtive_cli("dlq", "list", "--broker", REDIS_URL, "--queue", stream, "--json",
                             cwd=tmp_path)
        assert listed.returncode == 0, listed.stderr
        check_cli_json(listed.stdout, stream, 3)
        shown = foxtive_cli("dlq", "show", "m-2", "--broker", REDIS_URL, "--queue", stream,
                            cwd=tmp_path)
        [one] = json.loads(shown.stdout)
        assert one["body"] == "body-2" and one["headers"]["tenant"] == "acme"

        before = r.xlen(stream)
        replayed = foxtive_cli("dlq", "replay", "m-2", "--broker", REDIS_URL, "--queue", stream,
                               cwd=tmp_path)
        assert replayed.returncode == 0 and "replayed 1" in replayed.stdout, replayed.stderr
        assert r.xlen(dead) == 2 and r.xlen(stream) == before + 1
        copy = r.xrange(stream)[-1][1]
        assert copy[b"id"] == b"m-2" and copy[b"body"] == b"body-2"
        assert b"error_type" not in copy and b"attempts" not in copy
        seen: list[str] = []
        assert recording_pool(seen).run_until_idle(backend, timeout=30)
        assert seen == ["m-2"]

        assert asyncio.run(dlq.replay(ids=["m-0"])) == 1
        assert r.xlen(dead) == 1
        purged = foxtive_cli("dlq", "purge", "--yes", "--broker", REDIS_URL, "--queue", stream,
                             cwd=tmp_path)
        assert purged.returncode == 0 and "purged 1" in purged.stdout, purged.stderr
        assert r.xlen(dead) == 0 and dlq.get_failed_messages() == []
    finally:
        delete_keys(r, stream)


def test_redis_concurrent_replays_never_double() -> None:
    r = redis.Redis.from_url(REDIS_URL)
    stream = unique_stream("ndlq2")
    try:
        backend = foxtive.RedisStreamBackend(
            REDIS_URL, foxtive.RedisStreamConsumerConfig(stream_name=stream))
        asyncio.run(publish_three(backend))
        assert failing_pool().run_until_idle(backend, timeout=30)
        before = r.xlen(stream)

        async def both() -> list[int]:
            a, b = backend.dead_letter_queue(), backend.dead_letter_queue()
            return list(await asyncio.gather(a.replay(), b.replay()))

        assert sum(asyncio.run(both())) == 3
        assert r.xlen(f"{stream}:dlq") == 0 and r.xlen(stream) == before + 3
    finally:
        delete_keys(r, stream)


# ------------------------------------------ interrupted RabbitMQ replay


TX_COMMIT = (90, 20)


@contextlib.contextmanager
def commit_cutting_proxy(cut_at: int) -> Iterator[int]:
    """A TCP proxy to RabbitMQ that forwards everything until the client
    sends its ``cut_at``-th ``tx.commit``; then it drops that frame and cuts
    both connections, as a network failure or a killed process would."""
    import socket
    import threading

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    port = listener.getsockname()[1]
    commits = [0]

    def pump_server(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def pump_client(src: socket.socket, dst: socket.socket) -> None:
        buf = b""
        with contextlib.suppress(OSError):
            header = src.recv(8, socket.MSG_WAITALL)
            dst.sendall(header)
            while data := src.recv(65536):
                buf += data
                while len(buf) >= 7:
                    size = int.from_bytes(buf[3:7], "big")
                    if len(buf) < 8 + size:
                        break
                    frame, buf = buf[:8 + size], buf[8 + size:]
                    method = (int.from_bytes(frame[7:9], "big"), int.from_bytes(frame[9:11], "big"))
                    if frame[0] == 1 and method == TX_COMMIT:
                        commits[0] += 1
                        if commits[0] == cut_at:
                            raise OSError("cut")
                    dst.sendall(frame)
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def accept() -> None:
        with contextlib.suppress(OSError):
            while True:
                client, _ = listener.accept()
                upstream = socket.create_connection(("127.0.0.1", 5672))
                threading.Thread(target=pump_client, args=(client, upstream), daemon=True).start()
                threading.Thread(target=pump_server, args=(upstream, client), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield port
    finally:
        listener.close()


def test_rabbitmq_replay_cut_mid_way_neither_loses_nor_doubles() -> None:
    queue = unique("ndlqcut")

    async def body() -> None:
        async with judge(queue) as channel:
            backend = foxtive.RabbitMqBackend(
                AMQP_URL, foxtive.RabbitMqConsumerConfig(queue_name=queue))
            await publish_three(backend)
            assert await asyncio.to_thread(failing_pool().run_until_idle, backend, 30)
            assert rabbit_counts(queue) == (0, 3)
            with commit_cutting_proxy(cut_at=2) as port:
                proxied = foxtive.RabbitMqBackend(
                    f"amqp://guest:guest@127.0.0.1:{port}/%2f",
                    foxtive.RabbitMqConsumerConfig(queue_name=queue))
                with pytest.raises(foxtive.FoxtiveError):
                    await proxied.dead_letter_queue().replay()
            # The first transaction committed; the second was cut before its
            # commit: rolled back, its dead letter handed back. Nothing else.
            await asyncio.to_thread(wait_for, lambda: rabbit_counts(queue) == (1, 2))
            assert await backend.dead_letter_queue().replay() == 2
            assert rabbit_counts(queue) == (3, 0)
            q = await channel.declare_queue(queue, passive=True)
            ids = []
            while (m := await q.get(fail=False)) is not None:
                ids.append(m.message_id)
                await m.ack()
            assert sorted(ids) == ["m-0", "m-1", "m-2"], "each exactly once"

    asyncio.run(body())


def test_memory_backend_dead_letter_queue_is_consistent() -> None:
    memory = foxtive.MemoryBackend(unique("mem"))
    asyncio.run(publish_three(memory))
    assert failing_pool().run_until_idle(memory, timeout=20)
    check_records(memory.dead_letters(), memory.name, 3)
    assert len(memory.dead_letters(limit=2)) == 2
    dlq = memory.dead_letter_queue()
    assert len(dlq) == 3 and dlq.exists()
    assert asyncio.run(dlq.replay(ids=["m-1"])) == 1
    assert memory.qsize() == 1 and len(dlq) == 2
    assert asyncio.run(dlq.purge()) == 2 and memory.dead_letters() == []


@pytest.fixture(autouse=True)
def _no_proxy_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FOXTIVE_BROKER", raising=False)
    os.environ.pop("FOXTIVE_LOG_LEVEL", None)
