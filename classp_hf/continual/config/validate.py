"""The generic checker: a plain YAML value against a type annotation (:func:`check_value`), unknown keys
(:func:`check_keys`), :func:`require` and value ranges; every message names the dotted key first.
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
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from classp_hf.continual.errors import ConfigError

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
    """Whether ``value`` (plain YAML data) fits ``annotation``; annotations it cannot judge pass."""
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


_PLURALS = {str: "strings", int: "integers", float: "numbers", bool: "booleans"}


def _describe_one(annotation: Any) -> str:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is None or annotation is type(None):
        return "null"
    if origin is Literal:
        names = [str(option).lower() if isinstance(option, bool) else str(option) for option in args]
        return " or ".join(names) if len(names) <= 2 else f"one of {', '.join(names)}"
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


_DESCRIPTION_ORDER = ("a string", "an integer", "a finite number", "true or false", "a list", "a mapping")


def _description_rank(part: str) -> int:
    """Where a union arm's description goes: scalars, lists, mappings, others, null last (typing caches a
    union under its first spelling, so the arms' own order depends on what was imported first)."""
    if part == "null":
        return len(_DESCRIPTION_ORDER) + 1
    ranks = [rank for rank, prefix in enumerate(_DESCRIPTION_ORDER) if part.startswith(prefix)]
    return ranks[0] if ranks else len(_DESCRIPTION_ORDER)


def _describe(annotation: Any) -> str:
    parts = sorted(dict.fromkeys(_describe_one(arm) for arm in _union_arms(annotation)), key=_description_rank)
    return parts[0] if len(parts) == 1 else f"{', '.join(parts[:-1])} or {parts[-1]}"


def check_value(value: Any, annotation: Any, where: str) -> Any:
    """Checks a config value against a dataclass field's type annotation.

    Handles ``int``, ``float`` (finite; an integer passes), ``bool``, ``str``, ``None`` /
    ``Optional``, ``list[...]``, ``tuple[...]``, ``dict[...]``, ``Literal[...]``, enums (a member or
    its value) and unions; a nested dataclass accepts a mapping; other annotations pass.

    Args:
        value: the value as parsed from YAML.
        annotation: the field's resolved annotation (``typing.get_type_hints``).
        where: the key, for the message (``config.training.num_train_epochs``).

    Returns:
        ``value``, unchanged.

    Raises:
        ConfigError: ``"<where>: expected <what the annotation allows>, got <value>"``.
    """
    if not _matches(value, annotation):
        raise ConfigError(f"{where}: expected {_describe(annotation)}, got {value!r}")
    return value


@functools.cache
def _field_types(cls: type) -> dict[str, Any]:
    """The resolved annotations of a dataclass's init fields."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints.get(f.name, Any) for f in dataclasses.fields(cls) if f.init}


# -- small checks ------------------------------------------------------------------------------


def require(condition: bool, message: str) -> None:
    """Raises ``ConfigError(message)`` unless ``condition`` holds."""
    if not condition:
        raise ConfigError(message)


def check_keys(data: Mapping[str, Any], allowed: set[str], where: str) -> None:
    """Raises ``ConfigError`` naming ``where.key`` for a key not in ``allowed`` (with the closest allowed name)."""
    for key in data:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), sorted(allowed), n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"allowed: {', '.join(sorted(allowed))}"
            raise ConfigError(f"{where}.{key}: unknown key ({hint})")


def _positive_int(value: Any, where: str, *, allow_none: bool = True) -> int | None:
    if value is None and allow_none:
        return None
    require(
        isinstance(value, int) and not isinstance(value, bool) and value > 0, f"{where}: expected a positive integer"
    )
    return value


@dataclass(frozen=True)
class _Range:
    """A value range that a field's type does not express; `None` values are left to the type check."""

    description: str
    accepts: Callable[[float], bool]

    def check(self, value: Any, where: str) -> None:
        if _is_number(value) and not self.accepts(value):
            raise ConfigError(f"{where}: expected {self.description}, got {value!r}")


_POSITIVE = _Range("a positive integer", lambda v: v > 0)
_POSITIVE_NUMBER = _Range("a number > 0", lambda v: v > 0)
_NON_NEGATIVE = _Range("a number >= 0", lambda v: v >= 0)
_FRACTION = _Range("a number in [0, 1]", lambda v: 0 <= v <= 1)
_OPEN_FRACTION = _Range("a number in [0, 1)", lambda v: 0 <= v < 1)

#: TrainingArguments ranges transformers does not check when the arguments are built (a bad value
#: would fail or misbehave only once training runs, after the model is loaded).
_TRAINING_RANGES = {
    "learning_rate": _NON_NEGATIVE,
    "weight_decay": _NON_NEGATIVE,
    "num_train_epochs": _NON_NEGATIVE,
    "warmup_steps": _NON_NEGATIVE,
    "warmup_ratio": _FRACTION,
    "max_grad_norm": _NON_NEGATIVE,
    "adam_epsilon": _NON_NEGATIVE,
    "adam_beta1": _OPEN_FRACTION,
    "adam_beta2": _OPEN_FRACTION,
    "label_smoothing_factor": _FRACTION,
    "per_device_train_batch_size": _POSITIVE,
    "per_device_eval_batch_size": _POSITIVE,
    "gradient_accumulation_steps": _POSITIVE,
    "eval_accumulation_steps": _POSITIVE,
    "dataloader_num_workers": _NON_NEGATIVE,
}
_LORA_RANGES = {"r": _POSITIVE, "lora_alpha": _POSITIVE_NUMBER, "lora_dropout": _OPEN_FRACTION}
