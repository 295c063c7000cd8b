"""Resolving asyncio futures for operations that run in Rust.

Each event loop gets one :class:`_core.Completions` queue whose socket the
loop watches. Rust pushes finished operations and writes one byte; the loop
reads them all in one call and resolves the matching futures. No Rust thread
ever takes the GIL (see ``rust/foxtive-py/src/bridge.rs``).
"""

from __future__ import annotations

import asyncio
import itertools
import weakref
from typing import Any

from . import _core


class _LoopBridge:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.native = _core.Completions()
        self.pending: dict[int, asyncio.Future[Any]] = {}
        self.ids = itertools.count(1)
        loop.add_reader(self.native.fileno(), self._on_ready)

    def _on_ready(self) -> None:
        pending = self.pending
        for op_id, ok, value in self.native.drain():
            fut = pending.pop(op_id, None)
            if fut is None or fut.done():
                continue
            if ok:
                fut.set_result(value)
            else:
                fut.set_exception(value)


_bridges: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopBridge] = (
    weakref.WeakKeyDictionary()
)


def begin() -> tuple[_core.Completions, int, asyncio.Future[Any]]:
    """Start an operation on the running loop: (queue, id, future)."""
    loop = asyncio.get_running_loop()
    bridge = _bridges.get(loop)
    if bridge is None or loop.is_closed():
        bridge = _bridges[loop] = _LoopBridge(loop)
    op_id = next(bridge.ids)
    fut = loop.create_future()
    bridge.pending[op_id] = fut
    return bridge.native, op_id, fut
