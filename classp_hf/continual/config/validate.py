"""The run config's side of the shared checker (:mod:`classp_hf.validation`): its ``ValueError`` turned into
:class:`ConfigError` (:func:`config_errors`), :func:`check_value` and :func:`check_keys` raising it, :func:`require`,
and the value ranges a field's type does not express; every message names the dotted key first.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from classp_hf import validation
from classp_hf.continual.errors import ConfigError
from classp_hf.validation import _union_arms, describe
from classp_hf.validation import field_types as _field_types

__all__ = ["check_keys", "check_value", "config_errors", "require", "_describe", "_field_types", "_union_arms"]

_describe = describe  # the name earlier versions exported


@contextlib.contextmanager
def config_errors(prefix: str = "") -> Iterator[None]:
    """Turns the shared checker's ``ValueError`` into ``ConfigError(prefix + its first line)``.

    ``prefix`` completes the dotted key (``"config."`` for ``method_args.lambda_: ...``); a ``ConfigError``
    passes unchanged.
    """
    try:
        yield
    except ConfigError:
        raise
    except ValueError as error:
        lines = str(error).splitlines()
        raise ConfigError(prefix + (lines[0] if lines else type(error).__name__)) from None


def check_value(value: Any, annotation: Any, where: str, *, bounds: Mapping[str, Any] | None = None) -> Any:
    """:func:`classp_hf.validation.check_value` raising ``ConfigError`` (``where``: the full key,
    ``config.training.num_train_epochs``); returns ``value`` unchanged."""
    with config_errors():
        return validation.check_value(value, annotation, where, bounds=bounds)


def check_keys(data: Mapping[str, Any], allowed: Iterable[str], where: str) -> None:
    """Raises ``ConfigError`` naming ``where.key`` for a key not in ``allowed`` (with the closest and the allowed
    names)."""
    with config_errors():
        validation.check_keys(data, allowed, where)


def require(condition: bool, message: str) -> None:
    """Raises ``ConfigError(message)`` unless ``condition`` holds."""
    if not condition:
        raise ConfigError(message)


def _positive_int(value: Any, where: str, *, allow_none: bool = True) -> int | None:
    return check_value(value, int | None if allow_none else int, where, bounds=_POSITIVE)


_POSITIVE = {"gt": 0}
_NON_NEGATIVE = {"ge": 0}
_FRACTION = {"ge": 0, "le": 1}
_OPEN_FRACTION = {"ge": 0, "lt": 1}

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
_LORA_RANGES = {"r": _POSITIVE, "lora_alpha": _POSITIVE, "lora_dropout": _OPEN_FRACTION}
