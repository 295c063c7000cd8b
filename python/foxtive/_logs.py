"""Core log events (Rust ``tracing``) re-emitted through ``logging``."""

from __future__ import annotations

import logging

from . import _core

_log = logging.getLogger("foxtive")


def pump() -> int:
    """Emit every queued core event; returns how many there were."""
    events = _core.take_logs()
    for level, target, message in events:
        if _log.isEnabledFor(level):
            _log.log(level, "%s", message, extra={"core_target": target})
    return len(events)
