"""What is specific to the NATS JetStream backend, judged by nats-py.

The at-least-once contract itself is ``tests/contract`` (kit ``nats``)."""

from __future__ import annotations

import asyncio
import collections
import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import foxtive

from .contract.kits.nats import (
    NATS_URL,
    NatsKit,
    TcpProxy,
    dead_record,
    judge,
    nats_answers,
    read_stream,
    stream_messages,
)
from .contract.process import Worker
from .redis_support import wait_for

pytestmark = pytest.mark.skipif(nats_answers() is not None, reason=str(nats_answers()))


@pytest.fixture
def kit() -> Iterator[NatsKit]:
    k = NatsKit()
    try:
        yield k
    finally:
        k.cleanup()


def pool_of(handler: Any, *, concurrency: int = 50,
            retry: foxtive.RetryHandler | None = None) -> foxtive.WorkerPool:
    builder = (foxtive.WorkerPoolBuilder("nats").add_worker(handler, id="nats")
               .with_concurrency_limit(concurrency))
    if retry is not None:
        builder = builder.with_middleware(retry)
    return builder.build()


def consumer_info(stream: str, durable: str = "foxtive") -> Any:
    async def info(js: Any) -> Any:
        return await js.consumer_info(stream, durable)

    return judge(info)


async def publish_with_nats_py(subject: str, bodies: list[bytes],
                               headers: dict[str, str] | None = None) -> None:
    import nats

    nc = await nats.connect(NATS_URL)
    try:
        js = nc.jetstream()
        futures = [await js.publish_async(subject, b, headers=headers) for b in bodies]
        await asyncio.gather(*futures)
    finally:
        await nc.close()


async def test_ten_thousand_messages_from_nats_py_are_each_processed_once(kit: NatsKit) -> None:
    backend = kit.backend()
    await backend.connect()  # declares the stream and the consumer
    sent = [f"n-{i}".encode() for i in range(10_000)]
    await publish_with_nats_py(kit.queue, sent)
    seen: collections.Counter[bytes] = collections.Counter()

    async def handler(m: foxtive.Message) -> None:
        seen[m.body] += 1

    assert await pool_of(handler).run_until_idle_async(backend, timeout=120)
    assert seen == collections.Counter(sent)
    info = consumer_info(kit.stream)
    assert (info.num_ack_pending, info.num_pending, info.num_redelivered) == (0, 0, 0)
    assert kit.waiting() == 0


async def test_run_until_idle_waits_for_deliveries_a_lost_worker_left_unacked(
        kit: NatsKit) -> None:
    # What another worker pulled and never settled (its connection died) is
    # "ack pending" on the server and comes back only after ack_wait: the
    # queue is quiet meanwhile, but not done. run_until_idle must wait for
    # it (it stopped after half a second of quiet before, leaving these).
    import nats

    backend = kit.backend()
    await backend.connect()  # declares the stream and the durable consumer
    sent = [f"l-{i}".encode() for i in range(20)]
    await publish_with_nats_py(kit.queue, sent)
    nc = await nats.connect(NATS_URL)
    try:
        lost = await nc.jetstream().pull_subscribe_bind("foxtive", stream=kit.stream)
        abandoned = await lost.fetch(5, timeout=5)
    finally:
        await nc.close()  # the "lost" worker goes away without settling
    assert len(abandoned) == 5
    assert consumer_info(kit.stream).num_ack_pending == 5
    seen: collections.Counter[bytes] = collections.Counter()

    async def handler(m: foxtive.Message) -> None:
        seen[m.body] += 1

    assert await pool_of(handler).run_until_idle_async(backend, timeout=60)
    assert seen == collections.Counter(sent)  # the 5 came back after ack_wait
    info = consumer_info(kit.stream)
    assert (info.num_ack_pending, info.num_pending) == (0, 0)
    assert kit.waiting() == 0


async def test_ids_headers_and_attempts_of_messages_from_another_client(kit: NatsKit) -> None:
    backend = kit.backend()
    await backend.connect()
    await publish_with_nats_py(kit.queue, [b"hello"], headers={
        "Nats-Msg-Id": "ext-1", "tenant": "acme"})
    got: list[tuple[str, int, Any, bool]] = []

    async def handler(m: foxtive.Message) -> None:
        got.append((m.id, m.attempt, m.headers.get("tenant"), m.redelivered))
        if m.attempt == 1:
            raise foxtive.RetryableError("again", delay=0.2)

    assert await pool_of(handler).run_until_idle_async(backend, timeout=60)
    assert got == [("ext-1", 1, "acme", False), ("ext-1", 2, "acme", True)]
    info = consumer_info(kit.stream)
    assert info.num_ack_pending == 0 and info.num_redelivered == 0


async def test_dead_letters_keep_headers_and_the_cli_lists_replays_and_purges(
        kit: NatsKit, tmp_path: Path) -> None:
    backend = kit.backend()
    await backend.publish(b"bad", headers={"tenant": "acme", "n": 7}, message_id="bad-1")

    async def handler(m: foxtive.Message) -> None:
        raise ValueError("nope")

    pool = pool_of(handler, retry=foxtive.RetryHandler(max_retries=0))
    assert await pool.run_until_idle_async(backend, timeout=60)

    async def raw(js: Any) -> list[Any]:
        return await read_stream(js, f"{kit.stream}_DLQ")

    [msg] = judge(raw)
    assert msg.subject == f"{kit.queue}.dlq"
    rec = dead_record(msg)
    assert (rec.body, rec.message_id, rec.error_type, rec.attempts, rec.source_queue) == (
        b"bad", "bad-1", "ValueError", 1, kit.queue)
    assert rec.raw["tenant"] == "acme" and rec.raw["x-foxtive-error"] == "nope"
    assert kit.waiting() == 0  # TERMed once the dead letter was stored

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "foxtive", "--log-level", "ERROR", "dlq",
                               *args, "--broker", NATS_URL, "--queue", kit.queue],
                              cwd=tmp_path, capture_output=True, text=True, timeout=60)

    listed = cli("list", "--json")
    assert listed.returncode == 0, listed.stderr
    [record] = json.loads(listed.stdout)
    assert (record["original_id"], record["error_type"]) == ("bad-1", "ValueError")
    replayed = cli("replay", "bad-1")
    assert replayed.returncode == 0, replayed.stderr
    assert "replayed 1" in replayed.stdout
    assert kit.waiting() == 1
    assert kit.dead_letters() == []
    # Dead-letter it again, then purge.
    assert await pool.run_until_idle_async(backend, timeout=60)
    assert len(kit.dead_letters()) == 1
    purged = cli("purge", "--yes")
    assert purged.returncode == 0, purged.stderr
    assert "purged 1" in purged.stdout
    assert kit.dead_letters() == []


def test_sigkill_mid_stream_redelivers_as_attempt_two_or_more(kit: NatsKit) -> None:
    sent = {f"k-{i}" for i in range(200)}
    asyncio.run(kit.backend().publish_many([s.encode() for s in sorted(sent)]))
    victim = Worker(kit, "--delay", "0.2", "--concurrency", "10")
    try:
        # Kill while a batch is inside its handlers (each sleeps 0.2 s): pulls
        # are sized by free room, so a batch starts together and, waiting for
        # a count of "done" lines, the kill could land between two batches
        # with nothing held.
        victim.lines.wait_count(35, "start ", timeout=30)
    finally:
        victim.kill()
    assert victim.proc.returncode == -signal.SIGKILL
    started = {b for b, _ in victim.events("start")}
    done = {b for b, _ in victim.events("done")}
    heir = Worker(kit, "--delay", "0.0", "--concurrency", "10")
    try:
        wait_for(lambda: done | {b for b, _ in heir.events("done")} >= sent
                 and kit.waiting() == 0, 60, "every message done and settled")
        heir.stop()
    finally:
        heir.kill()
    again = dict(heir.events("start"))
    redelivered = started & set(again)
    # What the victim had taken and not acked comes back, as a later attempt.
    # (A message the victim had pulled but not yet started also counts as
    # delivered, so the heir may see it as attempt 2: no claim about those.)
    assert redelivered, "the victim held unacked messages at the kill"
    assert all(again[b] >= 2 for b in redelivered), {b: again[b] for b in redelivered}


async def test_a_cut_connection_mid_drain_finishes_every_message(kit: NatsKit) -> None:
    proxy = TcpProxy()
    try:
        backend = foxtive.NatsBackend(f"nats://127.0.0.1:{proxy.port}", kit.config())
        sent = [f"c-{i}".encode() for i in range(2000)]
        await backend.publish_many(sent)
        seen: collections.Counter[bytes] = collections.Counter()
        cut = asyncio.Event()

        async def handler(m: foxtive.Message) -> None:
            seen[m.body] += 1
            if len(seen) == 500 and not cut.is_set():
                cut.set()
                assert proxy.cut() >= 1

        pool = pool_of(handler, concurrency=20)
        assert await pool.run_until_idle_async(backend, timeout=120)
        assert set(seen) == set(sent)
        assert cut.is_set() and backend.reconnect_attempts >= 1
        assert backend.state in ("connected", "closed")
        info = consumer_info(kit.stream)
        assert (info.num_ack_pending, info.num_pending) == (0, 0)
    finally:
        proxy.close()


async def test_a_graceful_stop_mid_drain_hands_back_what_was_pulled_ahead(
        kit: NatsKit) -> None:
    """A stop mid-drain hands back (NAKs) what was pulled and not handed
    out, so a restart gets it at once, not after ``ack_wait``, and handles
    every message once. (NATS 2.9 counts a NAKed message as ack-pending
    until it is delivered again, so only the restart can tell a NAKed
    message from one left unsettled.)"""
    config = foxtive.NatsConsumerConfig(subject=kit.queue, ack_wait=120.0)
    sent = [f"g-{i}".encode() for i in range(4000)]
    await foxtive.NatsBackend(NATS_URL, config).publish_many(sent)
    seen: collections.Counter[bytes] = collections.Counter()
    enough = asyncio.Event()

    async def handler(m: foxtive.Message) -> None:
        seen[m.body] += 1
        if len(seen) >= 1000:
            enough.set()

    pool = pool_of(handler, concurrency=500)
    running = asyncio.ensure_future(pool.run_async(foxtive.NatsBackend(NATS_URL, config),
                                                   handle_signals=False))
    try:
        await asyncio.wait_for(enough.wait(), 60)
    finally:
        pool.shutdown()
        await asyncio.wait_for(running, 60)
    first = sum(seen.values())
    assert first < len(sent), "the stop came after the drain"
    info = consumer_info(kit.stream)
    # More was pulled than handled (pulls were out at the stop), and every
    # handled message was acked.
    assert info.delivered.consumer_seq > first, (info.delivered.consumer_seq, first)
    assert kit.waiting() == len(sent) - first
    # A restart handles the rest well within ack_wait (120 s): nothing was
    # left unsettled, and none twice.
    assert await pool_of(handler, concurrency=500).run_until_idle_async(
        foxtive.NatsBackend(NATS_URL, config), timeout=30)
    assert seen == collections.Counter(sent)
    info = consumer_info(kit.stream)
    assert (info.num_ack_pending, info.num_pending) == (0, 0)
    assert kit.waiting() == 0


async def test_from_url_names_and_options(kit: NatsKit) -> None:
    b = foxtive.backend_from_url(NATS_URL, kit.queue, ack_wait=2.0, prefetch=64)
    assert isinstance(b, foxtive.NatsBackend)
    assert b.name == kit.queue and b.config.prefetch == 64
    await b.publish(b"via-url")

    async def stored(js: Any) -> int:
        return await stream_messages(js, kit.stream)

    assert judge(stored) == 1
    with pytest.raises(foxtive.ConfigError, match=r"unknown option.*'colour'.*prefetch"):
        foxtive.backend_from_url(NATS_URL, kit.queue, colour="red")
    # An existing consumer with other settings: a clear error naming them.
    other = foxtive.NatsBackend(NATS_URL, foxtive.NatsConsumerConfig(
        subject=kit.queue, ack_wait=7.0))
    with pytest.raises(foxtive.ConfigError, match=r"ack_wait 2s \(want 7s\)"):
        await other.connect()
    await b.close()


def test_credentials_never_show(caplog: pytest.LogCaptureFixture) -> None:
    b = foxtive.NatsBackend("nats://ann:s3cret@127.0.0.1:1",
                            foxtive.NatsConsumerConfig(subject="foxtive-creds"))
    t = foxtive.NatsBackend("nats://t0ken-s3cret@127.0.0.1:1",
                            foxtive.NatsConsumerConfig(subject="foxtive-creds"))
    for backend in (b, t):
        assert "s3cret" not in repr(backend) and "***" in backend.url
        with pytest.raises(foxtive.FoxtiveError) as err:
            asyncio.run(backend.connect())
        assert "s3cret" not in str(err.value)
    assert "s3cret" not in caplog.text


async def test_delayed_publish_waits_in_the_delay_stream(kit: NatsKit) -> None:
    backend = kit.backend()
    t0 = time.monotonic()
    await backend.publish(b"later", delay=1.0)

    async def delayed(js: Any) -> int:
        return await stream_messages(js, f"{kit.stream}_DELAYED")

    assert judge(delayed) == 1
    got: list[float] = []
    arrived = asyncio.Event()

    async def handler(m: foxtive.Message) -> None:
        got.append(time.monotonic() - t0)
        arrived.set()

    pool = pool_of(handler)
    task = asyncio.ensure_future(pool.run_async(backend, handle_signals=False))
    try:
        await asyncio.wait_for(arrived.wait(), 30)
    finally:
        pool.shutdown()
        await asyncio.wait_for(task, 60)
    assert len(got) == 1 and got[0] >= 0.95
    assert kit.waiting() == 0
