"""The foxtive exception hierarchy.

``FoxtiveError`` is the root. Handlers raise ``PermanentError`` (or its
``PayloadError``) to skip retries and go straight to the dead-letter queue,
and ``RetryableError(delay=...)`` to ask for a retry after a given delay.
"""

from __future__ import annotations

import datetime as _dt

__all__ = [
    "AlreadySettledError",
    "BackendError",
    "ConfigError",
    "FoxtiveError",
    "PayloadError",
    "PermanentError",
    "RetryableError",
    "ShutdownError",
    "TaskError",
    "UnknownTaskError",
]


class FoxtiveError(Exception):
    """Base class of every foxtive error."""


class ConfigError(FoxtiveError, ValueError):
    """A setting is invalid; the message names it and what is allowed."""


class BackendError(FoxtiveError):
    """The broker failed or refused an operation."""


class PermanentError(FoxtiveError):
    """A failure that retrying cannot fix: the message is dead-lettered at once."""


class PayloadError(PermanentError):
    """The message body cannot be decoded."""


class RetryableError(FoxtiveError):
    """Ask for a retry, optionally after ``delay`` seconds (float or timedelta)."""

    def __init__(self, message: str = "", delay: float | _dt.timedelta | None = None) -> None:
        super().__init__(message)
        if isinstance(delay, _dt.timedelta):
            delay = delay.total_seconds()
        if delay is not None and not delay >= 0:
            raise ConfigError(f"delay: must be >= 0 seconds, got {delay!r}")
        self.delay: float | None = delay


class AlreadySettledError(FoxtiveError):
    """A message was settled twice; the first settlement won."""


class ShutdownError(FoxtiveError):
    """The pool or backend is shut down."""


class UnknownTaskError(FoxtiveError):
    """A task message names a task this worker does not know. Not permanent:
    a rolling deploy may bring the task, so it is retried with the app's
    policy, then dead-lettered with ``error_type="UnknownTaskError"``."""


class TaskError(FoxtiveError):
    """A task failed for good: ``type_name`` and ``message`` of its last
    error, after ``attempts`` attempts."""

    def __init__(self, type_name: str, message: str, attempts: int) -> None:
        super().__init__(f"{type_name}: {message} (after {attempts} attempt(s))")
        self.type_name = type_name
        self.message = message
        self.attempts = attempts
