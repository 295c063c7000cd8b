"""Schedules across processes on the real NATS JetStream: three ``foxtive
run`` processes of one app with a per-second schedule enqueue every tick
exactly once; a SIGKILLed leader is replaced within 5 s. The lease is a KV
entry taken and renewed by revision (``schedule/brokers/nats.rs``); nats-py
judges the tick stream and the bucket.

Same cluster and app as ``test_schedules_brokers`` (Redis, PostgreSQL);
the ticks go to a subject no process consumes, read back with direct gets.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

import foxtive
from foxtive import schedules

from .contract.kits.nats import NATS_URL, judge, nats_answers, read_stream, stream_for
from .test_schedules_brokers import (
    Cluster,
    _app_with_schedule,
    assert_once_without_gaps,
    tick_time,
    wait_for,
)

pytestmark = pytest.mark.skipif(nats_answers() is not None, reason=str(nats_answers()))


class NatsSide:
    def __init__(self) -> None:
        self.app = f"sched-{uuid.uuid4().hex[:10]}"
        self.queue = f"ticks-{uuid.uuid4().hex[:10]}"
        self.url = NATS_URL

    def read(self) -> list[tuple[str, bool]]:
        async def go(js: Any) -> list[Any]:
            return await read_stream(js, stream_for(self.queue))

        return [(m.headers["Nats-Msg-Id"], "foxtive-catch-up" in m.headers)
                for m in judge(go)]

    def lease(self) -> tuple[int, str]:
        """The ``leader`` entry of the app's bucket: (revision, value)."""
        async def go(js: Any) -> tuple[int, str]:
            kv = await js.key_value(f"foxtive_schedules_{self.app}")
            entry = await kv.get("leader")
            return int(entry.revision), bytes(entry.value).decode()

        return judge(go)

    def close(self) -> None:
        from nats.js.errors import NotFoundError

        async def go(js: Any) -> None:
            for q in (self.queue, f"{self.queue}-work"):
                s = stream_for(q)
                for name in (s, f"{s}_DLQ", f"{s}_DELAYED", f"KV_foxtive_dedup_{s}"):
                    with contextlib.suppress(NotFoundError):
                        await js.delete_stream(name)
            with contextlib.suppress(NotFoundError):
                await js.delete_stream(f"KV_foxtive_schedules_{self.app}")

        judge(go)


@pytest.fixture
def side() -> Iterator[NatsSide]:
    s = NatsSide()
    try:
        yield s
    finally:
        s.close()


@pytest.mark.timeout(120)
def test_three_processes_enqueue_each_tick_once(side: NatsSide) -> None:
    cluster = Cluster(side.url, side.app, side.queue)
    cluster.start(3)
    try:
        ticks = wait_for(side.read, lambda t: len(t) >= 1, 30, "the first tick")
        first = tick_time(ticks[0][0])
        wait_for(side.read, lambda t: any(tick_time(i) >= first + 10 for i, _ in t),
                 30, "ten seconds of ticks")
        revision, value = side.lease()
        cluster.stop()
    finally:
        cluster.kill_all()
    ids = [i for i, _ in side.read()]
    assert all(i.startswith("per-second@") for i in ids), ids[:3]
    assert len(ids) >= 11
    assert_once_without_gaps(ids, max_gap=2.0)
    # One lease, renewed all along: its entry holds the revision that took it
    # (the fencing token), older than the entry's own revision.
    token = int(value.split("|", 1)[0])
    assert 0 < token < revision, (token, revision, value)
    # Each tick's dedup key was taken in the KV bucket (per queue stream).
    async def keys(js: Any) -> list[str]:
        kv = await js.key_value(f"foxtive_dedup_{stream_for(side.queue)}")
        return list(await kv.keys())

    taken = judge(keys)
    assert len(taken) == len(ids), (len(taken), len(ids))


@pytest.mark.timeout(120)
def test_a_killed_leader_is_replaced_within_five_seconds(side: NatsSide) -> None:
    cluster = Cluster(side.url, side.app, side.queue)
    cluster.start(3)
    try:
        wait_for(side.read, lambda t: len(t) >= 3, 30, "three ticks")
        app = foxtive.App(side.app, broker=side.url)
        status = schedules.describe_sync(_app_with_schedule(app, side.queue))
        assert status["leader"] is not None
        pid = status["leader"]["pid"]
        token_before = int(side.lease()[1].split("|", 1)[0])
        victim = next(p for p in cluster.procs if p.pid == pid)
        victim.kill()
        killed = time.time()
        victim.communicate(timeout=30)
        wait_for(side.read, lambda t: any(tick_time(i) > killed + 0.5 for i, _ in t),
                 15, "a tick after the kill")
        resumed = time.time()
        assert resumed - killed <= 5.5, f"ticks resumed {resumed - killed:.1f} s after the kill"
        status = schedules.describe_sync(_app_with_schedule(app, side.queue))
        assert status["leader"] is not None and status["leader"]["pid"] != pid
        revision, value = side.lease()
        token_after = int(value.split("|", 1)[0]) or revision
        assert token_after > token_before
        cluster.stop()
    finally:
        cluster.kill_all()
    ids = [i for i, _ in side.read()]
    assert len(ids) == len(set(ids)), f"a tick was enqueued twice: {sorted(ids)}"
