"""A backend written in Python, driven by the core like any other."""

from __future__ import annotations

import asyncio
import collections
from typing import Any

import foxtive

from .conftest import fast_retries


class ListBackend(foxtive.Backend):
    """A toy queue: a deque of (id, body, headers), acks recorded."""

    name = "list"

    def __init__(self) -> None:
        self.ready: collections.deque[tuple[str, bytes, dict[str, Any]]] = collections.deque()
        self.acked: list[str] = []
        self.requeued: list[str] = []
        self.connected = self.closed = False
        self.seq = 0

    async def connect(self) -> None:
        self.connected = True

    async def receive(self, max_messages: int, timeout: float) -> list[foxtive.Incoming]:
        if not self.ready:
            await asyncio.sleep(min(timeout, 0.01))
        out = []
        while self.ready and len(out) < max_messages:
            mid, body, headers = self.ready.popleft()
            out.append(foxtive.Incoming(body=body, id=mid, headers=headers, receipt=mid))
        return out

    async def ack(self, receipt: Any) -> None:
        self.acked.append(receipt)

    async def requeue(self, receipt: Any) -> None:
        self.requeued.append(receipt)

    async def publish(self, body: bytes, headers: dict[str, Any] | None = None,
                      delay: Any = None, message_id: str | None = None) -> str:
        self.seq += 1
        mid = message_id or f"m{self.seq}"
        self.ready.append((mid, body, dict(headers or {})))
        return mid

    async def close(self) -> None:
        self.closed = True


async def test_python_backend_end_to_end() -> None:
    backend = ListBackend()
    for body in (b"ok-1", b"flaky", b"ok-2", b"poison"):
        await backend.publish(body)
    attempts: collections.Counter[bytes] = collections.Counter()

    async def handler(m: foxtive.Message) -> None:
        attempts[m.body] += 1
        assert m.queue == "list"
        if m.body == b"flaky" and m.attempt == 1:
            raise ConnectionError("try again")
        if m.body == b"poison":
            raise foxtive.PermanentError("never")

    pool = (
        foxtive.WorkerPoolBuilder("p").add_worker(handler, id="h")
        .with_middleware(fast_retries(2)).build()
    )
    assert await pool.run_until_idle_async(backend, timeout=10)
    assert attempts == {b"ok-1": 1, b"flaky": 2, b"ok-2": 1, b"poison": 1}
    assert backend.connected and backend.closed
    # original flaky + its retry copy + ok-1 + ok-2 + poison (acked after dead-lettering)
    assert sorted(backend.acked) == ["m1", "m2", "m2", "m3", "m4"]
    records = backend.dead_letter_records  # type: ignore[attr-defined]
    assert [r["body"] for r in records] == [b"poison"]
    assert records[0]["error_type"] == "PermanentError"
    assert pool.stats()["processed"] == 3
