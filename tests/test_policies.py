"""Engine settings cross to the core once, typed, and are checked there only."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

import foxtive
from foxtive import _core


async def _handler(m: foxtive.Message) -> None: ...


@pytest.mark.parametrize(
    ("factory", "core_message"),
    [
        # Each is the core's own text (rust/foxtive-core): the Python front
        # has no check of its own that could answer first or differently.
        (lambda: foxtive.RetryHandler(initial_backoff=10, max_backoff=1),
         "max_backoff: must be >= initial_backoff (10s), got 1s"),
        (lambda: foxtive.RetryHandler(backoff_multiplier=0.5),
         "backoff_multiplier: must be a finite number >= 1.0, got 0.5"),
        (lambda: foxtive.CircuitBreakerMiddleware(failure_threshold=0),
         "failure_threshold: must be >= 1"),
        (lambda: foxtive.RateLimitMiddleware(per_second=0),
         "per_second: must be a number > 0, got 0"),
        (lambda: foxtive.RateLimitMiddleware(burst=0), "burst: must be >= 1"),
        (lambda: foxtive.PoisonPillTracker(max_failures=0), "max_failures: must be >= 1"),
        (lambda: foxtive.PoisonPillTracker(time_window=0), "time_window: must be > 0 seconds"),
        (lambda: foxtive.WorkerPoolBuilder("p").add_worker(_handler, id="h")
         .with_concurrency_limit(0).build(),
         "concurrency_limit: must be >= 1"),
    ],
)
def test_a_bad_setting_is_refused_once_with_the_cores_message(
        factory: Any, core_message: str) -> None:
    with pytest.raises(foxtive.ConfigError) as info:
        factory()
    assert str(info.value) == core_message


def test_a_negative_count_is_refused_where_it_crosses() -> None:
    with pytest.raises(foxtive.ConfigError) as front:
        foxtive.RetryHandler(max_retries=-1)
    with pytest.raises(foxtive.ConfigError) as native:
        _core.RetryPolicy(max_retries=-1)
    assert str(front.value) == str(native.value)
    assert str(front.value).startswith("max_retries:") and "-1" in str(front.value)
    # The one check is the native constructor's: it is where the error starts.
    assert front.traceback[-1].name == "__post_init__"
    with pytest.raises(foxtive.ConfigError, match=r"^burst: expected an integer, got bool"):
        foxtive.RateLimitMiddleware(burst=True)


def test_fronts_read_back_the_checked_values() -> None:
    retry = foxtive.RetryHandler(initial_backoff=dt.timedelta(milliseconds=250), max_retries=2)
    assert isinstance(retry._native, _core.RetryPolicy)
    assert (retry.initial_backoff, retry._native.initial_backoff) == (0.25, 0.25)
    assert retry._native.max_retries == 2
    assert foxtive.TimeoutMiddleware(seconds=dt.timedelta(seconds=2)).seconds == 2.0
    cfg = foxtive.BatchConfig(flush_interval=dt.timedelta(milliseconds=100))
    assert (cfg.batch_size, cfg.flush_interval) == (100, 0.1)
    # Equality and the with_* chain stay those of frozen dataclasses.
    assert retry == foxtive.RetryHandler(initial_backoff=0.25, max_retries=2)
    assert retry.with_max_retries(3)._native.max_retries == 3


def test_each_policy_adds_itself_to_the_pools_engine_settings() -> None:
    breaker = foxtive.CircuitBreakerMiddleware(failure_threshold=3)
    retry = foxtive.RetryHandler(max_retries=1)
    batching = foxtive.BatchMiddleware(batch_size=2)
    pool = (foxtive.WorkerPoolBuilder("p").add_worker(_handler, id="h")
            .with_middleware(breaker).with_middleware(retry).with_middleware(batching)
            .with_middleware(foxtive.TimeoutMiddleware(seconds=3)).build())
    assert pool.breaker is breaker and pool.retry is retry and pool.batching is batching
    assert pool.timeout == 3.0 and pool.rate_limit is None
    assert pool.concurrency_limit == 1000


def test_failure_kind_and_retry_info_are_named_not_numbered() -> None:
    kinds = {_core.FailureKind.TRANSIENT, _core.FailureKind.PERMANENT,
             _core.FailureKind.RETRY_AFTER}
    assert len(kinds) == 3
    info = foxtive.RetryInfo(attempt=2, max_retries=3, next_delay=0.5, exhausted=False,
                             poison_pill=False)
    assert (info.attempt, info.max_retries, info.next_delay) == (2, 3, 0.5)
    assert not info.exhausted and not info.poison_pill
    assert info == foxtive.RetryInfo(2, 3, 0.5, False, False)
    with pytest.raises(AttributeError):
        info.attempt = 3  # type: ignore[misc]
