"""Middleware: Python code wrapped around the handler, around-style.

:class:`Middleware` subclasses (and :class:`foxtive.TracingMiddleware`) run in
Python; order: the first added is the outermost. The engine policies
(``RetryHandler``, ``TimeoutMiddleware``, ``CircuitBreakerMiddleware``...) are
settings of the Rust core and live in :mod:`foxtive.policies`; they are
re-exported here so ``from foxtive.middleware import RetryHandler`` keeps working.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from .policies import (
    BatchConfig,
    BatchMiddleware,
    CircuitBreakerMiddleware,
    PoisonPillTracker,
    RateLimitMiddleware,
    RetryHandler,
    TimeoutMiddleware,
)

if TYPE_CHECKING:
    from ._core import Message

__all__ = [
    "BatchConfig",
    "BatchMiddleware",
    "CircuitBreakerMiddleware",
    "Middleware",
    "PoisonPillTracker",
    "RateLimitMiddleware",
    "RetryHandler",
    "TimeoutMiddleware",
]

CallNext = Callable[["Message"], Awaitable[None]]


class Middleware:
    """A Python middleware. Override ``__call__``; call ``call_next`` to go on.

    ``async def __call__(self, message, call_next): ...; await call_next(message); ...``
    Raising fails the message (the failure policy runs); not calling
    ``call_next`` skips the handler (the message is acked unless settled).
    """

    async def __call__(self, message: Message, call_next: CallNext) -> None:
        await call_next(message)
