"""Typed conversion between nested dataclasses and plain dicts (YAML).

:func:`from_dict` builds a dataclass from a dict, checking every key and every value against
the field's type annotation: unknown keys are an error listing the valid ones, wrong types are
an error naming the key, the expected type and the value. Supported annotations: ``bool``,
``int``, ``float``, ``str``, ``X | None``, ``list[X]``, ``dict[str, X]``, ``dict`` and nested
dataclasses. An ``int`` is accepted where a ``float`` is expected, and a string where a number
is (YAML reads ``1e-4`` as a string); a ``bool`` is never accepted as a number.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from typing import Any, TypeVar

from sgcnn.errors import SgcnnError

T = TypeVar("T")


def field_types(cls: type) -> dict[str, Any]:
    """``{field name: resolved annotation}`` of dataclass ``cls``."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def unknown_key_error(key: str, where: str, valid: list[str]) -> SgcnnError:
    """The error for a key that ``where`` does not have, listing the valid keys."""
    close = difflib.get_close_matches(key.rsplit(".", 1)[-1], valid, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return SgcnnError(
        f"unknown key {key!r}{hint}; valid keys in {where or 'the config'}: {', '.join(valid)}"
    )


def from_dict(cls: type[T], data: Any, path: str = "") -> T:
    """Build dataclass ``cls`` from ``data`` (missing keys keep their defaults)."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        where = path or "the config"
        raise SgcnnError(f"{where} must be a mapping of keys to values, got {data!r}")
    types_ = field_types(cls)
    kwargs = {}
    for key, value in data.items():
        full = f"{path}.{key}" if path else str(key)
        if key not in types_:
            raise unknown_key_error(full, path, list(types_))
        kwargs[key] = convert(value, types_[key], full)
    return cls(**kwargs)


def convert(value: Any, hint: Any, path: str) -> Any:
    """``value`` checked (and, for numbers, converted) against annotation ``hint``."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        if dataclasses.is_dataclass(value):
            return value
        return from_dict(hint, value, path)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        errors = []
        for option in options:
            try:
                return convert(value, option, path)
            except SgcnnError as err:
                errors.append(err)
        raise errors[0]
    if origin is list:
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list):
            hint = f" (for one value write [{value}])" if isinstance(value, (int, float)) else ""
            raise SgcnnError(f"{_type_error(path, 'a list', value)}{hint}")
        return [convert(v, args[0], f"{path}[{i}]") for i, v in enumerate(value)]
    if hint is dict or origin is dict:
        if not isinstance(value, dict):
            raise _type_error(path, "a mapping", value)
        if not args:
            return dict(value)
        return {str(k): convert(v, args[1], f"{path}.{k}") for k, v in value.items()}
    if hint is Any:
        return value
    return _scalar(value, hint, path)


def _scalar(value: Any, hint: type, path: str) -> Any:
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no"):
            return value.lower() in ("true", "yes")
        raise _type_error(path, "true or false", value)
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise _type_error(path, "an integer", value)
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise _type_error(path, "a number", value)
    if hint is str:
        if isinstance(value, str):
            return value
        raise _type_error(path, "a string", value)
    raise TypeError(f"unsupported annotation {hint!r} at {path}")  # a bug in a config class


def _type_error(path: str, expected: str, value: Any) -> SgcnnError:
    return SgcnnError(f"{path} must be {expected}, got {value!r} ({type(value).__name__})")


def to_dict(obj: Any) -> Any:
    """A dataclass (nested) as plain dicts / lists, for YAML and comparisons."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj
