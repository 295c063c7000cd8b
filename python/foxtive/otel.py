"""OpenTelemetry traces of messages (``pip install foxtive[otel]``).

    mw = foxtive.OpenTelemetryMiddleware()        # the global tracer provider
    pool = WorkerPoolBuilder("emails").with_middleware(mw)...

* a **consumer** span per message handled (``process <queue>``, kind
  CONSUMER), a child of the span that published it, found in the message's
  ``traceparent`` header; an exception is recorded and sets the span's
  status to error;
* a **producer** span per publish or task send through a foxtive backend
  in this process (``send``, kind PRODUCER; inside a handler, a child of its
  consumer span), whose context goes out in ``traceparent``.

Attributes follow the OpenTelemetry messaging semantic conventions
(``messaging.system``, ``messaging.operation.type`` / ``.name``,
``messaging.destination.name``, ``messaging.message.id``,
``messaging.message.conversation_id``). Producer spans come from a hook in
:func:`foxtive._tracecontext.inject` that is ``None`` until a middleware is
built, so a process without one does no span work; ``uninstall()`` removes
it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from . import _tracecontext
from .errors import ConfigError
from .middleware import Middleware

if TYPE_CHECKING:
    from ._core import Message

__all__ = ["OpenTelemetryMiddleware"]


class OpenTelemetryMiddleware(Middleware):
    """Consumer spans for handled messages, producer spans for publishes."""

    def __init__(self, tracer_provider: Any = None, system: str = "foxtive",
                 producer_spans: bool = True) -> None:
        try:
            from opentelemetry import context, propagate, trace
            from opentelemetry.trace import SpanKind, Status, StatusCode
        except ImportError:
            raise ConfigError("OpenTelemetryMiddleware needs the OpenTelemetry API: "
                              "pip install 'foxtive[otel]'") from None
        self._context, self._propagate, self._trace = context, propagate, trace
        self._kind, self._status, self._code = SpanKind, Status, StatusCode
        self.system = system
        self.tracer = trace.get_tracer("foxtive", tracer_provider=tracer_provider)
        if producer_spans:
            _tracecontext.producer_hook = self._produce

    def uninstall(self) -> None:
        """Stop making producer spans (consumer spans go on while installed in a pool)."""
        if _tracecontext.producer_hook == self._produce:
            _tracecontext.producer_hook = None

    def _produce(self, headers: dict[str, Any] | None) -> dict[str, Any] | None:
        if headers is not None and "traceparent" in headers:
            return headers
        out = dict(headers) if headers else {}
        with self.tracer.start_as_current_span(
                "send", kind=self._kind.PRODUCER,
                attributes={"messaging.system": self.system,
                            "messaging.operation.type": "send",
                            "messaging.operation.name": "send"}):
            carrier: dict[str, str] = {}
            self._propagate.inject(carrier)
        out.update(carrier)
        return out

    async def __call__(self, message: Message,
                       call_next: Callable[[Message], Awaitable[None]]) -> None:
        carrier = {}
        for key in ("traceparent", "tracestate"):
            value = message.headers.get(key)
            if isinstance(value, bytes):
                value = value.decode("ascii", "replace")
            if isinstance(value, str):
                carrier[key] = value
        parent = self._propagate.extract(carrier)
        attributes: dict[str, Any] = {
            "messaging.system": self.system,
            "messaging.operation.type": "process",
            "messaging.operation.name": "process",
            "messaging.destination.name": message.queue,
            "messaging.message.id": message.id,
        }
        if message.correlation_id:
            attributes["messaging.message.conversation_id"] = message.correlation_id
        with self.tracer.start_as_current_span(
                f"process {message.queue}", context=parent, kind=self._kind.CONSUMER,
                attributes=attributes, record_exception=True,
                set_status_on_exception=True):
            await call_next(message)
