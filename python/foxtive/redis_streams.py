"""Redis Streams: consumer groups that never strand a message.

    backend = foxtive.RedisStreamBackend(
        "redis://127.0.0.1:6379/0",
        foxtive.RedisStreamConsumerConfig(stream_name="emails", group_name="workers"),
    )

Everything per message runs in Rust (redis-rs): XREADGROUP in batches (own
pending entries first, then new ones), pipelined XACK (+ XDEL with
``delete_on_ack``), heartbeats for held entries, XAUTOCLAIM of entries idle
longer than ``claim_idle`` in dead consumers, poison-pill detection from the
pending list's delivery count, delayed retries in a sorted set
(``{stream}:delayed``) moved back by a Lua script, dead letters in
``{stream}:dlq``, reconnects with backoff, and re-creation of a lost stream
or group.

Entry layout (one stream entry per message, binary-safe): ``body`` (the
payload), ``id`` (the publisher's message id, kept on retry copies; absent:
the entry id is the message id), ``attempt`` (absent: 1), ``h:<name>`` (one
typed header each), ``p:<name>`` (correlation_id, content_type, reply_to,
routing_key, priority). Entries written by other clients work too: ``data``
is the body when there is no ``body`` field, other fields become headers.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
from typing import Any, Self

from . import _core
from ._config import FrozenConfig, split_options
from .backends import NativeBackend
from .errors import ConfigError

#: The consumer group a Redis URL's backend reads with (API.md: "consumer group foxtive").
REDIS_GROUP = "foxtive"

__all__ = ["RedisStreamBackend", "RedisStreamConsumerConfig"]

#: Fields whose default is derived from others (recomputed by ``with_*``).
_DERIVED = ("claim_interval", "dead_letter_stream")


@dataclasses.dataclass(frozen=True)
class RedisStreamConsumerConfig(FrozenConfig):
    """How a Redis Streams consumer reads, reclaims, trims and dead-letters.

    ``consumer_name`` defaults to a name unique to this process
    (``host-pid-random``). ``claim_interval`` defaults to ``claim_idle / 4``
    (at most 15 s, at least 0.1 s), ``dead_letter_stream`` to
    ``{stream_name}:dlq``. ``maxlen`` trims the stream approximately
    (``MAXLEN ~``) on every add; ``None`` never trims. An entry delivered
    more than ``max_deliveries`` times without being settled (its handler
    keeps crashing the worker) is dead-lettered as a poison pill.

    Redis Cluster (README "Scaling out"): ``cluster=True`` (implied by a
    ``redis+cluster://`` URL) puts every key of the queue in one hash tag
    (``{stream}``, ``{stream}:delayed``, ``{stream}:dlq``); ``partitions=N``
    spreads the queue over N streams with different hash tags (the backend's
    ``stream_keys``), read together, written round robin or by the
    ``partition_key`` header; ``wait_replicas=N`` makes publishes, retry and
    dead-letter copies wait (``WAIT``, up to ``wait_timeout`` seconds) for N
    replicas, and fail if fewer acknowledged. All three are also URL query
    parameters (``?partitions=4&wait_replicas=1``).
    """

    stream_name: str = "worker_stream"
    group_name: str = "worker_group"
    consumer_name: str | None = None
    batch_size: int = 100
    block_ms: int = 1000
    claim_idle: float | _dt.timedelta = 60.0
    claim_interval: float | _dt.timedelta | None = None
    maxlen: int | None = None
    delete_on_ack: bool = True
    dead_letter_stream: str | None = None
    max_deliveries: int = 10
    cluster: bool = False
    partitions: int = 1
    wait_replicas: int = 0
    wait_timeout: float | _dt.timedelta = 1.0

    def __post_init__(self) -> None:
        derived = {f for f in _DERIVED if getattr(self, f) is None}
        object.__setattr__(self, "_derived", frozenset(derived))
        # Checked once, by the core; fields read back with defaults filled in.
        self._adopt(_core.RedisStreamConsumerConfig(**self._fields()))

    def replace(self, **changes: Any) -> RedisStreamConsumerConfig:
        """A copy with ``changes``; derived defaults follow the new values."""
        names = [f.name for f in dataclasses.fields(self)]
        unknown = set(changes) - set(names)
        if unknown:
            raise ConfigError(f"{sorted(unknown)[0]}: not a RedisStreamConsumerConfig field")
        derived: frozenset[str] = object.__getattribute__(self, "_derived")
        kwargs = {n: getattr(self, n) for n in names if n not in derived}
        kwargs.update(changes)
        return RedisStreamConsumerConfig(**kwargs)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("with_") and name[5:] in {f.name for f in dataclasses.fields(self)}:
            field = name[5:]
            return lambda value: self.replace(**{field: value})
        raise AttributeError(f"{type(self).__name__!s} has no attribute {name!r}")

    @property
    def delayed_key(self) -> str:
        """The sorted set where delayed messages (and retries) wait."""
        return f"{self.stream_name}:delayed"


class RedisStreamBackend(NativeBackend):
    """A Redis Streams consumer group as a foxtive backend.

    ``url``: ``redis://[user:password@]host:port/db``,
    ``redis+cluster://[user:password@]host:port,host:port`` for a Redis Cluster
    (``rediss+cluster://`` with TLS), ``rediss://`` for TLS
    (server certificates are checked against the system's roots, or
    ``SSL_CERT_FILE``), or ``unix:///path`` / ``redis+unix:///path``
    (``?db=N``). The password may also be given as ``?password=`` or
    ``?pass=`` on any scheme; it is shown as ``***`` everywhere. Nothing
    connects until a pool starts or the first publish. ``message.queue`` is
    the stream name. Its dead-letter stream (``config.dead_letter_stream``)
    is ``dead_letter_queue()``; a replay moves each entry back to the stream
    with one Lua script: never lost or doubled.
    """

    _native: _core.RedisStreamBackend

    def __init__(self, url: str = "redis://127.0.0.1:6379/0",
                 config: RedisStreamConsumerConfig | None = None) -> None:
        if not isinstance(url, str) or not url:
            raise ConfigError("url: must be a non-empty string such as redis://127.0.0.1:6379/0")
        if config is None:
            config = RedisStreamConsumerConfig()
        if not isinstance(config, RedisStreamConsumerConfig):
            raise ConfigError(
                f"config: expected a RedisStreamConsumerConfig, got {type(config).__name__}"
            )
        self.config = config
        self._native = _core.RedisStreamBackend(url, config._native)

    @property
    def url(self) -> str:
        """The URL with its password replaced by ``***``."""
        return self._native.url

    @property
    def consumer_name(self) -> str:
        return self._native.consumer_name

    @property
    def stream_keys(self) -> list[str]:
        """The Redis keys of the stream(s) read and written, one per partition
        (hash-tagged on a cluster or with partitions; see README "Scaling out")."""
        return self._native.stream_keys

    @property
    def dead_letter_keys(self) -> list[str]:
        """The dead-letter stream key of each partition."""
        return self._native.dead_letter_keys

    @classmethod
    def from_url(cls, url: str, queue: str, **options: Any) -> Self:
        """``redis://`` and friends for ``backend_from_url``: the options are
        ``RedisStreamConsumerConfig`` fields; the group is ``foxtive`` unless
        ``group_name`` is given (API.md)."""
        config, extra = split_options("Redis (redis://)", RedisStreamConsumerConfig, cls,
                                      "stream_name", options)
        config.setdefault("group_name", REDIS_GROUP)
        return cls(url, RedisStreamConsumerConfig(stream_name=queue, **config), **extra)

    def __repr__(self) -> str:
        return (f"RedisStreamBackend(url={self.url!r}, stream_name={self.config.stream_name!r}, "
                f"group_name={self.config.group_name!r}, "
                f"consumer_name={self.consumer_name!r})")
