"""The one checker of user-given values: the run config's sections, the continual methods' arguments and the
optimizers' ``optim_args`` all go through it, so every bad value is reported the same way, in one line, the dotted
key first (``KEY: expected a number >= 0, got -1``).

It raises plain ``ValueError``; a caller wraps the message in its own error with the full dotted key (the run
config's ``ConfigError``: ``config.method_args.lambda_: ...``, ``config.training.optim_args.threshold: ...``).
It imports nothing of classp_hf (below every layer: ``tests/test_layering.py``).

- :func:`check_value`: a plain value (YAML, a keyword argument) against a type annotation and optional bounds
  (``{"ge": 0, "lt": 1}``, as a dataclass field's metadata gives them);
- :func:`parse_text`: a ``key=value`` string's value typed by its annotation (``"true"``, ``"1e-9"``);
- :func:`parse_key_values`: ``"a=1,b=2"`` into pairs;
- :func:`check_keys` / :func:`unknown_key_message`: unknown keys, with the closest name and the accepted ones;
- :func:`check_fields`: a mapping against a dataclass's fields (unknown, required, each value and its bounds).
"""

from __future__ import annotations

import collections.abc
import dataclasses
import difflib
import enum
import functools
import math
import types
import typing
from collections.abc import Iterable, Mapping
from typing import Any, Literal

__all__ = [
    "BOUND_KEYS",
    "TEXT_TYPES",
    "check_fields",
    "check_keys",
    "check_value",
    "describe",
    "field_types",
    "parse_key_values",
    "parse_text",
    "unknown_key_message",
]

#: The bounds a number may carry (a dataclass field's metadata): ``{"ge": 0, "lt": 1}``.
BOUND_KEYS = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}
_HOLDS = {
    "ge": lambda value, bound: value >= bound,
    "gt": lambda value, bound: value > bound,
    "le": lambda value, bound: value <= bound,
    "lt": lambda value, bound: value < bound,
}

#: The types :func:`parse_text` reads from a ``key=value`` string.
TEXT_TYPES = (bool, int, float, str)
_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}

# -- values against type annotations ---------------------------------------------------------


def _union_arms(annotation: Any) -> tuple[Any, ...]:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return typing.get_args(annotation)
    return (annotation,)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _literal_matches(value: Any, option: Any) -> bool:
    # peft writes a family of options as ``pissa_niter_[number of iters]``: a prefix.
    if isinstance(option, str) and "[" in option:
        return isinstance(value, str) and value.startswith(option.split("[")[0]) and len(value) > option.index("[")
    return type(value) is type(option) and value == option


def _matches(value: Any, annotation: Any) -> bool:
    """Whether ``value`` (plain data) fits ``annotation``; annotations it cannot judge pass."""
    if annotation is Any or annotation is object:
        return True
    if annotation is None or annotation is type(None):
        return value is None
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, arm) for arm in args)
    if origin is Literal:
        return any(_literal_matches(value, option) for option in args)
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return _is_number(value) and isinstance(value, int)
    if annotation is float:
        return _is_number(value) and math.isfinite(value)
    if annotation is str:
        return isinstance(value, str)
    if annotation is list or origin in (list, collections.abc.Sequence):
        return isinstance(value, list) and all(_matches(item, args[0]) for item in value if args)
    if annotation is tuple or origin is tuple:
        if not isinstance(value, (list, tuple)):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_matches(item, args[0]) for item in value)
        return not args or (len(args) == len(value) and all(map(_matches, value, args)))
    if annotation is dict or origin in (dict, collections.abc.Mapping):
        return isinstance(value, dict) and all(
            _matches(key, args[0]) and _matches(item, args[1]) for key, item in value.items() if args
        )
    if isinstance(annotation, type):
        if issubclass(annotation, enum.Enum):
            return isinstance(value, annotation) or any(value == member.value for member in annotation)
        if dataclasses.is_dataclass(annotation):  # nested configs come from YAML as mappings
            return isinstance(value, (annotation, dict))
        return isinstance(value, annotation)
    return True


def _bounds(metadata: Mapping[str, Any] | None) -> dict[str, float]:
    return {key: metadata[key] for key in BOUND_KEYS if metadata and key in metadata}


def _in_bounds(value: float, bounds: Mapping[str, float]) -> bool:
    return all(_HOLDS[key](value, bound) for key, bound in bounds.items())


def _describe_bounded(annotation: Any, bounds: Mapping[str, float]) -> str:
    """``a positive integer``, ``a number >= 0``, ``a number in [0, 1)``."""
    word = "an integer" if annotation is int else "a number"
    low = next(((key, bounds[key]) for key in ("ge", "gt") if key in bounds), None)
    high = next(((key, bounds[key]) for key in ("le", "lt") if key in bounds), None)
    if annotation is int and low == ("gt", 0) and high is None:
        return "a positive integer"
    if low and high:
        opening, closing = "[" if low[0] == "ge" else "(", "]" if high[0] == "le" else ")"
        return f"{word} in {opening}{low[1]:g}, {high[1]:g}{closing}"
    key, bound = low or high  # type: ignore[misc]
    return f"{word} {BOUND_KEYS[key]} {bound:g}"


_PLURALS = {str: "strings", int: "integers", float: "numbers", bool: "booleans"}


def _describe_one(annotation: Any, bounds: Mapping[str, float]) -> str:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is None or annotation is type(None):
        return "null"
    if origin is Literal:
        names = [str(option).lower() if isinstance(option, bool) else str(option) for option in args]
        return " or ".join(names) if len(names) <= 2 else f"one of {', '.join(names)}"
    if annotation in (int, float) and bounds:
        return _describe_bounded(annotation, bounds)
    simple = {bool: "true or false", int: "an integer", float: "a finite number", str: "a string"}
    if annotation in simple:
        return simple[annotation]
    if annotation is list or origin in (list, collections.abc.Sequence, tuple) or annotation is tuple:
        return f"a list of {_PLURALS.get(args[0], 'values')}" if args else "a list"
    if annotation is dict or origin in (dict, collections.abc.Mapping):
        return "a mapping"
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return f"one of {', '.join(str(member.value) for member in annotation)}"
    if isinstance(annotation, type) and dataclasses.is_dataclass(annotation):
        return "a mapping"
    return getattr(annotation, "__name__", str(annotation))


_DESCRIPTION_ORDER = ("a string", "a positive integer", "an integer", "a number", "a finite number")
_DESCRIPTION_ORDER += ("true or false", "a list", "a mapping")


def _description_rank(part: str) -> int:
    """Where a union arm's description goes: scalars, lists, mappings, others, null last (typing caches a
    union under its first spelling, so the arms' own order depends on what was imported first)."""
    if part == "null":
        return len(_DESCRIPTION_ORDER) + 1
    ranks = [rank for rank, prefix in enumerate(_DESCRIPTION_ORDER) if part.startswith(prefix)]
    return ranks[0] if ranks else len(_DESCRIPTION_ORDER)


def describe(annotation: Any, bounds: Mapping[str, Any] | None = None) -> str:
    """What ``annotation`` (``bounds`` on its numbers) allows, in words: ``a string, a list of strings or null``."""
    bounds = _bounds(bounds)
    parts = [_describe_one(arm, bounds) for arm in _union_arms(annotation)]
    parts = sorted(dict.fromkeys(parts), key=_description_rank)
    return parts[0] if len(parts) == 1 else f"{', '.join(parts[:-1])} or {parts[-1]}"


def check_value(
    value: Any, annotation: Any, key: str, *, bounds: Mapping[str, Any] | None = None, convert: bool = False
) -> Any:
    """Checks a value against a type annotation and optional bounds.

    Handles ``int``, ``float`` (finite; an integer passes), ``bool``, ``str``, ``None`` / ``Optional``,
    ``list[...]``, ``tuple[...]``, ``dict[...]``, ``Literal[...]``, enums (a member or its value) and unions;
    a nested dataclass accepts a mapping; other annotations pass.

    Args:
        value: the value (parsed from YAML, or a keyword argument).
        annotation: the resolved annotation (``typing.get_type_hints``).
        key: the dotted key, for the message (``config.training.num_train_epochs``, ``method_args.lambda_``).
        bounds: ``ge``/``gt``/``le``/``lt`` limits of a number (other keys are ignored: a field's metadata may
            be passed whole).
        convert: return an integer given for a ``float`` annotation as a float.

    Returns:
        ``value`` (converted when ``convert`` asks for it).

    Raises:
        ValueError: ``"<key>: expected <what the annotation allows>, got <value>"`` (a value of the right type
            out of its bounds: ``"<key>: expected a number in [0, 1), got 1.5"``).
    """
    if not _matches(value, annotation):
        raise ValueError(f"{key}: expected {describe(annotation)}, got {value!r}")
    limits = _bounds(bounds)
    if limits and _is_number(value) and not _in_bounds(value, limits):
        raise ValueError(f"{key}: expected {describe(annotation, limits)}, got {value!r}")
    if convert and _is_number(value) and not isinstance(value, float):
        arms = _union_arms(annotation)
        if float in arms and int not in arms:
            return float(value)
    return value


def parse_text(text: str, annotation: type, key: str, *, bounds: Mapping[str, Any] | None = None) -> Any:
    """A ``key=value`` string's value as ``annotation`` (``bool``: true/false/1/0/yes/no/on/off, ``int``,
    ``float``, ``str``), then checked as :func:`check_value` does.

    Raises:
        ValueError: ``"<key>: expected <what the annotation allows>, got '<text>'"``.
    """
    value: Any = text
    lowered = text.strip().lower()
    if annotation is bool:
        value = True if lowered in _TRUE else False if lowered in _FALSE else text
    elif annotation in (int, float):
        try:
            value = annotation(text)
        except ValueError:
            pass
    return check_value(value, annotation, key, bounds=bounds)


def parse_key_values(text: str, key: str) -> list[tuple[str, str]]:
    """``"a=1, b=x"`` into ``[("a", "1"), ("b", "x")]`` (empty entries skipped).

    Raises:
        ValueError: ``"<key>: malformed entry 'a' (expected key=value)"``.
    """
    pairs = []
    for entry in text.split(","):
        entry = entry.strip()
        if not entry:
            continue
        name, _, value = entry.partition("=")
        if entry.count("=") != 1 or not name.strip():
            raise ValueError(f"{key}: malformed entry {entry!r} (expected key=value)")
        pairs.append((name.strip(), value.strip()))
    return pairs


# -- keys ----------------------------------------------------------------------------------------


def unknown_key_message(key: Any, accepted: Iterable[str], where: str, owner: str = "") -> str:
    """``"<where>.<key>: unknown key[ for <owner>] (did you mean 'x'? accepted: a, b)"``."""
    names = sorted(accepted)
    close = difflib.get_close_matches(str(key), names, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    about = f" for {owner}" if owner else ""
    listed = f"accepted: {', '.join(names)}" if names else "none accepted"
    return f"{where}.{key}: unknown key{about} ({hint}{listed})"


def check_keys(data: Iterable[Any], accepted: Iterable[str], where: str, owner: str = "") -> None:
    """Raises ``ValueError`` (:func:`unknown_key_message`) for the first key of ``data`` not in ``accepted``."""
    accepted = set(accepted)
    for key in data:
        if key not in accepted:
            raise ValueError(unknown_key_message(key, accepted, where, owner))


# -- dataclasses ----------------------------------------------------------------------------------


@functools.cache
def field_types(cls: type) -> dict[str, Any]:
    """The resolved annotations of a dataclass's init fields."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints.get(f.name, Any) for f in dataclasses.fields(cls) if f.init}


def check_fields(cls: type, values: Mapping[str, Any], where: str, owner: str) -> dict[str, Any]:
    """Checks a mapping against a dataclass's init fields.

    Each value is checked against its field's annotation (:func:`check_value`, integers converted for
    ``float`` fields) with the bounds in the field's metadata (``ge``, ``gt``, ``le``, ``lt``); a field
    without a default is required.

    Args:
        cls: the dataclass.
        values: the values by field name.
        where: how the mapping is named in messages (``method_args``).
        owner: what the fields belong to, for messages (``ewc``).

    Returns:
        The checked values.

    Raises:
        ValueError: one line naming ``<where>.<field>``.
    """
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    check_keys(values, fields, where, owner)
    types_ = field_types(cls)
    checked = {}
    for name, f in fields.items():
        if name not in values:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                about = f" ({f.metadata['help']})" if f.metadata.get("help") else ""
                raise ValueError(f"{where}.{name}: required by {owner}{about}")
            continue
        checked[name] = check_value(values[name], types_[name], f"{where}.{name}", bounds=f.metadata, convert=True)
    return checked
