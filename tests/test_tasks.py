"""Tasks on the memory backend: envelope, conversion, routing, failures.

The broker-level checks (Redis, RabbitMQ, judged by redis-py / aio-pika) are
in test_tasks_brokers.py; the static typing check in test_tasks_typing.py."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import enum
import json
import threading
import time
import uuid
from decimal import Decimal
from typing import Any, TypedDict

import pytest

import foxtive
from foxtive import envelope

from .conftest import fast_retries


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


@dataclasses.dataclass
class Point:
    x: int
    y: float


try:
    import pydantic

    class Address(pydantic.BaseModel):
        street: str
        zip_code: int
except ImportError:  # pydantic is optional
    Address = None  # type: ignore[assignment,misc]


class Opts(TypedDict):
    depth: int
    label: str


def make_app(**kw: Any) -> foxtive.App:
    kw.setdefault("retry", fast_retries(2))
    return foxtive.App(f"t-{uuid.uuid4().hex[:8]}", broker="memory://", **kw)


def drain(app: foxtive.App, queue: str = "default") -> None:
    assert app.pool(queue).run_until_idle(timeout=20.0)


async def raw_messages(app: foxtive.App, queue: str = "default") -> list[foxtive.Message]:
    """Consume what waits on the app's queue with a plain handler (no router)."""
    seen: list[foxtive.Message] = []

    async def grab(message: foxtive.Message) -> None:
        seen.append(message)

    pool = foxtive.WorkerPoolBuilder("raw").add_worker(grab).build()
    assert await pool.run_until_idle_async(app.backend(queue), timeout=20.0)
    return seen


def test_round_trip_converts_arguments_from_annotations() -> None:
    app = make_app()
    got: dict[str, Any] = {}

    @app.task
    async def everything(n: int, when: dt.datetime, ids: set[uuid.UUID], price: Decimal,
                         color: Color, blob: bytes, point: Point, opts: Opts,
                         pair: tuple[int, str], maybe: int | None = None,
                         span: dt.timedelta = dt.timedelta(0), day: dt.date | None = None,
                         at: dt.time | None = None) -> None:
        got.update(locals())

    when = dt.datetime(2026, 3, 1, 12, 30, tzinfo=dt.UTC)
    uid = uuid.uuid4()
    everything.send_sync(7, when, {uid}, Decimal("19.99"), Color.BLUE, b"\x00\xff",
                         Point(1, 2.5), {"depth": 3, "label": "x"}, (4, "y"),
                         span=dt.timedelta(seconds=90), day=dt.date(2026, 1, 2),
                         at=dt.time(8, 15))
    drain(app)
    assert got["n"] == 7
    assert got["when"] == when and got["when"].tzinfo is not None
    assert got["ids"] == {uid} and isinstance(next(iter(got["ids"])), uuid.UUID)
    assert got["price"] == Decimal("19.99") and isinstance(got["price"], Decimal)
    assert got["color"] is Color.BLUE
    assert got["blob"] == b"\x00\xff"
    assert got["point"] == Point(1, 2.5)
    assert got["opts"] == {"depth": 3, "label": "x"}
    assert got["pair"] == (4, "y")
    assert got["maybe"] is None
    assert got["span"] == dt.timedelta(seconds=90)
    assert got["day"] == dt.date(2026, 1, 2)
    assert got["at"] == dt.time(8, 15)


def test_sync_task_runs_and_plain_call_runs_inline() -> None:
    app = make_app()
    ran: list[tuple[str, int]] = []

    @app.task(queue="reports", name="reports.build")
    def build(report_id: int, who: str = "me") -> int:
        ran.append((threading.current_thread().name, report_id))
        return report_id * 2

    assert build(21) == 42                  # inline, here, now
    assert ran == [(threading.current_thread().name, 21)]
    handle = build.send_sync(5, who="ann")
    assert (handle.task_name, handle.queue) == ("reports.build", "reports")
    drain(app, "reports")
    assert ran[-1][1] == 5 and ran[-1][0] != threading.current_thread().name


async def test_async_plain_call_returns_a_coroutine() -> None:
    app = make_app()

    @app.task
    async def double(x: int) -> int:
        return x * 2

    assert double.name == f"{__name__}.test_async_plain_call_returns_a_coroutine.<locals>.double"
    assert await double(4) == 8


async def test_envelope_shape() -> None:
    app = make_app()

    @app.task(name="shop.email")
    async def email(to: str, subject: str = "") -> None: ...

    handle = await email.send("ann@example.com", subject="Hi")
    assert len(handle.id) == 32 and int(handle.id, 16) >= 0   # uuid4 hex
    custom = await email.options(message_id="welcome-ann", headers={"x-trace": "t1"}).send("b@x")
    assert custom.id == "welcome-ann"
    msgs = await raw_messages(app)
    assert [m.id for m in msgs] == [handle.id, "welcome-ann"]
    first = msgs[0]
    assert json.loads(first.body) == {"args": ["ann@example.com"], "kwargs": {"subject": "Hi"}}
    assert first.headers["foxtive-task"] == "shop.email"
    assert first.headers["foxtive-envelope"] == 1
    assert first.headers["content-type"] == "application/json"
    assert msgs[1].headers["x-trace"] == "t1"


async def test_unencodable_argument_is_a_type_error_at_send() -> None:
    app = make_app()

    @app.task
    async def t(x: Any) -> None: ...

    with pytest.raises(TypeError, match="object"):
        await t.send(object())
    with pytest.raises(TypeError):
        t.send_sync(x=threading.Lock())
    assert app.backend("default").qsize() == 0


def test_payload_error_is_dead_lettered_at_once_with_field_and_reason() -> None:
    app = make_app(retry=fast_retries(5))
    calls: list[int] = []

    @app.task(name="reports.build")
    def build(report_id: int, when: dt.datetime) -> None:
        calls.append(report_id)

    build.send_sync("not-a-number", dt.datetime.now(dt.UTC))  # type: ignore[arg-type]
    build.send_sync(1, "yesterday")  # type: ignore[arg-type]
    drain(app)
    assert calls == []
    letters = app.backend("default").dead_letters()
    assert len(letters) == 2
    for letter in letters:
        assert letter.error_type == "PayloadError"
        assert letter.attempts == 1                      # no retries
    assert "report_id" in letters[0].error_message and "int" in letters[0].error_message
    assert "when" in letters[1].error_message and "datetime" in letters[1].error_message


def test_bad_body_and_unexpected_keyword_are_payload_errors() -> None:
    app = make_app()

    @app.task(name="t.one")
    def one(a: int) -> None: ...

    backend = app.backend("default")
    backend.publish_sync(b"not json", envelope.headers_for("t.one"))
    backend.publish_sync(b'{"args": [1], "kwargs": {"b": 2}}', envelope.headers_for("t.one"))
    backend.publish_sync(b'{"args": [1, 2], "kwargs": {}}', envelope.headers_for("t.one"))
    drain(app)
    letters = backend.dead_letters()
    assert [x.error_type for x in letters] == ["PayloadError"] * 3
    assert "not JSON" in letters[0].error_message
    assert "'b'" in letters[1].error_message
    assert "positional" in letters[2].error_message


def test_unknown_task_is_retried_then_dead_lettered() -> None:
    app = make_app(retry=fast_retries(2))

    @app.task
    def known() -> None: ...

    backend = app.backend("default")
    backend.publish_sync(b'{"args": [], "kwargs": {}}', envelope.headers_for("gone.task"),
                         message_id="m-unknown")
    drain(app)
    [letter] = backend.dead_letters()
    assert letter.error_type == "UnknownTaskError"
    assert "gone.task" in letter.error_message
    assert letter.attempts == 3                    # first try + max_retries=2
    assert letter.original_id == "m-unknown"


def test_task_max_retries_stops_before_the_apps_policy() -> None:
    app = make_app(retry=fast_retries(5))
    attempts: list[int] = []

    @app.task(max_retries=1)
    def flaky() -> None:
        attempts.append(1)
        raise RuntimeError("boom")

    flaky.send_sync()
    drain(app)
    assert len(attempts) == 2
    [letter] = app.backend("default").dead_letters()
    assert (letter.error_type, letter.attempts) == ("RuntimeError", 2)


def test_messages_without_task_header_go_to_the_plain_worker() -> None:
    app = make_app()
    plain: list[bytes] = []
    tasks: list[int] = []

    @app.task
    def t(x: int) -> None:
        tasks.append(x)

    @app.worker("default")
    def raw(message: foxtive.Message) -> None:
        plain.append(message.body)

    app.backend("default").publish_sync(b"raw bytes")
    t.send_sync(3)
    drain(app)
    assert plain == [b"raw bytes"] and tasks == [3]
    assert app.backend("default").dead_letters() == []


def test_messages_without_task_header_and_no_plain_worker_are_dead_lettered() -> None:
    app = make_app()

    @app.task
    def t() -> None: ...

    app.backend("default").publish_sync(b"raw bytes")
    drain(app)
    [letter] = app.backend("default").dead_letters()
    assert letter.error_type == "PermanentError" and letter.attempts == 1
    assert "foxtive-task" in letter.error_message and "app.worker" in letter.error_message


async def test_send_many_and_options() -> None:
    app = make_app()
    got: list[tuple[str, str]] = []

    @app.task
    async def greet(to: str, subject: str) -> None:
        got.append((to, subject))

    handles = await greet.send_many([("a@x.io", "Hi"), {"to": "b@x.io", "subject": "Yo"}])
    assert len({h.id for h in handles}) == 2
    with pytest.raises(ValueError, match="timezone"):
        greet.options(eta=dt.datetime.now())
    with pytest.raises(foxtive.ConfigError, match="priority"):
        greet.options(priority=12)
    delayed = await greet.options(delay=0.05).send("c@x.io", "Later")
    await app.pool().run_until_idle_async(timeout=20.0)
    assert sorted(got) == [("a@x.io", "Hi"), ("b@x.io", "Yo"), ("c@x.io", "Later")]
    assert delayed.queue == "default"


def test_app_config_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FOXTIVE_BROKER", "memory://")
    app = foxtive.App("env")
    assert app.broker == "memory://"
    monkeypatch.delenv("FOXTIVE_BROKER")
    assert foxtive.App("default").broker == "sqlite:///foxtive.db"
    with pytest.raises(foxtive.ConfigError, match="rate_limit"):
        app.task(rate_limit="fast")(lambda: None)
    with pytest.raises(foxtive.ConfigError, match="retry"):
        foxtive.App("x", broker="memory://", retry=3)  # type: ignore[arg-type]

    @app.task(name="dup")
    def a() -> None: ...
    with pytest.raises(foxtive.ConfigError, match="dup"):
        app.task(name="dup")(lambda: None)


def test_broker_factory_is_called_per_queue() -> None:
    made: list[str] = []

    def factory(queue: str) -> foxtive.MemoryBackend:
        made.append(queue)
        return foxtive.MemoryBackend(queue)

    app = foxtive.App("f", broker=factory)
    ran: list[int] = []

    @app.task(queue="q1")
    def t(x: int) -> None:
        ran.append(x)

    t.send_sync(1)
    assert app.pool("q1").run_until_idle(timeout=20.0)
    assert made == ["q1"] and ran == [1]


def test_pydantic_model_arguments_and_results() -> None:
    if Address is None:
        pytest.skip("pydantic is not installed")
    app = make_app(results=True)
    got: list[Any] = []

    @app.task
    def ship(order: int, to: Address) -> Address:
        got.append(to)
        return to

    h = ship.send_sync(1, Address(street="Main St", zip_code=12345))
    ship.send_sync(2, {"street": "Elm"})  # type: ignore[arg-type]
    drain(app)
    assert got == [Address(street="Main St", zip_code=12345)]
    assert h.result_sync(timeout=1) == Address(street="Main St", zip_code=12345)
    [letter] = app.backend("default").dead_letters()
    assert letter.error_type == "PayloadError" and letter.attempts == 1
    assert "'to'" in letter.error_message and "zip_code" in letter.error_message


def test_task_timeout_fails_the_attempt() -> None:
    app = make_app(retry=fast_retries(1))
    started: list[int] = []

    @app.task(timeout=0.05)
    async def slow() -> None:
        started.append(1)
        await asyncio.sleep(30)

    slow.send_sync()
    drain(app)
    assert len(started) == 2                 # first attempt + one retry
    [letter] = app.backend("default").dead_letters()
    assert letter.error_type == "TimeoutError" and letter.attempts == 2


def test_task_rate_limit_spaces_runs() -> None:
    app = make_app()
    stamps: list[float] = []

    @app.task(rate_limit="4/s")
    async def limited(i: int) -> None:
        stamps.append(time.monotonic())

    for i in range(6):
        limited.send_sync(i)
    drain(app)
    assert len(stamps) == 6
    # A burst of 4 permits, then one every 0.25 s: the 6th runs >= 0.5 s after the 1st.
    assert max(stamps) - min(stamps) >= 0.45


def test_task_retry_backoff_is_its_own() -> None:
    # The app's policy would wait a minute; the task's own waits milliseconds.
    app = make_app(retry=foxtive.RetryHandler(max_retries=3, initial_backoff=60.0,
                                              max_backoff=60.0))
    attempts: list[int] = []

    @app.task(retry_backoff=fast_retries(2))
    def flaky() -> None:
        attempts.append(1)
        raise ConnectionError("try later")

    flaky.send_sync()
    assert app.run_until_idle(timeout=20.0)
    assert len(attempts) == 3                 # the task's max_retries=2
    [letter] = app.backend("default").dead_letters()
    assert (letter.error_type, letter.attempts) == ("ConnectionError", 3)
