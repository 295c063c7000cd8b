"""foxtive.testing, the pytest plugin: run as users run it, through pytester."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aio_pika
import pytest
import redis

import foxtive
import foxtive.testing

from .rabbit_support import URL as RABBITMQ_URL

pytest_plugins = ["pytester"]

REDIS_URL = "redis://127.0.0.1:6379/0"

def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest("-p", "no:cacheprovider",
                              "-o", "asyncio_default_fixture_loop_scope=function", *args)


POOL = """
import asyncio, json, foxtive

def pool_of(handler, **kw):
    return (foxtive.WorkerPoolBuilder("t")
            .with_middleware(foxtive.RetryHandler(max_retries=2, initial_backoff=0.01,
                                                  max_backoff=0.01, jitter=False))
            .with_shutdown_timeout(kw.get("shutdown_timeout", 5.0))
            .add_worker(handler, id="h").build())
"""


def test_drain_reraises_the_first_handler_error(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(POOL + """
import pytest

async def handler(m):
    if m.body == b"bad":
        raise ValueError("boom: " + m.text())

def test_caught(foxtive_memory_backend, foxtive_runner):
    foxtive_memory_backend.publish_many_sync([b"ok", b"bad", b"ok"])
    pool = pool_of(handler)
    with pytest.raises(ValueError, match="boom: bad") as info:
        foxtive_runner.drain(pool, foxtive_memory_backend)
    assert any("worker 'h'" in n for n in info.value.__notes__)
    # The pool stopped at the failure: no retries were waited for.
    assert pool.stats()["failed"] == 1 and pool.stats()["dead_lettered"] == 0
    [err] = foxtive_runner.errors
    assert (err.worker_id, err.body, err.attempt) == ("h", b"bad", 1)

def sync_handler(m):
    raise KeyError(m.text())

def test_sync_handler_error_is_raised_too(foxtive_memory_backend, foxtive_runner):
    foxtive_memory_backend.publish_sync(b"k")
    with pytest.raises(KeyError):
        foxtive_runner.drain(pool_of(sync_handler), foxtive_memory_backend)

def test_uncaught_fails_the_test(foxtive_memory_backend, foxtive_runner):
    foxtive_memory_backend.publish_sync(b"bad")
    foxtive_runner.drain(pool_of(handler), foxtive_memory_backend)
""")
    result = run(pytester)
    result.assert_outcomes(passed=2, failed=1)
    # The failure shows the handler's own line and the error.
    result.stdout.fnmatch_lines(['*raise ValueError("boom: " + m.text())*',
                                 "*ValueError: boom: bad*"])


def test_raise_errors_false_lets_the_failure_policy_run(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(POOL + """
async def handler(m):
    if m.body == b"bad":
        raise ValueError("boom")

def test_opt_out(foxtive_memory_backend, foxtive_runner):
    foxtive_memory_backend.publish_many_sync([b"ok", b"bad", b"ok"])
    stats = foxtive_runner.drain(pool_of(handler), foxtive_memory_backend, raise_errors=False)
    assert (stats["processed"], stats["retried"], stats["dead_lettered"]) == (2, 2, 1)
    assert [e.attempt for e in foxtive_runner.errors] == [1, 2, 3]
    assert all(isinstance(e.error, ValueError) for e in foxtive_runner.errors)
    [dead] = foxtive_memory_backend.dead_letters()
    assert dead.body == b"bad"

def test_clean_run_returns_stats(foxtive_memory_backend, foxtive_runner):
    foxtive_memory_backend.publish_many_sync([b"x"] * 10)
    async def ok(m):
        pass
    assert foxtive_runner.drain(pool_of(ok), foxtive_memory_backend)["processed"] == 10
    assert foxtive_runner.errors == []

def test_not_idle_in_time_raises(foxtive_memory_backend, foxtive_runner):
    import pytest
    async def slow(m):
        await asyncio.sleep(5)
    foxtive_memory_backend.publish_sync(b"x")
    with pytest.raises(TimeoutError, match="not idle after 0.3 s"):
        foxtive_runner.drain(pool_of(slow, shutdown_timeout=0.05), foxtive_memory_backend,
                             timeout=0.3)

async def test_drain_async(foxtive_memory_backend, foxtive_runner):
    import pytest
    async def bad(m):
        raise RuntimeError("async boom")
    await foxtive_memory_backend.publish(b"x")
    with pytest.raises(RuntimeError, match="async boom"):
        await foxtive_runner.drain_async(pool_of(bad), foxtive_memory_backend)
""")
    result = run(pytester, "-o", "asyncio_mode=auto")
    result.assert_outcomes(passed=4)


def test_fixtures_give_unique_names_and_clean_up(pytester: pytest.Pytester) -> None:
    out = pytester.path / "names.jsonl"
    pytester.makepyfile(f"""
import json, foxtive, pytest

@pytest.mark.parametrize("i", range(3))
def test_names(i, foxtive_memory_backend, foxtive_rabbitmq_queue, foxtive_redis_stream,
               foxtive_rabbitmq_url, foxtive_redis_url, foxtive_runner):
    # Use the broker names for real, so there is something to clean up.
    rabbit = foxtive.RabbitMqBackend(foxtive_rabbitmq_url,
                                     foxtive.RabbitMqConsumerConfig(queue_name=foxtive_rabbitmq_queue))
    async def fail(m):
        raise foxtive.PermanentError("to the dlq")
    import asyncio
    asyncio.run(rabbit.publish(b"x"))
    pool = foxtive.WorkerPoolBuilder("t").add_worker(fail, id="f").build()
    foxtive_runner.drain(pool, rabbit, raise_errors=False)
    assert pool.stats()["dead_lettered"] == 1
    import redis
    redis.Redis.from_url(foxtive_redis_url).xadd(foxtive_redis_stream, {{"body": b"x"}})
    redis.Redis.from_url(foxtive_redis_url).set(foxtive_redis_stream + ":dlq", b"x")
    with open({str(out)!r}, "a") as f:
        f.write(json.dumps([foxtive_memory_backend.name, foxtive_rabbitmq_queue,
                            foxtive_redis_stream]) + "\\n")
""")
    result = run(pytester)
    result.assert_outcomes(passed=3)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 3
    for column in zip(*rows, strict=True):
        assert len(set(column)) == 3, column  # unique per test
        assert all(name.startswith("foxtive-test-test_names") for name in column)

    async def rabbit_queues_gone() -> None:
        conn = await aio_pika.connect(RABBITMQ_URL)
        try:
            for _, queue, _ in rows:
                for name in (queue, f"{queue}.dlq"):
                    channel = await conn.channel()
                    with pytest.raises(aio_pika.exceptions.ChannelClosed):
                        await channel.declare_queue(name, passive=True)
        finally:
            await conn.close()

    asyncio.run(rabbit_queues_gone())
    client = redis.Redis.from_url(REDIS_URL)
    for _, _, stream in rows:
        assert client.exists(stream, f"{stream}:dlq") == 0
        assert list(client.scan_iter(match=f"{stream}*")) == []


@pytest.mark.parametrize("ci", [None, "true"])
def test_unreachable_broker_skips_locally_and_fails_in_ci(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, ci: str | None
) -> None:
    monkeypatch.setenv("FOXTIVE_TEST_RABBITMQ_URL", "amqp://guest:secret@127.0.0.1:1/%2f")
    monkeypatch.setenv("FOXTIVE_TEST_REDIS_URL", "redis://127.0.0.1:1/0")
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    pytester.makepyfile("""
def test_rabbit(foxtive_rabbitmq_queue):
    pass

def test_redis(foxtive_redis_stream):
    pass
""")
    result = run(pytester, "-rsE")
    if ci is None:
        result.assert_outcomes(skipped=2)
        result.stdout.fnmatch_lines(["*RabbitMQ is not reachable at amqp://guest:***@127.0.0.1:1*",
                                     "*Redis is not reachable at redis://127.0.0.1:1/0*"])
    else:
        result.assert_outcomes(errors=2)
        result.stdout.fnmatch_lines(["*CI is set, so this fails instead of skipping*"])
    assert "secret" not in result.stdout.str()


def test_plugin_is_registered_by_the_installed_package(pytester: pytest.Pytester) -> None:
    """A fresh interpreter, no conftest: the entry point alone brings the fixtures."""
    pytester.makepyfile("""
def test_fixture_is_there(foxtive_memory_backend, foxtive_runner):
    assert foxtive_memory_backend.name.startswith("foxtive-test-test_fixture_is_there-")
""")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)


def test_our_own_suite_sees_the_plugin(foxtive_memory_backend: foxtive.MemoryBackend) -> None:
    assert isinstance(foxtive_memory_backend, foxtive.MemoryBackend)


def test_the_readme_example_passes(pytester: pytest.Pytester) -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme.split("## Testing your workers", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    pytester.makepyfile(code)
    run(pytester).assert_outcomes(passed=1)


# ------------------------------------------------------------------ apps
APP = """
import asyncio, dataclasses, pathlib, foxtive, pytest

REAL = pathlib.Path("real.db").resolve()
app = foxtive.App("shop", broker=f"sqlite:///{REAL}")   # the app's real broker: never touched

@dataclasses.dataclass
class Receipt:
    order: int
    total: float

@app.task(queue="orders")
async def place(order: int, amount: float) -> Receipt:
    if amount <= 0:
        raise ValueError(f"order {order}: amount must be positive")
    await bill.send(order, amount)                   # a task sending the next one
    return Receipt(order, amount)

@app.task(queue="billing")
def bill(order: int, amount: float) -> str:
    return f"billed {order}: {amount:.2f}"
"""


def test_foxtive_app_sends_drains_and_reads_results(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_chain_app=APP + """
def test_chain(foxtive_app):
    t = foxtive_app(app)
    handles = [place.send_sync(i, 10.0 * i) for i in (1, 2, 3)]
    stats = t.drain()
    # Both queues ran, billing after orders had sent to it.
    assert (stats["processed"], stats["failed"], stats["dead_lettered"]) == (6, 0, 0)
    assert [h.result_sync(timeout=0).total for h in handles] == [10.0, 20.0, 30.0]
    assert isinstance(handles[0].result_sync(timeout=0), Receipt)
    assert t.qsize() == 0 and t.dead_letters() == []

def test_the_next_test_starts_empty(foxtive_app):
    t = foxtive_app(app)
    assert t.qsize() == 0
    place.send_sync(9, 1.0)
    assert t.qsize("orders") == 1            # left undrained: gone after this test

def test_restored_between_tests(foxtive_app):
    assert app.broker.startswith("sqlite:///")   # restored after the previous test
    t = foxtive_app(app)
    assert app.broker == "memory://" and t.qsize() == 0

def test_real_broker_untouched():
    assert not REAL.exists()
    assert app.broker == f"sqlite:///{REAL}" and app.results is None
    assert sorted(app.tasks) == ["test_chain_app.bill", "test_chain_app.place"]
""")
    run(pytester).assert_outcomes(passed=4)
    assert not (pytester.path / "real.db").exists()


def test_foxtive_app_failures_are_raised_or_dead_lettered(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_fail_app=APP + """
def test_first_error_is_raised(foxtive_app):
    t = foxtive_app(app)
    place.send_sync(1, 5.0)
    place.send_sync(2, -1.0)
    with pytest.raises(ValueError, match="order 2: amount must be positive") as info:
        t.drain()
    assert any("task 'test_fail_app.place'" in n for n in info.value.__notes__)
    [err] = t.errors
    assert (err.task, err.attempt) == ("test_fail_app.place", 1)

def test_failure_policy_then_dead_letter(foxtive_app):
    fast = foxtive.RetryHandler(max_retries=2, initial_backoff=0.01, max_backoff=0.01,
                                jitter=False)
    t = foxtive_app(app, retry=fast)
    good, bad = place.send_sync(1, 5.0), place.send_sync(2, -1.0)
    stats = t.drain(raise_errors=False)
    assert (stats["processed"], stats["retried"], stats["dead_lettered"]) == (2, 2, 1)
    [dead] = t.dead_letters()
    assert dead.error_type == "ValueError"
    assert dead.error_message == "order 2: amount must be positive"
    assert dead.attempts == 3 and dead.headers["foxtive-task"] == "test_fail_app.place"
    assert t.dead_letters("billing") == []
    assert good.result_sync(timeout=0).total == 5.0
    with pytest.raises(foxtive.TaskError) as info:
        bad.result_sync(timeout=0)
    assert (info.value.type_name, info.value.attempts) == ("ValueError", 3)
    assert [e.attempt for e in t.errors] == [1, 2, 3]

def test_policy_restored():
    assert app.retry.max_retries == foxtive.RetryHandler().max_retries

async def test_async(foxtive_app):
    t = foxtive_app(app)
    handle = await place.send(4, 2.5)
    stats = await t.drain_async()
    assert stats["processed"] == 2
    assert (await handle.result(timeout=0)).order == 4
""")
    run(pytester, "-o", "asyncio_mode=auto").assert_outcomes(passed=4)


def test_isolated_puts_the_app_back_exactly(tmp_path: Path) -> None:
    app = foxtive.App("iso", broker=f"sqlite:///{tmp_path}/real.db")

    @app.task
    def double(x: int) -> int:
        return 2 * x

    before = dict(vars(app))
    with foxtive.testing.isolated(app) as t:
        assert app.tasks == {double.name: double} and app.retry is before["retry"]
        handles = double.send_many_sync([(1,), (2,)])  # from this thread, no loop thread
        app._run_sync(asyncio.sleep(0))  # what still needs the app's loop thread starts it
        assert t.drain()["processed"] == 2
        assert [h.result_sync(timeout=0) for h in handles] == [2, 4]
        loop_thread = app._loop_thread
        assert loop_thread is not None
    assert vars(app) == before
    assert not loop_thread.thread.is_alive()  # the test's loop thread was stopped
    assert not (tmp_path / "real.db").exists()
    with pytest.raises(RuntimeError, match="not isolated"):
        t.qsize()


def test_drain_times_out_on_a_task_still_waiting() -> None:
    app = foxtive.App("late", broker="memory://")

    @app.task
    async def later() -> None:
        pass

    with foxtive.testing.isolated(app) as t:
        later.options(delay=60.0).send_sync()
        with pytest.raises(TimeoutError, match=r"not empty after 0\.3 s"):
            t.drain(timeout=0.3)


def test_the_readme_task_example_passes(pytester: pytest.Pytester) -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme.split("### Testing tasks", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    pytester.makepyfile(code)
    run(pytester).assert_outcomes(passed=2)
    assert not (pytester.path / "foxtive.db").exists()  # the app's real broker: untouched


def test_drain_an_app_where_it_is_on_sqlite(tmp_path: Path) -> None:
    """``drain(app)`` without isolation, on a real SQLite file: queues that
    cannot count what waits get rounds until one receives nothing."""
    app = foxtive.App("onfile", broker=f"sqlite:///{tmp_path}/tasks.db")
    seen: list[str] = []

    @app.task(queue="first")
    async def first(n: int) -> None:
        await second.send(n * 10)

    @app.task(queue="second")
    def second(n: int) -> None:
        seen.append(f"second {n}")

    try:
        first.send_many_sync([(1,), (2,), (3,)])
        errors: list[foxtive.testing.HandlerError] = []
        stats = foxtive.testing.drain(app, errors=errors)
        assert (stats["processed"], stats["failed"]) == (6, 0)
        assert sorted(seen) == ["second 10", "second 20", "second 30"]
        assert errors == []
        assert foxtive.testing.drain(app)["received"] == 0  # nothing left
    finally:
        app.close()
