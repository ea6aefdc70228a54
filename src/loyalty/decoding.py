"""Strict JSON decoding with errors that name their field, found by walking the type.

A body is decoded once, by msgspec, straight into its Struct: a number sent as a string or a
boolean sent as "true" is refused, not converted. Only when that fails is the body looked at
again, to say *where*: the decoded JSON is walked along the Struct's fields (msgspec.structs),
and the first value that does not convert is the one named. So the field path comes from the
type, never from the text of msgspec's message; the reason is msgspec's own wording for that
one value.
"""

from __future__ import annotations

import types
import typing
from dataclasses import dataclass
from typing import Any, Literal

import msgspec

Kind = Literal["invalid", "missing", "unknown", "syntax"]


@dataclass(frozen=True, slots=True)
class FieldError:
    """Where a value is wrong (a JSON path such as ``items[2].points``; "" is the whole
    document) and why."""

    path: str
    reason: str
    kind: Kind = "invalid"


class DecodeFailure(ValueError):
    def __init__(self, error: FieldError) -> None:
        super().__init__(f"{error.path or 'body'}: {error.reason}")
        self.error = error


def decode(body: bytes, type_: Any) -> Any:
    """``body`` decoded strictly as ``type_``; a DecodeFailure naming the field otherwise."""
    try:
        return msgspec.json.decode(body, type=type_)
    except msgspec.ValidationError as exc:
        failure = exc
    except msgspec.DecodeError as exc:
        raise DecodeFailure(FieldError("", f"not valid JSON: {exc}", "syntax")) from None
    try:
        document = msgspec.json.decode(body)
    except msgspec.DecodeError as exc:  # refused by type before the syntax error was reached
        raise DecodeFailure(FieldError("", f"not valid JSON: {exc}", "syntax")) from None
    raise DecodeFailure(locate(document, type_, failure))


def convert(value: Any, type_: Any, *, strict: bool = True) -> Any:
    """Already-parsed values (a CSV row, form fields) converted, with the same errors. Not
    strict: text is taken for numbers and booleans ("5", "true"), as a CSV cell must be."""
    try:
        return msgspec.convert(value, type_, strict=strict)
    except msgspec.ValidationError as exc:
        raise DecodeFailure(locate(value, type_, exc, strict=strict)) from None


def locate(
    value: Any, type_: Any, error: msgspec.ValidationError | None = None, *, strict: bool = True
) -> FieldError:
    """The first wrong value of ``value`` as ``type_``. ``error`` is the whole document's
    failure, used when no single field can be blamed (a cross-field check, say)."""
    found = _walk(value, type_, "", strict)
    if found is not None:
        return found
    return FieldError("", str(error) if error is not None else "is not valid")


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _base(type_: Any) -> Any:
    while typing.get_origin(type_) is typing.Annotated:
        type_ = typing.get_args(type_)[0]
    return type_


def _walk(value: Any, type_: Any, path: str, strict: bool) -> FieldError | None:
    try:
        msgspec.convert(value, type_, strict=strict)
        return None
    except msgspec.ValidationError as exc:
        reason = str(exc)
    base = _base(type_)
    origin = typing.get_origin(base)
    if isinstance(base, type) and issubclass(base, msgspec.Struct) and isinstance(value, dict):
        found = _walk_struct(value, base, path, strict)
    elif origin in (list, set, frozenset) or (origin is tuple and typing.get_args(base)[-1:] == (...,)):
        found = _walk_items(value, typing.get_args(base)[0], path, strict)
    elif origin is dict and isinstance(value, dict):
        item_type = typing.get_args(base)[1]
        found = next(
            (e for k, v in value.items() if (e := _walk(v, item_type, _join(path, str(k)), strict))), None
        )
    elif origin in (typing.Union, types.UnionType):
        found = _walk_union(value, typing.get_args(base), path, strict)
    else:
        found = None
    # Nothing inside is wrong: the value itself is (its type, a length, a bound).
    return found or FieldError(path, reason)


def _walk_struct(
    value: dict[str, Any], cls: type[msgspec.Struct], path: str, strict: bool
) -> FieldError | None:
    fields = msgspec.structs.fields(cls)
    names = {f.encode_name for f in fields}
    if cls.__struct_config__.forbid_unknown_fields:
        for key in value:
            if key not in names:
                return FieldError(_join(path, key), "unknown field", "unknown")
    for f in fields:
        if f.encode_name not in value:
            if f.required:
                return FieldError(_join(path, f.encode_name), "missing required field", "missing")
            continue
        found = _walk(value[f.encode_name], f.type, _join(path, f.encode_name), strict)
        if found is not None:
            return found
    return None


def _walk_items(value: Any, item_type: Any, path: str, strict: bool) -> FieldError | None:
    if not isinstance(value, list):
        return None
    return next(
        (e for i, item in enumerate(value) if (e := _walk(item, item_type, f"{path}[{i}]", strict))), None
    )


def _walk_union(value: Any, members: tuple[Any, ...], path: str, strict: bool) -> FieldError | None:
    # A nullable object (T | None) is judged as T when a value was given.
    others = [m for m in members if m is not type(None)]
    if value is not None and len(others) == 1:
        return _walk(value, others[0], path, strict)
    return None
