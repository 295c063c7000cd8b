"""The at-least-once contract, written once, run against every backend kit.

Each case is generated for every kit (tests/contract/kits/) that has the
capabilities it is marked with. Judges are the kits' own: a client that is
not foxtive (aio-pika / rabbitmqctl, redis-py) where the broker is a server,
the backend's inspection where it is in-process."""

from __future__ import annotations

import asyncio
import collections
import os
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest

import foxtive
from foxtive.backends import NativeBackend

from ..redis_support import wait_for
from .kit import CROSS_PROCESS, DROP_CONNECTION, BackendKit
from .process import Worker

#: Generous bounds for "it happens within N s" on a loaded 2-core machine.
SOON = 30.0


def fast_retries(max_retries: int) -> foxtive.RetryHandler:
    return foxtive.RetryHandler(max_retries=max_retries, initial_backoff=0.05, max_backoff=0.2,
                                jitter=False)


def pool_of(handler: Callable[[foxtive.Message], Awaitable[None]], *, concurrency: int = 20,
            retry: foxtive.RetryHandler | None = None,
            shutdown_timeout: float = 10.0) -> foxtive.WorkerPool:
    builder = (foxtive.WorkerPoolBuilder("contract").add_worker(handler, id="contract")
               .with_concurrency_limit(concurrency).with_shutdown_timeout(shutdown_timeout))
    if retry is not None:
        builder = builder.with_middleware(retry)
    return builder.build()


@asynccontextmanager
async def running(pool: foxtive.WorkerPool,
                  backend: foxtive.Backend) -> AsyncIterator[asyncio.Future[None]]:
    """Run ``pool`` on this loop; stop it gracefully (and wait) on exit."""
    task = asyncio.ensure_future(pool.run_async(backend, handle_signals=False))
    try:
        yield task
    finally:
        pool.shutdown()
        await asyncio.wait_for(task, 60)


async def until(predicate: Callable[[], bool], what: str, timeout: float = SOON,
                pool: asyncio.Future[None] | None = None) -> None:
    """Wait, without blocking the loop, until ``predicate()`` holds (while
    the ``pool`` task, if given, still runs)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if pool is not None and pool.done():
            pool.result()  # its error, if it failed
            raise AssertionError(f"the pool stopped while waiting for {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.01)


async def judge(fn: Callable[[], Any]) -> Any:
    """Ask the kit's judge off the loop (rabbitmqctl takes seconds)."""
    return await asyncio.to_thread(fn)


async def judged(fn: Callable[[], Any], expected: Any, what: str,
                 timeout: float = SOON) -> None:
    """Ask the judge until it answers ``expected`` (settlements travel in batches)."""
    deadline = time.monotonic() + timeout
    while (got := await judge(fn)) != expected:
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: the judge says {got!r}, expected {expected!r}")
        await asyncio.sleep(0.05)


# ---------------------------------------------------------------- the cases


async def test_round_trip(kit: BackendKit) -> None:
    backend = kit.backend()
    sent = [f"rt-{i}".encode() for i in range(200)]
    await backend.publish_many(sent)
    seen: collections.Counter[bytes] = collections.Counter()

    async def handler(m: foxtive.Message) -> None:
        assert m.queue == kit.queue and m.attempt == 1
        seen[m.body] += 1

    pool = pool_of(handler)
    assert await pool.run_until_idle_async(backend, timeout=60)
    assert seen == collections.Counter(sent), "each message processed exactly once"
    assert pool.stats()["processed"] == len(sent)
    assert await judge(kit.waiting) == 0
    assert await judge(kit.dead_letters) == []


async def test_settle_once(kit: BackendKit) -> None:
    backend = kit.backend()
    sent = [b"once-0", b"once-1", b"once-2"]
    await backend.publish_many(sent)
    calls: collections.Counter[bytes] = collections.Counter()
    refused: collections.Counter[str] = collections.Counter()

    async def handler(m: foxtive.Message) -> None:
        calls[m.body] += 1
        await m.ack()
        assert m.settled
        second: dict[str, Callable[[], Awaitable[object]]] = {
            "ack": m.ack,
            "nack": lambda: m.nack(requeue=True),
            "retry": lambda: m.retry(delay=0),
            "dead_letter": lambda: m.dead_letter("again"),
        }
        for name, settle in second.items():
            try:
                await settle()
            except foxtive.AlreadySettledError:
                refused[name] += 1

    pool = pool_of(handler, retry=fast_retries(3))
    assert await pool.run_until_idle_async(backend, timeout=60)
    assert refused == {"ack": 3, "nack": 3, "retry": 3, "dead_letter": 3}
    # Nothing extra reached the broker: no redelivery, no retry copy, no dead letter.
    assert calls == collections.Counter(sent)
    assert await judge(kit.waiting) == 0
    assert await judge(kit.dead_letters) == []
    assert pool.stats()["processed"] == len(sent)


async def test_attempts_count_up(kit: BackendKit) -> None:
    backend = kit.backend()
    await backend.publish(b"flaky", message_id="flaky-1")
    attempts: list[int] = []

    async def handler(m: foxtive.Message) -> None:
        attempts.append(m.attempt)
        if m.attempt < 3:
            raise ValueError(f"failure {m.attempt}")

    pool = pool_of(handler, retry=fast_retries(3))
    assert await pool.run_until_idle_async(backend, timeout=60)
    assert attempts == [1, 2, 3]
    assert await judge(kit.waiting) == 0
    assert await judge(kit.dead_letters) == []


async def test_long_retry_never_holds_back_a_short_one(kit: BackendKit) -> None:
    backend = kit.backend()
    await backend.publish(b"long")
    await backend.publish(b"short")
    seen: list[tuple[bytes, int]] = []
    short_again = asyncio.Event()

    async def handler(m: foxtive.Message) -> None:
        seen.append((m.body, m.attempt))
        if m.attempt == 1:
            raise foxtive.RetryableError("later", delay=20.0 if m.body == b"long" else 0.5)
        if m.body == b"short":
            short_again.set()

    pool = pool_of(handler)
    async with running(pool, backend) as task:
        # B's 0.5 s retry comes back while A's 20 s one still waits.
        await until(short_again.is_set, "the short retry", timeout=15, pool=task)
        assert (b"long", 2) not in seen
        await judged(kit.waiting, 1, "the long retry waits in the broker")
        assert (b"long", 2) not in seen
    assert sorted(seen) == [(b"long", 1), (b"short", 1), (b"short", 2)]


async def test_native_dead_letter_queue(kit: BackendKit) -> None:
    backend = kit.backend()
    await backend.publish(b"doomed", message_id="doomed-1")
    await backend.publish(b"fine")

    async def handler(m: foxtive.Message) -> None:
        if m.body == b"doomed":
            raise ValueError("boom")

    pool = pool_of(handler, retry=foxtive.RetryHandler(max_retries=0))
    assert await pool.run_until_idle_async(backend, timeout=60)
    [dead] = await judge(kit.dead_letters)
    assert dead.body == b"doomed"
    assert dead.message_id == "doomed-1"
    assert dead.error_type == "ValueError"
    assert dead.attempts == 1
    assert dead.source_queue == kit.queue
    assert await judge(kit.waiting) == 0
    stats = pool.stats()
    assert (stats["processed"], stats["dead_lettered"]) == (1, 1)


async def test_run_until_idle_includes_retries_that_come_due(kit: BackendKit) -> None:
    backend = kit.backend()
    await backend.publish(b"later-again")
    attempts: list[int] = []

    async def handler(m: foxtive.Message) -> None:
        attempts.append(m.attempt)
        if m.attempt == 1:
            raise foxtive.RetryableError("not yet", delay=1.5)

    assert await pool_of(handler).run_until_idle_async(backend, timeout=60)
    assert attempts == [1, 2]
    assert await judge(kit.waiting) == 0


async def test_publish_with_message_id_kept_on_retry_copies(kit: BackendKit) -> None:
    backend = kit.backend()
    assert await backend.publish(b"tagged", message_id="contract-id-1") == "contract-id-1"
    seen: list[tuple[str, int]] = []

    async def handler(m: foxtive.Message) -> None:
        seen.append((m.id, m.attempt))
        if m.attempt == 1:
            raise foxtive.RetryableError("again", delay=0.2)

    pool = pool_of(handler)
    assert await pool.run_until_idle_async(backend, timeout=60)
    assert seen == [("contract-id-1", 1), ("contract-id-1", 2)]
    assert await judge(kit.waiting) == 0


async def test_publish_with_delay(kit: BackendKit) -> None:
    backend = kit.backend()
    delay = 2.0
    got: dict[bytes, float] = {}
    t0 = time.monotonic()
    await backend.publish(b"later", delay=delay)
    await backend.publish(b"now")

    async def handler(m: foxtive.Message) -> None:
        got[m.body] = time.monotonic() - t0

    pool = pool_of(handler)
    async with running(pool, backend) as task:
        await until(lambda: b"now" in got, "the undelayed message", pool=task)
        assert b"later" not in got
        await until(lambda: b"later" in got, "the delayed message", pool=task)
    assert got[b"later"] >= delay - 0.05, got
    assert await judge(kit.waiting) == 0


async def test_graceful_stop_hands_back_unfinished_work(kit: BackendKit) -> None:
    backend = kit.backend()
    quick = [f"quick-{i}".encode() for i in range(3)]
    stuck = [f"stuck-{i}".encode() for i in range(4)]
    await backend.publish_many(quick + stuck)
    finished: list[bytes] = []
    blocked: list[bytes] = []

    async def handler(m: foxtive.Message) -> None:
        if m.body.startswith(b"stuck"):
            blocked.append(m.body)
            await asyncio.sleep(3600)  # past the shutdown timeout: cancelled
        finished.append(m.body)

    pool = pool_of(handler, concurrency=10, shutdown_timeout=0.5)
    async with running(pool, backend) as task:
        await until(lambda: len(finished) == 3 and len(blocked) == 4, "all seven to start",
                    pool=task)
    assert sorted(finished) == quick
    assert pool.stats()["processed"] == 3
    # The unfinished ones are back in the broker, not acked, not dead.
    assert await judge(kit.waiting) == len(stuck)
    assert await judge(kit.dead_letters) == []
    # ... and a new consumer gets exactly those: nothing that finished comes back.
    again: collections.Counter[bytes] = collections.Counter()

    async def second(m: foxtive.Message) -> None:
        again[m.body] += 1

    assert await pool_of(second).run_until_idle_async(kit.backend(), timeout=60)
    assert again == collections.Counter(stuck)
    assert await judge(kit.waiting) == 0


async def test_handed_back_work_comes_back_redelivered_as_the_next_attempt(
        kit: BackendKit) -> None:
    backend = kit.backend()
    await backend.publish_many([b"held-0", b"held-1"])
    started: list[bytes] = []

    async def handler(m: foxtive.Message) -> None:
        started.append(m.body)
        await asyncio.sleep(3600)

    pool = pool_of(handler, shutdown_timeout=0.2)
    async with running(pool, backend) as task:
        await until(lambda: len(started) == 2, "both to start", pool=task)
    seen: dict[bytes, tuple[int, bool]] = {}

    async def second(m: foxtive.Message) -> None:
        seen[m.body] = (m.attempt, m.redelivered)

    assert await pool_of(second).run_until_idle_async(kit.backend(), timeout=60)
    # The broker delivered it before (its handler ran): redelivered, so at least
    # attempt 2 (issue 11 item 5: redelivered with attempt 1 contradicts itself).
    assert seen == {b"held-0": (2, True), b"held-1": (2, True)}


@pytest.mark.requires(DROP_CONNECTION)
async def test_reconnect_after_the_broker_drops_the_connection(kit: BackendKit) -> None:
    backend = kit.backend()
    first = [f"before-{i}".encode() for i in range(100)]
    after = [f"after-{i}".encode() for i in range(100)]
    await backend.publish_many(first)
    seen: collections.Counter[bytes] = collections.Counter()
    gate = asyncio.Event()

    async def handler(m: foxtive.Message) -> None:
        if len(seen) >= 20:
            # Hold deliveries in flight while the connection is cut.
            await asyncio.wait_for(gate.wait(), SOON)
        seen[m.body] += 1

    pool = pool_of(handler, concurrency=10)
    async with running(pool, backend) as task:
        await until(lambda: len(seen) >= 20, "20 messages before the drop", pool=task)
        assert await judge(lambda: kit.drop_connections(os.getpid())) >= 1
        gate.set()
        # The same backend publishes again, over a new connection.
        await backend.publish_many(after)
        await until(lambda: set(first + after) <= set(seen), "every message after the drop",
                    pool=task)
        assert isinstance(backend, NativeBackend)
        await until(lambda: backend.state == "connected", "the backend to be connected", pool=task)
        assert backend.reconnect_attempts >= 1
    assert await judge(kit.waiting) == 0
    assert await judge(kit.dead_letters) == []


# ------------------------------------------------------ worker subprocesses


@pytest.mark.requires(CROSS_PROCESS)
def test_attempt_survives_a_worker_restart(kit: BackendKit) -> None:
    asyncio.run(kit.backend().publish(b"restart", message_id="restart-1"))
    args = ("--fail-below", "3", "--retry-delay", "1.0")
    first = Worker(kit, *args)
    try:
        first.lines.wait_count(1, "fail ", timeout=SOON)
        first.stop()  # the retry copy of attempt 1 is in the broker, not in this worker
    finally:
        first.kill()
    second = Worker(kit, *args)
    try:
        second.lines.wait_count(1, "done ", timeout=SOON)
        second.stop()
    finally:
        second.kill()
    assert first.events("start") == [("restart", 1)]
    assert second.events("start") == [("restart", 2), ("restart", 3)]
    assert second.events("done") == [("restart", 3)]
    assert kit.waiting() == 0
    assert kit.dead_letters() == []


@pytest.mark.requires(CROSS_PROCESS)
def test_sigkill_mid_stream_loses_nothing(kit: BackendKit) -> None:
    sent = {f"k-{i}" for i in range(300)}
    asyncio.run(kit.backend().publish_many([s.encode() for s in sorted(sent)]))
    args = ("--delay", "0.05", "--concurrency", "10")
    victim = Worker(kit, *args)
    try:
        victim.lines.wait_count(50, "done ", timeout=SOON)
    finally:
        victim.kill()  # SIGKILL: handlers in flight, acks unsent
    assert victim.proc.returncode == -signal.SIGKILL
    first = {body for body, _ in victim.events("done")}
    assert first < sent, "the victim died mid-stream"
    heir = Worker(kit, *args)
    try:
        # What the victim finished but never acked comes back too (at least
        # once), after a lease or claim time on some backends: wait until the
        # queue is empty, not only until every body was seen once.
        wait_for(lambda: first | {b for b, _ in heir.events("done")} >= sent
                 and kit.waiting() == 0, 60,
                 "every message processed by the two workers and settled")
        heir.stop()
    finally:
        heir.kill()
    assert kit.waiting() == 0
    assert kit.dead_letters() == []
