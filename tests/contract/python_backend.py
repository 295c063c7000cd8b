"""A small but honest in-process queue written in Python, driven by foxtive
through :class:`foxtive.Backend`: ready messages, delayed ones (publish with
a delay, retry copies) in a heap keyed by due time, in-flight messages held
by receipt until settled, and a dead-letter list with the same
``x-foxtive-*`` headers the native backends write.

It is thread-safe (a lock), so a test may publish from its own thread while
a pool consumes on another event loop."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import heapq
import itertools
import threading
import time
from collections import deque
from typing import Any

import foxtive
from foxtive.backends import ATTEMPT_HEADER


@dataclasses.dataclass
class _Entry:
    id: str
    body: bytes
    headers: dict[str, Any]
    redelivered: bool = False


class ContractPythonBackend(foxtive.Backend):
    def __init__(self, queue: str) -> None:
        self.name = queue
        self._lock = threading.Lock()
        self._seq = itertools.count(1)
        self._ready: deque[_Entry] = deque()
        self._delayed: list[tuple[float, int, _Entry]] = []
        self._in_flight: dict[int, _Entry] = {}
        self.dlq: list[dict[str, Any]] = []

    # -- driven by foxtive ----------------------------------------------------
    async def receive(self, max_messages: int, timeout: float) -> list[foxtive.Incoming]:
        deadline = time.monotonic() + timeout
        while True:
            out = self._take(max_messages)
            remaining = deadline - time.monotonic()
            if out or remaining <= 0:
                return out
            await asyncio.sleep(min(0.005, remaining))

    def _take(self, max_messages: int) -> list[foxtive.Incoming]:
        now = time.monotonic()
        out: list[foxtive.Incoming] = []
        with self._lock:
            while self._delayed and self._delayed[0][0] <= now:
                self._ready.append(heapq.heappop(self._delayed)[2])
            while self._ready and len(out) < max_messages:
                entry = self._ready.popleft()
                receipt = next(self._seq)
                self._in_flight[receipt] = entry
                out.append(foxtive.Incoming(body=entry.body, id=entry.id,
                                            headers=dict(entry.headers), receipt=receipt,
                                            redelivered=entry.redelivered))
        return out

    def _settle(self, receipt: Any) -> _Entry:
        with self._lock:
            entry = self._in_flight.pop(receipt, None)
        if entry is None:  # a broker refuses an unknown (or already settled) delivery
            raise LookupError(f"{self.name}: unknown receipt {receipt!r}")
        return entry

    async def ack(self, receipt: Any) -> None:
        self._settle(receipt)

    async def requeue(self, receipt: Any) -> None:
        entry = self._settle(receipt)
        entry.redelivered = True
        with self._lock:
            self._ready.appendleft(entry)

    async def publish(self, body: bytes, headers: dict[str, Any] | None = None,
                      delay: float | dt.timedelta | None = None,
                      message_id: str | None = None) -> str:
        seq = next(self._seq)
        entry = _Entry(message_id or f"{self.name}-{seq}", bytes(body), dict(headers or {}))
        if isinstance(delay, dt.timedelta):
            delay = delay.total_seconds()
        with self._lock:
            if delay:
                heapq.heappush(self._delayed, (time.monotonic() + delay, seq, entry))
            else:
                self._ready.append(entry)
        return entry.id

    async def dead_letter(self, message: dict[str, Any]) -> None:
        headers = dict(message["headers"])
        headers.update({
            "x-foxtive-error-type": message["error_type"],
            "x-foxtive-error": message["error_message"],
            "x-foxtive-attempts": message["attempt"],
            "x-foxtive-source-queue": message["queue"],
            "x-foxtive-worker": message["worker_id"],
            "x-foxtive-poison-pill": message["poison_pill"],
        })
        headers.pop(ATTEMPT_HEADER, None)
        with self._lock:
            self.dlq.append({"id": message["id"], "body": message["body"], "headers": headers})
        await self.ack(message["receipt"])

    # -- inspection -------------------------------------------------------------
    def qsize(self) -> int:
        """Ready and delayed messages."""
        with self._lock:
            return len(self._ready) + len(self._delayed)

    def unacked(self) -> int:
        with self._lock:
            return len(self._in_flight)
