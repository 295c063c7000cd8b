"""Tracing: a span per message, logged through ``logging`` (logger ``foxtive``),
with W3C trace context carried across queues in the ``traceparent`` header.

Inside a traced handler, ``foxtive.tracing.current()`` is the active span,
and every ``publish`` through a foxtive backend adds a ``traceparent`` header
(unless the caller set one), so the next stage of a pipeline continues the
same trace.
"""

from __future__ import annotations

import contextvars
import dataclasses
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from .middleware import Middleware

if TYPE_CHECKING:
    from ._core import Message

__all__ = ["Span", "TracingMiddleware", "current", "inject"]

_TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")


@dataclasses.dataclass(frozen=True, slots=True)
class Span:
    """One message's processing: ids in W3C form."""

    trace_id: str
    span_id: str
    parent_id: str | None
    flags: str = "01"

    @property
    def traceparent(self) -> str:
        return f"00-{self.trace_id}-{self.span_id}-{self.flags}"


_current: contextvars.ContextVar[Span | None] = contextvars.ContextVar(
    "foxtive_span", default=None
)


def current() -> Span | None:
    """The span of the message being handled, if a TracingMiddleware runs."""
    return _current.get()


def inject(headers: dict[str, Any] | None) -> dict[str, Any] | None:
    """Headers with the current ``traceparent`` added (a no-op outside a span)."""
    span = _current.get()
    if span is None or (headers is not None and "traceparent" in headers):
        return headers
    out = dict(headers) if headers else {}
    out["traceparent"] = span.traceparent
    return out


def _parse(value: Any) -> tuple[str, str, str] | None:
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    if not isinstance(value, str):
        return None
    m = _TRACEPARENT.match(value.strip().lower())
    if m is None or m.group(1) == "0" * 32 or m.group(2) == "0" * 16:
        return None
    return m.group(1), m.group(2), m.group(3)


class TracingMiddleware(Middleware):
    """A span per message: start and outcome logged with message id, queue,
    attempt, worker, trace and span ids; ``traceparent`` read from the
    message and written to what the handler publishes."""

    def __init__(self, service_name: str = "foxtive") -> None:
        self.service_name = service_name
        self._log = logging.getLogger("foxtive")

    async def __call__(self, message: Message,
                       call_next: Callable[[Message], Awaitable[None]]) -> None:
        parent = _parse(message.headers.get("traceparent"))
        span = Span(
            trace_id=parent[0] if parent else secrets.token_hex(16),
            span_id=secrets.token_hex(8),
            parent_id=parent[1] if parent else None,
            flags=parent[2] if parent else "01",
        )
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
        token = _current.set(span)
        start = time.perf_counter()
        try:
            await call_next(message)
        except BaseException as exc:
            log.warning("message %s failed after %.1f ms: %s", message.id,
                        (time.perf_counter() - start) * 1000, type(exc).__name__,
                        extra={**fields, "outcome": "failure", "error_type": type(exc).__name__})
            raise
        finally:
            _current.reset(token)
        log.info("message %s processed in %.1f ms", message.id,
                 (time.perf_counter() - start) * 1000, extra={**fields, "outcome": "success"})
