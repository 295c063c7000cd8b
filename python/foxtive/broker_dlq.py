"""A broker's native dead-letter queue from its URL: what ``foxtive dlq
--broker URL --queue Q`` and the dashboard both open, so both list, replay
and purge through the same code (``NativeDeadLetterQueue``)."""

from __future__ import annotations

from typing import Any

from . import _core
from .errors import ConfigError
from .urls import backend_from_url

__all__ = ["broker_dlq"]


#: What ``--broker`` passes to ``backend_from_url`` per backend kind (the
#: core registry decides the kind): the option that names a dead-letter queue
#: other than the default, and options that keep the tool from changing the
#: broker (RabbitMQ: declare nothing). A kind not listed takes no options:
#: its dead letters have no separate name (SQLite: a table in the same file).
_DLQ_OPTIONS: dict[str, tuple[str, dict[str, Any]]] = {
    "rabbitmq": ("dead_letter_queue", {"declare": False}),
    "redis": ("dead_letter_stream", {}),
}


def broker_dlq(url: str, queue: str | None, dlq_name: str | None) -> Any:
    """The native dead-letter queue of queue/stream ``queue`` on ``url``: the
    backend the URL names (``backend_from_url``), through its own
    ``dead_letter_queue()``."""
    if not queue:
        raise ConfigError("queue: --broker needs --queue Q (the queue or stream that "
                          "dead-lettered its messages)")
    kind, _ = _core.backend_kind(url)
    name_option, options = _DLQ_OPTIONS.get(kind, ("", {}))
    options = dict(options)
    if dlq_name:
        if not name_option:
            raise ConfigError(f"--dead-letter-queue: the {kind} backend's dead letters have "
                              "no name of their own (they are found by --queue)")
        options[name_option] = dlq_name
    # A backend without a dead-letter queue of its own says so (ConfigError).
    return backend_from_url(url, queue, **options).dead_letter_queue()
