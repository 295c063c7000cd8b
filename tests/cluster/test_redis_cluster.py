"""Redis Cluster: a 3-master + 3-replica cluster started by the fixture
(``conftest.redis_cluster``); redis-py's ``RedisCluster`` judges its state.

Run with ``scripts/test-cluster`` (these are not in the default run)."""

from __future__ import annotations

import asyncio
import collections
import time
import uuid

import pytest

import foxtive
from foxtive import _core
from foxtive.results import RedisResultStore, succeeded

from .redis_cluster import RedisClusterProcesses, wait_until

pytestmark = pytest.mark.cluster


def unique(prefix: str) -> str:
    return f"foxtive-test-{prefix}-{uuid.uuid4().hex[:10]}"


def backend(cluster: RedisClusterProcesses, queue: str,
            **options: object) -> foxtive.RedisStreamBackend:
    b = foxtive.backend_from_url(cluster.url, queue, group_name="g", claim_idle=2.0,
                                 **options)
    assert isinstance(b, foxtive.RedisStreamBackend)
    return b


def test_every_key_of_a_queue_is_in_one_slot_and_a_queue_runs_on_the_cluster(
    redis_cluster: RedisClusterProcesses,
) -> None:
    queue = unique("one")
    b = backend(redis_cluster, queue)
    [stream] = b.stream_keys
    assert stream == "{" + queue + "}"
    judge = redis_cluster.client()
    slot = judge.keyslot(stream)
    assert judge.keyslot(f"{stream}:dlq") == judge.keyslot(f"{stream}:delayed") == slot
    seen: list[bytes] = []

    async def handler(m: foxtive.Message) -> None:
        if m.body == b"bad":
            raise ValueError("no")
        seen.append(m.body)

    asyncio.run(b.publish_many([b"a", b"b", b"bad"]))
    asyncio.run(b.publish(b"later", delay=0.3))
    pool = foxtive.WorkerPoolBuilder("p").add_worker(handler, id="h").build()
    assert pool.run_until_idle(b, timeout=30)
    assert sorted(seen) == [b"a", b"b", b"later"]
    # The dead letter went to the tagged DLQ stream, on the same shard.
    dead = judge.xrange(f"{stream}:dlq")
    assert [fields[b"body"] for _, fields in dead] == [b"bad"]
    assert judge.xlen(stream) == 0


def test_twenty_thousand_messages_over_four_partitions_consumed_exactly_once(
    redis_cluster: RedisClusterProcesses,
) -> None:
    queue = unique("part")
    b = backend(redis_cluster, queue, partitions=4, batch_size=200)
    keys = b.stream_keys
    judge = redis_cluster.client()
    slots = {judge.keyslot(k) for k in keys}
    assert len(keys) == 4 and len(slots) == 4
    masters = {redis_cluster.master_of_key(k) for k in keys}
    assert len(masters) > 1, f"all partitions on one master: {masters}"
    n = 20_000
    bodies = [b"m%d" % i for i in range(n)]

    async def publish() -> None:
        for i in range(0, n, 1000):
            await b.publish_many(bodies[i:i + 1000])

    asyncio.run(publish())
    # Round robin: every partition got a quarter.
    assert [judge.xlen(k) for k in keys] == [n // 4] * 4
    seen: collections.Counter[bytes] = collections.Counter()

    async def handler(m: foxtive.Message) -> None:
        seen[m.body] += 1

    pool = foxtive.WorkerPoolBuilder("p").add_worker(handler, id="h").build()
    assert pool.run_until_idle(b, timeout=120)
    assert len(seen) == n and set(seen.values()) == {1}, "each message exactly once"
    for k in keys:
        assert judge.xlen(k) == 0
        assert judge.xpending(k, "g")["pending"] == 0


def test_a_partition_key_keeps_one_keys_messages_in_order_on_one_partition(
    redis_cluster: RedisClusterProcesses,
) -> None:
    queue = unique("keyed")
    b = backend(redis_cluster, queue, partitions=4)
    judge = redis_cluster.client()

    async def publish() -> None:
        for i in range(50):
            await b.publish(b"u1-%d" % i, headers={"partition_key": "user-1"})
            await b.publish(b"u2-%d" % i, headers={"partition_key": "user-2"})

    asyncio.run(publish())
    holding = [k for k in b.stream_keys if judge.xlen(k) > 0]
    for k in holding:
        bodies = [f[b"body"] for _, f in judge.xrange(k)]
        for user in (b"u1-", b"u2-"):
            mine = [x for x in bodies if x.startswith(user)]
            assert mine in ([], [user + b"%d" % i for i in range(50)]), "in order, all together"
    assert 1 <= len(holding) <= 2


def test_master_failover_loses_nothing_published_with_wait_replicas(
    redis_cluster: RedisClusterProcesses,
) -> None:
    """SIGKILL the master of a partition's slot mid-run: its replica is
    promoted; every message whose publish returned (wait_replicas=1) is
    consumed; duplicates are allowed and counted.

    Once the replica is promoted, the killed server is started again (as an
    operator or Kubernetes would): it rejoins as the new master's replica,
    and until then a publish to that partition cannot get its replica's
    acknowledgement, so it fails and the caller publishes again."""
    queue = unique("failover")
    b = backend(redis_cluster, queue, partitions=4, wait_replicas=1, wait_timeout=1.0)
    consumer = backend(redis_cluster, queue, partitions=4, wait_replicas=1, wait_timeout=1.0)
    victim = redis_cluster.master_of_key(b.stream_keys[0])
    seen: collections.Counter[bytes] = collections.Counter()
    acked: list[bytes] = []
    failed_publishes = 0
    n = 3000

    async def handler(m: foxtive.Message) -> None:
        seen[m.body] += 1

    def promote_then_restart() -> None:
        wait_until(lambda: redis_cluster.master_of_key(b.stream_keys[0]) != victim, 30,
                   "the replica to be promoted")
        redis_cluster.restart(victim)

    async def run() -> None:
        nonlocal failed_publishes
        pool = foxtive.WorkerPoolBuilder("p").add_worker(handler, id="h").build()
        task = asyncio.create_task(pool.run_async(consumer, handle_signals=False))
        restarter = None
        give_up = time.monotonic() + 180
        for i in range(n):
            body = b"f%d" % i
            if i == n // 3:
                redis_cluster.kill(victim)
                restarter = asyncio.create_task(asyncio.to_thread(promote_then_restart))
            while time.monotonic() < give_up:
                try:
                    await b.publish(body)
                except foxtive.FoxtiveError:
                    # Not acknowledged (master gone, or no replica had it in
                    # time): the caller publishes again.
                    failed_publishes += 1
                    await asyncio.sleep(0.05)
                    continue
                acked.append(body)
                break
        assert restarter is not None
        await restarter
        deadline = time.monotonic() + 60
        while not set(acked) <= set(seen) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        pool.shutdown()
        await task

    asyncio.run(run())
    missing = set(acked) - set(seen)
    duplicates = sum(c - 1 for c in seen.values())
    print(f"published {len(acked)}, failed publishes retried {failed_publishes}, "
          f"duplicates {duplicates}")
    assert len(acked) == n
    assert not missing, f"{len(missing)} acknowledged messages lost"
    assert failed_publishes > 0, "the failover was felt by the publisher"
    assert redis_cluster.master_of_key(b.stream_keys[0]) != victim, "the replica took over"


def test_result_store_round_trip_on_the_cluster(redis_cluster: RedisClusterProcesses) -> None:
    store = RedisResultStore(redis_cluster.url, ttl=60)
    judge = redis_cluster.client()
    ids = [uuid.uuid4().hex for _ in range(20)]

    async def run() -> list[object]:
        await store.mark_many(ids, "pending")
        for i, task_id in enumerate(ids):
            await store.mark(task_id, "running")
            await store.finish(task_id, succeeded(i))
        got = [await store.wait(task_id, 5) for task_id in ids]
        await store.close()
        return got

    assert asyncio.run(run()) == list(range(20))
    # Each task's two keys share a slot; tasks spread over the shards.
    slots = {judge.keyslot(f"foxtive:result:{{{t}}}") for t in ids}
    for t in ids:
        assert judge.keyslot(f"foxtive:result:{{{t}}}:done") == judge.keyslot(
            f"foxtive:result:{{{t}}}")
        assert judge.pttl(f"foxtive:result:{{{t}}}") > 0
    assert len({redis_cluster.master_of_slot(s) for s in slots}) > 1
    sync = RedisResultStore(redis_cluster.url, ttl=60)
    assert sync.wait_sync(ids[3], 1) == 3


def test_schedule_leader_lease_is_acquired_and_renewed_on_the_cluster(
    redis_cluster: RedisClusterProcesses,
) -> None:
    app = unique("app")
    lease = 1.0
    scheduler = _core.Scheduler(app, redis_cluster.url, lease)
    judge = redis_cluster.client()
    key = f"foxtive:schedules:{{{app}}}:leader"

    async def run() -> tuple[bytes, bytes]:
        scheduler.start()
        try:
            deadline = time.monotonic() + 10
            while not scheduler.leader and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert scheduler.leader
            first = judge.get(key)
            assert first is not None and judge.pttl(key) > 0
            # Held over three lease lengths: only renewals keep the key alive.
            await asyncio.sleep(3 * lease)
            assert scheduler.leader
            later = judge.get(key)
            assert later is not None
            leader, _ = await _core.schedule_status(app, redis_cluster.url)
            assert leader is not None
            return first, later
        finally:
            scheduler.stop()
            await scheduler.wait()

    first, later = asyncio.run(run())
    assert first.split(b"|")[0] == later.split(b"|")[0], "the same lease (token), renewed"
    assert judge.get(key) is None, "released at stop"


async def test_a_shared_rate_limit_counts_on_the_cluster(
        redis_cluster: RedisClusterProcesses) -> None:
    """A task's rate limit on a cluster broker is one bucket on the cluster:
    two limiters on one key (two processes) share 10/s with a burst of 10."""
    key = unique("rate")
    a = _core.SharedRateLimiter(10.0, 10, redis_cluster.url, key)
    b = _core.SharedRateLimiter(10.0, 10, redis_cluster.url, key)
    started = time.monotonic()

    async def take(limiter: _core.SharedRateLimiter, n: int) -> None:
        for _ in range(n):
            await limiter.acquire()

    await asyncio.gather(take(a, 15), take(b, 15))
    span = time.monotonic() - started
    client = redis_cluster.client()
    try:
        assert client.exists(key), "the bucket is a key on the cluster"
        # One budget: the 30th permit is due 2 s after the first; two private
        # buckets (a fallback to local limits) would give theirs in 0.5 s.
        assert span >= 1.6, span
    finally:
        client.delete(key)
        client.close()
