"""The task envelope: how a task call travels as a message.

Any language can enqueue a foxtive task by publishing a message shaped so:

* body: UTF-8 JSON ``{"args": [...], "kwargs": {...}}``;
* header ``foxtive-task``: the task's name (``<module>.<qualname>`` unless
  given);
* header ``foxtive-envelope``: ``1`` (the envelope version);
* header ``content-type``: ``application/json`` (the backends' publish API
  has no content-type property of its own, so it travels as a header);
* message id: the task id (a uuid4 hex unless the sender chose one).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import msgspec

from .errors import PayloadError

__all__ = [
    "CONTENT_TYPE",
    "CONTENT_TYPE_HEADER",
    "ENVELOPE_HEADER",
    "ENVELOPE_VERSION",
    "TASK_HEADER",
    "decode",
    "encode",
    "headers_for",
]

TASK_HEADER = "foxtive-task"
ENVELOPE_HEADER = "foxtive-envelope"
ENVELOPE_VERSION = 1
CONTENT_TYPE_HEADER = "content-type"
CONTENT_TYPE = "application/json"


def _enc_hook(obj: Any) -> Any:
    # pydantic models (optional dependency): encoded through their own JSON mode.
    dump = getattr(obj, "model_dump", None)
    if callable(dump) and hasattr(type(obj), "model_fields"):
        return dump(mode="json")
    raise TypeError(f"cannot encode an argument of type {type(obj).__qualname__} as JSON")


_encoder = msgspec.json.Encoder(enc_hook=_enc_hook)
_decoder = msgspec.json.Decoder()


def encode(args: Sequence[Any], kwargs: Mapping[str, Any]) -> bytes:
    """The body for one call; ``TypeError`` names what cannot be encoded."""
    # msgspec writes tuples and lists as arrays, dicts as objects: the
    # common shapes go in as they are (no copy per call; send_many's hot path).
    if args.__class__ is not tuple and args.__class__ is not list:
        args = list(args)
    if kwargs.__class__ is not dict:
        kwargs = dict(kwargs)
    try:
        return _encoder.encode({"args": args, "kwargs": kwargs})
    except TypeError:
        raise
    except (msgspec.EncodeError, ValueError, OverflowError) as e:
        raise TypeError(f"task arguments cannot be encoded as JSON: {e}") from e


def to_json_value(value: Any) -> Any:
    """A task's return value as JSON-ready builtins (results); ``TypeError``
    if it cannot be encoded."""
    try:
        return msgspec.to_builtins(value, enc_hook=_enc_hook)
    except TypeError:
        raise
    except (msgspec.EncodeError, ValueError, OverflowError) as e:
        raise TypeError(f"task result cannot be encoded as JSON: {e}") from e


def decode(body: bytes) -> tuple[list[Any], dict[str, Any]]:
    """``(args, kwargs)`` from a body; ``PayloadError`` if it is not an envelope."""
    try:
        data = _decoder.decode(body)
    except msgspec.DecodeError as e:
        raise PayloadError(f"task body is not JSON: {e}") from None
    if not isinstance(data, dict):
        raise PayloadError("task body: expected a JSON object {\"args\": [...], \"kwargs\": {...}}")
    args = data.get("args", [])
    kwargs = data.get("kwargs", {})
    if not isinstance(args, list):
        raise PayloadError(f"task body: \"args\" must be a JSON array, got {type(args).__name__}")
    if not isinstance(kwargs, dict):
        raise PayloadError(
            f"task body: \"kwargs\" must be a JSON object, got {type(kwargs).__name__}")
    return args, kwargs


def headers_for(task_name: str, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The headers of a task message (``extra`` cannot override the envelope's)."""
    headers: dict[str, Any] = dict(extra) if extra else {}
    headers[TASK_HEADER] = task_name
    headers[ENVELOPE_HEADER] = ENVELOPE_VERSION
    headers[CONTENT_TYPE_HEADER] = CONTENT_TYPE
    return headers
