"""The task router's fast paths (memory backend): once a task's first message
has passed, the next ones are picked by their header and called without the
general path (in Rust for all-positional, all-required signatures; in
Python for the others). Whatever the fast path does not take must still
get the general path's answers: checked arguments, PayloadError naming
the field, keyword arguments, envelope versions, plain messages."""

from __future__ import annotations

import uuid
from typing import Any

import foxtive
from foxtive import _core, envelope

from .conftest import fast_retries


def make_app() -> foxtive.App:
    return foxtive.App(f"r-{uuid.uuid4().hex[:8]}", broker="memory://", retry=fast_retries(1))


def drain(app: foxtive.App, queue: str = "default") -> None:
    assert app.pool(queue).run_until_idle(timeout=20.0)


def body(args: list[Any], kwargs: dict[str, Any] | None = None) -> bytes:
    return envelope.encode(args, kwargs or {})


def test_routed_task_keeps_checking_arguments_after_its_first_message() -> None:
    app = make_app()
    calls: list[tuple[int, str]] = []

    @app.task(name="r.add")
    async def add(i: int, s: str) -> None:
        calls.append((i, s))

    backend = app.backend("default")
    headers = envelope.headers_for("r.add")
    add.send_sync(1, "a")
    backend.publish_sync(body([2, "b"]), headers)
    backend.publish_sync(body(["three", "c"]), headers)           # wrong type
    backend.publish_sync(body([4]), headers)                      # missing argument
    backend.publish_sync(body([5], {"s": "e"}), headers)          # keyword argument
    backend.publish_sync(body([6, "f"]), {**headers, envelope.ENVELOPE_HEADER: 2})
    backend.publish_sync(body([7, "g"]), {**headers, envelope.ENVELOPE_HEADER: "1"})
    backend.publish_sync(body([8, "h"]), {envelope.TASK_HEADER: "r.add"})  # no version
    drain(app)
    assert sorted(calls) == [(1, "a"), (2, "b"), (5, "e"), (7, "g"), (8, "h")]
    letters = backend.dead_letters()
    assert [x.error_type for x in letters] == ["PayloadError"] * 3
    assert "'i'" in letters[0].error_message and "int" in letters[0].error_message
    assert "version 2" in letters[2].error_message


def test_routes_are_registered_per_router_as_messages_pass() -> None:
    app = make_app()
    seen: list[Any] = []

    @app.task(name="r.pos")
    async def pos(i: int, s: str) -> None:
        seen.append(("pos", i, s))

    @app.task(name="r.default")
    async def with_default(i: int, s: str = "d") -> None:
        seen.append(("default", i, s))

    @app.task(name="r.sync")
    def sync_task(i: int) -> None:
        seen.append(("sync", i))

    for i in range(3):
        pos.send_sync(i, "x")
        with_default.send_sync(i)
        sync_task.send_sync(i)
    drain(app)
    assert sorted(seen, key=repr) == sorted(
        [("pos", i, "x") for i in range(3)] + [("default", i, "d") for i in range(3)]
        + [("sync", i) for i in range(3)], key=repr)


def test_task_routes_take_only_messages_they_can_call() -> None:
    routes = _core.TaskRoutes()
    assert len(routes) == 0 and "x" not in routes
    routes.add("x", lambda b: None, lambda *a: None)
    assert len(routes) == 1 and "x" in routes
    assert routes.call(object()) is None      # not a foxtive.Message: the general path


def test_plain_messages_still_reach_the_plain_worker_next_to_routed_tasks() -> None:
    app = make_app()
    plain: list[bytes] = []
    calls: list[int] = []

    @app.task(name="r.t")
    async def t(i: int, s: str) -> None:
        calls.append(i)

    @app.worker("default")
    async def handle(message: foxtive.Message) -> None:
        plain.append(message.body)

    backend = app.backend("default")
    t.send_sync(1, "a")
    t.send_sync(2, "b")
    backend.publish_sync(b"raw")
    t.send_sync(3, "c")
    drain(app)
    assert sorted(calls) == [1, 2, 3]
    assert plain == [b"raw"]
