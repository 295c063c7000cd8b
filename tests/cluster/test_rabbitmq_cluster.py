"""A real 3-node RabbitMQ cluster (started here, on 5701-5703) and a quorum
queue: a foxtive worker process keeps draining while the node it is connected
to, and separately the queue's leader, is stopped. aio-pika and the broker
are the judges: every id processed, the queue empty at the end (passive
declare), duplicates no more than the prefetch. The time to resume is
measured and printed (the bench records the median:
``benches/rabbitmq_failover.py``)."""

from __future__ import annotations

import asyncio
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aio_pika
import pytest

from tests.cluster.rabbitmq import (
    NetLab,
    Node,
    RabbitCluster,
    available,
    declare_and_publish,
    delete_queue,
    read_lines,
    ready_count,
    resume_seconds,
    start_worker,
    stop_worker,
    wait_for,
    worker_log,
)

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(900)]

MESSAGES = 10_000
PREFETCH = 50
# Handler time: 50 in flight x 50 ms = ~1,000 messages/s at most, so the
# drain lasts long enough for a node to be stopped in the middle of it.
DELAY = 0.05
# The target is 10 s; asserted with room for a loaded 2-core machine.
RESUME_LIMIT = 30.0


@pytest.fixture(scope="module")
def netlab() -> Iterator[NetLab | str]:
    """Worker hosts in network namespaces, or why they cannot be made here
    (the namespace test then fails saying so; the others run regardless)."""
    lab = NetLab(3)
    try:
        lab.up()
    except (RuntimeError, OSError, subprocess.SubprocessError) as e:
        yield f"network namespaces cannot be created here: {e}"
        return
    try:
        yield lab
    finally:
        lab.down()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory,
            netlab: NetLab | str) -> Iterator[RabbitCluster]:
    why = available()
    assert why is None, why  # a cluster test that cannot run fails, never skips
    also = NetLab.ADDRESS if isinstance(netlab, NetLab) else None
    with RabbitCluster(tmp_path_factory.mktemp("rabbit-cluster"), also_listen=also) as c:
        yield c


@pytest.fixture(autouse=True)
def all_nodes_up(cluster: RabbitCluster) -> None:
    """Each test starts with three running nodes (a previous one stopped one)."""
    for node in cluster.nodes:
        if not node.running:
            cluster.restart_node(node)


def unique(prefix: str) -> str:
    return f"foxtive-cluster-{prefix}-{uuid.uuid4().hex[:8]}"


@dataclass
class Failover:
    resume_s: float
    duplicates: int
    reconnected: bool


def drain_through_failover(cluster: RabbitCluster, tmp_path: Path, *,
                           kill_leader: bool) -> Failover:
    """10,000 messages on a quorum queue; a worker drains them while one
    node (the worker's, or the queue's leader) is stopped."""
    queue = unique("leader" if kill_leader else "consumer")
    ids = [f"m-{i}" for i in range(MESSAGES)]
    declared_on = cluster.nodes[1]
    asyncio.run(declare_and_publish(declared_on, queue, ids))
    leader = cluster.leader(queue)
    # Leader test: the worker only knows the other two nodes, so losing the
    # leader is not also losing its connection.
    url = cluster.url([n for n in cluster.nodes if n is not leader] if kill_leader else None)
    out = tmp_path / "processed.txt"
    worker = start_worker(url, queue, out, delay=DELAY, prefetch=PREFETCH)
    try:
        wait_for(lambda: len(read_lines(out)) >= 1000, 120, "1,000 messages processed")
        connected = cluster.connected_node(worker.pid)
        victim = leader if kill_leader else connected
        if kill_leader:
            assert connected is not leader
        before = read_lines(out)
        epoch_before = max(line.epoch_end for line in before)
        t0 = time.time()
        cluster.stop_node(victim)
        t_down = time.time()
        assert len(before) < MESSAGES - 1000, "the drain ended before the node stopped"
        wait_for(lambda: len({line.id for line in read_lines(out)}) >= MESSAGES, 300,
                 f"all {MESSAGES} ids processed")
    finally:
        stop_worker(worker)
    lines = read_lines(out)
    seen = {line.id for line in lines}
    survivor = cluster.any_running()
    left = asyncio.run(ready_count(survivor, queue))
    asyncio.run(delete_queue(survivor, queue))
    assert seen == set(ids), (len(seen), worker_log(out))
    # The worker stopped (its unacked deliveries went back): an empty queue
    # means every message was acknowledged.
    assert left == 0, left
    duplicates = len(lines) - len(seen)
    assert duplicates <= PREFETCH, duplicates
    resume = resume_seconds(lines, t0, t_down, epoch_before)
    reconnected = any(line.epoch_start > epoch_before for line in lines)
    print(f"\n{'leader' if kill_leader else 'consumer node'} {victim.name} stopped "
          f"(gone after {t_down - t0:.2f}s): "
          f"resumed after {resume:.2f}s, {duplicates} duplicates, "
          f"consumer reconnected: {reconnected}")
    assert resume < RESUME_LIMIT, resume
    return Failover(resume, duplicates, reconnected)


def test_stopping_the_consumers_node_loses_nothing(cluster: RabbitCluster,
                                                   tmp_path: Path) -> None:
    result = drain_through_failover(cluster, tmp_path, kill_leader=False)
    # Its connection was closed with the node: it had to move to another.
    assert result.reconnected


def test_stopping_the_queue_leader_loses_nothing(cluster: RabbitCluster,
                                                 tmp_path: Path) -> None:
    drain_through_failover(cluster, tmp_path, kill_leader=True)


def test_a_consumer_cancelled_by_the_broker_subscribes_again(cluster: RabbitCluster,
                                                             tmp_path: Path) -> None:
    """The broker cancels a consumer (``basic.cancel``) when its queue goes
    away; the same worker process subscribes again (declaring the queue
    anew) and goes on with what is published afterwards."""
    queue = unique("cancel")
    node = cluster.nodes[0]
    first = [f"a-{i}" for i in range(100)]
    asyncio.run(declare_and_publish(node, queue, first))
    out = tmp_path / "processed.txt"
    worker = start_worker(cluster.url(), queue, out, delay=DELAY, prefetch=PREFETCH)
    try:
        wait_for(lambda: {line.id for line in read_lines(out)} >= set(first), 60,
                 "the first 100 processed")
        epoch = max(line.epoch_end for line in read_lines(out))
        asyncio.run(delete_queue(node, queue))

        def declared_again() -> bool:
            try:
                asyncio.run(ready_count(node, queue))
                return True
            except aio_pika.exceptions.ChannelNotFoundEntity:
                return False

        wait_for(declared_again, 60, "the worker to declare the queue again")
        second = [f"b-{i}" for i in range(100)]
        asyncio.run(declare_and_publish(node, queue, second))
        wait_for(lambda: {line.id for line in read_lines(out)} >= set(second), 60,
                 "the next 100 processed by the same process")
        assert worker.poll() is None, "the worker process restarted or died"
        later = [line for line in read_lines(out) if line.id.startswith("b-")]
        assert min(line.epoch_start for line in later) > epoch
    finally:
        stop_worker(worker)
        asyncio.run(delete_queue(cluster.any_running(), queue))


def test_a_consumer_cancelled_when_its_queues_node_is_lost_subscribes_again(
        cluster: RabbitCluster, tmp_path: Path) -> None:
    """A classic queue lives on one node. Its consumers on other nodes get a
    ``basic.cancel`` when that node goes; the worker keeps trying to
    subscribe (the queue is unavailable meanwhile) and, once the node is
    back, drains the rest: same process, nothing lost."""
    queue = unique("home")
    home = cluster.nodes[0]
    ids = [f"m-{i}" for i in range(2000)]
    asyncio.run(declare_and_publish(home, queue, ids, queue_type="classic"))
    out = tmp_path / "processed.txt"
    # The worker talks to the other nodes only: its own connection survives.
    worker = start_worker(cluster.url(cluster.nodes[1:]), queue, out, delay=DELAY,
                          prefetch=PREFETCH, extra=("--queue-type", "classic"))
    try:
        wait_for(lambda: len(read_lines(out)) >= 200, 120, "200 processed")
        epoch = max(line.epoch_end for line in read_lines(out))
        cluster.stop_node(home)
        done_while_down = len({line.id for line in read_lines(out)})
        cluster.restart_node(home)
        wait_for(lambda: {line.id for line in read_lines(out)} >= set(ids), 180,
                 "the rest processed after the queue's node came back")
        assert worker.poll() is None, "the worker process restarted or died"
    finally:
        stop_worker(worker)
    lines = read_lines(out)
    left = asyncio.run(ready_count(home, queue))
    asyncio.run(delete_queue(home, queue))
    assert done_while_down < len(ids), "the drain ended before the node stopped"
    assert left == 0, left
    assert "cancel" in worker_log(out, tail=100_000), worker_log(out)
    assert max(line.epoch_start for line in lines) > epoch, "never subscribed again"
    assert len(lines) - len(set(ids)) <= PREFETCH

def test_a_message_that_kills_the_worker_is_dead_lettered_across_restarts(
        cluster: RabbitCluster, tmp_path: Path) -> None:
    """Poison-pill detection across crashes, the reason quorum queues are
    the production default: the broker's ``x-delivery-count`` survives the
    worker process, so after ``max_failures`` deliveries that each killed a
    worker, the next one dead-letters the message before running it."""
    queue = unique("poison")
    normal = [f"ok-{i}" for i in range(20)]
    asyncio.run(declare_and_publish(cluster.nodes[0], queue, ["poison", *normal]))
    out = tmp_path / "processed.txt"

    def dead_letters() -> int:
        try:
            return asyncio.run(ready_count(cluster.nodes[0], f"{queue}.dlq"))
        except aio_pika.exceptions.ChannelNotFoundEntity:
            return 0

    def all_settled() -> bool:
        return {x.id for x in read_lines(out)} >= set(normal) and dead_letters() == 1

    crashes = 0
    # Prefetch 1: the messages behind the poison are not delivered with it,
    # so its crashes do not count deliveries of theirs.
    for _ in range(8):  # a supervisor restarting the worker
        worker = start_worker(cluster.url(), queue, out, delay=0.0, prefetch=1,
                              extra=("--crash-on", "poison", "--max-failures", "3"))
        try:
            wait_for(lambda w=worker: w.poll() is not None or all_settled(), 120,
                     "a crash, or the poison dead-lettered and the rest processed")
        finally:
            crashed = worker.poll() == 3
            stop_worker(worker)
        if not crashed:
            break
        crashes += 1

    try:
        attempts = [int(raw.split()[2]) for raw in out.read_text().splitlines()
                    if raw.startswith("crash ")]
        # Deliveries 1, 2, 3 each killed a worker; the 4th never ran.
        assert attempts == [1, 2, 3], (attempts, worker_log(out))
        assert crashes == 3
        assert {x.id for x in read_lines(out)} == set(normal)
        letter = asyncio.run(first_message(cluster.nodes[0], f"{queue}.dlq"))
        assert letter.message_id == "poison"
        assert letter.headers.get("x-foxtive-poison-pill") is True, letter.headers
        assert asyncio.run(ready_count(cluster.nodes[0], queue)) == 0
    finally:
        for name in (queue, f"{queue}.dlq"):
            asyncio.run(delete_queue(cluster.nodes[0], name))


async def first_message(node: Node, queue: str) -> aio_pika.abc.AbstractIncomingMessage:
    conn = await aio_pika.connect(node.url)
    try:
        ch = await conn.channel()
        q = await ch.declare_queue(queue, passive=True)
        message = await q.get(no_ack=True)
        assert message is not None
        return message
    finally:
        await conn.close()


def test_a_host_cut_off_for_10s_hands_its_messages_to_the_others(
        cluster: RabbitCluster, netlab: NetLab | str, tmp_path: Path) -> None:
    """Three worker "hosts" (network namespaces) drain one quorum queue; one
    host's link is cut for 10 s (no FIN, no RST: silence). The broker notices
    the silent connection by its heartbeat (2 s here) and hands that host's
    unacknowledged messages to the other two; nothing is lost, and what the
    cut host finished without being able to acknowledge is all the
    duplication there is."""
    assert isinstance(netlab, NetLab), netlab
    queue = unique("netns")
    messages, prefetch, delay = 6000, 20, 0.2
    ids = [f"m-{i}" for i in range(messages)]
    asyncio.run(declare_and_publish(cluster.nodes[0], queue, ids))
    url = "amqp://guest:guest@" + ",".join(
        f"{NetLab.ADDRESS}:{n.port}" for n in cluster.nodes) + "/%2f"
    outs = {h: tmp_path / f"host{h}.txt" for h in netlab.hosts}
    workers = {h: start_worker(url, queue, outs[h], delay=delay, prefetch=prefetch,
                               extra=("--heartbeat", "2"), prefix=netlab.prefix(h))
               for h in netlab.hosts}
    victim = netlab.hosts[0]
    restored = threading.Event()
    cut = False
    try:
        wait_for(lambda: len(read_lines(outs[victim])) >= 100, 120,
                 "the victim host to process 100")
        t_cut = time.time()
        netlab.cut(victim)
        cut = True

        def restore() -> None:
            netlab.restore(victim)
            restored.set()

        threading.Timer(10.0, restore).start()
        wait_for(lambda: len({x.id for o in outs.values() for x in read_lines(o)})
                 >= messages, 300, f"all {messages} ids processed")
    finally:
        if cut:
            restored.wait(30)
        for w in workers.values():
            stop_worker(w)
    lines = {h: read_lines(o) for h, o in outs.items()}
    seen = {x.id for ls in lines.values() for x in ls}
    left = asyncio.run(ready_count(cluster.nodes[0], queue))
    asyncio.run(delete_queue(cluster.nodes[0], queue))
    assert seen == set(ids), (len(seen), worker_log(outs[victim]))
    assert left == 0, left
    by_victim = {x.id for x in lines[victim]}
    by_others = {x.id for h, ls in lines.items() if h != victim for x in ls}
    # What the cut host held went to the others: finished there too.
    moved = by_victim & by_others
    others_after_cut = [x.at for h, ls in lines.items() if h != victim
                        for x in ls if x.id in moved]
    assert moved, "the cut host's in-flight messages never reached the others"
    total = sum(len(ls) for ls in lines.values())
    assert total - len(seen) <= prefetch, (total - len(seen), len(moved))
    print(f"\nhost {victim} cut for 10 s: {len(moved)} of its messages processed "
          f"by the others, the first {min(others_after_cut) - t_cut:.2f}s after the cut; "
          f"{total - len(seen)} duplicates")
