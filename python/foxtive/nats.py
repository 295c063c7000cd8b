"""NATS JetStream: a durable pull consumer with explicit acks.

    backend = foxtive.NatsBackend("nats://127.0.0.1:4222",
                                  foxtive.NatsConsumerConfig(subject="emails"))

Everything per message runs in Rust (async-nats): pull requests sized like
the prefetch, acks without a round trip per message, retries as ``NAK`` with
a delay (a long retry never holds back a short one), the attempt from the
server's delivery count (it survives crashes and restarts), dead letters
published to ``<subject>.dlq`` before the original is terminated, publishes
deduplicated through ``Nats-Msg-Id``. ``publish(delay=)`` holds the message
in a delay stream until due (see the README's NATS section).

Credentials: ``nats://user:password@host``, ``nats://token@host``, or
``token=``, ``nkey_file=`` (an nkey seed file), ``creds_file=`` (a ``.creds``
file). They are never shown: the URL appears with ``***``.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
from typing import Any, Self

from . import _core
from .backends import NativeBackend
from .errors import ConfigError

__all__ = ["NatsBackend", "NatsConsumerConfig", "NatsCredentials"]

#: Keywords of ``NatsBackend`` that are credentials, not consumer settings.
_CREDENTIALS = ("token", "nkey_file", "creds_file")


@dataclasses.dataclass(frozen=True, repr=False)
class NatsCredentials:
    """How a NATS connection authenticates: the URL (it may hold
    ``user:password@`` or ``token@``) and ``token``, ``nkey_file``,
    ``creds_file``. Kept so that the stores beside a queue (task results and
    the schedule lease in JetStream KV) connect as its backend does; never shown (its repr is the
    redacted URL only)."""

    url: str
    token: str | None = None
    nkey_file: str | None = None
    creds_file: str | None = None

    def __repr__(self) -> str:
        return f"NatsCredentials(url={_core.redact_url(self.url)!r})"

    def options(self) -> dict[str, str | None]:
        """The credentials besides the URL, as the core's options (the
        schedule store takes them so)."""
        return {"token": self.token, "nkey_file": self.nkey_file,
                "creds_file": self.creds_file}


@dataclasses.dataclass(frozen=True)
class NatsConsumerConfig:
    """Where a :class:`NatsBackend` reads, retries and dead-letters.

    ``stream``: the stream holding ``subject`` (default: ``subject``
    upper-cased, other characters ``_``); created with WorkQueue retention
    when absent and ``declare`` is true. ``subject``: where ``publish`` goes
    and what the durable consumer filters on. ``durable``: the consumer every
    worker shares. ``ack_wait``: seconds a delivery stays with a worker
    before the server redelivers it. ``prefetch``: messages per pull request.
    ``dlq_subject``: default ``<subject>.dlq``, stored in a stream foxtive
    creates when no stream holds it. ``delay_subject``: default
    ``<subject>.delayed``, where delayed publishes wait. ``max_deliver``: a
    message delivered more often is a poison pill (dead-lettered); keep it
    above the retry policy's ``max_retries``. ``max_ack_pending``: deliveries
    out and not settled at once (retries waiting included); -1 for no limit.
    An existing consumer with other settings is a ``ConfigError`` naming them.
    """

    stream: str | None = None
    subject: str = "default"
    durable: str = "foxtive"
    ack_wait: float | _dt.timedelta = 30.0
    prefetch: int = 256
    declare: bool = True
    dlq_subject: str | None = None
    delay_subject: str | None = None
    max_deliver: int = 10
    max_ack_pending: int = 20_000

    def options(self) -> dict[str, Any]:
        """The settings as the core's options (``None``: the default)."""
        return dataclasses.asdict(self)


class NatsBackend(NativeBackend):
    """A queue on NATS JetStream (``nats://`` or ``tls://``).

    Nothing connects until a pool starts or the first publish. Its
    dead-letter queue (``dead_letter_queue()``, ``foxtive dlq --broker
    nats://... --queue SUBJECT``) reads ``dlq_subject`` without consuming it;
    a replay publishes each record to ``subject``, then deletes it.
    """

    def __init__(self, url: str, config: NatsConsumerConfig | None = None, *,
                 token: str | None = None, nkey_file: str | None = None,
                 creds_file: str | None = None) -> None:
        if not isinstance(url, str) or not url:
            raise ConfigError("url: must be a non-empty string such as nats://127.0.0.1:4222")
        config = config if config is not None else NatsConsumerConfig()
        if not isinstance(config, NatsConsumerConfig):
            raise ConfigError(f"config: expected a NatsConsumerConfig, got {type(config).__name__}")
        credentials = NatsCredentials(url, token, nkey_file, creds_file)
        options = config.options()
        options.update(credentials.options())
        native = _core.open_backend(url, config.subject, options)
        if native is None:  # pragma: no cover - the registry opens nats:// itself
            raise ConfigError(f"NatsBackend: the core does not open {_core.redact_url(url)}")
        self._native = native
        self._url = _core.redact_url(url)
        self._config = config
        self._credentials = credentials

    @classmethod
    def from_url(cls, url: str, queue: str = "default", **options: Any) -> Self:
        """``nats://[user:password@|token@]host:port`` consuming subject
        ``queue`` (stream ``queue`` upper-cased, durable ``foxtive``);
        ``options`` are :class:`NatsConsumerConfig`'s fields and the
        credentials, checked by the core (an unknown one is a ConfigError
        naming those it takes)."""
        _core.open_backend(url, queue, options)
        creds = {k: options.pop(k) for k in _CREDENTIALS if k in options}
        options.setdefault("subject", queue)
        return cls(url, NatsConsumerConfig(**options), **creds)

    @property
    def url(self) -> str:
        """The URL with its credentials replaced by ``***``."""
        return self._url

    @property
    def config(self) -> NatsConsumerConfig:
        return self._config
    def __repr__(self) -> str:
        c = self._config
        return (f"NatsBackend(url={self._url!r}, subject={c.subject!r}, "
                f"stream={c.stream!r}, durable={c.durable!r})")
