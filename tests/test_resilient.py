"""ResilientBackend: reconnect forever with backoff, observable, interruptible."""

from __future__ import annotations

import asyncio
import datetime as dt
import time

import pytest

import foxtive

from .test_python_backend import ListBackend


class FlakyBackend(ListBackend):
    """A ListBackend whose connection can be cut: every call then fails."""

    def __init__(self) -> None:
        super().__init__()
        self.down = False
        self.connects = 0

    async def connect(self) -> None:
        self.connects += 1
        if self.down:
            raise ConnectionError("connection refused")

    async def receive(self, max_messages: int, timeout: float) -> list[foxtive.Incoming]:
        if self.down:
            raise ConnectionError("connection reset")
        return await super().receive(max_messages, timeout)


async def test_reconnects_after_failures_and_reports_state_changes() -> None:
    inner = FlakyBackend()
    backend = foxtive.ResilientBackend(inner, foxtive.ReconnectStrategy.fixed(0.05))
    changes: list[tuple[str, str]] = []
    backend.on_state_change(lambda old, new: changes.append((old, new)))
    for i in range(5):
        await inner.publish(f"m{i}".encode())
    processed: list[bytes] = []
    outage = asyncio.Event()

    async def handler(m: foxtive.Message) -> None:
        processed.append(m.body)
        if len(processed) == 2:
            inner.down = True  # the broker goes away mid-drain
            outage.set()

    pool = foxtive.WorkerPoolBuilder("p").add_worker(handler, id="h").build()
    run = asyncio.ensure_future(pool.run_async(backend, handle_signals=False))
    await outage.wait()
    while backend.state != "reconnecting":
        await asyncio.sleep(0.01)
    assert backend.consecutive_failures >= 1
    inner.down = False  # ...and comes back
    while backend.state != "connected":
        await asyncio.sleep(0.01)
    assert backend.consecutive_failures == 0 and backend.reconnect_attempts >= 1
    await inner.publish(b"m5")  # consumption goes on over the new connection
    while len(processed) < 6:
        await asyncio.sleep(0.01)
    pool.shutdown()
    await run
    assert sorted(processed) == [f"m{i}".encode() for i in range(6)]
    assert ("connected", "reconnecting") in changes
    assert ("reconnecting", "connected") in changes
    assert changes[-1][1] == "closed"


async def test_shutdown_interrupts_a_reconnect_wait_at_once() -> None:
    inner = FlakyBackend()
    inner.down = True  # the broker is not there at start
    backend = foxtive.ResilientBackend(inner, foxtive.ReconnectStrategy.fixed(3600))

    async def handler(m: foxtive.Message) -> None: ...

    pool = foxtive.WorkerPoolBuilder("p").add_worker(handler, id="h").build()
    run = asyncio.ensure_future(pool.run_async(backend, handle_signals=False))
    while inner.connects == 0:
        await asyncio.sleep(0.01)
    t0 = time.monotonic()
    pool.shutdown()
    await asyncio.wait_for(run, 5)
    assert time.monotonic() - t0 < 2
    assert backend.state == "closed"


def test_strategy_defaults_and_validation() -> None:
    s = foxtive.ReconnectStrategy.exponential()
    assert (s.initial, s.max, s.multiplier, s.jitter) == (1.0, 60.0, 2.0, 0.1)
    r = foxtive.ResilientBackend(foxtive.MemoryBackend("x"), s)
    for n in (1, 2, 5, 64, 10_000, 2**32 - 1):  # never overflows
        assert 0 < r._native.delay(n) <= 60.0
        assert 0 < s.delay(n) <= 60.0
    assert 0.9 <= r._native.delay(1) <= 1.1
    assert 1.8 <= s.delay(2) <= 2.2
    fixed = foxtive.ResilientBackend(foxtive.MemoryBackend("y"),
                                     foxtive.ReconnectStrategy.fixed(dt.timedelta(seconds=2)))
    assert fixed._native.delay(100) == 2.0
    assert r.qsize() == 0  # the wrapped backend's own methods pass through
    for bad, needle in [
        (lambda: foxtive.ReconnectStrategy.exponential(initial=10, max=1), "max"),
        (lambda: foxtive.ReconnectStrategy.exponential(multiplier=0.5), "multiplier"),
        (lambda: foxtive.ReconnectStrategy.exponential(jitter=2), "jitter"),
        (lambda: foxtive.ReconnectStrategy.fixed(-1), "delay"),
    ]:
        with pytest.raises(foxtive.ConfigError, match=needle):
            bad()


def test_resilient_memory_backend_runs_a_pool() -> None:
    memory = foxtive.MemoryBackend("wrapped")
    memory.publish_many_sync([b"a", b"b"])
    backend = foxtive.ResilientBackend(memory)
    seen: list[bytes] = []

    async def handler(m: foxtive.Message) -> None:
        seen.append(m.body)

    pool = foxtive.WorkerPoolBuilder("p").add_worker(handler, id="h").build()
    assert pool.run_until_idle(backend, timeout=10)
    assert sorted(seen) == [b"a", b"b"]
    assert pool.health()["backend"] == "closed"




async def test_core_reconnect_warnings_reach_python_logging(
    caplog: pytest.LogCaptureFixture,
) -> None:
    import logging

    inner = FlakyBackend()
    inner.down = True
    backend = foxtive.ResilientBackend(inner, foxtive.ReconnectStrategy.fixed(0.01))

    async def handler(m: foxtive.Message) -> None: ...

    pool = foxtive.WorkerPoolBuilder("p").add_worker(handler, id="h").build()
    with caplog.at_level(logging.WARNING, logger="foxtive"):
        run = asyncio.ensure_future(pool.run_async(backend, handle_signals=False))
        while inner.connects < 3:
            await asyncio.sleep(0.01)
        inner.down = False
        while backend.state != "connected":
            await asyncio.sleep(0.01)
        pool.shutdown()
        await run
    messages = [r.getMessage() for r in caplog.records if r.name == "foxtive"]
    assert any("reconnecting" in m and "connection refused" in m for m in messages), messages
