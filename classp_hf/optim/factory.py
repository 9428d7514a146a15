"""A registry of optimizers that builds any of them by name.

``create_optimizer("classp", model, lr=1e-3)`` gives a :class:`~classp_hf.optim.CLASSP` over the
model's weight-decay / no-decay parameter groups (the grouping of ``transformers.Trainer``).
Users add their own with :func:`register_optimizer`. No Hugging Face imports here.
"""

from __future__ import annotations

import difflib
import importlib
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import torch
from torch import nn

from classp_hf.optim.classp import CLASSP

__all__ = [
    "OptimizerInfo",
    "register_optimizer",
    "get_optimizer_info",
    "list_optimizers",
    "parse_optim_args",
    "create_optimizer",
    "param_groups_with_weight_decay",
]

_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError(f"expected true or false, got {text!r}")


def _parse_float(text: str) -> float:
    return float(text)


def _parse_int(text: str) -> int:
    return int(text)


_PARSERS: dict[type, Callable[[str], Any]] = {bool: _parse_bool, float: _parse_float, int: _parse_int, str: str}


@dataclass(frozen=True)
class OptimizerInfo:
    """What the registry knows about one optimizer.

    Args:
        name (`str`): the name users pass (``optim="classp"``).
        optimizer_class (`type` or `str`): the class, or a dotted path imported on first use.
        description (`str`): one line for listings and error messages.
        arg_types (`Mapping[str, type]`): keyword arguments accepted through ``optim_args``
            and their types (``float``, ``int``, ``bool``, ``str``).
        defaults (`Mapping[str, Any]`): keyword arguments passed unless the user sets them.
        has_betas (`bool`): takes ``betas``; filled from ``adam_beta1/2`` of TrainingArguments.
        has_eps (`bool`): takes Adam's ``eps``; filled from ``adam_epsilon`` of TrainingArguments.
    """

    name: str
    optimizer_class: type[torch.optim.Optimizer] | str
    description: str = ""
    arg_types: Mapping[str, type] = field(default_factory=dict)
    defaults: Mapping[str, Any] = field(default_factory=dict)
    has_betas: bool = False
    has_eps: bool = False

    def resolve_class(self) -> type[torch.optim.Optimizer]:
        """Returns the optimizer class, importing a dotted path if needed."""
        if isinstance(self.optimizer_class, str):
            module_name, _, attribute = self.optimizer_class.rpartition(".")
            return getattr(importlib.import_module(module_name), attribute)
        return self.optimizer_class


_REGISTRY: dict[str, OptimizerInfo] = {}


def register_optimizer(
    name: str,
    optimizer_class: type[torch.optim.Optimizer] | str,
    *,
    description: str = "",
    arg_types: Mapping[str, type] | None = None,
    defaults: Mapping[str, Any] | None = None,
    has_betas: bool = False,
    has_eps: bool = False,
    overwrite: bool = False,
) -> OptimizerInfo:
    """Registers an optimizer under ``name``, usable in :func:`create_optimizer` and as ``optim=name``.

    Args:
        name (`str`): lower-case name, letters, digits and ``_`` only.
        optimizer_class (`type` or `str`): a ``torch.optim.Optimizer`` subclass or dotted path.
        description (`str`): one line describing it.
        arg_types (`Mapping[str, type]`, *optional*): keys accepted in ``optim_args`` and their types.
        defaults (`Mapping[str, Any]`, *optional*): default keyword arguments.
        has_betas, has_eps (`bool`): see :class:`OptimizerInfo`.
        overwrite (`bool`): replace an existing entry instead of raising.

    Returns:
        The new :class:`OptimizerInfo`.

    Raises:
        ValueError: if the name is malformed or taken (and ``overwrite`` is false), or an
            argument type is not one of float, int, bool, str.
    """
    if not isinstance(name, str) or not re.fullmatch(r"[a-z][a-z0-9_]*", name):
        raise ValueError(f"Invalid optimizer name {name!r}: use lower-case letters, digits and '_'")
    if name in _REGISTRY and not overwrite:
        raise ValueError(f"Optimizer {name!r} is already registered (pass overwrite=True to replace it)")
    arg_types = dict(arg_types or {})
    for key, kind in arg_types.items():
        if kind not in _PARSERS:
            raise ValueError(f"Invalid type for optimizer argument {key!r}: {kind!r} (use float, int, bool or str)")
    info = OptimizerInfo(
        name=name,
        optimizer_class=optimizer_class,
        description=description,
        arg_types=MappingProxyType(arg_types),
        defaults=MappingProxyType(dict(defaults or {})),
        has_betas=has_betas,
        has_eps=has_eps,
    )
    _REGISTRY[name] = info
    return info


def list_optimizers() -> list[str]:
    """Returns the registered optimizer names, sorted."""
    return sorted(_REGISTRY)


def unknown_name_message(name: str, known: Iterable[str]) -> str:
    """One-line error for an unknown optimizer name, with the closest match and the known names."""
    known = sorted(set(known))
    close = difflib.get_close_matches(str(name), known, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return f"Unknown optimizer {name!r}.{hint} Known optimizers: {', '.join(known)}"


def get_optimizer_info(name: str) -> OptimizerInfo:
    """Returns the registry entry for ``name``.

    Raises:
        ValueError: for an unknown name, listing the known ones.
    """
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(unknown_name_message(name, _REGISTRY)) from None


def parse_optim_args(name: str, optim_args: str | Mapping[str, Any] | None) -> dict[str, Any]:
    """Parses and validates ``optim_args`` for the optimizer ``name``.

    Args:
        name (`str`): a registered optimizer.
        optim_args (`str` or `Mapping`, *optional*): ``"threshold=1e-9,power=1"`` (the
            ``TrainingArguments.optim_args`` format) or a mapping of already typed values.

    Returns:
        A dict of typed keyword arguments.

    Raises:
        ValueError: naming the malformed entry, the unknown key (with the accepted ones) or the
            key whose value does not parse.
    """
    info = get_optimizer_info(name)
    if optim_args is None or optim_args == "":
        return {}
    if isinstance(optim_args, str):
        pairs = []
        for entry in optim_args.split(","):
            entry = entry.strip()
            if not entry:
                continue
            key, sep, value = entry.partition("=")
            if not sep or not key.strip():
                raise ValueError(f"Malformed optim_args entry {entry!r} for {name!r}: expected key=value")
            pairs.append((key.strip(), value.strip()))
    elif isinstance(optim_args, Mapping):
        pairs = list(optim_args.items())
    else:
        raise ValueError(f"optim_args must be a 'key=value,...' string or a mapping, got {type(optim_args).__name__}")
    parsed: dict[str, Any] = {}
    for key, value in pairs:
        if key not in info.arg_types:
            accepted = ", ".join(sorted(info.arg_types)) or "none"
            raise ValueError(f"Unknown optim_args key {key!r} for optimizer {name!r} (accepted: {accepted})")
        kind = info.arg_types[key]
        if isinstance(value, str):
            try:
                parsed[key] = _PARSERS[kind](value)
            except ValueError as error:
                raise ValueError(
                    f"Invalid optim_args value for {key!r}: {value!r} ({kind.__name__} expected)"
                ) from error
        elif kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            parsed[key] = float(value)
        elif isinstance(value, kind):
            parsed[key] = value
        else:
            raise ValueError(f"Invalid optim_args value for {key!r}: {value!r} ({kind.__name__} expected)")
    return parsed


_NO_DECAY_PATTERNS = re.compile(r"bias|layernorm|rmsnorm|(?:^|\.)norm(?:$|\.)|_norm(?:$|\.)", re.IGNORECASE)


def param_groups_with_weight_decay(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Splits a model's trainable parameters into decay / no-decay groups as ``transformers.Trainer`` does.

    Biases and the weights of normalisation layers (``nn.LayerNorm`` and any module whose class
    name ends in ``Norm``, or parameters named like ``layernorm``/``norm``) get no weight decay.

    Args:
        model (`nn.Module`): the model.
        weight_decay (`float`): the decay of the first group.

    Returns:
        Two param groups, each with a ``weight_decay`` key (empty groups are dropped).
    """
    no_decay_ids: set[int] = set()
    for module in model.modules():
        if isinstance(module, nn.LayerNorm) or type(module).__name__.endswith("Norm"):
            no_decay_ids.update(id(p) for p in module.parameters(recurse=False))
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if id(param) in no_decay_ids or _NO_DECAY_PATTERNS.search(name):
            no_decay.append(param)
        else:
            decay.append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [group for group in groups if group["params"]]


def create_optimizer(
    name: str,
    model_or_params: nn.Module | Iterable[torch.Tensor] | Iterable[dict[str, Any]],
    *,
    lr: float | None = None,
    weight_decay: float = 0.0,
    optim_args: str | Mapping[str, Any] | None = None,
    **kwargs: Any,
) -> torch.optim.Optimizer:
    """Builds a registered optimizer by name.

    Args:
        name (`str`): a registered name (see :func:`list_optimizers`).
        model_or_params (`nn.Module` or iterable): a model (split into decay / no-decay groups,
            trainable parameters only) or parameters / param groups as torch.optim takes them.
        lr (`float`, *optional*): learning rate; the optimizer's default if omitted.
        weight_decay (`float`): weight decay of the decay group (or of every parameter).
        optim_args (`str` or `Mapping`, *optional*): validated as in :func:`parse_optim_args`.
        **kwargs: more keyword arguments for the optimizer, validated like ``optim_args``.

    Returns:
        The optimizer.

    Raises:
        ValueError: unknown name (listing the known ones), unknown or invalid argument.
    """
    info = get_optimizer_info(name)
    options = dict(info.defaults)
    options.update(parse_optim_args(name, optim_args))
    options.update(parse_optim_args(name, kwargs))
    if lr is not None:
        options["lr"] = lr
    if isinstance(model_or_params, nn.Module):
        params: Any = param_groups_with_weight_decay(model_or_params, weight_decay)
        if not params:
            raise ValueError(f"The model has no trainable parameters to give to {name!r}")
    else:
        params = list(model_or_params)
        if weight_decay:
            options["weight_decay"] = weight_decay
    return info.resolve_class()(params, **options)


_COMMON = {"weight_decay": float, "foreach": bool, "maximize": bool}

register_optimizer(
    "classp",
    CLASSP,
    description="CLASSP: AdaGrad-like decay from accumulated |g|^p plus a per-element gradient threshold",
    arg_types={
        "lr": float,
        "threshold": float,
        "threshold_mode": str,
        "power": float,
        "eps": float,
        "apply_decay": bool,
        "stochastic_rounding": bool,
        "seed": int,
        **_COMMON,
    },
)
register_optimizer(
    "sgd",
    torch.optim.SGD,
    description="torch.optim.SGD",
    arg_types={"lr": float, "momentum": float, "dampening": float, "nesterov": bool, **_COMMON},
)
register_optimizer(
    "adam",
    torch.optim.Adam,
    description="torch.optim.Adam (L2 weight decay)",
    arg_types={"lr": float, "eps": float, "amsgrad": bool, **_COMMON},
    has_betas=True,
    has_eps=True,
)
register_optimizer(
    "adamw",
    torch.optim.AdamW,
    description="torch.optim.AdamW (decoupled weight decay)",
    arg_types={"lr": float, "eps": float, "amsgrad": bool, **_COMMON},
    has_betas=True,
    has_eps=True,
)
register_optimizer(
    "adagrad",
    torch.optim.Adagrad,
    description="torch.optim.Adagrad",
    arg_types={"lr": float, "lr_decay": float, "eps": float, "initial_accumulator_value": float, **_COMMON},
)
