"""CLASSP's hyperparameters: the checks of a param group (or the defaults), each error naming its value.

This module has no Hugging Face imports.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from torch import Tensor

from classp_hf.optim._sharded import is_dtensor
from classp_hf.optim._state import (
    STATE_DTYPES,
)

#: What ``threshold`` means: see :class:`CLASSP`.
THRESHOLD_MODES = ("absolute", "relative", "quantile")
#: The keywords of the update rule, which every path of :func:`~classp_hf.optim._functional.classp` takes.
UPDATE_RULE_KEYS = ("lr", "threshold", "threshold_mode", "power", "eps", "apply_decay", "weight_decay", "maximize")


def update_rule(options: Mapping[str, Any]) -> dict[str, Any]:
    """The update rule's keywords (:data:`UPDATE_RULE_KEYS`) picked from a param group, or from the arguments of
    :func:`~classp_hf.optim._functional.classp`."""
    return {key: options[key] for key in UPDATE_RULE_KEYS}


def _check_number(name: str, value: Any, *, low: float, inclusive: bool) -> float:
    """Returns ``value`` as a float, or raises ``ValueError`` naming ``name``."""
    if isinstance(value, Tensor):
        if value.numel() != 1:
            raise ValueError(
                f"Invalid {name} value: {name} must be a number, got a tensor of shape {tuple(value.shape)}"
            )
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"Invalid {name} value: {name} must be a number, got {type(value).__name__} {value!r}")
    value = float(value)
    if math.isnan(value) or math.isinf(value):
        raise ValueError(f"Invalid {name} value: {value} (must be finite)")
    if value < low or (value == low and not inclusive):
        relation = ">=" if inclusive else ">"
        raise ValueError(f"Invalid {name} value: {value} (must be {relation} {low:g})")
    return value


def _check_flag(name: str, value: Any, *, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if not isinstance(value, bool):
        raise ValueError(f"Invalid {name} value: {name} must be a bool, got {type(value).__name__} {value!r}")


def _check_seed(seed: Any) -> int:
    """Returns ``seed`` if it is an int in [0, 2**64), or raises ``ValueError``."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**64:
        raise ValueError(f"Invalid seed value: seed must be an int in [0, 2**64), got {type(seed).__name__} {seed!r}")
    return seed


def validate_hyperparameters(group: dict[str, Any]) -> None:
    """Checks CLASSP's hyperparameters in a param group (or the defaults) in place.

    Args:
        group (`dict`): holds ``lr``, ``threshold``, ``threshold_mode``, ``power``, ``eps``, ``weight_decay``,
            ``apply_decay``, ``foreach``, ``fused``, ``maximize``, ``stochastic_rounding``, ``state_dtype`` and
            ``grad_sum_decay``.

    Raises:
        ValueError: naming the first invalid hyperparameter.
    """
    _check_number("lr", group["lr"], low=0.0, inclusive=True)
    threshold = _check_number("threshold", group["threshold"], low=0.0, inclusive=True)
    mode = group.get("threshold_mode", "absolute")
    if mode not in THRESHOLD_MODES:
        raise ValueError(f"Invalid threshold_mode value: {mode!r} (one of {', '.join(THRESHOLD_MODES)})")
    if mode == "quantile" and not 0.0 < threshold <= 1.0:
        raise ValueError(
            f"Invalid threshold value: {threshold} (threshold_mode='quantile' takes the fraction of each "
            "tensor's elements to update, in (0, 1])"
        )
    _check_number("power", group["power"], low=0.0, inclusive=False)
    _check_number("eps", group["eps"], low=0.0, inclusive=False)
    _check_number("weight_decay", group["weight_decay"], low=0.0, inclusive=True)
    _check_flag("apply_decay", group["apply_decay"])
    _check_flag("maximize", group["maximize"])
    _check_flag("foreach", group["foreach"], allow_none=True)
    _check_flag("fused", group.get("fused"), allow_none=True)
    if group.get("fused") and group["foreach"]:
        raise ValueError("Invalid fused value: fused=True and foreach=True are exclusive (pick one path)")
    _check_flag("stochastic_rounding", group.get("stochastic_rounding", False))
    state_dtype = group.get("state_dtype", "float32")
    if state_dtype not in STATE_DTYPES:
        raise ValueError(f"Invalid state_dtype value: {state_dtype!r} (one of {', '.join(STATE_DTYPES)})")
    decay = _check_number("grad_sum_decay", group.get("grad_sum_decay", 1.0), low=0.0, inclusive=True)
    if not 0.0 < decay <= 1.0:
        raise ValueError(f"Invalid grad_sum_decay value: {decay} (must be in (0, 1])")


def _check_no_quantile_on_dtensors(param_groups: list[dict[str, Any]]) -> None:
    """Raises ``ValueError`` if a quantile-mode group holds a DTensor (its shards cannot see the whole tensor)."""
    for group in param_groups:
        if group["threshold_mode"] == "quantile" and any(is_dtensor(p) for p in group["params"]):
            raise ValueError(
                "Invalid threshold_mode value: 'quantile' needs whole tensors and is not supported with "
                "FSDP (DTensor) parameters; use 'absolute' or 'relative'"
            )
