"""Middleware: configured in Python, run in Rust where it can be.

Rust-side middleware (``RetryHandler``, ``TimeoutMiddleware``) configure the
core; :class:`Middleware` subclasses wrap the handler in Python, around-style.
Order: the first added is the outermost.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from . import _core
from ._config import FrozenConfig, integer, seconds

if TYPE_CHECKING:
    from ._core import Message

__all__ = ["Middleware", "RetryHandler", "TimeoutMiddleware", "TracingMiddleware"]

CallNext = Callable[["Message"], Awaitable[None]]


class Middleware:
    """A Python middleware. Override ``__call__``; call ``call_next`` to go on.

    ``async def __call__(self, message, call_next): ...; await call_next(message); ...``
    Raising fails the message (the failure policy runs); not calling
    ``call_next`` skips the handler (the message is acked unless settled).
    """

    async def __call__(self, message: Message, call_next: CallNext) -> None:
        await call_next(message)


@dataclasses.dataclass(frozen=True)
class RetryHandler(FrozenConfig):
    """Retry failed messages with exponential backoff, then dead-letter.

    ``max_retries`` counts retries after the first attempt (3 → at most 4
    attempts). Delay before retry *n*: ``min(max_backoff, initial_backoff *
    backoff_multiplier^(n-1))``; with ``jitter`` it is drawn uniformly from
    ``[delay/2, delay]``, so it never exceeds ``max_backoff``. Retries wait in
    the broker, never in the worker.
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


class TracingMiddleware(Middleware):
    """Log each message's start and outcome through ``logging`` (logger ``foxtive``)."""

    def __init__(self, service_name: str = "foxtive") -> None:
        self.service_name = service_name
        self._log = logging.getLogger("foxtive")

    async def __call__(self, message: Message, call_next: CallNext) -> None:
        log = self._log
        start = time.perf_counter()
        log.info(
            "message %s received from %s (attempt %d)",
            message.id,
            message.queue,
            message.attempt,
            extra={"service": self.service_name},
        )
        try:
            await call_next(message)
        except BaseException as exc:
            log.warning(
                "message %s failed after %.1f ms: %s",
                message.id,
                (time.perf_counter() - start) * 1000,
                type(exc).__name__,
                extra={"service": self.service_name},
            )
            raise
        log.debug(
            "message %s processed in %.1f ms",
            message.id,
            (time.perf_counter() - start) * 1000,
            extra={"service": self.service_name},
        )
