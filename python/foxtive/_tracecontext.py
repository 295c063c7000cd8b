"""W3C trace context (``traceparent``): the active span, read from a message's
headers and written into what is published while it is active.

A leaf: it imports nothing of foxtive, so every backend can ``inject`` and
:mod:`foxtive.tracing` can start spans without either importing the other.
"""

from __future__ import annotations

import contextvars
import dataclasses
import re
import secrets
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["Span", "activate", "current", "deactivate", "extract", "inject", "span_from"]

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


def activate(span: Span) -> contextvars.Token[Span | None]:
    """Make ``span`` the current one; undo with :func:`deactivate`."""
    return _current.set(span)


def deactivate(token: contextvars.Token[Span | None]) -> None:
    _current.reset(token)


#: Set by ``foxtive.OpenTelemetryMiddleware``: makes a producer span and
#: returns the headers carrying it. None (no work) until one is built.
producer_hook: Callable[[dict[str, Any] | None], dict[str, Any] | None] | None = None


def inject(headers: dict[str, Any] | None) -> dict[str, Any] | None:
    """Headers with the current ``traceparent`` added (a no-op outside a span)."""
    if producer_hook is not None:
        return producer_hook(headers)
    span = _current.get()
    if span is None or (headers is not None and "traceparent" in headers):
        return headers
    out = dict(headers) if headers else {}
    out["traceparent"] = span.traceparent
    return out


def extract(value: Any) -> tuple[str, str, str] | None:
    """``(trace_id, parent span_id, flags)`` of a ``traceparent`` value, or
    None when it is absent or malformed."""
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    if not isinstance(value, str):
        return None
    m = _TRACEPARENT.match(value.strip().lower())
    if m is None or m.group(1) == "0" * 32 or m.group(2) == "0" * 16:
        return None
    return m.group(1), m.group(2), m.group(3)


def span_from(headers: Mapping[str, Any]) -> Span:
    """A new span continuing the trace in ``headers`` (a new trace without one)."""
    parent = extract(headers.get("traceparent"))
    return Span(
        trace_id=parent[0] if parent else secrets.token_hex(16),
        span_id=secrets.token_hex(8),
        parent_id=parent[1] if parent else None,
        flags=parent[2] if parent else "01",
    )
