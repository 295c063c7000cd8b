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
* A consumer the broker cancels (``basic.cancel``: queue deleted, node lost)
  is subscribed again on a new connection, in the same process.
* Clusters: several nodes (see :class:`RabbitMqBackend`), and quorum queues
  (``queue_type="quorum"``), recommended in production: replicated, and
  their ``x-delivery-count`` lets a message that crashes the worker be
  dead-lettered as a poison pill across restarts. foxtive sets no
  ``x-delivery-limit`` and no broker dead-letter exchange: RabbitMQ 4.x's
  default limit of 20 drops a message silently, so keep
  ``max(max_retries + 1, max_failures)`` at most 20 there, or set
  ``queue_arguments={"x-delivery-limit": N}`` above it (README, "Scaling out").
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
from collections.abc import Mapping, Sequence
from typing import Any, Self

from . import _core
from ._config import FrozenConfig, split_options
from .backends import NativeBackend
from .dlq import NativeDeadLetterQueue
from .errors import ConfigError
from .resilient import ReconnectStrategy

__all__ = ["RabbitMqBackend", "RabbitMqConsumerConfig"]

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
    accepts TCP and never answers counts as down after it.
    ``max_priority`` (1-255; 10 covers foxtive's 0-9) declares the queue with
    ``x-max-priority``, so ``publish(..., priority=)`` and tasks'
    ``priority`` are delivered highest first; publishing a priority to a queue
    without it is a :class:`ConfigError` (RabbitMQ would ignore it). An
    existing queue declared without it must be deleted and declared again
    (RabbitMQ cannot change a queue's arguments)."""

    queue_name: str = "worker_queue"
    consumer_tag: str | None = None
    prefetch_count: int = 100
    declare: bool = True
    durable: bool = True
    queue_type: str = "classic"
    queue_arguments: Mapping[str, Any] | None = None
    max_priority: int | None = None
    exchange: str | None = None
    routing_key: str | None = None
    exchange_type: str = "direct"
    connection_name: str | None = None
    heartbeat: float | _dt.timedelta | None = None
    retry_queue_prefix: str | None = None
    dead_letter_queue: str | None = None
    connect_timeout: float | _dt.timedelta = 10.0

    def __post_init__(self) -> None:
        # Checked once, by the core; fields read back normalised (seconds as
        # floats, the consumer tag filled in).
        fields = self._fields()
        if isinstance(self.queue_arguments, Mapping):
            fields["queue_arguments"] = dict(self.queue_arguments)
            self._set("queue_arguments", fields["queue_arguments"])
        self._adopt(_core.RabbitMqConsumerConfig(**fields), keep=("queue_arguments",))

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
    one (so workers spread over the cluster), the node just lost tried last.
    The password never appears in ``repr``, logs or errors.
    ``reconnect_*`` shape the backoff between reconnection attempts."""

    _native: _core.RabbitMqBackend
    #: RabbitMQ keeps no state to deduplicate with: an App deduplicates
    #: through its Redis result store instead (see ``App``).
    native_dedup = False

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
        reconnect = ReconnectStrategy.exponential(reconnect_initial, reconnect_max,
                                                  reconnect_multiplier, reconnect_jitter)
        self._native = _core.RabbitMqBackend(urls, config._native, reconnect._native)

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

    @classmethod
    def from_url(cls, url: str, queue: str, **options: Any) -> Self:
        """``amqp://`` / ``amqps://`` for ``backend_from_url``: the options are
        ``RabbitMqConsumerConfig`` fields and the ``reconnect_*`` settings."""
        config, extra = split_options("RabbitMQ (amqp://)", RabbitMqConsumerConfig, cls,
                                      "queue_name", options)
        return cls(url, RabbitMqConsumerConfig(queue_name=queue, **config), **extra)

    def __repr__(self) -> str:
        return f"RabbitMqBackend(url={self.url!r}, queue={self.name!r})"
