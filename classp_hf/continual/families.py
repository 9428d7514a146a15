"""What differs between model families, read from what the model and tokenizer report, not from names.

- :func:`check_sequence_classification`: a family transformers has no sequence-classification class
  for is refused in one line before anything is loaded.
- :func:`set_pad_token` / :func:`align_pad_token_id`: decoder tokenizers (GPT-2, Llama, Qwen2, Mistral)
  ship without a pad token; the end-of-sequence token pads instead and the model's
  ``config.pad_token_id`` is set to match, which is what sequence classification on a decoder pools
  by (the last token that is not padding).
- :func:`classification_head`: the modules the classification model adds to its base model
  (``classifier``; RoBERTa's two-layer ``classifier``; DistilBERT's ``pre_classifier`` + ``classifier``;
  DeBERTa's ``pooler`` + ``classifier``; ModernBERT's ``head`` + ``classifier``; ``score`` on decoders),
  found as the children outside ``model.base_model_prefix`` that hold parameters.
- :func:`check_lora_targets`: ``peft.target_modules`` left out needs PEFT's default for the family;
  without one, one line naming the key and the model's linear layer names.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from classp_hf.continual.config import ConfigError

__all__ = [
    "check_sequence_classification",
    "set_pad_token",
    "align_pad_token_id",
    "classification_head",
    "linear_layer_names",
    "check_lora_targets",
    "HEAD_PATTERN",
    "resolve_head_pattern",
]

#: The ``optim_groups`` ``params`` value that stands for the classification head's parameters, whatever its name.
HEAD_PATTERN = "<head>"


def check_sequence_classification(model_type: str | None, model: str) -> None:
    """Refuses a family without an ``AutoModelForSequenceClassification`` class.

    Args:
        model_type: ``config.json``'s ``model_type`` (`None`: left to the loader).
        model: the config's ``model`` value, for the message.

    Raises:
        ConfigError: ``config.model: ... 't5gemma2'... has no sequence-classification model ...``.
    """
    import transformers
    from transformers.models.auto.modeling_auto import MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES

    if model_type is not None and model_type not in MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES:
        raise ConfigError(
            f"config.model: {model!r} is a {model_type!r} model, a family with no sequence-classification class "
            f"in transformers {transformers.__version__} (AutoModelForSequenceClassification)"
        )


def set_pad_token(tokenizer: Any, model: str) -> str | None:
    """Gives a tokenizer without a pad token its end-of-sequence token as pad.

    Args:
        tokenizer: a ``transformers`` tokenizer (changed in place).
        model: the config's ``model`` value, for the message.

    Returns:
        The line to print when the pad token was set, else `None`.

    Raises:
        ConfigError: the tokenizer has neither a pad nor an end-of-sequence token.
    """
    if tokenizer.pad_token is not None:
        return None
    if tokenizer.eos_token is None:
        raise ConfigError(
            f"config.model: the tokenizer of {model!r} has no pad token and no end-of-sequence token to pad with; "
            "add a pad token to the tokenizer (tokenizer.add_special_tokens) and save it with the model"
        )
    tokenizer.pad_token = tokenizer.eos_token
    return (
        f"[classp-hf] the tokenizer has no pad token: padding with its end-of-sequence token "
        f"{tokenizer.eos_token!r} (id {tokenizer.pad_token_id}), the model's config.pad_token_id set to match"
    )


def align_pad_token_id(model: nn.Module, tokenizer: Any) -> None:
    """Sets ``model.config.pad_token_id`` to the tokenizer's pad token id (decoders pool by it)."""
    config = getattr(model, "config", None)
    if config is not None and tokenizer.pad_token_id is not None and config.pad_token_id != tokenizer.pad_token_id:
        config.pad_token_id = tokenizer.pad_token_id


def classification_head(model: nn.Module) -> list[str]:
    """The names of the modules a sequence-classification model adds to its base model.

    Args:
        model: a ``PreTrainedModel`` (not a ``PeftModel``).

    Returns:
        The names of its children outside ``model.base_model_prefix`` that hold parameters, in order
        (``["score"]`` on decoders, ``["pre_classifier", "classifier"]`` on DistilBERT).

    Raises:
        ConfigError: the model has no such module.
    """
    prefix = getattr(model, "base_model_prefix", "")
    names = [
        name for name, child in model.named_children() if name != prefix and next(child.parameters(), None) is not None
    ]
    if not names:
        raise ConfigError(
            f"config.model: found no classification head beside {type(model).__name__}'s base model ({prefix!r})"
        )
    return names


def _is_linear(module: nn.Module) -> bool:
    from transformers.pytorch_utils import Conv1D  # GPT-2's linear layers

    return isinstance(module, (nn.Linear, Conv1D))


def linear_layer_names(model: nn.Module) -> list[str]:
    """The distinct last names of the linear layers outside the classification head (LoRA targets)."""
    head = tuple(f"{name}." for name in classification_head(model))
    names = {
        name.rsplit(".", 1)[-1]
        for name, module in model.named_modules()
        if _is_linear(module) and not f"{name}.".startswith(head)
    }
    return sorted(names)


def check_lora_targets(section: Mapping[str, Any], model: nn.Module) -> None:
    """``peft.target_modules`` left out needs a PEFT default for the model's family.

    Args:
        section: the validated ``peft:`` section.
        model: the base model the adapters go on.

    Raises:
        ConfigError: ``config.peft.target_modules: PEFT has no default for 'distilbert' models; set it to
            some of q_lin, v_lin, ... (or all-linear)``.
    """
    if section.get("target_modules") is not None:
        return
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as DEFAULTS

    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in DEFAULTS:
        raise ConfigError(
            f"config.peft.target_modules: PEFT has no default for {model_type!r} models; set it to some of the "
            f"model's linear layers: {', '.join(linear_layer_names(model))} (or all-linear)"
        )


def resolve_head_pattern(optim_groups: Any, head: list[str]) -> Any:
    """Replaces ``params: "<head>"`` in ``optim_groups`` by a pattern matching the head's parameters.

    The pattern matches the head's modules at the top of the model, bare (``score.weight``) or inside a
    ``PeftModel`` (``base_model.model.score.modules_to_save.default.weight``), and nothing else (DistilBERT's
    ``classifier`` pattern does not match ``pre_classifier``).

    Args:
        optim_groups: ``TrainingArguments.optim_groups`` (a list of mappings, its JSON text, or `None`).
        head: the names :func:`classification_head` returns.

    Returns:
        ``optim_groups`` unchanged when no entry uses ``<head>``, else the same form (list or JSON text) with
        the pattern filled in.
    """
    import json
    import re

    groups = json.loads(optim_groups) if isinstance(optim_groups, str) and optim_groups.strip() else optim_groups
    if not isinstance(groups, list) or not any(
        isinstance(g, Mapping) and g.get("params") == HEAD_PATTERN for g in groups
    ):
        return optim_groups
    pattern = rf"^(?:base_model\.model\.)?(?:{'|'.join(re.escape(name) for name in head)})\."
    resolved = [
        {**group, "params": pattern} if isinstance(group, Mapping) and group.get("params") == HEAD_PATTERN else group
        for group in groups
    ]
    return json.dumps(resolved) if isinstance(optim_groups, str) else resolved
