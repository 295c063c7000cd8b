"""Message: body, headers, decoding and settle-once."""

from __future__ import annotations

import json
from typing import Any

import pytest

import foxtive

from .conftest import fast_retries


def run_one(memory: foxtive.MemoryBackend, handler: Any, **publish: Any) -> foxtive.WorkerPool:
    memory.publish_sync(publish.pop("body", b"{}"), **publish)
    pool = (
        foxtive.WorkerPoolBuilder("p")
        .add_worker(handler, id="h")
        .with_middleware(fast_retries(0))
        .build()
    )
    assert pool.run_until_idle(memory, timeout=10)
    return pool


def test_fields_and_typed_headers(memory: foxtive.MemoryBackend) -> None:
    seen: dict[str, Any] = {}

    async def handler(m: foxtive.Message) -> None:
        seen.update(
            id=m.id, body=m.body, attempt=m.attempt, queue=m.queue, headers=dict(m.headers),
            redelivered=m.redelivered, received_at=m.received_at, settled=m.settled,
            routing_key=m.routing_key, priority=m.priority,
        )

    headers = {"s": "x", "i": 7, "f": 1.5, "b": True, "raw": b"\x00\xff", "n": None,
               "arr": [1, "two"], "nested": {"k": [False]}}
    run_one(memory, handler, body=b"\x00binary\xff", headers=headers, message_id="m-1")
    assert seen["id"] == "m-1"
    assert seen["body"] == b"\x00binary\xff"
    assert seen["attempt"] == 1
    assert seen["queue"] == memory.name
    assert seen["headers"] == headers
    assert type(seen["headers"]["b"]) is bool and type(seen["headers"]["i"]) is int
    assert seen["redelivered"] is False and seen["settled"] is False
    assert seen["routing_key"] is None and seen["priority"] is None
    assert seen["received_at"] > 1_600_000_000


def test_headers_are_read_only(memory: foxtive.MemoryBackend) -> None:
    errors: list[BaseException] = []

    async def handler(m: foxtive.Message) -> None:
        try:
            m.headers["x"] = 1  # type: ignore[index]
        except TypeError as e:
            errors.append(e)

    run_one(memory, handler, headers={"a": 1})
    assert len(errors) == 1


def test_json_and_text(memory: foxtive.MemoryBackend) -> None:
    out: list[Any] = []

    async def handler(m: foxtive.Message) -> None:
        out.append(m.json())
        out.append(m.text())

    run_one(memory, handler, body=json.dumps({"to": "ann"}).encode())
    assert out == [{"to": "ann"}, '{"to": "ann"}']


@pytest.mark.parametrize("body", [b"{not json", b"\xff\xfe"])
def test_undecodable_payload_is_dead_lettered_without_retry(
    memory: foxtive.MemoryBackend, body: bytes
) -> None:
    calls = []

    async def handler(m: foxtive.Message) -> None:
        calls.append(m.attempt)
        m.json()

    memory.publish_sync(body)
    memory.publish_sync(b'{"ok": 1}')
    pool = (
        foxtive.WorkerPoolBuilder("p").add_worker(handler, id="h")
        .with_middleware(fast_retries(5)).build()
    )
    assert pool.run_until_idle(memory, timeout=10)
    dead = memory.dead_letters()
    assert len(dead) == 1
    assert dead[0].error_type == "PayloadError"
    assert dead[0].body == body
    assert calls == [1, 1]  # no retry of the bad one, and the loop went on
    assert pool.stats()["processed"] == 1


def test_text_raises_payload_error_on_invalid_utf8(memory: foxtive.MemoryBackend) -> None:
    errors: list[BaseException] = []

    async def handler(m: foxtive.Message) -> None:
        try:
            m.text()
        except foxtive.PayloadError as e:
            errors.append(e)

    run_one(memory, handler, body=b"\xff")
    assert len(errors) == 1 and isinstance(errors[0], foxtive.PermanentError)


def test_second_settlement_raises_and_never_reaches_the_backend(
    memory: foxtive.MemoryBackend,
) -> None:
    errors: list[BaseException] = []

    async def handler(m: foxtive.Message) -> None:
        await m.ack()
        assert m.settled
        for settle in (m.ack, lambda: m.nack(requeue=True), lambda: m.dead_letter("x")):
            try:
                await settle()
            except foxtive.AlreadySettledError as e:
                errors.append(e)

    pool = run_one(memory, handler)
    assert len(errors) == 3
    stats = pool.stats()
    assert (stats["processed"], stats["retried"], stats["dead_lettered"]) == (1, 0, 0)
    assert memory.dead_letters() == [] and memory.qsize() == 0 and memory.unacked() == 0


def test_sync_settlement_forms(memory: foxtive.MemoryBackend) -> None:
    def handler(m: foxtive.Message) -> None:
        m.dead_letter_sync("bad order")
        with pytest.raises(foxtive.AlreadySettledError):
            m.ack_sync()

    run_one(memory, handler)
    [dead] = memory.dead_letters()
    assert dead.error_message == "bad order" and dead.worker_id == "h"


def test_explicit_retry_redelivers_later_through_the_backend(
    memory: foxtive.MemoryBackend,
) -> None:
    attempts: list[int] = []

    async def handler(m: foxtive.Message) -> None:
        attempts.append(m.attempt)
        if m.attempt == 1:
            assert await m.retry(delay=0.05) == "retried"

    memory.publish_sync(b"x", message_id="keep-me")
    pool = foxtive.WorkerPoolBuilder("p").add_worker(handler, id="h").build()
    assert pool.run_until_idle(memory, timeout=10)
    assert attempts == [1, 2]
    assert pool.stats()["retried"] == 1 and pool.stats()["processed"] == 1


def test_nack_without_requeue_dead_letters(memory: foxtive.MemoryBackend) -> None:
    async def handler(m: foxtive.Message) -> None:
        await m.nack()

    run_one(memory, handler)
    assert len(memory.dead_letters()) == 1


def test_nack_with_requeue_redelivers_and_counts_an_attempt(
    memory: foxtive.MemoryBackend,
) -> None:
    attempts: list[int] = []

    async def handler(m: foxtive.Message) -> None:
        attempts.append(m.attempt)
        if m.attempt < 3:
            await m.nack(requeue=True)

    memory.publish_sync(b"x")
    pool = foxtive.WorkerPoolBuilder("p").add_worker(handler, id="h").build()
    assert pool.run_until_idle(memory, timeout=10)
    assert attempts == [1, 2, 3]


def test_repr_is_informative(memory: foxtive.MemoryBackend) -> None:
    reprs: list[str] = []

    async def handler(m: foxtive.Message) -> None:
        reprs.append(repr(m))

    run_one(memory, handler, message_id="abc")
    assert "abc" in reprs[0] and "attempt=1" in reprs[0]


def test_one_header_is_read_without_the_dict(memory: foxtive.MemoryBackend) -> None:
    memory.publish_sync(b"x", headers={"n": 7, "s": "v", "b": b"\x00"})
    got: list[Any] = []

    def handler(m: foxtive.Message) -> None:
        got.extend([m.header("n"), m.header("s"), m.header("b"), m.header("absent"),
                    m.header("absent", "dflt")])
        got.append(m.header("n") == m.headers["n"])

    pool = foxtive.WorkerPoolBuilder("p").add_worker(handler).build()
    assert pool.run_until_idle(memory, timeout=10)
    assert got == [7, "v", b"\x00", None, "dflt", True]
