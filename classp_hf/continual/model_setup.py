"""The tokenizer and the model of a config, loaded one way for ``classp-hf run`` and ``classp-hf probe``.

The tokenizer gets a pad token when its family ships without one (:func:`~.families.set_pad_token`); the model is
loaded in ``model_dtype`` with a fresh classification head of the config's labels, and its pad token id aligned
with the tokenizer's. A folder that cannot be loaded is one line naming ``config.model``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import torch
import transformers
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from classp_hf.continual.config import ConfigError, RunConfig
from classp_hf.continual.families import align_pad_token_id, set_pad_token
from classp_hf.continual.io import first_line
from classp_hf.training_args import TrainingArguments

__all__ = [
    "MODEL_DTYPES",
    "check_optim_group_patterns",
    "checkpoints_activations",
    "load_model",
    "load_tokenizer",
]

#: ``model_dtype`` values and the torch dtypes they load the weights in.
MODEL_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def load_tokenizer(config: RunConfig, path: str) -> tuple[Any, str | None]:
    """The tokenizer in ``path`` (the checked folder of ``config.model``), with a pad token.

    Args:
        config: the run config (its ``model`` names the folder in messages and picks the pad-token rule).
        path: the model folder.

    Returns:
        The tokenizer, and the line saying which pad token was set (`None` when it had one).

    Raises:
        ConfigError: the tokenizer cannot be loaded, naming ``config.model``.
    """
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as error:
        raise ConfigError(f"config.model: cannot load {config.model!r}: {str(error).splitlines()[0]}") from None
    return tokenizer, set_pad_token(tokenizer, config.model)  # decoder tokenizers ship without one


def load_model(config: RunConfig, source: str, tokenizer: Any, *, bars: bool = True) -> torch.nn.Module:
    """A sequence-classification model from ``source`` with a head over ``config.labels``, in ``model_dtype``.

    Args:
        config: the run config (labels and ``model_dtype``).
        source: the model folder (the pretrained model, or a run's checkpoint on ``--resume``).
        tokenizer: the run's tokenizer; the model's pad token id is aligned with it.
        bars: show transformers' "Loading weights" bar (when it is on at all).

    Returns:
        The model.

    Raises:
        ConfigError: the weights cannot be loaded, naming ``config.model`` and ``source``.
    """
    id2label = dict(enumerate(config.labels))
    options: dict[str, Any] = {}
    dtype = getattr(config, "model_dtype", None)
    if dtype is not None:
        options["dtype"] = MODEL_DTYPES[dtype]
    enabled = transformers.utils.logging.is_progress_bar_enabled()
    if not bars:  # --quiet: no "Loading weights" bar either (an error after it stays one line)
        transformers.utils.logging.disable_progress_bar()
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            source,
            num_labels=len(config.labels),
            id2label=id2label,
            label2id={label: i for i, label in id2label.items()},
            ignore_mismatched_sizes=True,
            **options,
        )
    except Exception as error:  # a missing, truncated or mismatched weights file raises many types
        raise ConfigError(f"config.model: cannot load the weights of {source!r}: {first_line(error)}") from None
    finally:
        if enabled:
            transformers.utils.logging.enable_progress_bar()
    align_pad_token_id(model, tokenizer)  # decoders pool the last token that is not padding
    return model


def checkpoints_activations(task_args: Sequence[TrainingArguments], model: torch.nn.Module) -> bool:
    """Whether ``training.activation_checkpointing`` (transformers' older name: ``gradient_checkpointing``) is on for
    any task.

    Args:
        task_args: every stage's ``TrainingArguments``.
        model: the loaded model (or its PEFT wrapper).

    Returns:
        Whether the model's activations are checkpointed in some task.

    Raises:
        ConfigError: it is on for a model that does not support it.
    """
    names = ("gradient_checkpointing", "activation_checkpointing")
    if not any(getattr(args, name, False) for args in task_args for name in names):
        return False
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if not getattr(base, "supports_gradient_checkpointing", False):
        raise ConfigError(
            f"config.training.activation_checkpointing (or gradient_checkpointing): {type(base).__name__} does not "
            "support activation checkpointing; leave it out"
        )
    return True


def check_optim_group_patterns(args: TrainingArguments, model: torch.nn.Module) -> None:
    """Every ``optim_groups`` pattern must match a trainable parameter (checked before anything is written).

    Args:
        args: the first stage's ``TrainingArguments`` (its ``optim_groups``, head patterns resolved).
        model: the model as it trains (a PEFT wrapper: only the adapters' parameters train).

    Raises:
        ConfigError: a pattern matches no trainable parameter, or only ones an earlier entry takes first.
    """
    from classp_hf.optim.factory import parse_optim_groups

    groups = parse_optim_groups(getattr(args, "optim_groups", None))
    names = [name for name, param in model.named_parameters() if param.requires_grad]
    owner = {  # a parameter goes to the first entry that matches it
        name: next((index for index, group in enumerate(groups) if re.search(group["params"], name)), None)
        for name in names
    }
    for index, group in enumerate(groups):
        matched = [name for name in names if re.search(group["params"], name)]
        if any(owner[name] == index for name in matched):
            continue
        if matched:
            raise ConfigError(
                f"config.training.optim_groups[{index}].params: {group['params']!r} matches only parameters that "
                f"optim_groups[{owner[matched[0]]}] takes first (a parameter goes to the first entry that matches "
                "it); put it before, or narrow the earlier pattern"
            )
        if not matched:
            raise ConfigError(
                f"config.training.optim_groups[{index}].params: {group['params']!r} matches no trainable parameter "
                f"(e.g. {', '.join(names[:3])}, ...)"
            )
