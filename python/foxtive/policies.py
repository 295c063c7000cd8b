"""Engine policies: configured in Python, run in the Rust engine.

Retry with backoff, poison-pill detection, the circuit breaker, rate limit,
timeout and batching are settings of the core, not code around the handler:
each class here is a thin, frozen, typed front for one ``_core`` settings
object, which the core checks when it is built (these classes check nothing
themselves). They are added with ``WorkerPoolBuilder.with_middleware`` like
Python middleware (and stay importable from :mod:`foxtive.middleware`), but
none wraps the handler: each adds itself to the pool's
:class:`EngineSettings`. See :mod:`foxtive.middleware` for the Python wrappers.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from . import _core
from ._config import FrozenConfig
from .dlq import DeadLetterQueue
from .errors import ConfigError

__all__ = [
    "BatchConfig",
    "BatchMiddleware",
    "CircuitBreakerMiddleware",
    "EnginePolicy",
    "EngineSettings",
    "PoisonPillTracker",
    "RateLimitMiddleware",
    "RetryHandler",
    "TimeoutMiddleware",
]


class EnginePolicy:
    """A setting of the engine, added to a pool with ``with_middleware``."""

    __slots__ = ()

    def _add_to(self, settings: EngineSettings) -> None:
        """Put this policy where the pool's engine settings keep it."""
        raise NotImplementedError


def _front(front: Any, native: Any, *names: str) -> None:
    """Keep the checked ``_core`` object and show its values (normalised:
    a ``timedelta`` reads back as float seconds) as the front's fields."""
    object.__setattr__(front, "_native", native)
    for name in names:
        object.__setattr__(front, name, getattr(native, name))


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
    _native: _core.PoisonPillPolicy = dataclasses.field(
        init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _front(self, _core.PoisonPillPolicy(max_failures=self.max_failures,
                                            time_window=self.time_window),
               "max_failures", "time_window")


@dataclasses.dataclass(frozen=True)
class CircuitBreakerMiddleware(FrozenConfig, EnginePolicy):
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
    _native: _core.CircuitBreakerPolicy = dataclasses.field(
        init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _front(self, _core.CircuitBreakerPolicy(failure_threshold=self.failure_threshold,
                                                reset_timeout=self.reset_timeout,
                                                success_threshold=self.success_threshold),
               "failure_threshold", "reset_timeout", "success_threshold")

    def _add_to(self, settings: EngineSettings) -> None:
        settings.breaker = self


@dataclasses.dataclass(frozen=True)
class RateLimitMiddleware(FrozenConfig, EnginePolicy):
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
    _native: _core.RateLimitPolicy = dataclasses.field(
        init=False, repr=False, compare=False)

    def __repr__(self) -> str:
        url = None if self.redis_url is None else _core.redact_url(self.redis_url)
        return (f"RateLimitMiddleware(per_second={self.per_second}, burst={self.burst}, "
                f"redis_url={url!r}, key={self.key!r})")

    def __post_init__(self) -> None:
        _front(self, _core.RateLimitPolicy(per_second=self.per_second, burst=self.burst,
                                           redis_url=self.redis_url, key=self.key),
               "per_second", "burst", "redis_url", "key")

    def _add_to(self, settings: EngineSettings) -> None:
        settings.rate_limit = self


@dataclasses.dataclass(frozen=True)
class RetryHandler(FrozenConfig, EnginePolicy):
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
    _native: _core.RetryPolicy = dataclasses.field(
        init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # These two are Python objects, not settings the core could check.
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
        _front(self, _core.RetryPolicy(max_retries=self.max_retries,
                                       initial_backoff=self.initial_backoff,
                                       max_backoff=self.max_backoff,
                                       backoff_multiplier=self.backoff_multiplier,
                                       jitter=self.jitter),
               "max_retries", "initial_backoff", "max_backoff", "backoff_multiplier", "jitter")

    def _add_to(self, settings: EngineSettings) -> None:
        settings.retry = self


@dataclasses.dataclass(frozen=True)
class TimeoutMiddleware(FrozenConfig, EnginePolicy):
    """Cut off a message's processing after ``seconds``; the message fails with
    ``TimeoutError`` and is settled exactly once. Async handlers are
    cancelled; sync handlers are abandoned (their late result is ignored).
    A worker's own ``timeout`` takes precedence."""

    seconds: float = 25.0
    _native: _core.TimeoutPolicy = dataclasses.field(
        init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _front(self, _core.TimeoutPolicy(seconds=self.seconds), "seconds")

    def _add_to(self, settings: EngineSettings) -> None:
        settings.timeout = self


@dataclasses.dataclass(frozen=True)
class BatchConfig(FrozenConfig):
    """A batch is handed over when it holds ``batch_size`` messages or
    ``flush_interval`` seconds after its first message arrived (and at
    shutdown), whichever comes first."""

    batch_size: int = 100
    flush_interval: float = 5.0
    _native: _core.BatchPolicy = dataclasses.field(
        init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _front(self, _core.BatchPolicy(batch_size=self.batch_size,
                                       flush_interval=self.flush_interval),
               "batch_size", "flush_interval")


class BatchMiddleware(EnginePolicy):
    """Hand ``foxtive.BatchWorker`` workers their messages in batches.

    Each message is settled on its own: one the batch handler settled itself
    keeps that settlement; the others are acked when ``process_batch``
    returns, and run the failure policy when it raises. A worker's
    ``concurrency`` caps how many messages can wait in a batch, so keep it at
    least ``batch_size``. Per-message Python middleware does not wrap batches."""

    __slots__ = ("_config",)

    def __init__(self, config: BatchConfig | None = None, **kwargs: Any) -> None:
        if config is not None and kwargs:
            raise ConfigError("config: pass a BatchConfig or keyword arguments, not both")
        if config is not None and not isinstance(config, BatchConfig):
            raise ConfigError("config: expected a foxtive.BatchConfig")
        self._config = config if config is not None else BatchConfig(**kwargs)

    @property
    def config(self) -> BatchConfig:
        return self._config

    def __repr__(self) -> str:
        return f"BatchMiddleware({self.config!r})"

    def _add_to(self, settings: EngineSettings) -> None:
        settings.batching = self


@dataclasses.dataclass
class EngineSettings:
    """The engine policies a pool was given (each added itself, last one of a
    kind wins), and the ``_core.EngineConfig`` they make with the pool's own
    settings."""

    retry: RetryHandler = dataclasses.field(default_factory=RetryHandler)
    breaker: CircuitBreakerMiddleware | None = None
    rate_limit: RateLimitMiddleware | None = None
    timeout: TimeoutMiddleware | None = None
    batching: BatchMiddleware | None = None

    def engine_config(self, *, pool: str, concurrency_limit: Any, strategy: str,
                      workers: list[_core.WorkerConfig], lanes: list[bool]
                      ) -> _core.EngineConfig:
        """Checked by the core (``ConfigError`` names what is wrong)."""
        retry, breaker, rate = self.retry, self.breaker, self.rate_limit
        tracker, dlq = retry.poison_pill_tracker, retry.dead_letter_queue
        return _core.EngineConfig(
            pool=pool, concurrency_limit=concurrency_limit, workers=workers,
            strategy=strategy, lanes=lanes, retry=retry._native,
            breaker=None if breaker is None else breaker._native,
            rate_limit=None if rate is None else rate._native,
            poison=None if tracker is None else tracker._native,
            dead_letter_store=None if dlq is None else dlq._native,
        )
