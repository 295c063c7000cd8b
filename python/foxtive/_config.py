"""Frozen configuration objects with keyword construction and a ``with_*`` chain."""

from __future__ import annotations

import dataclasses
import datetime as _dt
import inspect
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from .errors import ConfigError

Seconds = float | _dt.timedelta

_C = TypeVar("_C", bound="FrozenConfig")


def seconds(name: str, value: Any, *, allow_none: bool = False, positive: bool = False) -> Any:
    """Normalise a duration argument (float seconds or timedelta) to float seconds."""
    if value is None:
        if allow_none:
            return None
        raise ConfigError(f"{name}: a duration in seconds is required")
    if isinstance(value, _dt.timedelta):
        value = value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(
            f"{name}: expected seconds (float) or datetime.timedelta, got {type(value).__name__}"
        )
    value = float(value)
    if value != value or value in (float("inf"), float("-inf")):
        raise ConfigError(f"{name}: must be a finite number of seconds, got {value}")
    if positive and value <= 0:
        raise ConfigError(f"{name}: must be > 0 seconds, got {value}")
    if value < 0:
        raise ConfigError(f"{name}: must be >= 0 seconds, got {value}")
    return value


def integer(name: str, value: Any, *, minimum: int = 0, allow_none: bool = False) -> Any:
    """Validate an integer argument."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name}: expected an integer, got {type(value).__name__}")
    if value < minimum:
        raise ConfigError(f"{name}: must be >= {minimum}, got {value}")
    return value


class FrozenConfig:
    """Mixin for frozen dataclasses: ``with_<field>(value)`` returns a copy."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("with_"):
            field = name[5:]
            names = {f.name for f in dataclasses.fields(self)}  # type: ignore[arg-type]
            if field in names:

                def setter(value: Any) -> Any:
                    return dataclasses.replace(self, **{field: value})  # type: ignore[type-var]

                return setter
        raise AttributeError(f"{type(self).__name__!s} has no attribute {name!r}")

    def _set(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)

    def _fields(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}  # type: ignore[arg-type]

    def _adopt(self, native: Any, keep: tuple[str, ...] = ()) -> None:
        """Keep ``native``, the core config built (and checked, once, in
        Rust) from these fields, and read the fields back from it: seconds as
        floats, defaults filled in. ``keep``: fields left as given."""
        object.__setattr__(self, "_native", native)
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            if f.name not in keep:
                object.__setattr__(self, f.name, getattr(native, f.name))

    def replace(self: _C, **changes: Any) -> _C:
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]


def split_options(what: str, config_cls: type, backend_cls: Callable[..., Any], queue_field: str,
                  options: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``backend_from_url`` options of a backend built from a typed config:
    those for the config (its fields) and those for the backend (its
    keyword-only parameters); anything else is a ConfigError naming it."""
    if queue_field in options:
        raise ConfigError(
            f"{queue_field}: give the queue as backend_from_url's second argument, not as an option"
        )
    fields = tuple(f.name for f in dataclasses.fields(config_cls) if f.name != queue_field)
    params = inspect.signature(backend_cls).parameters.values()
    extra_names = tuple(p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY)
    allowed = fields + extra_names
    unknown = sorted(k for k in options if k not in allowed)
    if unknown:
        names = ", ".join(repr(k) for k in unknown)
        raise ConfigError(f"backend_from_url: unknown option(s) {names} for {what}; "
                          f"it takes: {', '.join(allowed)}")
    config = {k: v for k, v in options.items() if k in fields}
    extra = {k: v for k, v in options.items() if k in extra_names}
    return config, extra
