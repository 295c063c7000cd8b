"""Engine policies: configured in Python, run in the Rust engine.

Retry with backoff, poison-pill detection, the circuit breaker, rate limit,
timeout and batching are settings of the core, not code around the handler:
each class here is a thin, frozen, typed front for one of them. They are
added with ``WorkerPoolBuilder.with_middleware`` like Python middleware (and
stay importable from :mod:`foxtive.middleware`), but none wraps the handler;
see :mod:`foxtive.middleware` for the Python wrappers.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from . import _core
from ._config import FrozenConfig, integer, seconds
from .dlq import DeadLetterQueue
from .errors import ConfigError

__all__ = [
    "BatchConfig",
    "BatchMiddleware",
    "CircuitBreakerMiddleware",
    "PoisonPillTracker",
    "RateLimitMiddleware",
    "RetryHandler",
    "TimeoutMiddleware",
]


@dataclasses.dataclass(frozen=True)
class PoisonPillTracker(FrozenConfig):
    """A message that fails ``max_failures`` times within ``time_window``
    seconds is a poison pill: dead-lettered (``poison_pill=True``) instead of
    retried. Memory is bounded (oldest keys evicted); keys are the message id,
    else a hash of the body; a success clears the record. A message delivered
    more than ``max(max_retries + 1, max_failures)`` times without ever being
    settled (it crashes the worker process) is dead-lettered on arrival."""

    max_failures: int = 10
    time_window: float = 3600.0

    def __post_init__(self) -> None:
        self._set("max_failures", integer("max_failures", self.max_failures, minimum=1))
        self._set("time_window", seconds("time_window", self.time_window, positive=True))


@dataclasses.dataclass(frozen=True)
class CircuitBreakerMiddleware(FrozenConfig):
    """Stop calling handlers that keep failing.

    Closed → open after ``failure_threshold`` consecutive failures. While
    open, no handler is called: no new messages are fetched, and messages
    already fetched go back to the broker delayed until the breaker half-opens
    (not counted as attempts). Half-open admits one probe at a time;
    ``success_threshold`` successful probes close it, a failed probe reopens
    it. State: ``pool.stats()["circuit_breaker"]``."""

    failure_threshold: int = 5
    reset_timeout: float = 30.0
    success_threshold: int = 1

    def __post_init__(self) -> None:
        self._set("failure_threshold",
                  integer("failure_threshold", self.failure_threshold, minimum=1))
        self._set("reset_timeout", seconds("reset_timeout", self.reset_timeout))
        self._set("success_threshold",
                  integer("success_threshold", self.success_threshold, minimum=1))


@dataclasses.dataclass(frozen=True)
class RateLimitMiddleware(FrozenConfig):
    """At most ``per_second`` messages a second reach the handlers, in bursts
    of up to ``burst`` (GCRA). Messages wait for a permit; none is failed for
    being early.

    Without ``redis_url`` the limit is this process's (governor). With it,
    every pool using the same ``key`` (default ``foxtive:rate:<pool name>``)
    on any process or machine shares one budget, decided in Redis by one Lua
    call per message with the server's clock. If Redis cannot be reached the
    process limits itself locally at the same rate until it can."""

    per_second: float = 100.0
    burst: int = 10
    redis_url: str | None = None
    key: str | None = None

    def __repr__(self) -> str:
        url = None if self.redis_url is None else _core.redact_url(self.redis_url)
        return (f"RateLimitMiddleware(per_second={self.per_second}, burst={self.burst}, "
                f"redis_url={url!r}, key={self.key!r})")

    def __post_init__(self) -> None:
        if isinstance(self.per_second, bool) or not isinstance(self.per_second, int | float) \
                or not self.per_second > 0 or self.per_second == float("inf"):
            raise ConfigError(f"per_second: must be a number > 0, got {self.per_second!r}")
        self._set("per_second", float(self.per_second))
        self._set("burst", integer("burst", self.burst, minimum=1))
        if self.redis_url is not None and not isinstance(self.redis_url, str):
            raise ConfigError("redis_url: expected a Redis URL string (redis://, rediss://, unix://)")
        if self.key is not None and (not isinstance(self.key, str) or not self.key):
            raise ConfigError("key: expected a non-empty string")


@dataclasses.dataclass(frozen=True)
class RetryHandler(FrozenConfig):
    """Retry failed messages with exponential backoff, then dead-letter.

    ``max_retries`` counts retries after the first attempt (3 → at most 4
    attempts). Delay before retry *n*: ``min(max_backoff, initial_backoff *
    backoff_multiplier^(n-1))``; with ``jitter`` it is drawn uniformly from
    ``[delay/2, delay]``, so it never exceeds ``max_backoff``. Retries wait in
    the broker, never in the worker.

    ``dead_letter_queue``: a :class:`foxtive.MemoryDLQ`, :class:`foxtive.FileDLQ`
    or :class:`foxtive.RedisDLQ` that keeps dead letters instead of the
    broker's own dead-letter queue (the message is acked once the store kept it).
    """

    max_retries: int = 5
    initial_backoff: float = 1.0
    max_backoff: float = 60.0
    backoff_multiplier: float = 2.0
    jitter: bool = True
    dead_letter_queue: Any = None
    poison_pill_tracker: Any = None

    def __post_init__(self) -> None:
        self._set("max_retries", integer("max_retries", self.max_retries, minimum=0))
        self._set("initial_backoff", seconds("initial_backoff", self.initial_backoff))
        self._set("max_backoff", seconds("max_backoff", self.max_backoff))
        self._set("backoff_multiplier", float(self.backoff_multiplier))
        self._set("jitter", bool(self.jitter))
        if self.dead_letter_queue is not None and not isinstance(
            self.dead_letter_queue, DeadLetterQueue
        ):
            raise ConfigError(
                "dead_letter_queue: expected foxtive.MemoryDLQ(), FileDLQ(path), "
                f"RedisDLQ(url, key) or None, got {type(self.dead_letter_queue).__name__}"
            )
        if self.poison_pill_tracker is not None and not isinstance(
            self.poison_pill_tracker, PoisonPillTracker
        ):
            raise ConfigError("poison_pill_tracker: expected a foxtive.PoisonPillTracker or None")
        # Validates max_backoff >= initial_backoff and the multiplier.
        self._policy()

    def _policy(self) -> _core.RetryPolicy:
        return _core.RetryPolicy(
            self.max_retries,
            self.initial_backoff,
            self.max_backoff,
            self.backoff_multiplier,
            self.jitter,
        )


@dataclasses.dataclass(frozen=True)
class TimeoutMiddleware(FrozenConfig):
    """Cut off a message's processing after ``seconds``; the message fails with
    ``TimeoutError`` and is settled exactly once. Async handlers are
    cancelled; sync handlers are abandoned (their late result is ignored).
    A worker's own ``timeout`` takes precedence."""

    seconds: float = 25.0

    def __post_init__(self) -> None:
        self._set("seconds", seconds("seconds", self.seconds, positive=True))


@dataclasses.dataclass(frozen=True)
class BatchConfig(FrozenConfig):
    """A batch is handed over when it holds ``batch_size`` messages or
    ``flush_interval`` seconds after its first message arrived (and at
    shutdown), whichever comes first."""

    batch_size: int = 100
    flush_interval: float = 5.0

    def __post_init__(self) -> None:
        self._set("batch_size", integer("batch_size", self.batch_size, minimum=1))
        self._set("flush_interval", seconds("flush_interval", self.flush_interval, positive=True))


class BatchMiddleware:
    """Hand ``foxtive.BatchWorker`` workers their messages in batches.

    Each message is settled on its own: one the batch handler settled itself
    keeps that settlement; the others are acked when ``process_batch``
    returns, and run the failure policy when it raises. A worker's
    ``concurrency`` caps how many messages can wait in a batch, so keep it at
    least ``batch_size``. Per-message Python middleware does not wrap batches."""

    def __init__(self, config: BatchConfig | None = None, **kwargs: Any) -> None:
        if config is not None and kwargs:
            raise ConfigError("config: pass a BatchConfig or keyword arguments, not both")
        if config is not None and not isinstance(config, BatchConfig):
            raise ConfigError("config: expected a foxtive.BatchConfig")
        self.config = config if config is not None else BatchConfig(**kwargs)

    def __repr__(self) -> str:
        return f"BatchMiddleware({self.config!r})"

