"""Broker URLs: ``backend_from_url(url, queue)`` builds the backend a URL names.

    backend = foxtive.backend_from_url("amqp://guest:guest@127.0.0.1:5672/%2f", "emails",
                                       prefetch_count=50)

Which backend a scheme means is decided once, in the Rust core's registry
(``foxtive._core.backend_kind``); this module only maps each kind to its class.
Errors show URLs with their passwords replaced by ``***``.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Mapping
from typing import Any

from . import _core
from .backends import Backend, MemoryBackend
from .errors import ConfigError
from .postgres import PostgresBackend
from .rabbitmq import RabbitMqBackend, RabbitMqConsumerConfig
from .redis_streams import RedisStreamBackend, RedisStreamConsumerConfig

__all__ = ["backend_from_url"]

#: The consumer group a Redis URL's backend reads with (API.md: "consumer group foxtive").
REDIS_GROUP = "foxtive"


def backend_from_url(url: str, queue: str, **options: Any) -> Backend:
    """The backend ``url`` names, consuming ``queue``.

    * ``memory://`` -> ``MemoryBackend(queue)`` (no options);
    * ``amqp://`` / ``amqps://`` -> ``RabbitMqBackend(url, RabbitMqConsumerConfig(
      queue_name=queue, **options))``; the ``reconnect_*`` options go to the backend;
    * ``redis://`` / ``rediss://`` / ``unix://`` / ``redis+unix://`` ->
      ``RedisStreamBackend(url, RedisStreamConsumerConfig(stream_name=queue,
      group_name="foxtive", **options))``;
    * ``postgresql://`` / ``postgres://`` -> ``PostgresBackend(url, queue, **options)``
      (``schema``, ``lease_timeout``, ``poll_interval``; ``?schema=`` in the URL too).

    ``sqlite://``, ``nats://`` and
    ``redis+cluster://`` are known but not available yet. An unknown scheme, a
    scheme not available yet, or an option the backend does not take is a
    :class:`ConfigError` naming it."""
    if not isinstance(url, str):
        raise ConfigError(f"url: expected a string such as memory://, got {type(url).__name__}")
    if not isinstance(queue, str) or not queue:
        raise ConfigError("queue: must be a non-empty string (the queue or stream name)")
    kind = _core.backend_kind(url)
    if kind == "memory":
        _check_options("memory://", options, config_fields=(), backend_options=())
        return MemoryBackend(queue)
    if kind == "rabbitmq":
        config, extra = _split("RabbitMQ (amqp://)", RabbitMqConsumerConfig, RabbitMqBackend,
                               "queue_name", options)
        return RabbitMqBackend(url, RabbitMqConsumerConfig(queue_name=queue, **config), **extra)
    if kind == "redis":
        config, extra = _split("Redis (redis://)", RedisStreamConsumerConfig, RedisStreamBackend,
                               "stream_name", options)
        config.setdefault("group_name", REDIS_GROUP)
        return RedisStreamBackend(url, RedisStreamConsumerConfig(stream_name=queue, **config),
                                  **extra)
    if kind == "postgres":
        _check_options("PostgreSQL (postgresql://)", options, config_fields=(),
                       backend_options=("schema", "lease_timeout", "poll_interval"))
        return PostgresBackend(url, queue, **options)
    # The core returned a kind this module does not build: a registry row
    # added without its class here.
    raise ConfigError(f"backend '{kind}' has no Python class in foxtive.urls yet")


def _keyword_only(cls: Callable[..., Any]) -> tuple[str, ...]:
    """The keyword-only parameters of a backend class (its ``reconnect_*`` settings)."""
    params = inspect.signature(cls).parameters.values()
    return tuple(p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY)


def _split(what: str, config_cls: type, backend_cls: Callable[..., Any], queue_field: str,
           options: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Options for the consumer config and for the backend, or a ConfigError."""
    if queue_field in options:
        raise ConfigError(
            f"{queue_field}: give the queue as backend_from_url's second argument, not as an option"
        )
    fields = tuple(f.name for f in dataclasses.fields(config_cls) if f.name != queue_field)
    extra_names = _keyword_only(backend_cls)
    _check_options(what, options, config_fields=fields, backend_options=extra_names)
    config = {k: v for k, v in options.items() if k in fields}
    extra = {k: v for k, v in options.items() if k in extra_names}
    return config, extra


def _check_options(what: str, options: Mapping[str, Any], *, config_fields: tuple[str, ...],
                   backend_options: tuple[str, ...]) -> None:
    allowed = config_fields + backend_options
    unknown = sorted(k for k in options if k not in allowed)
    if not unknown:
        return
    names = ", ".join(repr(k) for k in unknown)
    takes = ", ".join(allowed) if allowed else "no options"
    raise ConfigError(f"backend_from_url: unknown option(s) {names} for {what}; it takes: {takes}")
