"""Which objects are native backends, decided in one place: a backend runs in
Rust when it is, or its Python front keeps in ``_native``, a subclass of the
core's one base class ``_core.NativeBackend``. No list of backend classes: a
new native backend is recognised as soon as it subclasses the base."""

from __future__ import annotations

from typing import Any

from . import _core

__all__ = ["native_of"]


def native_of(backend: Any) -> _core.NativeBackend | None:
    """The Rust backend behind ``backend`` (itself, or its front's ``_native``), else None."""
    if isinstance(backend, _core.NativeBackend):
        return backend
    native = getattr(backend, "_native", None)
    return native if isinstance(native, _core.NativeBackend) else None
