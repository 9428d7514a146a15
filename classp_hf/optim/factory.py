"""A registry of optimizers that builds any of them by name.

``create_optimizer("classp", model, lr=1e-3)`` gives a :class:`~classp_hf.optim.CLASSP` over the
model's weight-decay / no-decay parameter groups (the grouping of ``transformers.Trainer``).
Users add their own with :func:`register_optimizer`. No Hugging Face imports here.
"""

from __future__ import annotations

import difflib
import importlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import torch
from torch import nn

from classp_hf import validation
from classp_hf.optim.classp import CLASSP

__all__ = [
    "OptimizerInfo",
    "register_optimizer",
    "get_optimizer_info",
    "list_optimizers",
    "parse_optim_args",
    "create_optimizer",
    "param_groups_with_weight_decay",
    "decay_parameter_names",
    "parse_optim_groups",
    "apply_optim_groups",
    "optimizer_option_types",
]


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
        if kind not in validation.TEXT_TYPES:
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
        ValueError: one line, the key first (:mod:`classp_hf.validation`): ``optim_args: malformed entry
            'power' (expected key=value)``, ``optim_args.thresold: unknown key for optimizer 'classp' (did you
            mean 'threshold'? accepted: ...)``, ``optim_args.power: expected a finite number, got 'abc'``.
    """
    info = get_optimizer_info(name)
    if optim_args is None or optim_args == "":
        return {}
    if isinstance(optim_args, str):
        pairs: list[tuple[Any, Any]] = validation.parse_key_values(optim_args, "optim_args")
    elif isinstance(optim_args, Mapping):
        pairs = list(optim_args.items())
    else:
        raise ValueError(f"optim_args: expected a 'key=value,...' string or a mapping, got {type(optim_args).__name__}")
    validation.check_keys([key for key, _ in pairs], info.arg_types, "optim_args", f"optimizer {name!r}")
    parsed: dict[str, Any] = {}
    for key, value in pairs:
        kind, where = info.arg_types[key], f"optim_args.{key}"
        if isinstance(value, str) and kind is not str:
            parsed[key] = validation.parse_text(value, kind, where)
        else:
            parsed[key] = validation.check_value(value, kind, where, convert=True)
    return parsed


_NO_DECAY_PATTERNS = re.compile(r"bias|layernorm|rmsnorm|(?:^|\.)norm(?:$|\.)|_norm(?:$|\.)", re.IGNORECASE)


def decay_parameter_names(model: nn.Module) -> set[str]:
    """Names of the parameters that get weight decay: all but biases and normalisation weights."""
    no_decay_ids: set[int] = set()
    for module in model.modules():
        if isinstance(module, nn.LayerNorm) or type(module).__name__.endswith("Norm"):
            no_decay_ids.update(id(p) for p in module.parameters(recurse=False))
    return {
        name
        for name, param in model.named_parameters()
        if id(param) not in no_decay_ids and not _NO_DECAY_PATTERNS.search(name)
    }


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
    decay_names = decay_parameter_names(model)
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (decay if name in decay_names else no_decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [group for group in groups if group["params"]]


_GROUP_KEYS = ("params", "lr_scale")


def _check_group_value(where: str, key: str, value: Any, kind: type | None) -> Any:
    """Checks ``value`` against ``kind`` (float, int, bool, str; `None`: anything), naming ``where.key``."""
    return validation.check_value(value, Any if kind is None else kind, f"{where}.{key}", convert=True)


def parse_optim_groups(
    optim_groups: str | list[Mapping[str, Any]] | None,
    accepted: Mapping[str, type | None] | None = None,
    optimizer: str = "the optimizer",
) -> list[dict[str, Any]]:
    """Validates ``optim_groups``: per parameter-name pattern, optimizer settings.

    Each entry is a mapping with ``params`` (a regular expression searched in the names of
    ``model.named_parameters()``), an optional ``lr_scale`` (> 0, multiplies the learning rate)
    and optimizer options (``threshold``, ``weight_decay``, ...; not ``lr``: use ``lr_scale``).

    Args:
        optim_groups: a list of mappings, or its JSON text (from the command line).
        accepted (`Mapping[str, type]`, *optional*): option names the optimizer accepts and their
            types (`None` for any type); `None` skips the option check.
        optimizer (`str`): the optimizer's name, for messages.

    Returns:
        The entries as dicts (numbers typed).

    Raises:
        ValueError: one line naming ``optim_groups[i].key``.
    """
    if optim_groups is None or optim_groups == "":
        return []
    if isinstance(optim_groups, str):
        try:
            optim_groups = json.loads(optim_groups)
        except json.JSONDecodeError as error:
            raise ValueError(f"optim_groups: not valid JSON ({error.msg} at character {error.pos})") from None
    if not isinstance(optim_groups, list):
        raise ValueError("optim_groups: expected a list of {params: pattern, option: value, ...} mappings")
    parsed = []
    for position, entry in enumerate(optim_groups):
        where = f"optim_groups[{position}]"
        if not isinstance(entry, Mapping):
            raise ValueError(f"{where}: expected a mapping with a params pattern")
        if not isinstance(entry.get("params"), str):
            raise ValueError(f"{where}.params: expected a regular expression over parameter names")
        try:
            re.compile(entry["params"])
        except re.error as error:
            raise ValueError(f"{where}.params: invalid regular expression {entry['params']!r} ({error})") from None
        group = {"params": entry["params"]}
        if "lr_scale" in entry:
            group["lr_scale"] = validation.check_value(
                entry["lr_scale"], float, f"{where}.lr_scale", bounds={"gt": 0}, convert=True
            )
        for key, value in entry.items():
            if key in _GROUP_KEYS:
                continue
            if key == "lr":
                raise ValueError(f"{where}.lr: set lr_scale (a multiple of the learning rate) instead")
            if accepted is not None and key not in accepted:
                raise ValueError(
                    validation.unknown_key_message(key, {*accepted, "lr_scale"} - {"lr"}, where, optimizer)
                )
            group[key] = _check_group_value(where, key, value, accepted.get(key) if accepted else None)
        parsed.append(group)
    return parsed


def apply_optim_groups(
    optimizer: torch.optim.Optimizer,
    named_parameters: Iterable[tuple[str, torch.Tensor]],
    optim_groups: str | list[Mapping[str, Any]],
    decay_names: Iterable[str] | None = None,
) -> None:
    """Splits a new optimizer's param groups by parameter-name pattern and applies each pattern's options.

    Every trainable parameter goes to the first entry whose ``params`` pattern ``re.search``-es
    its name (unmatched ones keep their group's settings); each existing group (the decay /
    no-decay groups) is split accordingly, so an entry's parameters keep their weight decay
    unless it sets ``weight_decay``, which then applies to its decay parameters only (biases and
    norms stay at 0). An entry's ``lr_scale`` multiplies the group's ``lr``; every group keeps an
    ``lr_scale`` key (1 where unset), so a learning rate set later for every group stays scaled
    (``group["lr"] = lr * group["lr_scale"]``). Options are checked against ``optimizer.defaults``
    and the groups are re-added through ``add_param_group`` (the optimizer's own checks run).

    Args:
        optimizer (`torch.optim.Optimizer`): an optimizer that has not stepped yet.
        named_parameters: the model's ``named_parameters()``.
        optim_groups: the entries (see :func:`parse_optim_groups`).
        decay_names (`Iterable[str]`, *optional*): names of the parameters with weight decay
            (`None`: all).

    Raises:
        ValueError: an unknown option or bad value, or a pattern that matches no trainable
            parameter (naming ``optim_groups[i]``).
    """
    entries = parse_optim_groups(optim_groups, optimizer_option_types(optimizer), type(optimizer).__name__)
    names = {id(param): name for name, param in named_parameters}
    decay = None if decay_names is None else set(decay_names)
    patterns = [re.compile(entry["params"]) for entry in entries]
    matched = [0] * len(entries)
    groups: list[dict[str, Any]] = []
    for group in optimizer.param_groups:
        buckets: list[list[torch.Tensor]] = [[] for _ in range(len(entries) + 1)]
        for param in group["params"]:
            name = names.get(id(param), "")
            slot = next((i for i, pattern in enumerate(patterns) if pattern.search(name)), len(entries))
            buckets[slot].append(param)
        for slot, params in enumerate(buckets):
            if not params:
                continue
            new = {**group, "params": params, "lr_scale": 1.0}
            if slot < len(entries):
                matched[slot] += len(params)
                options = {k: v for k, v in entries[slot].items() if k != "params"}
                decays = decay is None or names.get(id(params[0])) in decay
                if "weight_decay" in options and not decays:
                    options.pop("weight_decay")
                new.update(options)
                new["lr"] = group["lr"] * new["lr_scale"]
            groups.append(new)
    for position, count in enumerate(matched):
        if count == 0:
            raise ValueError(
                f"optim_groups[{position}].params: {entries[position]['params']!r} matches no trainable parameter "
                "(none left by the entries before it)"
            )
    optimizer.param_groups = []
    for group in groups:
        optimizer.add_param_group(group)


def _option_type(default: Any) -> type | None:
    """The type an optimizer option takes, judged from its default (`None`: not checked)."""
    if isinstance(default, bool):
        return bool
    if isinstance(default, (int, float)):
        return float
    if isinstance(default, str):
        return str
    return None


def optimizer_option_types(optimizer: torch.optim.Optimizer) -> dict[str, type | None]:
    """The options of a built optimizer (its ``defaults``) and their types, judged from the default values."""
    return {key: _option_type(value) for key, value in optimizer.defaults.items()}


def create_optimizer(
    name: str,
    model_or_params: nn.Module | Iterable[torch.Tensor] | Iterable[dict[str, Any]],
    *,
    lr: float | None = None,
    weight_decay: float = 0.0,
    optim_args: str | Mapping[str, Any] | None = None,
    optim_groups: str | list[Mapping[str, Any]] | None = None,
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
        optim_groups (`list`, *optional*): per parameter-name pattern options (see
            :func:`apply_optim_groups`); needs a model.
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
        if optim_groups:
            raise ValueError("optim_groups: needs a model (parameter names), not a list of parameters")
        params = list(model_or_params)
        if weight_decay:
            options["weight_decay"] = weight_decay
    optimizer = info.resolve_class()(params, **options)
    if optim_groups:
        apply_optim_groups(
            optimizer, model_or_params.named_parameters(), optim_groups, decay_parameter_names(model_or_params)
        )
    return optimizer


_COMMON = {"weight_decay": float, "foreach": bool, "maximize": bool}
_ADAM = {"lr": float, "eps": float, "amsgrad": bool, **_COMMON}

#: The built-in entries: name, class, description, the ``optim_args`` types, then the other
#: :func:`register_optimizer` keywords.
_BUILT_IN: tuple[tuple[str, type[torch.optim.Optimizer], str, dict[str, type], dict[str, Any]], ...] = (
    (
        "classp",
        CLASSP,
        "CLASSP: AdaGrad-like decay from accumulated |g|^p plus a per-element gradient threshold",
        {
            "lr": float,
            "threshold": float,
            "threshold_mode": str,
            "power": float,
            "eps": float,
            "apply_decay": bool,
            "stochastic_rounding": bool,
            "seed": int,
            "fused": bool,
            "state_dtype": str,
            "grad_sum_decay": float,
            **_COMMON,
        },
        {},
    ),
    (
        "sgd",
        torch.optim.SGD,
        "torch.optim.SGD",
        {"lr": float, "momentum": float, "dampening": float, "nesterov": bool, **_COMMON},
        {},
    ),
    ("adam", torch.optim.Adam, "torch.optim.Adam (L2 weight decay)", _ADAM, {"has_betas": True, "has_eps": True}),
    (
        "adamw",
        torch.optim.AdamW,
        "torch.optim.AdamW (decoupled weight decay)",
        _ADAM,
        {"has_betas": True, "has_eps": True},
    ),
    (
        "adagrad",
        torch.optim.Adagrad,
        "torch.optim.Adagrad",
        {"lr": float, "lr_decay": float, "eps": float, "initial_accumulator_value": float, **_COMMON},
        {},
    ),
)
for _name, _class, _description, _arg_types, _options in _BUILT_IN:
    register_optimizer(_name, _class, description=_description, arg_types=_arg_types, **_options)
