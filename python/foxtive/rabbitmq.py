"""RabbitMQ: consumer settings and the backend (the hot path runs in Rust, on lapin).

    backend = foxtive.RabbitMqBackend(
        "amqp://guest:guest@localhost:5672/%2f",
        foxtive.RabbitMqConsumerConfig(queue_name="emails", prefetch_count=100),
    )

What the backend guarantees:

* Acknowledgements go back in batches (``basic.ack multiple`` for contiguous
  tags), only after the handler succeeded, and never on a channel other than
  the one a delivery came from (after a reconnection the broker redelivers).
* Retries wait in the broker, in one TTL queue per delay bucket
  (``{retry_queue_prefix}.{milliseconds}``, delays rounded to two significant
  digits, unused buckets expire), dead-lettering back to the main queue: a
  long delay never holds back a short one. The copy is persistent, confirmed
  by the broker before the original is acknowledged, and keeps the body,
  properties and headers, with ``x-foxtive-attempt`` set to the next attempt.
* Dead letters go to ``{queue}.dlq`` the same way, with ``x-foxtive-error-type``,
  ``x-foxtive-error``, ``x-foxtive-attempts``, ``x-foxtive-failed-at``,
  ``x-foxtive-worker``, ``x-foxtive-poison-pill`` and ``x-foxtive-source-queue``.
  Copies drop a per-message ``expiration`` (it would cut a delay short or drop
  the dead letter).
* ``message.attempt`` is durable: ``x-foxtive-attempt`` (retry copies) plus the
  broker's ``x-delivery-count`` (quorum queues) for redeliveries.
* A lost connection or channel is rebuilt in the background (exponential
  backoff); ``state``, ``reconnect_attempts`` and ``consecutive_failures``
  show how it goes. The first connection, when a pool starts, fails fast.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import os
import socket
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from . import _core
from ._config import FrozenConfig, integer, seconds
from .backends import NativeBackend
from .dlq import NativeDeadLetterQueue
from .errors import ConfigError

__all__ = ["RabbitMqBackend", "RabbitMqConsumerConfig"]

_QUEUE_TYPES = ("classic", "quorum")
_EXCHANGE_TYPES = ("direct", "topic", "fanout", "headers")


def _default_consumer_tag() -> str:
    host = socket.gethostname()[:64] or "host"
    return f"foxtive-{host}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _name(field: str, value: Any, *, allow_none: bool = False, allow_empty: bool = False) -> Any:
    if value is None and allow_none:
        return None
    if not isinstance(value, str):
        raise ConfigError(f"{field}: expected a string, got {type(value).__name__}")
    if not value and not allow_empty:
        raise ConfigError(f"{field}: must be a non-empty string")
    if len(value.encode()) > 255:
        raise ConfigError(f"{field}: at most 255 bytes (an AMQP short string)")
    return value


@dataclasses.dataclass(frozen=True)
class RabbitMqConsumerConfig(FrozenConfig):
    """How a :class:`RabbitMqBackend` consumes. Frozen; ``with_<field>(value)`` returns a copy.

    ``declare=True`` declares the queue when it does not exist (durable, with
    ``queue_arguments`` and ``x-queue-type`` for quorum queues). An existing
    queue keeps arguments the config does not mention, but one that differs
    in what the config asks for (``queue_type``, ``durable``,
    ``queue_arguments``) makes the backend fail to connect with a
    :class:`ConfigError` naming the queue and the difference.
    ``exchange`` (declared durable, of ``exchange_type``, when missing; an
    existing one of another type is a :class:`ConfigError`) is bound with
    ``routing_key`` (default: the queue name).
    ``connect_timeout`` (seconds, default 10) bounds one connection attempt to
    one node: TCP, AMQP handshake, channels and declarations; a broker that
    accepts TCP and never answers counts as down after it."""

    queue_name: str = "worker_queue"
    consumer_tag: str | None = None
    prefetch_count: int = 100
    declare: bool = True
    durable: bool = True
    queue_type: str = "classic"
    queue_arguments: Mapping[str, Any] | None = None
    exchange: str | None = None
    routing_key: str | None = None
    exchange_type: str = "direct"
    connection_name: str | None = None
    heartbeat: float | _dt.timedelta | None = None
    retry_queue_prefix: str | None = None
    dead_letter_queue: str | None = None
    connect_timeout: float | _dt.timedelta = 10.0

    def __post_init__(self) -> None:
        self._set("queue_name", _name("queue_name", self.queue_name))
        tag = self.consumer_tag if self.consumer_tag is not None else _default_consumer_tag()
        self._set("consumer_tag", _name("consumer_tag", tag))
        prefetch = integer("prefetch_count", self.prefetch_count, minimum=1)
        if prefetch > 65535:
            raise ConfigError(f"prefetch_count: must be between 1 and 65535, got {prefetch}")
        for flag in ("declare", "durable"):
            if not isinstance(getattr(self, flag), bool):
                raise ConfigError(
                    f"{flag}: expected True or False, got {type(getattr(self, flag)).__name__}"
                )
        if self.queue_type not in _QUEUE_TYPES:
            raise ConfigError(
                f"queue_type: unknown value {self.queue_type!r}; allowed: "
                + ", ".join(repr(t) for t in _QUEUE_TYPES)
            )
        if self.queue_type == "quorum" and not self.durable:
            raise ConfigError("durable: quorum queues are always durable; use durable=True")
        if self.queue_arguments is not None:
            if not isinstance(self.queue_arguments, Mapping) or not all(
                isinstance(k, str) for k in self.queue_arguments
            ):
                raise ConfigError("queue_arguments: expected a dict with str keys")
            self._set("queue_arguments", dict(self.queue_arguments))
        _name("exchange", self.exchange, allow_none=True)
        _name("routing_key", self.routing_key, allow_none=True, allow_empty=True)
        if self.routing_key is not None and self.exchange is None:
            raise ConfigError("routing_key: only meaningful with an exchange to bind to; "
                              "set exchange too")
        if self.exchange_type not in _EXCHANGE_TYPES:
            raise ConfigError(
                f"exchange_type: unknown value {self.exchange_type!r}; allowed: "
                + ", ".join(repr(t) for t in _EXCHANGE_TYPES)
            )
        _name("connection_name", self.connection_name, allow_none=True)
        hb = seconds("heartbeat", self.heartbeat, allow_none=True)
        if hb is not None and hb > 65535:
            raise ConfigError(f"heartbeat: must be between 0 and 65535 seconds, got {hb}")
        self._set("heartbeat", hb)
        _name("retry_queue_prefix", self.retry_queue_prefix, allow_none=True)
        _name("dead_letter_queue", self.dead_letter_queue, allow_none=True)
        if self.dead_letter_queue == self.queue_name:
            raise ConfigError("dead_letter_queue: must differ from queue_name")
        ct = seconds("connect_timeout", self.connect_timeout)
        if not 0 < ct <= 3600:
            raise ConfigError(
                f"connect_timeout: must be more than 0 and at most 3600 seconds, got {ct}"
            )
        self._set("connect_timeout", ct)

    @property
    def retry_queue_prefix_or_default(self) -> str:
        return self.retry_queue_prefix or f"{self.queue_name}.retry"

    @property
    def dead_letter_queue_or_default(self) -> str:
        return self.dead_letter_queue or f"{self.queue_name}.dlq"


class DeadLetterQueueName(str):
    """The name of a RabbitMQ backend's dead-letter queue; calling it returns
    the queue's :class:`foxtive.dlq.NativeDeadLetterQueue` view."""

    _backend: RabbitMqBackend

    def __new__(cls, name: str, backend: RabbitMqBackend) -> DeadLetterQueueName:
        self = super().__new__(cls, name)
        self._backend = backend
        return self

    def __call__(self) -> NativeDeadLetterQueue:
        return NativeBackend.dead_letter_queue(self._backend)


class RabbitMqBackend(NativeBackend):
    """A RabbitMQ queue as a foxtive backend.

    ``url``: ``amqp://user:password@host:5672/vhost`` or ``amqps://...`` (TLS
    through rustls), read as Python clients read it: ``amqp://host:5672`` and
    ``amqp://host:5672/`` mean the vhost ``/``, ``/%2F`` too, ``/name`` means
    ``name``. Several nodes: ``amqp://user:pw@a:5672,b:5672/vhost`` or a list
    of URLs; connecting and reconnecting go round them, starting from a random
    one. The password never appears in ``repr``, logs or errors.
    ``reconnect_*`` shape the backoff between reconnection attempts."""

    _native: _core.RabbitMqBackend

    def __init__(self, url: str | Sequence[str], config: RabbitMqConsumerConfig | None = None, *,
                 reconnect_initial: float = 1.0, reconnect_max: float = 60.0,
                 reconnect_multiplier: float = 2.0, reconnect_jitter: float = 0.1) -> None:
        urls: str | list[str]
        if isinstance(url, str):
            urls = url
        elif isinstance(url, Sequence) and url and all(isinstance(u, str) for u in url):
            urls = list(url)
        else:
            raise ConfigError(
                f"url: expected a string or a non-empty list of strings, got {type(url).__name__}"
            )
        if config is None:
            config = RabbitMqConsumerConfig()
        if not isinstance(config, RabbitMqConsumerConfig):
            raise ConfigError(
                f"config: expected a foxtive.RabbitMqConsumerConfig, got {type(config).__name__}"
            )
        self.config = config
        hb = seconds("heartbeat", config.heartbeat, allow_none=True)
        self._native = _core.RabbitMqBackend(
            urls,
            config.queue_name,
            consumer_tag=config.consumer_tag,
            prefetch_count=config.prefetch_count,
            declare=config.declare,
            durable=config.durable,
            queue_type=config.queue_type,
            queue_arguments=(
                None if config.queue_arguments is None else dict(config.queue_arguments)
            ),
            exchange=config.exchange,
            exchange_type=config.exchange_type,
            routing_key=config.routing_key,
            connection_name=config.connection_name,
            heartbeat=None if hb is None else round(hb),
            retry_queue_prefix=config.retry_queue_prefix,
            dead_letter_queue=config.dead_letter_queue,
            reconnect_initial=seconds("reconnect_initial", reconnect_initial),
            reconnect_max=seconds("reconnect_max", reconnect_max),
            reconnect_multiplier=float(reconnect_multiplier),
            reconnect_jitter=float(reconnect_jitter),
            connect_timeout=seconds("connect_timeout", config.connect_timeout),
        )

    @property
    def url(self) -> str:
        """The URL with its password replaced by ``***``."""
        return self._native.url

    @property
    def queue_name(self) -> str:
        return self._native.name

    @property
    def dead_letter_queue(self) -> DeadLetterQueueName:
        """The dead-letter queue: its name (a ``str``, as before), and called,
        ``backend.dead_letter_queue()``, a :class:`foxtive.dlq.NativeDeadLetterQueue`
        view of it (list, replay, purge)."""
        return DeadLetterQueueName(self._native.dead_letter_queue, self)

    def retry_queue_for(self, delay: float | _dt.timedelta) -> str | None:
        """The delay-bucket queue a retry after ``delay`` waits in (``None``: no delay)."""
        return self._native.retry_queue_for(delay)

    def __repr__(self) -> str:
        return f"RabbitMqBackend(url={self.url!r}, queue={self.name!r})"
