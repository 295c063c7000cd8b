"""Helpers of the publishers (child side): driving one of the Redis
senders, and publishing concurrently in chunks to save time outside the
timed window."""

from __future__ import annotations

from typing import Any


def drive_sender(sender: Any, queue: str, use: Any) -> None:
    """Run ``use(send)`` with the ``send`` of one of REDIS_SENDERS."""
    import asyncio

    async def go() -> None:
        async with sender(queue) as send:
            await use(send)
    asyncio.run(go())


async def in_chunks(n: int, send: Any, chunk: int = 200) -> None:
    """Publish concurrently in chunks: outside the timed window, only to save time."""
    import asyncio

    for start in range(0, n, chunk):
        await asyncio.gather(*(send(i) for i in range(start, min(n, start + chunk))))
