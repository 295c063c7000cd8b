"""Automatic settlement and the failure policy over the memory backend."""

from __future__ import annotations

import asyncio
import datetime as dt
import time

import pytest

import foxtive

from .conftest import fast_retries


def build(handler: object, *middleware: object, worker_id: str = "h") -> foxtive.WorkerPool:
    b = foxtive.WorkerPoolBuilder("p").add_worker(handler, id=worker_id)
    for mw in middleware:
        b = b.with_middleware(mw)
    return b.build()


@pytest.mark.parametrize("sync", [False, True])
def test_exact_attempts_then_dead_letter(memory: foxtive.MemoryBackend, sync: bool) -> None:
    attempts: list[int] = []

    def fail(m: foxtive.Message) -> None:
        attempts.append(m.attempt)
        raise ValueError("smtp down")

    async def afail(m: foxtive.Message) -> None:
        fail(m)

    memory.publish_sync(b"x", message_id="m1")
    pool = build(fail if sync else afail, fast_retries(3))
    assert pool.run_until_idle(memory, timeout=10)
    assert attempts == [1, 2, 3, 4]  # max_retries=3: four attempts
    [dead] = memory.dead_letters()
    assert (dead.original_id, dead.attempts, dead.error_type) == ("m1", 4, "ValueError")
    assert dead.error_message == "smtp down" and dead.source_queue == memory.name
    assert dead.worker_id == "h" and dead.poison_pill is False and dead.failed_at > 0
    s = pool.stats()
    assert (s["failed"], s["retried"], s["dead_lettered"], s["processed"]) == (4, 3, 1, 0)
    assert memory.qsize() == 0 and memory.unacked() == 0


def test_default_policy_retries_with_backoff_held_by_the_backend(
    memory: foxtive.MemoryBackend,
) -> None:
    """Without a RetryHandler the default policy (5 retries, 1 s first backoff)
    applies; the retry waits in the backend, not in the worker."""
    calls: list[int] = []

    async def handler(m: foxtive.Message) -> None:
        calls.append(m.attempt)
        raise RuntimeError("later")

    memory.publish_sync(b"x")
    pool = build(handler)
    assert pool.run_until_idle(memory, timeout=0.3) is False
    assert calls == [1]
    assert memory.qsize() == 1  # the retry copy waits in the backend
    assert memory.unacked() == 0  # ...and the worker holds nothing
    assert pool.stats()["retried"] == 1 and pool.stats()["in_flight"] == 0


def test_permanent_error_skips_retries(memory: foxtive.MemoryBackend) -> None:
    calls = 0

    async def handler(m: foxtive.Message) -> None:
        nonlocal calls
        calls += 1
        raise foxtive.PermanentError("invalid address")

    memory.publish_sync(b"x")
    assert build(handler, fast_retries(5)).run_until_idle(memory, timeout=10)
    assert calls == 1
    assert memory.dead_letters()[0].error_type == "PermanentError"


def test_retryable_error_delay_is_used(memory: foxtive.MemoryBackend) -> None:
    stamps: list[float] = []

    async def handler(m: foxtive.Message) -> None:
        stamps.append(time.monotonic())
        if m.attempt == 1:
            raise foxtive.RetryableError("rate limited", delay=dt.timedelta(milliseconds=300))

    memory.publish_sync(b"x")
    assert build(handler, fast_retries(3)).run_until_idle(memory, timeout=10)
    assert len(stamps) == 2
    assert stamps[1] - stamps[0] >= 0.29


def test_should_retry_hook_can_stop_retries(memory: foxtive.MemoryBackend) -> None:
    infos: list[foxtive.RetryInfo] = []

    class W(foxtive.Worker):
        id = "picky"

        async def process(self, message: foxtive.Message) -> None:
            raise KeyError("missing")

        def should_retry(self, message: foxtive.Message, error: BaseException,
                         info: foxtive.RetryInfo) -> bool:
            infos.append(info)
            return info.attempt < 2 and isinstance(error, KeyError)

    memory.publish_sync(b"x")
    pool = foxtive.WorkerPoolBuilder("p").add_worker(W()).with_middleware(fast_retries(5)).build()
    assert pool.run_until_idle(memory, timeout=10)
    assert [i.attempt for i in infos] == [1, 2]
    assert infos[0].max_retries == 5 and not infos[0].exhausted and not infos[0].poison_pill
    assert infos[0].next_delay == pytest.approx(0.001)
    [dead] = memory.dead_letters()
    assert dead.attempts == 2 and dead.worker_id == "picky"


@pytest.mark.parametrize("exc", [KeyboardInterrupt, SystemExit, asyncio.CancelledError,
                                 GeneratorExit, MemoryError])
@pytest.mark.parametrize("sync", [False, True])
def test_any_base_exception_fails_only_that_message(
    memory: foxtive.MemoryBackend, exc: type[BaseException], sync: bool
) -> None:
    processed: list[bytes] = []

    def handler(m: foxtive.Message) -> None:
        if m.body == b"bad":
            raise exc()
        processed.append(m.body)

    async def ahandler(m: foxtive.Message) -> None:
        handler(m)

    memory.publish_many_sync([b"a", b"bad", b"b"])
    pool = build(handler if sync else ahandler, fast_retries(1))
    assert pool.run_until_idle(memory, timeout=10)
    assert sorted(processed) == [b"a", b"b"]
    [dead] = memory.dead_letters()
    assert dead.body == b"bad" and dead.error_type == exc.__name__ and dead.attempts == 2


@pytest.mark.parametrize("sync", [False, True])
def test_timeout_cuts_off_a_hanging_handler(memory: foxtive.MemoryBackend, sync: bool) -> None:
    class Hang(foxtive.Worker):
        id = "hang"
        timeout = 0.2

        async def process(self, message: foxtive.Message) -> None:
            if message.body == b"hang":
                await asyncio.sleep(3600)

    class SyncHang:
        timeout = 0.2

        def __call__(self, message: foxtive.Message) -> None:
            if message.body == b"hang":
                time.sleep(2)

    memory.publish_many_sync([b"hang", b"ok"])
    worker: object = SyncHang() if sync else Hang()
    pool = (
        foxtive.WorkerPoolBuilder("p").add_worker(worker, id="hang")
        .with_middleware(fast_retries(0)).build()
    )
    t0 = time.monotonic()
    assert pool.run_until_idle(memory, timeout=10)
    assert time.monotonic() - t0 < 1.5
    [dead] = memory.dead_letters()
    assert dead.body == b"hang" and dead.error_type == "TimeoutError"
    assert pool.stats()["processed"] == 1 and pool.stats()["dead_lettered"] == 1


def test_timeout_middleware_applies_to_every_worker(memory: foxtive.MemoryBackend) -> None:
    async def slow(m: foxtive.Message) -> None:
        await asyncio.sleep(10)

    memory.publish_sync(b"x")
    pool = build(slow, foxtive.TimeoutMiddleware(seconds=0.1), fast_retries(0))
    assert pool.run_until_idle(memory, timeout=5)
    assert memory.dead_letters()[0].error_type == "TimeoutError"


def test_handler_settling_then_raising_keeps_its_settlement(
    memory: foxtive.MemoryBackend,
) -> None:
    async def handler(m: foxtive.Message) -> None:
        await m.ack()
        raise RuntimeError("after ack")

    memory.publish_sync(b"x")
    pool = build(handler, fast_retries(3))
    assert pool.run_until_idle(memory, timeout=5)
    s = pool.stats()
    assert (s["processed"], s["failed"], s["retried"]) == (1, 0, 0)
    assert memory.dead_letters() == []
