"""What a RabbitMQ message looks like to its handler (attempts, headers) and
how foxtive's topology meets what already exists on the broker. Real broker;
aio-pika and rabbitmqctl judge."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aio_pika
import pytest

import foxtive

try:
    from tests.rabbit_support import (
        URL,
        backend,
        delete_queues,
        list_queues,
        start_worker,
        unique,
    )
except ImportError:  # tests/ is not a package
    from rabbit_support import (  # type: ignore[no-redef]
        URL,
        backend,
        delete_queues,
        list_queues,
        start_worker,
        unique,
    )

def run(coro: Any) -> Any:
    return asyncio.run(coro)


@pytest.fixture
def queue(request: pytest.FixtureRequest) -> Iterator[str]:
    name = unique(request.node.name[5:25].replace("_", "-"))
    yield name
    delete_queues(name, [name + "-ex"])


async def declare_and_publish(queue: str, messages: list[aio_pika.Message],
                              arguments: dict[str, Any] | None = None) -> None:
    """Declare ``queue`` durable (classic unless ``arguments`` say otherwise)
    with aio-pika and publish ``messages`` to it with confirms."""
    conn = await aio_pika.connect(URL)
    ch = await conn.channel()
    await ch.declare_queue(queue, durable=True, arguments=arguments)
    for m in messages:
        await ch.default_exchange.publish(m, routing_key=queue)
    await conn.close()


def pool_of(handler: Any, retry: foxtive.RetryHandler | None = None,
            shutdown_timeout: float = 30.0) -> foxtive.WorkerPool:
    b = foxtive.WorkerPoolBuilder("p").add_worker(handler, id="h")
    if retry is not None:
        b = b.with_middleware(retry)
    return b.with_shutdown_timeout(shutdown_timeout).build()


def queue_arguments(name: str) -> str:
    """The ``arguments`` column of ``rabbitmqctl list_queues`` for ``name``."""
    out = subprocess.run(
        ["rabbitmqctl", "list_queues", "-q", "--no-table-headers", "name", "arguments"],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout
    for line in out.splitlines():
        if line.split("\t", 1)[0] == name:
            return line
    raise AssertionError(f"queue {name} not listed: {out}")


def wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")



def started_lines(path: Path) -> list[list[str]]:
    return [line.split() for line in path.read_text().splitlines()] if path.exists() else []


# ------------------------------------------------------- item 5: attempts


def test_redelivery_after_sigkill_mid_handler_is_attempt_2(queue: str, tmp_path: Path) -> None:
    """Classic queue (no delivery count): a worker is SIGKILLed inside the
    handler; the broker redelivers, and the next worker sees attempt 2."""
    run(declare_and_publish(queue, [aio_pika.Message(body=b"x", message_id="k1")]))
    started = tmp_path / "started"
    first = start_worker(queue, tmp_path / "out1", "--delay", "120", "--started", str(started))
    try:
        wait_for(lambda: len(started_lines(started)) == 1, 30, "the first handler to start")
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(30)
    second = start_worker(queue, tmp_path / "out2", "--started", str(started), "--until-idle")
    assert second.wait(120) == 0, second.stderr.read() if second.stderr else ""
    lines = started_lines(started)
    assert lines == [["k1", "1", "False"], ["k1", "2", "True"]], lines
    assert (tmp_path / "out2").read_text().split() == ["k1"]
    assert list_queues()[queue] == (0, 0)


def test_a_message_handed_back_at_shutdown_comes_back_as_attempt_2(queue: str) -> None:
    """A handler still running when shutdown_timeout ends: the message goes
    back to the queue, and its next delivery says redelivered and attempt 2."""
    run(declare_and_publish(queue, [aio_pika.Message(body=b"x", message_id="s1")]))
    in_handler = threading.Event()

    async def stuck(m: foxtive.Message) -> None:
        in_handler.set()
        await asyncio.sleep(120)

    pool = pool_of(stuck, shutdown_timeout=0.5)

    async def first_run() -> None:
        runner = asyncio.ensure_future(pool.run_async(backend(queue), handle_signals=False))
        loop = asyncio.get_running_loop()
        assert await loop.run_in_executor(None, in_handler.wait, 30.0)
        pool.shutdown()
        await asyncio.wait_for(runner, 60)

    run(first_run())
    assert list_queues()[queue] == (1, 0)
    seen: list[tuple[str, int, bool]] = []

    async def record(m: foxtive.Message) -> None:
        seen.append((m.id, m.attempt, m.redelivered))

    assert pool_of(record).run_until_idle(backend(queue), timeout=60)
    assert seen == [("s1", 2, True)]
    assert list_queues()[queue] == (0, 0)


# --------------------------------------------- item 9: silent mismatches


def test_quorum_config_on_an_existing_classic_queue_is_a_clear_error(queue: str) -> None:
    run(declare_and_publish(queue, [aio_pika.Message(body=b"keep", message_id="c1")]))
    handled: list[str] = []

    async def handler(m: foxtive.Message) -> None:
        handled.append(m.id)

    with pytest.raises(foxtive.ConfigError) as err:
        pool_of(handler).run_until_idle(backend(queue, queue_type="quorum"), timeout=60)
    text = str(err.value)
    assert f"queue '{queue}' exists as classic, config asks for quorum" in text, text
    assert handled == []
    # Nothing was consumed or changed: the message and the classic queue are still there.
    assert list_queues()[queue] == (1, 0)
    assert "quorum" not in queue_arguments(queue).split("\t", 1)[1]


def test_a_mismatch_behind_resilient_backend_is_still_a_start_up_error(queue: str) -> None:
    """ResilientBackend retries what waiting can cure, not a queue that exists
    with other arguments: that stays a ConfigError at start-up."""
    run(declare_and_publish(queue, [aio_pika.Message(body=b"keep", message_id="r1")]))
    resilient = foxtive.ResilientBackend(backend(queue, queue_type="quorum"),
                                         strategy=foxtive.ReconnectStrategy.fixed(0.1))

    async def handler(m: foxtive.Message) -> None:
        raise AssertionError("nothing may be consumed")

    with pytest.raises(foxtive.ConfigError) as err:
        pool_of(handler).run_until_idle(resilient, timeout=60)
    assert f"queue '{queue}' exists as classic, config asks for quorum" in str(err.value)
    assert list_queues()[queue] == (1, 0)


def test_a_differing_queue_argument_is_a_clear_error(queue: str) -> None:
    run(declare_and_publish(queue, [], arguments={"x-max-priority": 3}))
    b = backend(queue, queue_arguments={"x-max-priority": 9})
    with pytest.raises(foxtive.ConfigError) as err:
        run(b.connect())
    text = str(err.value)
    assert f"queue '{queue}'" in text and "x-max-priority=3" in text and "x-max-priority=9" in text


def test_arguments_nobody_asked_for_are_kept_and_still_checked(queue: str) -> None:
    """A queue another client made with x-max-length: foxtive uses it (that
    argument is not foxtive's business) and still sees that it is classic."""
    run(declare_and_publish(queue, [aio_pika.Message(body=b"m", message_id="a1")],
                            arguments={"x-max-length": 10}))
    with pytest.raises(foxtive.ConfigError) as err:
        run(backend(queue, queue_type="quorum").connect())
    assert f"queue '{queue}' exists as classic, config asks for quorum" in str(err.value)
    handled: list[str] = []

    async def handler(m: foxtive.Message) -> None:
        handled.append(m.id)

    assert pool_of(handler).run_until_idle(backend(queue), timeout=60)
    assert handled == ["a1"]
    assert "x-max-length" in queue_arguments(queue).split("\t", 1)[1]


def test_a_differing_exchange_type_is_a_clear_error(queue: str) -> None:
    exchange = queue + "-ex"

    async def declare_topic() -> None:
        conn = await aio_pika.connect(URL)
        ch = await conn.channel()
        await ch.declare_exchange(exchange, aio_pika.ExchangeType.TOPIC, durable=True)
        await conn.close()

    run(declare_topic())
    b = backend(queue, exchange=exchange, exchange_type="direct")
    with pytest.raises(foxtive.ConfigError) as err:
        run(b.connect())
    assert f"exchange '{exchange}' exists as topic, config asks for direct" in str(err.value)
    # The same exchange with the right type binds and consumes.
    ok = backend(queue, exchange=exchange, exchange_type="topic")
    run(ok.connect())
    run(ok.close())


# ------------------------------------- item 12: retry machinery stays inside


def test_a_retried_message_shows_no_dead_letter_headers_and_keeps_the_publishers(
        queue: str) -> None:
    """The retry waits in a delay bucket that dead-letters it back: the
    handler sees none of the x-death family the broker added on the way,
    and every header the publisher set, including its own x-death."""
    upstream_death = {"queue": "upstream", "reason": "rejected", "count": 1,
                      "exchange": "", "routing-keys": ["upstream"]}
    headers: dict[str, Any] = {"tenant": "acme", "n": 7,
                               "x-death": [upstream_death],
                               "x-first-death-queue": "upstream",
                               "x-first-death-reason": "rejected"}
    plain = aio_pika.Message(body=b"p", message_id="plain", headers={"tenant": "acme"})
    with_death = aio_pika.Message(body=b"d", message_id="died-before", headers=headers)
    run(declare_and_publish(queue, [plain, with_death]))
    seen: dict[str, dict[str, Any]] = {}

    async def handler(m: foxtive.Message) -> None:
        if m.attempt == 1:
            raise foxtive.RetryableError("later", delay=0.3)
        seen[m.id] = dict(m.headers)

    b = backend(queue)
    assert pool_of(handler).run_until_idle(b, timeout=60)
    assert set(seen) == {"plain", "died-before"}, seen
    deathly = ("x-death", "x-first-death-", "x-last-death-")
    assert not [k for k in seen["plain"] if k.startswith(deathly)], seen["plain"]
    assert seen["plain"]["tenant"] == "acme"
    h = seen["died-before"]
    assert h["tenant"] == "acme" and h["n"] == 7
    assert [d["queue"] for d in h["x-death"]] == ["upstream"], h
    assert h["x-first-death-queue"] == "upstream"
    assert not any(str(v).startswith(f"{queue}.retry") for v in h.values()), h
    # The bucket the retries waited in expires when unused.
    bucket = b.retry_queue_for(0.3)
    assert bucket is not None
    assert "x-expires" in queue_arguments(bucket).split("\t", 1)[1]


def test_a_bucket_left_without_expiry_is_used_as_it_is(queue: str) -> None:
    """A delay bucket declared by an older version (no x-expires): the retry
    still goes through it instead of failing on the differing argument."""
    b = backend(queue)
    bucket = b.retry_queue_for(0.3)
    assert bucket is not None
    ttl = int(bucket.rsplit(".", 1)[1])

    async def old_bucket() -> None:
        conn = await aio_pika.connect(URL)
        ch = await conn.channel()
        await ch.declare_queue(bucket, durable=True, arguments={
            "x-message-ttl": ttl, "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": queue})
        await conn.close()

    run(old_bucket())
    run(declare_and_publish(queue, [aio_pika.Message(body=b"x", message_id="b1")]))
    attempts: list[int] = []
    back = threading.Event()

    async def handler(m: foxtive.Message) -> None:
        attempts.append(m.attempt)
        if m.attempt == 1 and len(attempts) < 50:
            raise foxtive.RetryableError("later", delay=0.3)
        back.set()

    pool = pool_of(handler)

    async def scenario() -> None:
        runner = asyncio.ensure_future(pool.run_async(b, handle_signals=False))
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, back.wait, 30.0)
        pool.shutdown()
        await asyncio.wait_for(runner, 60)

    run(scenario())
    assert attempts == [1, 2], attempts[:10]
    assert list_queues()[queue] == (0, 0)
