"""BatchWorker + BatchMiddleware: batches by size and time, settled per message."""

from __future__ import annotations

import asyncio
import time

import pytest

import foxtive

from .conftest import fast_retries


class Recorder(foxtive.BatchWorker):
    id = "db-writer"

    def __init__(self) -> None:
        self.batches: list[list[bytes]] = []

    async def process_batch(self, messages: list[foxtive.Message]) -> None:
        self.batches.append([m.body for m in messages])
        for m in messages:
            if m.body == b"poison":
                await m.dead_letter("cannot store this row")


def pool_for(worker: foxtive.BatchWorker, size: int, interval: float) -> foxtive.WorkerPool:
    return (
        foxtive.WorkerPoolBuilder("batch")
        .with_middleware(foxtive.BatchMiddleware(foxtive.BatchConfig(
            batch_size=size, flush_interval=interval)))
        .with_middleware(fast_retries(1))
        .add_worker(worker).build()
    )


def test_batch_of_100_with_one_poisoned_message(memory: foxtive.MemoryBackend) -> None:
    bodies = [str(i).encode() for i in range(99)]
    bodies.insert(42, b"poison")
    memory.publish_many_sync(bodies)
    worker = Recorder()
    pool = pool_for(worker, 100, 60)
    assert pool.run_until_idle(memory, timeout=10)
    assert [len(b) for b in worker.batches] == [100]
    s = pool.stats()
    assert (s["processed"], s["dead_lettered"], s["failed"]) == (99, 1, 0)
    [dead] = memory.dead_letters()
    assert dead.body == b"poison" and dead.error_message == "cannot store this row"


def test_partial_batch_flushes_after_the_interval(memory: foxtive.MemoryBackend) -> None:
    memory.publish_many_sync([b"a", b"b", b"c"])
    worker = Recorder()
    pool = pool_for(worker, 100, 0.2)
    t0 = time.monotonic()
    assert pool.run_until_idle(memory, timeout=10)
    assert worker.batches == [[b"a", b"b", b"c"]]
    assert time.monotonic() - t0 >= 0.19
    assert pool.stats()["processed"] == 3


def test_failing_batch_runs_the_failure_policy_for_each_message(
    memory: foxtive.MemoryBackend,
) -> None:
    class Failing(foxtive.BatchWorker):
        id = "failing"
        calls = 0

        async def process_batch(self, messages: list[foxtive.Message]) -> None:
            Failing.calls += 1
            await messages[0].ack()  # settled by the handler: stays acked
            raise ConnectionError("db down")

    memory.publish_many_sync([b"1", b"2", b"3"])
    pool = pool_for(Failing(), 3, 0.1)
    assert pool.run_until_idle(memory, timeout=10)
    s = pool.stats()
    # Batch [1, 2, 3]: 1 acked by the handler, 2 and 3 retried. Batch [2, 3]
    # (flushed by the interval): 2 acked, 3 out of retries (max_retries=1).
    assert (s["processed"], s["retried"], s["dead_lettered"]) == (2, 2, 1)
    assert Failing.calls == 2
    assert [d.body for d in memory.dead_letters()] == [b"3"]


async def test_partial_batch_is_processed_at_shutdown() -> None:
    memory = foxtive.MemoryBackend("batch-shutdown")
    memory.publish_many_sync([b"x", b"y"])
    worker = Recorder()
    pool = pool_for(worker, 100, 3600)
    run = asyncio.ensure_future(pool.run_async(memory, handle_signals=False))
    while pool.stats()["received"] < 2:
        await asyncio.sleep(0.01)
    pool.shutdown()
    await asyncio.wait_for(run, 5)
    assert worker.batches == [[b"x", b"y"]]
    assert pool.stats()["processed"] == 2 and memory.qsize() == 0


def test_batch_config_validation() -> None:
    cfg = foxtive.BatchConfig()
    assert (cfg.batch_size, cfg.flush_interval) == (100, 5.0)
    assert cfg.with_batch_size(10).batch_size == 10
    with pytest.raises(foxtive.ConfigError, match="batch_size"):
        foxtive.BatchConfig(batch_size=0)
    with pytest.raises(foxtive.ConfigError, match="flush_interval"):
        foxtive.BatchConfig(flush_interval=0)
