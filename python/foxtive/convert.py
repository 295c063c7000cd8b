"""Argument conversion: JSON values to the types a task's annotations name.

msgspec does the work (``msgspec.convert`` into a Struct built once per task
from its signature): it is compiled, checks every field in one pass and
names the failing path in its error (``Expected `int`, got `str` - at
`$.report_id```), which becomes the ``PayloadError`` a dead letter keeps.
pydantic models (optional) are validated by pydantic after that pass.
"""

from __future__ import annotations

import inspect
import logging
import re
import typing
from collections.abc import Callable
from typing import Any

import msgspec
import msgspec.structs

from . import envelope
from .errors import PayloadError

__all__ = ["ArgumentConverter"]

log = logging.getLogger("foxtive")

_AT_PATH = re.compile(r" - at `\$\.?([^`]*)`$")


def _is_pydantic_model(tp: Any) -> bool:
    return isinstance(tp, type) and hasattr(tp, "model_validate") and hasattr(tp, "model_fields")


class ArgumentConverter:
    """Turns ``(args, kwargs)`` decoded from JSON into the call of ``fn``.

    Built lazily (on the first message), so annotations may name types
    defined after the decorator ran."""

    __slots__ = ("_fast", "_fast_tuple", "_fn_name", "_models", "_names", "_positional",
                 "_positional_only", "_struct", "_var_kw", "_var_kw_type", "_var_pos",
                 "_var_pos_type", "return_type")

    def __init__(self, fn: Callable[..., Any]) -> None:
        self._fn_name = getattr(fn, "__qualname__", repr(fn))
        sig = inspect.signature(fn)
        try:
            hints = typing.get_type_hints(fn)
        except Exception as e:
            # An annotation naming what the function's module cannot see (a
            # class local to another function): checking nothing would let
            # any payload through, so say so loudly, once per task.
            log.warning("task %s: its annotations cannot be resolved (%s); its arguments "
                        "are passed as decoded from JSON, unchecked", self._fn_name, e)
            hints = {}
        self.return_type: Any = hints.get("return", Any)
        self._positional: list[str] = []
        self._positional_only: list[str] = []
        self._names: set[str] = set()
        self._models: dict[str, Any] = {}
        self._var_pos: str | None = None
        self._var_kw: str | None = None
        self._var_pos_type: Any = Any
        self._var_kw_type: Any = Any
        fields: list[Any] = []
        for p in sig.parameters.values():
            tp = hints.get(p.name, Any)
            if p.kind is p.VAR_POSITIONAL:
                self._var_pos, self._var_pos_type = p.name, tp
                continue
            if p.kind is p.VAR_KEYWORD:
                self._var_kw, self._var_kw_type = p.name, tp
                continue
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
                self._positional.append(p.name)
            if p.kind is p.POSITIONAL_ONLY:
                self._positional_only.append(p.name)
            self._names.add(p.name)
            if _is_pydantic_model(tp):
                self._models[p.name] = tp
                tp = Any
            if p.default is p.empty:
                fields.append((p.name, tp))
            else:
                fields.append((p.name, tp, p.default))
        # The fast path: a body whose arguments are all positional decodes in
        # one call of a Decoder built here, once per task: straight into a
        # typed tuple when no parameter has a default, else into an
        # array-like Struct in signature order (possible when every
        # parameter can be passed by position).
        self._fast: msgspec.json.Decoder[Any] | None = None
        self._fast_tuple = False
        if (self._var_pos is None and self._var_kw is None and not self._models
                and len(self._positional) == len(fields)):
            positional: Any
            if fields and all(len(f) == 2 for f in fields):
                positional = tuple[tuple(f[1] for f in fields)]  # type: ignore[misc]
                self._fast_tuple = True
            else:
                positional = msgspec.defstruct(f"{self._fn_name}.positional", fields,
                                               array_like=True, forbid_unknown_fields=True)
            envelope_type = msgspec.defstruct(
                f"{self._fn_name}.envelope",
                [("args", positional), ("kwargs", dict[str, Any], {})])
            try:
                self._fast = msgspec.json.Decoder(envelope_type)
            except TypeError:  # a type msgspec cannot decode: the general path reports it
                self._fast = None
        # Required fields first, as a Struct needs (the call is by name anyway).
        fields.sort(key=lambda f: len(f) == 3)
        self._struct = msgspec.defstruct(
            f"{self._fn_name}.arguments", fields,
            forbid_unknown_fields=self._var_kw is None, omit_defaults=False)

    @property
    def fast_decode(self) -> Callable[[bytes], Any] | None:
        """``body -> envelope`` (``.args`` a tuple of the checked arguments,
        ``.kwargs`` a dict) for a task whose parameters are all positional
        and required, else None; raises on a body that does not fit
        (:meth:`decode_call` then says why)."""
        return self._fast.decode if self._fast is not None and self._fast_tuple else None

    def _error(self, e: Exception, where: str = "") -> PayloadError:
        text = str(e)
        m = _AT_PATH.search(text)
        if m:
            where = m.group(1) or where
            text = text[: m.start()]
        field = f"argument {where!r}: " if where else ""
        return PayloadError(f"task {self._fn_name}: {field}{text}")

    def decode_call(self, body: bytes) -> tuple[tuple[Any, ...] | list[Any], dict[str, Any]]:
        """``(args, kwargs)`` to call the function with, from a message body;
        ``PayloadError`` (naming the argument and the reason) if it does not fit."""
        fast = self._fast
        if fast is not None:
            try:
                env = fast.decode(body)
            except (msgspec.ValidationError, msgspec.DecodeError):
                pass  # the general path below says exactly what is wrong
            else:
                if not env.kwargs:
                    if self._fast_tuple:
                        return env.args, {}
                    return msgspec.structs.astuple(env.args), {}
        args, kwargs = envelope.decode(body)
        return self.convert(args, kwargs)

    def convert(self, args: list[Any], kwargs: dict[str, Any]) -> tuple[list[Any], dict[str, Any]]:
        """``(args, kwargs)`` to call the function with; ``PayloadError`` if
        the payload does not fit its signature (the field and the reason)."""
        n = len(self._positional)
        if not kwargs and len(args) <= n:
            # The common case: positional arguments only.
            named: dict[str, Any] = dict(zip(self._positional, args, strict=False))
            extra_kw: dict[str, Any] = {}
            rest: list[Any] = []
        else:
            named, extra_kw = {}, {}
            for k, v in kwargs.items():
                if k in self._names:
                    named[k] = v
                elif self._var_kw is not None:
                    extra_kw[k] = v
                else:
                    raise PayloadError(
                        f"task {self._fn_name}: unexpected keyword argument {k!r}")
            for name, v in zip(self._positional, args, strict=False):
                if name in named:
                    raise PayloadError(f"task {self._fn_name}: argument {name!r} given twice")
                named[name] = v
            rest = args[n:]
            if rest and self._var_pos is None:
                raise PayloadError(f"task {self._fn_name}: takes {n} positional argument(s), "
                                   f"{len(args)} given")
        try:
            obj = msgspec.convert(named, self._struct)
        except msgspec.ValidationError as e:
            raise self._error(e) from None
        values = msgspec.structs.asdict(obj)
        if not self._models and not rest and not extra_kw and not self._positional_only:
            return [], values
        for name, model in self._models.items():
            try:
                values[name] = model.model_validate(values[name])
            except Exception as e:  # pydantic.ValidationError
                raise PayloadError(f"task {self._fn_name}: argument {name!r}: {e}") from None
        if rest and self._var_pos_type is not Any:
            try:
                rest = msgspec.convert(rest, list[self._var_pos_type])  # type: ignore[name-defined]
            except msgspec.ValidationError as e:
                raise self._error(e, self._var_pos or "") from None
        if extra_kw and self._var_kw_type is not Any:
            try:
                extra_kw = msgspec.convert(extra_kw, dict[str, self._var_kw_type])  # type: ignore[name-defined]
            except msgspec.ValidationError as e:
                raise self._error(e, self._var_kw or "") from None
        call_args = [values.pop(name) for name in self._positional_only]
        if rest:
            # Positional parameters before *args must be passed positionally.
            call_args += [values.pop(name) for name in self._positional
                          if name not in self._positional_only]
            call_args += rest
        values.update(extra_kw)
        return call_args, values

    def convert_result(self, value: Any) -> Any:
        """A JSON-decoded return value as the return annotation's type."""
        if self.return_type is Any or self.return_type is None or value is None:
            return value
        tp = self.return_type
        if _is_pydantic_model(tp):
            return tp.model_validate(value)
        return msgspec.convert(value, tp)
