"""``TrainingArguments`` that accept every optimizer of the classp_hf registry by name."""

from __future__ import annotations

import contextlib
import contextvars
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import transformers
from transformers.training_args import OptimizerNames

from classp_hf import validation
from classp_hf.optim.factory import (
    get_optimizer_info,
    list_optimizers,
    optimizer_option_types,
    parse_optim_args,
    parse_optim_groups,
    unknown_name_message,
)

__all__ = [
    "TrainingArguments",
    "deferred_device_setup",
    "optimizer_name",
    "is_transformers_optimizer",
    "validate_optim_args",
    "validate_optim_groups",
    "check_transformers_optim_args",
]

#: transformers' own default learning rate; under CLASSP with power 1 it barely moves a model.
TRANSFORMERS_DEFAULT_LR = 5e-5
#: Learning rates that fine-tune a pretrained transformer with CLASSP, power 1 (docs/hyperparameters.md).
CLASSP_LR_RANGE = (3e-4, 1e-3)

_TRANSFORMERS_NAMES = frozenset(option.value for option in OptimizerNames)

# Keys that transformers' own handlers read from optim_args for the names both libraries know.
_TRANSFORMERS_OPTIM_ARG_KEYS = {
    "sgd": ("momentum", "dampening", "weight_decay", "nesterov"),
    "adagrad": ("lr_decay", "weight_decay", "eps"),
}


def optimizer_name(optim: str | Enum) -> str:
    """Returns the plain string of an ``optim`` value (an ``OptimizerNames`` member or a string)."""
    return optim.value if isinstance(optim, Enum) else str(optim)


def is_transformers_optimizer(name: str) -> bool:
    """Whether transformers itself knows ``name`` (then it keeps transformers' meaning)."""
    return name in _TRANSFORMERS_NAMES


def validate_optim_args(name: str, optim_args: str | None) -> dict[str, Any]:
    """Parses ``optim_args`` for ``name`` and checks every key and value.

    Names only transformers knows are checked for ``key=value`` syntax; names our registry knows
    are checked for known keys and typed values; names both know (sgd, adagrad) are checked
    against the keys transformers' handler reads.

    Args:
        name (`str`): the optimizer name.
        optim_args (`str`, *optional*): ``"key=value,..."``.

    Returns:
        The typed keyword arguments (empty for transformers-only names).

    Raises:
        ValueError: one line naming the malformed entry (``optim_args: ...``), the unknown key or the bad value
            (``optim_args.KEY: ...``).
    """
    if not optim_args:
        return {}
    pairs = validation.parse_key_values(optim_args, "optim_args")
    if name in _TRANSFORMERS_OPTIM_ARG_KEYS:
        owner = f"transformers' optimizer {name!r}"
        validation.check_keys([key for key, _ in pairs], _TRANSFORMERS_OPTIM_ARG_KEYS[name], "optim_args", owner)
        return parse_optim_args(name, optim_args)
    if is_transformers_optimizer(name):
        return {}
    return parse_optim_args(name, optim_args)


#: Probe values for a key of ``optim_args``: a key transformers' handler reads changes the optimizer's
#: keyword arguments (or fails to parse) for at least one of them.
_PROBE_VALUES = ("0.5", "1", "true")


def _transformers_kwargs(args: transformers.TrainingArguments, optim_args: str | None) -> Any:
    """transformers' (class, kwargs) for ``args`` with ``optim_args`` replaced; the error if it raises."""
    import copy

    probe = copy.copy(args)
    probe.optim_args = optim_args
    try:
        return transformers.Trainer.get_optimizer_cls_and_kwargs(probe)
    except Exception as error:  # a handler that reads the key and cannot parse the probe value
        return error


def check_transformers_optim_args(args: transformers.TrainingArguments) -> dict[str, Any] | None:
    """Refuses ``optim_args`` that transformers' own optimizer ``args.optim`` would ignore; checks the values.

    transformers reads ``optim_args`` for a few of its names only (``sgd``, ``adagrad``, ``rmsprop``,
    GaLore, ...) and silently drops them for the others (``adamw_torch``: its options are ``adam_epsilon``,
    ``adam_beta1``, ``adam_beta2`` and ``weight_decay``). A key counts as read when setting it alone changes
    the keyword arguments transformers builds the optimizer with. The optimizer is then built on one dummy
    parameter, so its own checks (``eps=-1``) run now.

    Args:
        args: arguments whose ``optim`` is a transformers name.

    Returns:
        The keyword arguments transformers builds the optimizer with, or `None` where it cannot be built
        here (an optional package, a GPU or the model is needed: the Trainer checks it then).

    Raises:
        ValueError: naming the ignored key, or the optimizer's own message for a bad value.
    """
    import torch

    name = optimizer_name(args.optim)
    base = _transformers_kwargs(args, None)
    if isinstance(base, Exception):
        return None
    keys = [entry.split("=")[0].strip() for entry in (args.optim_args or "").split(",") if entry.strip()]
    ignored = [
        key
        for key in keys
        if all(
            not isinstance(probe := _transformers_kwargs(args, f"{key}={value}"), Exception) and probe[1] == base[1]
            for value in _PROBE_VALUES
        )
    ]
    if ignored:
        hint = (
            "; set training.adam_epsilon, adam_beta1, adam_beta2 or weight_decay instead, or optim: adamw "
            "(classp_hf's AdamW takes optim_args)"
            if "adam" in name
            else "; use a classp_hf registry optimizer to pass options"
        )
        raise ValueError(f"optim_args.{ignored[0]}: transformers ignores this key for optimizer {name!r}{hint}")
    built = _transformers_kwargs(args, args.optim_args)
    if isinstance(built, Exception):
        raise ValueError(f"optim_args {args.optim_args!r} for {name!r}: {_first_line(built)}")
    optimizer_class, kwargs = built
    if args.optim_args and isinstance(optimizer_class, type) and issubclass(optimizer_class, torch.optim.Optimizer):
        try:
            optimizer_class([torch.nn.Parameter(torch.zeros(1))], **kwargs)
        except (ValueError, TypeError) as error:
            raise ValueError(_first_line(error)) from None  # torch's own message: "Invalid momentum value: -1.0"
    return dict(kwargs)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _transformers_option_types(name: str, args: transformers.TrainingArguments | None) -> dict[str, Any] | None:
    """Options of transformers' optimizer ``name`` (built once on a dummy parameter), or `None` if it cannot be.

    Optimizers that need optional packages, a GPU or the model are not built here; their options
    are checked when the Trainer builds them.
    """
    import torch

    try:
        probe_args = args if args is not None else transformers.TrainingArguments("unused", optim=name, report_to=[])
        optimizer_class, kwargs = transformers.Trainer.get_optimizer_cls_and_kwargs(probe_args)
        optimizer = optimizer_class([torch.nn.Parameter(torch.zeros(1))], **kwargs)
    except Exception:  # any failure here means: check the options when the Trainer builds the optimizer
        return None
    return optimizer_option_types(optimizer) if isinstance(optimizer, torch.optim.Optimizer) else None


def validate_optim_groups(
    name: str,
    optim_groups: str | list[dict[str, Any]] | None,
    args: transformers.TrainingArguments | None = None,
) -> list[dict[str, Any]]:
    """Parses ``optim_groups`` (a list, or its JSON text) and checks the options for optimizer ``name``.

    Options of registry optimizers are checked against their accepted keys and types; those of
    names transformers knows against the optimizer's own defaults (built once on a dummy
    parameter; where that is not possible, when the Trainer builds it).

    Args:
        name (`str`): the optimizer name.
        optim_groups: the entries (see :func:`classp_hf.optim.factory.parse_optim_groups`).
        args (`TrainingArguments`, *optional*): the arguments transformers' optimizer is built from.

    Raises:
        ValueError: naming ``optim_groups[i].key``.
    """
    groups = parse_optim_groups(optim_groups)
    if not groups:
        return []
    if is_transformers_optimizer(name):
        accepted = _transformers_option_types(name, args)
    else:
        accepted = dict(get_optimizer_info(name).arg_types)
    return parse_optim_groups(groups, accepted, repr(name))


#: Set by :func:`deferred_device_setup`: arguments built meanwhile leave the device set-up to ``set_up_device()``.
_DEFER_DEVICE_SETUP = contextvars.ContextVar("classp_hf_defer_device_setup", default=False)


@contextlib.contextmanager
def deferred_device_setup() -> Iterator[None]:
    """Builds :class:`TrainingArguments` without setting up the device (accelerate's state, a process group).

    transformers sets the device up at the end of ``__post_init__``; that resets accelerate's state and, under
    a distributed launch, joins the process group: not what checking a run config should do. Arguments built
    in this context report a CPU placeholder as their ``device`` until :meth:`TrainingArguments.set_up_device`
    does the set-up, so the runner trains with the very arguments the config check built.
    """
    token = _DEFER_DEVICE_SETUP.set(True)
    try:
        yield
    finally:
        _DEFER_DEVICE_SETUP.reset(token)


@dataclass
class TrainingArguments(transformers.TrainingArguments):
    """``transformers.TrainingArguments`` whose ``optim`` also takes classp_hf's optimizers.

    ``optim`` accepts every name transformers knows (with transformers' meaning: ``adagrad`` is
    torch's Adagrad through transformers) plus the names of :func:`classp_hf.optim.list_optimizers`
    that transformers does not know (``classp``, ``adam``, ``adamw`` and user-registered ones).
    ``optim_args`` (``"threshold=1e-9,power=1,eps=1e-8"``) is parsed and validated when the
    arguments are built, so a typo fails before any model is loaded. Both work from the command
    line through ``HfArgumentParser`` (``--optim classp --optim_args power=1``).

    ``optim_groups`` gives optimizer settings per parameter-name pattern on top of the decay /
    no-decay groups, e.g. ``[{"params": "classifier", "lr_scale": 0.1, "threshold": 0.1,
    "threshold_mode": "quantile"}]`` (JSON text on the command line): each trainable parameter
    goes to the first entry whose pattern ``re.search``-es its name; ``lr_scale`` multiplies the
    learning rate, the other keys are the optimizer's own options (checked like ``optim_args``).
    ``mask_absent_labels`` leaves the logits of labels absent from the training data out of the
    training loss (Renate's ``mask_unused_classes``).

    CLASSP's learning rate is ``learning_rate``. transformers' default (5e-5) barely moves a
    pretrained model under CLASSP with ``power=1``: use 3e-4 to 1e-3 (1e-3 for MiniLM); a warning
    says so once when ``optim="classp"`` runs with the untouched default.
    """

    optim: str = field(
        default=transformers.TrainingArguments.default_optim,
        metadata={
            "help": "The optimizer: any transformers name (see `OptimizerNames`) or a classp_hf registry name "
            f"({', '.join(list_optimizers())}, or one added with `classp_hf.optim.register_optimizer`)."
        },
    )
    optim_args: str | None = field(
        default=None,
        metadata={
            "help": "Optimizer options as 'key=value,...', e.g. 'threshold=1e-9,power=1,eps=1e-8' for classp; "
            "validated against the optimizer's accepted keys."
        },
    )

    optim_groups: list[dict[str, Any]] | str | None = field(
        default=None,
        metadata={
            "help": 'Optimizer settings per parameter-name pattern, as JSON: a list of {"params": regex, '
            '"lr_scale": number, option: value}, e.g. \'[{"params": "classifier", "lr_scale": 0.1}]\'. '
            "The first pattern that matches a parameter name wins."
        },
    )
    mask_absent_labels: bool = field(
        default=False,
        metadata={
            "help": "While training, leave the logits of labels absent from the training data (and the batch) out "
            "of the loss."
        },
    )

    @property
    def device(self) -> Any:
        if self.__dict__.get("_device_setup_deferred"):
            import torch

            return torch.device("cpu")  # a placeholder until set_up_device()
        return super().device

    def set_up_device(self) -> Any:
        """Sets up the device of arguments built under :func:`deferred_device_setup` (a no-op otherwise).

        Returns:
            ``self.device``.
        """
        if self.__dict__.pop("_device_setup_deferred", False) and self.deepspeed:
            # __post_init__ sized the DeepSpeed batch with the world size it saw then (1): size it again.
            _ = self._setup_devices
            self.hf_deepspeed_config.trainer_config_process(self)
        return self.device

    def __post_init__(self) -> None:
        self.__dict__["_device_setup_deferred"] = _DEFER_DEVICE_SETUP.get()
        name = optimizer_name(self.optim)
        if is_transformers_optimizer(name):
            super().__post_init__()
        else:
            if name not in list_optimizers():
                raise ValueError(unknown_name_message(name, _TRANSFORMERS_NAMES | set(list_optimizers())))
            # transformers converts `optim` to its enum in __post_init__: let it see one of its
            # names, then put ours back.
            self.optim = "adamw_torch"
            try:
                super().__post_init__()
            finally:
                self.optim = name
            get_optimizer_info(name)
        validate_optim_args(name, self.optim_args)
        if self.optim_args and is_transformers_optimizer(name):
            check_transformers_optim_args(self)
        self.optim_groups = validate_optim_groups(name, self.optim_groups, self) or None
        if self.mask_absent_labels and self.label_smoothing_factor > 0:
            raise ValueError(
                "mask_absent_labels: cannot be combined with label_smoothing_factor (smoothing would put "
                "probability on the masked labels)"
            )
        if name == "classp" and self.learning_rate == TRANSFORMERS_DEFAULT_LR:
            warnings.warn(
                f"optim='classp' with transformers' default learning_rate={TRANSFORMERS_DEFAULT_LR:g} barely moves a "
                f"pretrained model; CLASSP (power=1) fine-tunes with {CLASSP_LR_RANGE[0]:g} to "
                f"{CLASSP_LR_RANGE[1]:g} (1e-3 for MiniLM).",
                UserWarning,
                stacklevel=3,
            )

    def set_optimizer(self, name: str | Enum = "adamw_torch", **kwargs: Any) -> TrainingArguments:
        """Like ``transformers.TrainingArguments.set_optimizer``, also for classp_hf's names."""
        plain = optimizer_name(name)
        if is_transformers_optimizer(plain):
            return super().set_optimizer(name=plain, **kwargs)
        super().set_optimizer(name="adamw_torch", **kwargs)
        if plain not in list_optimizers():
            raise ValueError(unknown_name_message(plain, _TRANSFORMERS_NAMES | set(list_optimizers())))
        validate_optim_args(plain, self.optim_args)
        self.optim = plain
        validate_optim_groups(plain, self.optim_groups, self)
        return self
