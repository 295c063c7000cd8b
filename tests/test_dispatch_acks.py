"""The loop's batched acknowledgements (``_dispatch.py``'s consumers and
``Engine.ack_many``): every message is settled once, whether the handler
settled it itself, a batch acknowledged it, or both tried; judged by
nats-py on the broker."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Iterator

import pytest

import foxtive

from .contract.kits.nats import NatsKit, judge, nats_answers
from .test_nats import consumer_info, pool_of, publish_with_nats_py

pytestmark = pytest.mark.skipif(nats_answers() is not None, reason=str(nats_answers()))


@pytest.fixture
def kit() -> Iterator[NatsKit]:
    k = NatsKit()
    try:
        yield k
    finally:
        k.cleanup()


async def test_batched_acks_settle_each_message_once_beside_the_handlers_own(
        kit: NatsKit) -> None:
    # Handlers that ack themselves, dead-letter, suspend (so several
    # consumers run, each adding to the batch), or just return: the batch
    # holds messages already settled, which it must skip, and the rest,
    # each acknowledged once.
    backend = kit.backend()
    await backend.connect()
    n = 3_000
    sent = [f"a-{i}".encode() for i in range(n)]
    await publish_with_nats_py(kit.queue, sent)
    seen: collections.Counter[bytes] = collections.Counter()
    dead = {b for i, b in enumerate(sent) if i % 7 == 0}

    async def handler(m: foxtive.Message) -> None:
        i = int(m.body[2:])
        seen[m.body] += 1
        if i % 5 == 0:
            await asyncio.sleep(0)  # suspends: another consumer takes over
        if i % 7 == 0:
            await m.dead_letter("seventh")
        elif i % 3 == 0:
            await m.ack()  # the batch then finds it settled

    pool = pool_of(handler, concurrency=64)
    assert await pool.run_until_idle_async(backend, timeout=120)
    assert seen == collections.Counter(sent)
    info = consumer_info(kit.stream)
    # Nothing left unacked, nothing delivered twice (an ack lost or a
    # second settlement would show here or in the streams).
    assert (info.num_ack_pending, info.num_pending, info.num_redelivered) == (0, 0, 0)
    assert kit.waiting() == 0
    letters = kit.dead_letters()
    assert sorted(d.body for d in letters) == sorted(dead)
    stats = pool.stats()
    assert stats["processed"] == n - len(dead)


async def test_acks_of_a_long_run_of_quick_handlers_go_out_in_batches(kit: NatsKit) -> None:
    # More messages than one batch of acks (512) handled without a pause:
    # the consumer flushes full batches as it goes, and what is left when
    # the lane runs dry.
    backend = kit.backend()
    await backend.connect()
    sent = [f"b-{i}".encode() for i in range(5_000)]
    await publish_with_nats_py(kit.queue, sent)
    seen: collections.Counter[bytes] = collections.Counter()

    async def handler(m: foxtive.Message) -> None:
        seen[m.body] += 1

    assert await pool_of(handler, concurrency=2_000).run_until_idle_async(backend, timeout=120)
    assert seen == collections.Counter(sent)

    async def stored(js: object) -> int:
        info = await js.stream_info(kit.stream)  # type: ignore[attr-defined]
        return int(info.state.messages)

    assert judge(stored) == 0
    info = consumer_info(kit.stream)
    assert (info.num_ack_pending, info.num_redelivered) == (0, 0)
