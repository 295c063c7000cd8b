"""W1 and W3 on NATS JetStream for ``benches/compare.py`` (issue 15): the
contenders, the parent-side hooks and the child side.

    cargo build --release -p foxtive-core --example nats_ceiling
    maturin develop --release
    python benches/compare.py --workloads w1-nats,w3-nats

Every run has its own stream (``CMP_<CONTENDER>_<hex>``, the name foxtive
derives from the queue) holding the subject ``cmp-<contender>-<hex>``, with
WorkQueue retention and file storage (what foxtive would create), filled
before the contender starts and deleted afterwards with every stream whose
name starts with it (foxtive's ``_DLQ`` / ``_DELAYED``). The raw contenders
(foxtive, the Rust ceilings, nats-py) get ``m-<i>:xxx…`` bodies of 100 B,
published by nats-py here (plain publishes flushed in windows of 5,000,
then the stream's message count checked); FastStream and taskiq-nats get
``noop(i)`` through their own publisher (their wire format: their payload and headers, sent as plain
publishes), in the peers venv. Every pre-publish ends with the stream's
message count checked, and is outside the timed window.

The NATS server is ``NATS_URL`` (default ``nats://127.0.0.1:4222``).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from typing import Any

from harness import mode
from harness.binaries import ceiling_binary
from harness.bodies import body_for, id_of
from harness.children import compare_child
from harness.config import FOX, PEER, RUST, W3_DELAY
from harness.fox_pool import fox_pool
from harness.mode import W6Error, async_work
from harness.peers_venv import peers_have
from harness.sending import in_chunks

NATS_URL = os.environ.get("NATS_URL", "nats://127.0.0.1:4222")
#: Messages per pull request of the Python peers: the issue's raw nats-py
#: loop fetches 500; FastStream's and taskiq-nats's pull batches get as much.
FETCH = 500
#: foxtive's ``prefetch`` (its default) and the ceilings' batch. A pull asks
#: for min(room in the pool, prefetch), and the pool asks for at most 256
#: (its receive batch): a larger prefetch would not change foxtive's pulls,
#: so the ceilings pull what foxtive pulls.
FOX_PREFETCH = 256

_RETRY_NOTE = "W3: RetryableError(delay=0.05) + RetryHandler(max_retries=1) -> NAK with delay"
CONTENDERS: dict[str, list[tuple[str, str, str]]] = {
    "w1-nats": [
        ("foxtive", FOX, f"NatsBackend prefetch {FOX_PREFETCH} (up to two pulls out, "
                         "min(free room, prefetch)), async no-op handler, acks "
                         "fire-and-forget but the last of each settle batch (double ack)"),
        ("foxtive sync", FOX, f"NatsBackend prefetch {FOX_PREFETCH}, a plain def Worker"),
        ("async-nats ceiling", RUST, f"examples/nats_ceiling.rs fetch: consumer.fetch() of "
                                     f"{FOX_PREFETCH}, one pull out at a time, ack each "
                                     "fire-and-forget, no handler"),
        ("async-nats stream ceiling", RUST, f"examples/nats_ceiling.rs stream: "
                                            "consumer.stream() batches of "
                                            f"{FOX_PREFETCH}, the next pull sent while half "
                                            "the last is to come, ack each fire-and-forget, "
                                            "no handler"),
        ("NatsBackend drain", RUST, "foxtive's NATS backend alone, no engine, no Python "
                                    "(examples/nats_backend_drain.rs): receive(room 256) + "
                                    "settle(acks) overlapped, prefetch "
                                    f"{FOX_PREFETCH}"),
        ("nats-py", PEER, f"pull_subscribe (durable), fetch({FETCH}), handler per message, "
                          "await msg.ack() each (a publish, no round trip)"),
        ("faststream", PEER, f"NatsBroker, pull_sub=PullSub(batch_size={FETCH}), durable, "
                             "AckPolicy.REJECT_ON_ERROR (ack after)"),
        ("taskiq-nats", PEER, f"PullBasedJetStreamBroker pull_consume_batch={FETCH}, "
                              "max_async_tasks 100, ack_type WHEN_EXECUTED"),
    ],
    "w3-nats": [
        ("foxtive", FOX, f"{_RETRY_NOTE}; prefetch {FOX_PREFETCH}"),
        ("foxtive sync", FOX, f"{_RETRY_NOTE}; prefetch {FOX_PREFETCH}, a plain def Worker"),
        ("nats-py", PEER, f"fetch({FETCH}); a failure is msg.nak(delay=0.05), else msg.ack()"),
        ("faststream", PEER, f"PullSub(batch_size={FETCH}); raise NackMessage(delay=0.05) "
                             "(NAK with delay)"),
        ("taskiq-nats", PEER, "SmartRetryMiddleware(default_retry_count=2, delay 0.05) "
                              "without a schedule source: the retry is kicked at once "
                              "(taskiq-nats ignores the delay label)"),
    ],
}
#: Published through their own producer, in the peers venv.
FRAMEWORKS = {"faststream", "taskiq-nats"}


def stream_of(queue: str) -> str:
    """foxtive's own derivation (``NatsConfig::for_queue``): upper-cased, other
    characters ``_``."""
    return "".join(c.upper() if c.isascii() and c.isalnum() else "_" for c in queue)


# --------------------------------------------------------------------------
# parent side: hooks called by compare.py
# --------------------------------------------------------------------------


def unavailable(name: str) -> str:
    if kind_of(name) == RUST:
        try:
            ceiling_binary(rust_binary(name))
        except SystemExit as e:
            return str(e)
    elif name in ("faststream", "taskiq-nats", "nats-py"):
        module = {"faststream": "faststream.nats", "taskiq-nats": "taskiq_nats",
                  "nats-py": "nats"}[name]
        if not peers_have(module):
            return f"{module} is not installed in benches/.peers-venv"
    elif name.startswith("foxtive"):
        import foxtive

        if not hasattr(foxtive, "NatsBackend"):
            return "this foxtive build has no NatsBackend"
    return ""


async def _connect() -> Any:
    import nats

    return await nats.connect(NATS_URL, max_reconnect_attempts=3)


async def _create_stream(js: Any, queue: str) -> None:
    from nats.js.api import RetentionPolicy, StorageType, StreamConfig

    await js.add_stream(StreamConfig(name=stream_of(queue), subjects=[queue],
                                     retention=RetentionPolicy.WORK_QUEUE,
                                     storage=StorageType.FILE))


async def raw_fill(queue: str, n: int, window: int = 5000) -> None:
    """``m-<i>:xxx`` bodies as plain publishes, flushed every ``window``, then the
    stream's count checked: every message is stored before the clock starts,
    ~10x faster than a JetStream ack per message (100k: 5 s against 50 s on
    the loaded 2-core machine)."""
    nc = await _connect()
    await _create_stream(nc.jetstream(), queue)
    for start in range(0, n, window):
        for i in range(start, min(n, start + window)):
            await nc.publish(queue, body_for(i))
        await nc.flush()
    await nc.close()
    await wait_stored(queue, n)


def prepublish(name: str, kind: str, queue: str, n: int, workload: str) -> None:
    async def create() -> None:
        nc = await _connect()
        await _create_stream(nc.jetstream(), queue)
        await nc.close()

    if name in FRAMEWORKS:
        asyncio.run(create())
        subprocess.run(compare_child(kind, "--publish", name, "--queue", queue, "-n", str(n),
                                     "--workload", workload), check=True, timeout=900)
    else:
        asyncio.run(raw_fill(queue, n))


def kind_of(name: str) -> str:
    return next(c[1] for w in CONTENDERS.values() for c in w if c[0] == name)


def rust_binary(name: str) -> str:
    return "nats_backend_drain" if name == "NatsBackend drain" else "nats_ceiling"


def rust_cmd(name: str, queue: str, n: int) -> list[str]:
    if name == "NatsBackend drain":
        return [ceiling_binary(rust_binary(name)), NATS_URL, stream_of(queue), queue, str(n),
                str(FOX_PREFETCH), "256"]
    return [ceiling_binary("nats_ceiling"), "drain", NATS_URL, stream_of(queue), queue,
            str(n), str(FOX_PREFETCH), "stream" if "stream" in name else "fetch"]


def cleanup(queue: str) -> None:
    """Delete the run's stream and every stream named after it (DLQ, delays)."""
    async def go() -> None:
        nc = await _connect()
        js = nc.jetstream()
        prefix = stream_of(queue)
        for info in await js.streams_info():
            if info.config.name and info.config.name.startswith(prefix):
                await js.delete_stream(info.config.name)
        await nc.close()
    asyncio.run(go())


# --------------------------------------------------------------------------
# child side: publishers (frameworks) and consumers
# --------------------------------------------------------------------------


def _plain_js_publish() -> None:
    """The frameworks' JetStream publishes as plain publishes: their payload
    and headers (their wire format), no ack awaited per message (a 100k
    pre-publish through acks took minutes on the loaded machine and timed
    out); ``wait_stored`` checks the count afterwards."""
    from nats.js import api
    from nats.js.client import JetStreamContext

    async def publish(self: Any, subject: str, payload: bytes = b"", timeout: Any = None,
                      stream: str | None = None, headers: Any = None,
                      msg_ttl: Any = None) -> Any:
        await self._nc.publish(subject, payload, headers=headers)
        return api.PubAck(stream=stream or "", seq=0)

    JetStreamContext.publish = publish  # type: ignore[method-assign]


async def wait_stored(queue: str, n: int, limit: float = 60.0) -> None:
    nc = await _connect()
    js = nc.jetstream()
    end = time.monotonic() + limit
    while (stored := (await js.stream_info(stream_of(queue))).state.messages) < n:
        if time.monotonic() > end:
            raise RuntimeError(f"{stream_of(queue)} holds {stored} of {n} messages")
        await asyncio.sleep(0.05)
    await nc.close()


def publish(contender: str, queue: str, n: int) -> None:
    _plain_js_publish()
    if contender == "faststream":
        from faststream.nats import NatsBroker

        async def go() -> None:
            broker = NatsBroker(NATS_URL)
            await broker.connect()
            await in_chunks(n, lambda i: broker.publish(i, queue, stream=stream_of(queue)),
                            1000)
            await broker.stop()  # closing flushes what is buffered
            await wait_stored(queue, n)
        asyncio.run(go())
    elif contender == "taskiq-nats":
        async def go() -> None:
            broker, task = taskiq_broker(queue, None)
            await broker.startup()
            await in_chunks(n, lambda i: task.kiq(i, *mode.TASK_ARG), 1000)
            await broker.shutdown()
            await wait_stored(queue, n)
        asyncio.run(go())
    else:
        raise SystemExit(f"no NATS publisher for {contender}")


def consume(contender: str, queue: str, rec: Any) -> None:
    if contender in ("foxtive", "foxtive sync"):
        foxtive_consume(queue, rec, sync=contender == "foxtive sync")
    elif contender == "nats-py":
        asyncio.run(nats_py_consume(queue, rec))
    elif contender == "faststream":
        asyncio.run(faststream_consume(queue, rec))
    elif contender == "taskiq-nats":
        asyncio.run(taskiq_consume(queue, rec))
    else:
        raise SystemExit(f"unknown NATS contender {contender}")


def foxtive_consume(queue: str, rec: Any, sync: bool) -> None:
    import foxtive

    async def handler(message: foxtive.Message) -> None:
        await async_work(rec, id_of(message.body))

    pool = fox_pool(handler, rec, (lambda m: id_of(m.body)) if sync else None)
    backend = foxtive.NatsBackend(NATS_URL, foxtive.NatsConsumerConfig(
        stream=stream_of(queue), subject=queue, durable="foxtive", prefetch=FOX_PREFETCH))
    asyncio.run(pool.run_async(backend, handle_signals=False))


async def nats_py_consume(queue: str, rec: Any) -> None:
    """The issue's raw loop: fetch 500, handler per message, ack each."""
    from nats.errors import TimeoutError as NatsTimeout

    class Retry(Exception):
        pass

    nc = await _connect()
    js = nc.jetstream()
    sub = await js.pull_subscribe(queue, durable="nats-py", stream=stream_of(queue))
    while True:
        try:
            msgs = await sub.fetch(FETCH, timeout=1.0)
        except NatsTimeout:
            continue
        for msg in msgs:
            try:
                await async_work(rec, id_of(msg.data), retry=lambda _: Retry())
            except Retry:
                await msg.nak(delay=W3_DELAY if mode.W3 else None)
                continue
            await msg.ack()


async def faststream_consume(queue: str, rec: Any) -> None:
    from faststream.exceptions import NackMessage
    from faststream.middlewares import AckPolicy
    from faststream.nats import JStream, NatsBroker, PullSub

    broker = NatsBroker(NATS_URL)

    @broker.subscriber(queue, stream=JStream(stream_of(queue), declare=False),
                       durable="faststream", pull_sub=PullSub(batch_size=FETCH, timeout=1.0),
                       ack_policy=AckPolicy.REJECT_ON_ERROR)
    async def handle(body: int) -> None:
        await async_work(rec, body, retry=lambda d: NackMessage(delay=d))
    await broker.start()
    await asyncio.Event().wait()


def taskiq_broker(queue: str, rec: Any) -> tuple[Any, Any]:
    from nats.js.api import RetentionPolicy, StorageType, StreamConfig
    from taskiq_nats import PullBasedJetStreamBroker

    broker: Any = PullBasedJetStreamBroker(
        NATS_URL, subject=queue, stream_name=stream_of(queue), durable="taskiq",
        stream_config=StreamConfig(name=stream_of(queue), subjects=[queue],
                                   retention=RetentionPolicy.WORK_QUEUE,
                                   storage=StorageType.FILE),
        pull_consume_batch=FETCH, pull_consume_timeout=1.0)
    if mode.RETRY_DELAY:
        from taskiq.middlewares import SmartRetryMiddleware

        # default_retry_count counts attempts: 2 = the first and one retry
        broker = broker.with_middlewares(SmartRetryMiddleware(
            default_retry_count=2, default_retry_label=True, default_delay=mode.RETRY_DELAY))

    @broker.task(task_name="bench.noop")
    async def noop(i: int, sent: float | str = 0.0) -> None:
        if rec is not None:
            await async_work(rec, i, retry=lambda _: W6Error(i))
    return broker, noop


async def taskiq_consume(queue: str, rec: Any) -> None:
    from taskiq.acks import AcknowledgeType
    from taskiq.receiver import Receiver

    broker, _ = taskiq_broker(queue, rec)
    broker.is_worker_process = True  # listen() starts the broker up
    await Receiver(broker, max_async_tasks=mode.CONC or 100,
                   ack_type=AcknowledgeType.WHEN_EXECUTED).listen(asyncio.Event())
