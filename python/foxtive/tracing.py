"""Tracing: a span per message, logged through ``logging`` (logger ``foxtive``),
with W3C trace context carried across queues in the ``traceparent`` header.

Inside a traced handler, ``foxtive.tracing.current()`` is the active span,
and every ``publish`` through a foxtive backend adds a ``traceparent`` header
(unless the caller set one), so the next stage of a pipeline continues the
same trace. The trace context itself lives in :mod:`foxtive._tracecontext`
(which every backend imports); this module adds the middleware.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from ._tracecontext import Span, activate, current, deactivate, inject, span_from
from .middleware import Middleware

if TYPE_CHECKING:
    from ._core import Message

__all__ = ["Span", "TracingMiddleware", "current", "inject"]


class TracingMiddleware(Middleware):
    """A span per message: start and outcome logged with message id, queue,
    attempt, worker, trace and span ids; ``traceparent`` read from the
    message and written to what the handler publishes."""

    def __init__(self, service_name: str = "foxtive") -> None:
        self.service_name = service_name
        self._log = logging.getLogger("foxtive")

    async def __call__(self, message: Message,
                       call_next: Callable[[Message], Awaitable[None]]) -> None:
        span = span_from(message.headers)
        fields = {
            "service": self.service_name,
            "message_id": message.id,
            "queue": message.queue,
            "attempt": message.attempt,
            "worker": message.worker_id,
            "trace_id": span.trace_id,
            "span_id": span.span_id,
            "parent_span_id": span.parent_id,
        }
        log = self._log
        log.info("message %s received from %s (attempt %d) trace=%s", message.id,
                 message.queue, message.attempt, span.trace_id, extra=fields)
        token = activate(span)
        start = time.perf_counter()
        try:
            await call_next(message)
        except BaseException as exc:
            log.warning("message %s failed after %.1f ms: %s", message.id,
                        (time.perf_counter() - start) * 1000, type(exc).__name__,
                        extra={**fields, "outcome": "failure", "error_type": type(exc).__name__})
            raise
        finally:
            deactivate(token)
        log.info("message %s processed in %.1f ms", message.id,
                 (time.perf_counter() - start) * 1000, extra={**fields, "outcome": "success"})
