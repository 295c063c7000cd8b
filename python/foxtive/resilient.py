"""Backends that refuse to die: reconnect forever, with backoff, until shutdown."""

from __future__ import annotations

import dataclasses
import datetime as _dt
import logging
from collections.abc import Callable
from typing import Any

from . import _core
from ._config import FrozenConfig
from .backends import NativeBackend
from .errors import ConfigError

__all__ = ["ReconnectStrategy", "ResilientBackend"]

log = logging.getLogger("foxtive")


@dataclasses.dataclass(frozen=True)
class ReconnectStrategy(FrozenConfig):
    """How long to wait between reconnection attempts.

    ``exponential``: after *n* failures in a row wait ``min(max, initial *
    multiplier^(n-1))``, spread by ``±jitter`` (0.1 = ±10 %), never above
    ``max``; safe at any *n*. ``fixed``: the same delay every time. Checked
    once, by the core (``_core.ReconnectStrategy``)."""

    kind: str = "exponential"
    initial: float = 1.0
    max: float = 60.0
    multiplier: float = 2.0
    jitter: float = 0.1

    def __post_init__(self) -> None:
        self._adopt(_core.ReconnectStrategy(**self._fields()))

    @classmethod
    def exponential(cls, initial: float | _dt.timedelta = 1.0, max: float | _dt.timedelta = 60.0,
                    multiplier: float = 2.0, jitter: float = 0.1) -> ReconnectStrategy:
        return cls("exponential", initial, max, multiplier, jitter)  # type: ignore[arg-type]

    def delay(self, failures: int) -> float:
        """Seconds to wait after ``failures`` consecutive failures (jitter included)."""
        delay: float = self._native.delay(max(0, min(failures, 2**32 - 1)))
        return delay

    @classmethod
    def fixed(cls, delay: float | _dt.timedelta) -> ReconnectStrategy:
        native = _core.ReconnectStrategy.fixed(delay)
        return cls("fixed", native.initial, native.max, 1.0, 0.0)


StateCallback = Callable[[str, str], Any]


class ResilientBackend(NativeBackend):
    """Wrap any backend so that it reconnects by itself.

    Every failed operation moves it to ``"reconnecting"``: it waits the
    strategy's delay (a shutdown interrupts the wait at once), reconnects,
    and goes on; the first connection waits for the broker too. Settlements
    are not retried: what was not settled is redelivered by the broker.
    ``on_state_change(callback)`` registers ``callback(old, new)``, called on
    the pool's event loop while a pool runs over this backend."""

    _native: _core.ResilientBackend

    def __init__(self, backend: Any, strategy: ReconnectStrategy | None = None) -> None:
        strategy = strategy if strategy is not None else ReconnectStrategy.exponential()
        if not isinstance(strategy, ReconnectStrategy):
            raise ConfigError("strategy: expected a foxtive.ReconnectStrategy")
        self.backend = backend
        self.strategy = strategy
        self._native = _core.ResilientBackend(backend, strategy._native)
        self._callbacks: list[StateCallback] = []
        self._last_state = self._native.state

    def on_state_change(self, callback: StateCallback) -> StateCallback:
        """Call ``callback(old_state, new_state)`` on every change (usable as a decorator)."""
        self._callbacks.append(callback)
        return callback

    def _poll_state(self) -> None:
        """Fire callbacks for every change since the last call, in order (the
        pool calls this periodically on its loop). Changes of the wrapped
        backend's own reconnection are seen as they show in ``state``."""
        changes = self._native.take_changes()
        now = self._native.state
        if not changes and now != self._last_state:
            changes = [(self._last_state, now)]
        for old, new in changes:
            self._last_state = new
            for cb in list(self._callbacks):
                try:
                    cb(old, new)
                except Exception:
                    log.exception("on_state_change callback failed")

    def __getattr__(self, name: str) -> Any:
        # qsize(), dead_letters()... of the wrapped backend.
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self.backend, name)

    def __repr__(self) -> str:
        return f"ResilientBackend({self.backend!r}, state={self.state!r})"
