"""Checking a config field against its type hint, a numeric range and a list of choices.

`check_value(key, value, tp, ...)` returns the value normalised to the hint (3.0 -> 3 for an int field, a
list or a single element -> a tuple for a tuple field) or raises a one-line UserError naming the field, the
value and what the field takes; `check_fields` applies a check to every field of a dataclass, recursing into
the dataclasses inside it. The tables (which field has which range or choices) live in training.config.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Callable

from dsaml_utils.errors import UserError

RANGE_TESTS = {">= 0": lambda v: v >= 0, ">= 1": lambda v: v >= 1, "> 0": lambda v: v > 0,
               "in [0, 1)": lambda v: 0 <= v < 1}
"""The numeric ranges a field may have, by the words that name them in messages."""

_UNIONS = (typing.Union, types.UnionType)
_NAMES = {bool: ("true or false", "booleans"), int: ("an integer", "integers"),
          float: ("a finite number", "finite numbers"), str: ("a string", "strings"), dict: ("an object", "objects")}


class _Bad(Exception):
    """A value that does not fit its field's type."""


def _coerce(value, tp):
    """`value` as a `tp` (3.0 for an int field, a list or one element for a tuple field), else _Bad."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in _UNIONS:
        if value is None and type(None) in args:
            return None
        (arg,) = (a for a in args if a is not type(None))  # every Optional field here has one other type
        return _coerce(value, arg)
    elif origin is tuple:
        items = list(value) if isinstance(value, (list, tuple)) else [value]
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0]) for v in items)
        if len(items) == len(args):
            return tuple(_coerce(v, a) for v, a in zip(items, args))
    elif tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
    elif tp in (str, dict) or dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
    else:
        return value  # a type these checks do not know
    raise _Bad


def _expected(tp, rng: str | None, key: str) -> str:
    """What a field of type `tp` and range `rng` takes, in words."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    suffix = f" {rng}" if rng else ""
    if origin in _UNIONS:
        return " or ".join(_expected(a, rng, key) for a in args if a is not type(None)) + " or null"
    if origin is tuple:
        count = "" if args[-1] is Ellipsis else f"{len(args)} "
        return f"a list of {count}{_NAMES.get(args[0], ('', 'values'))[1]}{suffix}"
    if dataclasses.is_dataclass(tp):
        return f"the fields of {tp.__name__}, each set on its own (e.g. {key}.{dataclasses.fields(tp)[0].name}=...)"
    return _NAMES.get(tp, (getattr(tp, "__name__", str(tp)),))[0] + suffix


def check_value(key: str, value, tp, rng: str | None = None, choices: tuple | None = None,
                non_empty: bool = False):
    """`value` normalised to the type hint `tp`, within range `rng` (a RANGE_TESTS key) and `choices`,
    and not empty when asked, or a one-line UserError."""
    try:
        new = _coerce(value, tp)
        numbers = () if new is None else new if isinstance(new, tuple) else (new,)
        if rng and not all(RANGE_TESTS[rng](v) for v in numbers) or (non_empty and not new):
            raise _Bad
    except _Bad:
        raise UserError(f"{key} {value!r}: expected {_expected(tp, rng, key)}") from None
    # each element of a list field, the value itself otherwise
    bad = [] if choices is None else [v for v in (new if isinstance(new, tuple) else (new,))
                                      if v is not None and v not in choices]
    if bad:
        raise UserError(f"{key} {bad[0]!r}: choose one of {', '.join(map(repr, choices))}")
    return new


def check_fields(obj, prefix: str, check: Callable[[str, object, object], object]) -> None:
    """Replace every field of dataclass `obj` by check(key, value, type hint), recursing into dataclasses."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        key = prefix + f.name
        value = check(key, getattr(obj, f.name), hints[f.name])
        setattr(obj, f.name, value)
        if dataclasses.is_dataclass(value):
            check_fields(value, key + ".", check)
