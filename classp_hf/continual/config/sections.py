"""The checks of one config section each: ``peft:`` (through ``peft.LoraConfig``), ``training:`` (keys, types,
ranges, then ``classp_hf.TrainingArguments`` built once for each task and kept for the runner:
:func:`training_arguments`), ``optim``/``optim_args`` (the optimizer built on a dummy parameter, ``fused`` compiled
once), and ``method``/``method_args``; the values through the shared checker (:mod:`classp_hf.validation`).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
import transformers

from classp_hf import validation
from classp_hf.continual.config.schema import (
    _TRAINING_FIELDS,
    RUNNER_OWNED_TRAINING_KEYS,
    RUNNER_TRAINING_DEFAULTS,
    TASK_TRAINING_KEYS,
    RunConfig,
)
from classp_hf.continual.config.validate import (
    _LORA_RANGES,
    _TRAINING_RANGES,
    _field_types,
    check_value,
    config_errors,
    require,
)
from classp_hf.continual.errors import ConfigError
from classp_hf.continual.io import first_line
from classp_hf.continual.launch import Backend, accelerator_available

#: Where TrainingArguments are built to validate a config; building them creates no folder (tested).
_UNUSED_OUTPUT_DIR = os.path.join(os.sep, "nonexistent", "classp-hf-config-check")


# -- the peft: section -------------------------------------------------------------------------


@dataclass(frozen=True)
class _AdapterOptions:
    """The ``peft:`` keys that are ours, not ``peft.LoraConfig``'s (see :mod:`classp_hf.continual.adapters`)."""

    adapters: Literal["shared", "per_task"] = "shared"
    init: Literal["previous", "fresh"] = "previous"
    merge: bool = False


_ADAPTER_KEYS = frozenset(f.name for f in dataclasses.fields(_AdapterOptions))


@functools.cache
def _lora_field_types() -> dict[str, Any]:
    import peft

    types_ = dict(_field_types(peft.LoraConfig))
    types_["lora_alpha"] = float  # annotated int, but alpha / r is all peft does with it
    return types_


def build_lora_config(section: Mapping[str, Any]) -> Any:
    """The ``peft.LoraConfig`` of a validated ``peft:`` section (``task_type`` defaults to ``SEQ_CLS``)."""
    import peft

    options = {key: value for key, value in section.items() if key not in _ADAPTER_KEYS}
    options.setdefault("task_type", "SEQ_CLS")
    return peft.LoraConfig(**options)


def parse_peft_section(raw: Any) -> dict[str, Any] | None:
    """Validates the ``peft:`` section of a run config.

    Args:
        raw: the section (a mapping) or `None`.

    Returns:
        The section with defaults filled in (``adapters: shared``, ``init: previous``,
        ``merge: false``), or `None` when absent.

    Raises:
        ConfigError: naming an unknown key or a bad value (``config.peft.r: expected an integer, got 'eight'``).
    """
    if raw is None:
        return None
    require(isinstance(raw, dict), "config.peft: expected a mapping of peft.LoraConfig fields")
    field_types = {**_lora_field_types(), **_field_types(_AdapterOptions)}
    for key, value in raw.items():
        if key not in field_types:
            raise ConfigError(f"config.peft.{key}: not a peft.LoraConfig field (nor adapters, init, merge)")
        check_value(value, field_types[key], f"config.peft.{key}", bounds=_LORA_RANGES.get(key))
    section = {**dataclasses.asdict(_AdapterOptions()), **raw}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            build_lora_config(section)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"config.peft: {first_line(error)}") from None
    return section


# -- the training: section ---------------------------------------------------------------------


def _training_field_types() -> dict[str, Any]:
    from classp_hf.training_args import TrainingArguments

    return _field_types(TrainingArguments)


def _check_training(training: Any, where: str, *, per_task: bool) -> dict[str, Any]:
    """Keys, value types and ranges of a ``training`` section (the whole arguments are built later)."""
    if training is None:
        return {}
    require(isinstance(training, dict), f"{where}: expected a mapping of TrainingArguments fields")
    field_types = _training_field_types()
    for key, value in training.items():
        if per_task:
            if key in ("optim", "optim_args"):
                raise ConfigError(
                    f"{where}.{key}: the optimizer persists across tasks; set it once in the top-level training"
                )
            require(
                key in TASK_TRAINING_KEYS,
                f"{where}.{key}: a task may override only {', '.join(sorted(TASK_TRAINING_KEYS))}",
            )
        else:
            require(
                key not in RUNNER_OWNED_TRAINING_KEYS, f"{where}.{key}: set by the runner, remove it from the config"
            )
            require(key in _TRAINING_FIELDS, f"{where}.{key}: not a classp_hf.TrainingArguments field")
            require(
                key != "push_to_hub" and not key.startswith("hub_"),
                f"{where}.{key}: a run does not push to the Hugging Face Hub; push the finished run's folder "
                "instead (huggingface-cli upload <repo> OUTPUT/model, or from_pretrained(OUTPUT/model).push_to_hub)",
            )
        check_value(value, field_types.get(key, Any), f"{where}.{key}", bounds=_TRAINING_RANGES.get(key))
    if training.get("fp16") is True and (training.get("use_cpu") is True or not accelerator_available()):
        raise ConfigError(
            f"{where}.fp16: fp16 mixed precision runs only on a GPU and none is used here "
            "(on a CPU it would change nothing); remove it or use bf16: true"
        )
    return dict(training)


def task_training_options(config: RunConfig, index: int) -> dict[str, Any]:
    """The ``TrainingArguments`` options of task ``index`` that come from the config.

    ``RUNNER_TRAINING_DEFAULTS``, then the top-level ``training``, then the task's overrides; the
    runner adds the fields it owns (``output_dir``, ``seed``, ``save_strategy``, ...).
    """
    return {**RUNNER_TRAINING_DEFAULTS, **config.training, **config.tasks[index].training}


def _owned_options(backend: Backend) -> dict[str, Any]:
    """The options the run owns, whatever the config says (its seed aside): no saving, the CPU for CPU processes
    and for mixed precision on a CPU."""
    owned: dict[str, Any] = {"save_strategy": "no"}
    if backend.use_cpu and (backend.num_processes > 1 or backend.mixed_precision != "no"):
        owned["use_cpu"] = True  # CPU processes (gloo); bf16 runs with CPU autocast
    return owned


def _options(config: RunConfig, task_training: Mapping[str, Any], backend: Backend) -> dict[str, Any]:
    """Every option of a task's arguments but the output folder's (``task_training``: the task's overrides)."""
    options = {**RUNNER_TRAINING_DEFAULTS, **config.training, **task_training, "seed": config.seed}
    options.update(_owned_options(backend))
    if options.get("use_cpu") or not accelerator_available():
        options.setdefault("dataloader_pin_memory", False)  # nothing to pin for; torch warns otherwise
    return options


def _build_arguments(options: Mapping[str, Any]) -> tuple[Any, Exception | None]:
    """The one place a run's ``classp_hf.TrainingArguments`` are built: quietly, the device set-up left to the
    runner (:func:`~classp_hf.training_args.deferred_device_setup`), in a placeholder folder (building creates
    none; the runner sets its own); returns them, or the error ``__post_init__`` raised."""
    from classp_hf.training_args import TrainingArguments, deferred_device_setup

    options = {**options, "output_dir": _UNUSED_OUTPUT_DIR}
    # transformers turns disable_tqdm on for arguments built while it logs errors only: decide it before muting
    options.setdefault("disable_tqdm", transformers.logging.get_verbosity() > transformers.logging.WARNING)
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    try:
        with warnings.catch_warnings(), deferred_device_setup():
            warnings.simplefilter("ignore")
            return TrainingArguments(**options), None
    except Exception as error:  # transformers raises ValueError, TypeError, ImportError, ...
        return None, error
    finally:
        transformers.logging.set_verbosity(verbosity)


def _training_arguments(options: Mapping[str, Any], named: Mapping[str, Any], where: str, backend: Backend) -> Any:
    """Builds the arguments; on an error, names the key of ``named`` that alone causes it, if one does."""
    args, error = _build_arguments(options)
    if error is None:
        return args
    base = {**RUNNER_TRAINING_DEFAULTS, **_owned_options(backend)}
    if "optim" in options:
        base["optim"] = options["optim"]  # optim_args mean something per optim
    if "optim" in named and _build_arguments(base)[1] is not None:
        raise ConfigError(f"{where}.optim: {first_line(error)}")
    for key, value in named.items():
        if _build_arguments({**base, key: value})[1] is not None:
            line = first_line(error)  # our checks name the key themselves: optim_groups[0].thresold: ...
            named_key = re.match(rf"{re.escape(key)}[.\[]", line)
            raise ConfigError(f"{where}.{line}" if named_key else f"{where}.{key}: {line}")
    raise ConfigError(f"{where}: {first_line(error)}")


#: Where the config check keeps the arguments it built, for the runner: ``(each task's options, arguments)``.
_BUILT = "_classp_hf_training_arguments"


def training_arguments(config: RunConfig, backend: Backend) -> list[Any]:
    """Every task's ``classp_hf.TrainingArguments``, built once: the config check builds them and keeps them on
    the config; a later call gets those while the config still gives the same options (else builds them again).

    They are a run's arguments in ``backend``'s launch, with a placeholder ``output_dir`` and the device not set
    up yet: the runner takes a copy of each, sets its folder and calls ``set_up_device()``.

    Raises:
        ConfigError: naming the key whose value transformers refuses (in ``config.training`` or the task's).
    """
    options = [_options(config, task.training, backend) for task in config.tasks]
    built = config.__dict__.get(_BUILT)
    if built is not None and built[0] == options:
        return list(built[1])
    top = _training_arguments(_options(config, {}, backend), config.training, "config.training", backend)
    per_task = [
        _training_arguments(options[index], task.training, f"tasks[{index}] ({task.name}).training", backend)
        if task.training
        else top
        for index, task in enumerate(config.tasks)
    ]
    config.__dict__[_BUILT] = (options, per_task)
    return list(per_task)


def _check_training_arguments(config: RunConfig, backend: Backend) -> Any:
    """Builds every task's ``classp_hf.TrainingArguments`` (kept for the runner); returns the first task's (the
    optimizer's)."""
    per_task = training_arguments(config, backend)
    for index, (task, args) in enumerate(zip(config.tasks, per_task)):
        _check_trains(args, task.training, f"tasks[{index}] ({task.name}).training")
    return per_task[0]


def _check_trains(args: Any, task_training: Mapping[str, Any], task_where: str) -> None:
    """Refuses a task that would train no step (``max_steps=0``, or ``num_train_epochs=0`` without ``max_steps``)."""
    if args.max_steps == 0:
        where = task_where if "max_steps" in task_training else "config.training"
        raise ConfigError(
            f"{where}.max_steps: 0 trains no step; give a positive number (or -1: num_train_epochs decides)"
        )
    if args.max_steps < 0 and args.num_train_epochs == 0:
        where = task_where if "num_train_epochs" in task_training else "config.training"
        raise ConfigError(f"{where}.num_train_epochs: 0 trains no step; give a positive number of epochs")


def _check_optimizer(training: dict[str, Any]) -> None:
    """Validates ``optim``/``optim_args`` syntax now, so a typo fails before any data or model is loaded."""
    from classp_hf.optim.factory import get_optimizer_info, list_optimizers, unknown_name_message
    from classp_hf.training_args import is_transformers_optimizer, validate_optim_args

    name = str(training.get("optim", "adamw_torch"))
    if not is_transformers_optimizer(name) and name not in list_optimizers():
        from transformers.training_args import OptimizerNames

        raise ConfigError(
            "config.training.optim: "
            + unknown_name_message(name, {o.value for o in OptimizerNames} | set(list_optimizers()))
        )
    with config_errors("config.training."):
        keys = [key for key, _ in validation.parse_key_values(training.get("optim_args") or "", "optim_args")]
        refused = [key for key in keys if key.lower() in ("lr", "learning_rate")]
        if refused:
            raise ConfigError(
                f"config.training.optim_args.{refused[0]}: not accepted here; set training.learning_rate "
                "(an lr in optim_args would apply to the first task only)"
            )
        if not is_transformers_optimizer(name):
            accepted = set(get_optimizer_info(name).arg_types) - {"lr"}
            validation.check_keys(keys, accepted, "optim_args", f"optimizer {name!r}")
        validate_optim_args(name, training.get("optim_args"))


def _check_method(method: Any, method_args: Any, peft_section: dict[str, Any] | None) -> tuple[Any, dict[str, Any]]:
    """Validates ``method`` (a name or a list of names) and ``method_args`` against each method's config class,
    and the methods against the ``peft`` section.

    Returns:
        ``(method, method_args)`` as the resolved config records them.
    """
    from classp_hf.methods import check_method_compatibility, parse_method_section

    try:
        parsed = parse_method_section(method, method_args)
        check_method_compatibility([name for name, _ in parsed], peft_section)
    except ValueError as error:
        message = first_line(error)
        raise ConfigError(message if message.startswith("config.") else f"config.{message}") from None
    return (list(method) if isinstance(method, list) else method), dict(method_args or {})


def _check_optimizer_values(args: Any) -> None:
    """Builds the optimizer of a registry name on one dummy parameter, so its own checks run now.

    Catches what only the optimizer knows (CLASSP's ``threshold=-1``, ``power=0``,
    ``threshold_mode=quantile`` with a threshold above 1) for every registered optimizer.
    """
    from classp_hf.optim.factory import list_optimizers
    from classp_hf.trainer import Trainer
    from classp_hf.training_args import optimizer_name

    if optimizer_name(args.optim) not in list_optimizers():
        return
    optimizer_class, kwargs = Trainer.get_optimizer_cls_and_kwargs(args)
    group = {"params": [torch.nn.Parameter(torch.zeros(1))], "weight_decay": args.weight_decay}
    try:
        optimizer = optimizer_class([group], **kwargs)
    except (ValueError, TypeError) as error:
        raise ConfigError(f"config.training.optim_args: {first_line(error)}") from None
    if any(group.get("fused") for group in optimizer.param_groups):
        _check_fused_compiles(optimizer_class, kwargs)


@functools.cache
def _fused_compile_error(backend: str) -> str | None:
    """Compiles and runs the fused CLASSP step on one element; the first line of its error, or `None`."""
    from classp_hf.optim import CLASSP

    param = torch.nn.Parameter(torch.zeros(1))
    param.grad = torch.ones(1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            CLASSP([param], lr=1e-3, fused=True).step()
    except Exception as error:  # inductor raises InductorError, BackendCompilerFailed, CalledProcessError, ...
        return first_line(error)
    return None


def _check_fused_compiles(optimizer_class: type, kwargs: Mapping[str, Any]) -> None:
    """``fused=true`` needs ``torch.compile`` to work here (a C++ compiler on the CPU): one element compiled now."""
    from classp_hf.optim import CLASSP, _fused

    if not (isinstance(optimizer_class, type) and issubclass(optimizer_class, CLASSP)):
        return
    error = _fused_compile_error(_fused.BACKEND)
    if error is not None:
        raise ConfigError(
            "config.training.optim_args: fused=true needs torch.compile, which fails here "
            f"({error[:160]}); install a C++ compiler (apt-get install g++, or conda install gxx) "
            "or remove fused"
        )
