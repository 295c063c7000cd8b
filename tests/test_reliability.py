"""Circuit breaker, rate limit and poison pills over the memory backend."""

from __future__ import annotations

import time
from typing import Any

import pytest

import foxtive

from .conftest import fast_retries
from .test_python_backend import ListBackend


def test_breaker_opens_holds_probes_and_closes_without_losing_messages(
    memory: foxtive.MemoryBackend,
) -> None:
    down = True
    calls: list[tuple[str, bool]] = []
    pool_ref: list[foxtive.WorkerPool] = []

    async def send(m: foxtive.Message) -> None:
        nonlocal down
        state = pool_ref[0].stats()["circuit_breaker"]
        calls.append((state, down))
        if down:
            failures = sum(1 for _, was_down in calls if was_down)
            if failures >= 3:
                down = False  # the dependency recovers once the breaker has opened
            raise ConnectionError("smtp down")

    memory.publish_many_sync([str(i).encode() for i in range(20)])
    pool = (
        foxtive.WorkerPoolBuilder("p")
        .with_concurrency_limit(1)
        .with_middleware(foxtive.CircuitBreakerMiddleware(
            failure_threshold=3, reset_timeout=0.3, success_threshold=2))
        .with_middleware(fast_retries(5))
        .add_worker(send, id="smtp")
        .build()
    )
    pool_ref.append(pool)
    assert pool.stats()["circuit_breaker"] == "closed"
    assert pool.run_until_idle(memory, timeout=20)
    # The handler is never called while the breaker is open.
    assert all(state != "open" for state, _ in calls)
    # After the third failure the next call is a half-open probe.
    assert [s for s, _ in calls][3] == "half_open"
    s = pool.stats()
    assert s["processed"] == 20 and s["dead_lettered"] == 0  # nothing lost
    assert s["failed"] == 3
    assert s["circuit_breaker"] == "closed"
    assert s["circuit_breaker_transitions"] == 3  # closed→open→half_open→closed


def test_rate_limit_holds_the_rate_and_fails_nothing(memory: foxtive.MemoryBackend) -> None:
    stamps: list[float] = []

    async def handler(m: foxtive.Message) -> None:
        stamps.append(time.monotonic())

    memory.publish_many_sync([b"x"] * 200)
    pool = (
        foxtive.WorkerPoolBuilder("p")
        .with_middleware(foxtive.RateLimitMiddleware(per_second=50, burst=1))
        .add_worker(handler, id="h").build()
    )
    assert pool.run_until_idle(memory, timeout=30)
    assert len(stamps) == 200
    rate = (len(stamps) - 1) / (stamps[-1] - stamps[0])
    assert 45 <= rate <= 55, rate
    s = pool.stats()
    assert s["processed"] == 200 and s["failed"] == 0


def test_poison_pill_tracker_dead_letters_before_retries_run_out(
    memory: foxtive.MemoryBackend,
) -> None:
    calls = 0

    async def handler(m: foxtive.Message) -> None:
        nonlocal calls
        calls += 1
        raise ValueError("always")

    memory.publish_sync(b"poison", message_id="p1")
    retry = foxtive.RetryHandler(
        max_retries=10, initial_backoff=0.001, max_backoff=0.01, jitter=False,
        poison_pill_tracker=foxtive.PoisonPillTracker(max_failures=3, time_window=60),
    )
    pool = foxtive.WorkerPoolBuilder("p").with_middleware(retry).add_worker(handler, id="h").build()
    assert pool.run_until_idle(memory, timeout=10)
    assert calls == 3
    [dead] = memory.dead_letters()
    assert dead.poison_pill is True and dead.attempts == 3


async def test_message_that_keeps_coming_back_unsettled_is_a_poison_pill() -> None:
    """A delivery count beyond every possible retry means the message keeps
    killing its worker: it is dead-lettered on arrival, the handler never runs."""
    backend = ListBackend()
    backend.ready.append(("crasher", b"boom", {"x-foxtive-attempt": 11}))
    backend.ready.append(("fine", b"ok", {}))
    seen: list[bytes] = []

    async def handler(m: foxtive.Message) -> None:
        seen.append(m.body)

    pool = (
        foxtive.WorkerPoolBuilder("p").with_middleware(fast_retries(3))
        .add_worker(handler, id="h").build()
    )
    assert await pool.run_until_idle_async(backend, timeout=10)
    assert seen == [b"ok"]
    [record] = backend.dead_letter_records  # type: ignore[attr-defined]
    assert record["id"] == "crasher" and record["poison_pill"] is True
    assert record["error_type"] == "PoisonPill"


@pytest.mark.parametrize(
    ("factory", "needle"),
    [
        (lambda: foxtive.CircuitBreakerMiddleware(failure_threshold=0), "failure_threshold"),
        (lambda: foxtive.CircuitBreakerMiddleware(success_threshold=0), "success_threshold"),
        (lambda: foxtive.CircuitBreakerMiddleware(reset_timeout=-1), "reset_timeout"),
        (lambda: foxtive.RateLimitMiddleware(per_second=0), "per_second"),
        (lambda: foxtive.RateLimitMiddleware(burst=0), "burst"),
        (lambda: foxtive.PoisonPillTracker(max_failures=0), "max_failures"),
        (lambda: foxtive.PoisonPillTracker(time_window=0), "time_window"),
        (lambda: foxtive.RetryHandler(poison_pill_tracker=3), "poison_pill_tracker"),
    ],
)
def test_bad_reliability_settings(factory: Any, needle: str) -> None:
    with pytest.raises(foxtive.ConfigError, match=needle):
        factory()


def test_defaults() -> None:
    cb = foxtive.CircuitBreakerMiddleware()
    assert (cb.failure_threshold, cb.reset_timeout, cb.success_threshold) == (5, 30.0, 1)
    rl = foxtive.RateLimitMiddleware()
    assert (rl.per_second, rl.burst) == (100.0, 10)
    pp = foxtive.PoisonPillTracker()
    assert (pp.max_failures, pp.time_window) == (10, 3600.0)


SHARED_WORKER = """
import sys, time, foxtive
key, n, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
memory = foxtive.MemoryBackend("shared")
memory.publish_many_sync([b"x"] * n)
stamps = []
async def handler(m):
    stamps.append(time.time())
pool = (foxtive.WorkerPoolBuilder("p")
        .with_middleware(foxtive.RateLimitMiddleware(
            per_second=20, burst=1, redis_url="redis://127.0.0.1:6379/0", key=key))
        .add_worker(handler, id="h").build())
print("READY", flush=True)
sys.stdin.readline()  # start together
assert pool.run_until_idle(memory, timeout=60)
open(out, "w").write("\\n".join(map(str, stamps)))
"""


def test_shared_rate_limit_holds_across_two_processes(tmp_path: Any) -> None:
    import subprocess
    import sys
    import uuid

    import redis

    key = f"foxtive-test:rate:{uuid.uuid4().hex}"
    procs = []
    try:
        for i in range(2):
            p = subprocess.Popen(
                [sys.executable, "-c", SHARED_WORKER, key, "40", str(tmp_path / f"{i}.txt")],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            )
            assert p.stdout is not None and p.stdout.readline().strip() == "READY"
            procs.append(p)
        for p in procs:
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        for p in procs:
            assert p.wait(timeout=60) == 0
        stamps = sorted(
            float(line) for i in range(2) for line in (tmp_path / f"{i}.txt").read_text().split()
        )
        assert len(stamps) == 80
        rate = (len(stamps) - 1) / (stamps[-1] - stamps[0])
        assert 18 <= rate <= 22, rate  # one budget of 20/s, not 2 x 20
    finally:
        for p in procs:
            p.kill()
        redis.Redis(host="127.0.0.1", port=6379).delete(key)


def test_shared_rate_limit_repr_hides_the_password() -> None:
    rl = foxtive.RateLimitMiddleware(redis_url="redis://:s3cret@127.0.0.1:6379/0")
    assert "s3cret" not in repr(rl)
