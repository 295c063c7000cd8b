"""Supervision: restart a pool whose run died from an unexpected error."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
import time
from collections import deque
from typing import Any

from ._config import integer, seconds
from .errors import ConfigError, FoxtiveError
from .pool import WorkerPool
from .resilient import ReconnectStrategy

__all__ = ["Supervisor"]

log = logging.getLogger("foxtive")


class _Child:
    def __init__(self, name: str, pool: WorkerPool, backend: Any) -> None:
        self.name = name
        self.pool = pool
        self.backend = backend
        self.restarts = 0
        self.failures: deque[float] = deque()
        self.last_error: BaseException | None = None


class Supervisor:
    """Run pools and restart any whose run dies from an unexpected error.

    A child that stops because it was asked to (``shutdown``, a signal) is
    not restarted. One that raises is restarted after a backoff delay
    (``strategy``, exponential 1 s → 30 s by default); more than
    ``max_restarts`` restarts of one child within ``within`` seconds exhausts
    its budget: the supervisor stops every child and raises. Each restart is
    logged and counted (``restarts``)."""

    def __init__(self, max_restarts: int = 10, within: float = 60.0,
                 strategy: ReconnectStrategy | None = None) -> None:
        self.max_restarts = integer("max_restarts", max_restarts, minimum=0)
        self.within = seconds("within", within, positive=True)
        self.strategy = strategy or ReconnectStrategy.exponential(initial=1.0, max=30.0)
        if not isinstance(self.strategy, ReconnectStrategy):
            raise ConfigError("strategy: expected a foxtive.ReconnectStrategy")
        self._children: list[_Child] = []
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_requested = False

    def add_child(self, pool: WorkerPool, backend: Any = None,
                  name: str | None = None) -> Supervisor:
        if not isinstance(pool, WorkerPool):
            raise ConfigError(f"pool: expected a foxtive.WorkerPool, got {type(pool).__name__}")
        child_name = name or pool.name
        if any(c.name == child_name for c in self._children):
            raise ConfigError(f"name: child {child_name!r} is added twice")
        self._children.append(_Child(child_name, pool, backend))
        return self

    @property
    def restarts(self) -> dict[str, int]:
        return {c.name: c.restarts for c in self._children}

    def stats(self) -> dict[str, Any]:
        return {
            c.name: {
                "restarts": c.restarts,
                "last_error": None if c.last_error is None else repr(c.last_error),
                **c.pool.stats(),
            }
            for c in self._children
        }

    def run(self) -> None:
        """Block until every child stopped; SIGTERM/SIGINT stop them gracefully."""
        asyncio.run(self.run_async())

    async def run_async(self, *, handle_signals: bool = True) -> None:
        if not self._children:
            raise ConfigError("children: add at least one pool with add_child(...)")
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        if self._stop_requested:
            self._stop.set()
        installed = self._install_signals() if handle_signals else []
        try:
            await asyncio.gather(*(self._supervise(c) for c in self._children))
        finally:
            for sig in installed:
                with contextlib.suppress(Exception):
                    self._loop.remove_signal_handler(sig)

    def shutdown(self, force: bool = False) -> None:
        """Stop every child gracefully (thread-safe, idempotent)."""
        loop, stop = self._loop, self._stop
        if loop is None or stop is None:
            self._stop_requested = True
            return
        def stop_all() -> None:
            stop.set()
            for c in self._children:
                c.pool.shutdown(force=force)
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(stop_all)

    def _install_signals(self) -> list[int]:
        if threading.current_thread() is not threading.main_thread() or self._loop is None:
            return []
        installed: list[int] = []
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._loop.add_signal_handler(sig, self._on_signal, sig)
                installed.append(sig)
            except (NotImplementedError, RuntimeError, ValueError):
                pass
        return installed

    def _on_signal(self, sig: int) -> None:
        assert self._stop is not None
        force = self._stop.is_set()
        log.info("%s: stopping supervised pools%s", signal.Signals(sig).name,
                 " now" if force else " gracefully")
        self._stop.set()
        for c in self._children:
            c.pool.shutdown(force=force)

    async def _supervise(self, child: _Child) -> None:
        assert self._stop is not None
        while not self._stop.is_set():
            try:
                await child.pool.run_async(child.backend, handle_signals=False)
                return  # stopped on request
            except Exception as exc:
                child.last_error = exc
                if self._stop.is_set():
                    return
                now = time.monotonic()
                child.failures.append(now)
                while child.failures and now - child.failures[0] > self.within:
                    child.failures.popleft()
                if len(child.failures) > self.max_restarts:
                    log.error("pool %s failed %d times within %.0f s; giving up",
                              child.name, len(child.failures), self.within)
                    self.shutdown()
                    raise FoxtiveError(
                        f"pool {child.name!r} exhausted its restart budget "
                        f"({self.max_restarts} within {self.within:g} s): {exc!r}"
                    ) from exc
                delay = self.strategy.delay(len(child.failures))
                child.restarts += 1
                log.error("pool %s died (%s: %s); restart %d in %.1f s", child.name,
                          type(exc).__name__, exc, child.restarts, delay)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), delay)
