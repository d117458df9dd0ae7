"""Typed options read from type hints: one parser for every ``KEY=VALUE`` option (the CLI's ``--method-opt``,
``--augment-opt``, ``--dataset-opt`` and ``--backbone-opt``, the benchmark's ``NAME:KEY=VALUE,...``) and one check
of a config's values, so that a bad value fails where it is given, naming the parameter, and not later inside a run.
The hints come from a config dataclass's fields or from a function's (or class's) keyword-only parameters, such
as a dataset reader's.

    parse_options(AugmentConfig, ["erase=0", "scale=[0.5, 1]"], where="--augment-opt")   # {"erase": 0.0, ...}
    parse_options(read_ferplus, ["image_size=64"], where="--dataset-opt")                # {"image_size": 64}
    check_types(config, where="method 'ldlva'")                                          # raises on lr="abc"
    label_smoothing: float = ranged(0.0, UNIT_OPEN)   # a config field declaring its range; in __post_init__:
    check_ranges(self)                                # raises "CEConfig.label_smoothing must be in [0, 1), got 5"
"""
from __future__ import annotations

import dataclasses
import inspect
import json
import math
import numbers
import types
import typing

__all__ = ["field_hints", "option_hints", "parse_value", "parse_literal", "parse_options", "split_options",
           "check_types", "check_ranges", "Interval", "ranged", "field_ranges", "AT_LEAST_1", "POSITIVE",
           "NON_NEGATIVE", "PROBABILITY", "UNIT_OPEN", "FINITE"]


@dataclasses.dataclass(frozen=True)
class Interval:
    """The finite numbers from ``lo`` to ``hi`` (infinite: unbounded), each end included unless ``lo_open`` /
    ``hi_open``; NaN and +-inf lie in no interval. ``str`` gives what an error message says (``"in [0, 1)"``)."""

    lo: float = -math.inf
    hi: float = math.inf
    _: dataclasses.KW_ONLY
    lo_open: bool = False
    hi_open: bool = False

    def __contains__(self, value) -> bool:
        return (math.isfinite(value) and (self.lo < value if self.lo_open else self.lo <= value)
                and (value < self.hi if self.hi_open else value <= self.hi))

    def __str__(self) -> str:
        lo, hi = math.isfinite(self.lo), math.isfinite(self.hi)
        if lo and hi:
            return f"in {'(' if self.lo_open else '['}{self.lo:g}, {self.hi:g}{')' if self.hi_open else ']'}"
        if lo:
            return f"{'>' if self.lo_open else '>='} {self.lo:g}"
        return f"{'<' if self.hi_open else '<='} {self.hi:g}" if hi else "finite"


#: Common ranges for :func:`check_ranges` and :func:`ranged`.
AT_LEAST_1 = Interval(1)
POSITIVE = Interval(0, lo_open=True)
NON_NEGATIVE = Interval(0)
PROBABILITY = Interval(0, 1)
UNIT_OPEN = Interval(0, 1, hi_open=True)
FINITE = Interval()

_TRUE, _FALSE = ("true", "1", "yes"), ("false", "0", "no")


def field_hints(cls) -> dict[str, object]:
    """``{field name: resolved type hint}`` of a dataclass (string annotations resolved)."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def option_hints(obj) -> dict[str, object]:
    """``{option: type hint}`` of a dataclass (its fields) or of a function or class (its keyword-only
    parameters; an unannotated one counts as ``str``)."""
    if dataclasses.is_dataclass(obj):
        return field_hints(obj)
    hints = typing.get_type_hints(obj.__init__ if inspect.isclass(obj) else obj)
    return {name: hints.get(name, str) for name, p in inspect.signature(obj).parameters.items()
            if p.kind == p.KEYWORD_ONLY}


def _optional(hint) -> tuple[object, bool]:
    """(the hint without ``None``, whether ``None`` is allowed)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return (args[0] if len(args) == 1 else hint), len(args) < len(typing.get_args(hint))
    return hint, False


def _name(hint) -> str:
    return getattr(hint, "__name__", str(hint))


def parse_value(text: str, hint, *, key: str, where: str):
    """The value of ``key`` written as ``text``, converted to ``hint`` (bool, int, float, str, tuple, list, dict,
    and ``X | None`` with ``none``/``null``). Raises ValueError naming ``where``, the key and the expected type."""
    base, nullable = _optional(hint)
    if nullable and text.strip().lower() in ("none", "null"):
        return None
    origin = typing.get_origin(base) or base
    try:
        if base is bool:
            if text.lower() not in _TRUE + _FALSE:
                raise ValueError
            return text.lower() in _TRUE
        if base in (int, float):
            return base(text)
        if base is str:
            return text
        if origin in (tuple, list, dict):
            value = json.loads(text)
            if not isinstance(value, dict if origin is dict else list):
                raise ValueError
            return tuple(value) if origin is tuple else value
    except (ValueError, json.JSONDecodeError):
        raise ValueError(f"{where}: {key}={text!r} is not a valid {_name(hint)}") from None
    raise ValueError(f"{where}: {key} ({_name(hint)}) cannot be given as text")


def parse_literal(text: str):
    """An untyped option value (e.g. a ``timm.create_model`` keyword): the JSON value ``text`` spells
    (``[32,64]``, ``32``, ``true``, ``null``), else ``text`` itself as a string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def split_options(text: str) -> list[str]:
    """``"a=1,b=[2,3]"`` -> ``["a=1", "b=[2,3]"]``: split at the commas outside brackets, braces and quotes."""
    out, depth, quote, start = [], 0, "", 0
    for i, ch in enumerate(text):
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
        elif ch == "," and depth == 0:
            out.append(text[start:i])
            start = i + 1
    out.append(text[start:])
    return [part for part in out if part]


def parse_options(cls, pairs: list[str], *, where: str) -> dict:
    """``["key=value", ...]`` -> ``{key: typed value}`` for the options of ``cls`` (:func:`option_hints`: a
    dataclass's fields, or a function's keyword-only parameters); an unknown key or a bad value raises ValueError
    naming ``where``, the key and the expected type or the valid keys."""
    hints = option_hints(cls)
    out = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or key not in hints:
            raise ValueError(f"{where}: bad option {pair!r}: expected key=value with key in {', '.join(hints)}")
        out[key] = parse_value(text, hints[key], key=key, where=where)
    return out


def _matches(value, hint) -> bool:
    base, nullable = _optional(hint)
    if value is None:
        return nullable
    origin = typing.get_origin(base) or base
    if base is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if base is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin in (bool, str, dict):
        return isinstance(value, origin)
    if origin in (tuple, list):
        return isinstance(value, (tuple, list))
    return True  # nested configs and other types check themselves


def ranged(default, interval: Interval):
    """A dataclass field with ``default`` whose value (each item of a tuple) must lie in ``interval``: declared
    in ``metadata["range"]``, checked by :func:`check_ranges`."""
    return dataclasses.field(default=default, metadata={"range": interval})


def field_ranges(cls) -> dict[str, Interval]:
    """``{field: Interval}`` of the fields of dataclass ``cls`` declared with :func:`ranged`."""
    return {f.name: f.metadata["range"] for f in dataclasses.fields(cls) if "range" in f.metadata}


def check_ranges(obj, ranges: dict | None = None, *, where: str | None = None) -> None:
    """Raise ValueError ``<where>.<field> must be <range>, got <value>`` for the first field of ``obj`` outside
    its range. ``ranges`` maps a field to an :class:`Interval` or a ``(test, text)`` pair, which applies to each
    item of a tuple; default: the ranges the fields declare (:func:`field_ranges`), and ``where`` the class name.
    NaN and +-inf are never in range; None and values that are not numbers are left to :func:`check_types`."""
    ranges = field_ranges(type(obj)) if ranges is None else ranges
    where = type(obj).__name__ if where is None else where
    for key, rng in ranges.items():
        ok, text = (rng.__contains__, str(rng)) if isinstance(rng, Interval) else rng
        value = getattr(obj, key)
        items = [v for v in (value if isinstance(value, tuple) else (value,)) if isinstance(v, numbers.Real)]
        finite = all(math.isfinite(v) for v in items)
        if not (finite and all(ok(v) for v in items)):
            text = text if finite or text == "finite" else f"finite and {text}"
            raise ValueError(f"{where}.{key} must be {text}, got {value!r}")


def check_types(obj, *, where: str) -> None:
    """Raise ValueError naming the first field of dataclass instance ``obj`` whose value does not match its hint."""
    for key, hint in field_hints(type(obj)).items():
        value = getattr(obj, key)
        if not _matches(value, hint):
            raise ValueError(f"{where}: {key} must be {_name(hint)}, got {value!r}")
