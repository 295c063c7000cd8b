"""Broker URLs: ``backend_from_url(url, queue)`` builds the backend a URL names.

    backend = foxtive.backend_from_url("amqp://guest:guest@127.0.0.1:5672/%2f", "emails",
                                       prefetch_count=50)

Which backend a scheme means is decided once, in the Rust core's registry
(``foxtive._core.backend_kind``, rows in ``backend/mod.rs``); the backend's
own class builds it (``from_url``), so a new backend changes nothing here.
Errors show URLs with their passwords replaced by ``***``.
"""

from __future__ import annotations

from typing import Any

from . import _core
from .backends import NativeBackend
from .errors import ConfigError

__all__ = ["backend_from_url"]


def backend_from_url(url: str, queue: str, **options: Any) -> NativeBackend:
    """The backend ``url`` names, consuming ``queue``.

    * ``memory://`` -> ``MemoryBackend(queue)`` (no options);
    * ``amqp://`` / ``amqps://`` -> ``RabbitMqBackend(url, RabbitMqConsumerConfig(
      queue_name=queue, **options))``; the ``reconnect_*`` options go to the backend;
    * ``redis://`` / ``rediss://`` / ``unix://`` / ``redis+unix://`` /
      ``redis+cluster://`` / ``rediss+cluster://`` ->
      ``RedisStreamBackend(url, RedisStreamConsumerConfig(stream_name=queue,
      group_name="foxtive", **options))``;
    * every other available scheme -> its class's ``from_url`` (the core opens
      it and checks the options).

    An unknown scheme, a scheme not available yet, or an option the
    backend does not take is a :class:`ConfigError` naming it."""
    if not isinstance(url, str):
        raise ConfigError(f"url: expected a string such as memory://, got {type(url).__name__}")
    if not isinstance(queue, str) or not queue:
        raise ConfigError("queue: must be a non-empty string (the queue or stream name)")
    name, type_name = _core.backend_kind(url)
    cls = NativeBackend.class_named(type_name)
    if cls is None:
        # A registry row whose class is not defined: a packaging mistake.
        raise ConfigError(f"backend '{name}' has no Python class {type_name} in foxtive")
    return cls.from_url(url, queue, **options)
