"""Supervisor: a pool that dies is restarted with backoff, within a budget."""

from __future__ import annotations

import asyncio

import pytest

import foxtive


def crashing_pool(crashes: int, seen: list[bytes]) -> foxtive.WorkerPool:
    class Fragile(foxtive.Worker):
        id = "fragile"
        starts = 0

        async def setup(self) -> None:
            Fragile.starts += 1
            if Fragile.starts <= crashes:
                raise RuntimeError(f"injected crash {Fragile.starts}")

        async def process(self, message: foxtive.Message) -> None:
            seen.append(message.body)

    return foxtive.WorkerPoolBuilder("fragile").add_worker(Fragile()).build()


async def test_a_crashed_pool_comes_back_and_processes() -> None:
    memory = foxtive.MemoryBackend("sup")
    memory.publish_many_sync([b"a", b"b"])
    seen: list[bytes] = []
    sup = foxtive.Supervisor(strategy=foxtive.ReconnectStrategy.fixed(0.01))
    sup.add_child(crashing_pool(2, seen), memory)
    run = asyncio.ensure_future(sup.run_async(handle_signals=False))
    while len(seen) < 2:
        await asyncio.sleep(0.01)
    sup.shutdown()
    await asyncio.wait_for(run, 10)
    assert sorted(seen) == [b"a", b"b"]
    assert sup.restarts == {"fragile": 2}
    assert "injected crash 2" in sup.stats()["fragile"]["last_error"]


async def test_restart_budget_is_enforced() -> None:
    memory = foxtive.MemoryBackend("sup2")
    sup = foxtive.Supervisor(max_restarts=2, within=60,
                             strategy=foxtive.ReconnectStrategy.fixed(0.01))
    sup.add_child(crashing_pool(100, []), memory)
    with pytest.raises(foxtive.FoxtiveError, match="restart budget"):
        await asyncio.wait_for(sup.run_async(handle_signals=False), 10)
    assert sup.restarts == {"fragile": 2}


def test_supervisor_configuration_errors() -> None:
    with pytest.raises(foxtive.ConfigError, match="max_restarts"):
        foxtive.Supervisor(max_restarts=-1)
    with pytest.raises(foxtive.ConfigError, match="pool"):
        foxtive.Supervisor().add_child("not a pool")  # type: ignore[arg-type]
    with pytest.raises(foxtive.ConfigError, match="children"):
        asyncio.run(foxtive.Supervisor().run_async(handle_signals=False))
