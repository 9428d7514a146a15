"""O-LoRA (Wang et al. 2023): a new LoRA adapter per task, orthogonal to the earlier ones.

Each task trains a new adapter (``peft: {adapters: per_task, init: fresh}``); the earlier
adapters stay in the forward pass, frozen, so the model is the base plus every task's update.
While a task trains, the method adds, as the reference code (cmnfriend/O-LoRA) does,

- ``lambda_orth * sum over LoRA layers and earlier adapters of sum |A_earlier A_current^T|``
  (entrywise absolute values of the ``r x r`` products of the LoRA ``A`` matrices), and
- ``lambda_l2 * sum over the current adapter's LoRA matrices of ||M||_2`` (Frobenius norms).

The adapters are named by the PEFT model (``model.peft_config`` keys in insertion order; the
last one is the task's). The classification head copy (``modules_to_save``) is the current
adapter's alone.

Memory: nothing beyond the adapters, which are part of the model (``state_bytes() == 0``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from classp_hf.methods.base import ContinualMethod, MethodConfig, TaskContext
from classp_hf.methods.registry import register_method

__all__ = ["OLoRAConfig", "OLoRA", "adapter_names", "activate_adapters", "olora_terms"]


@dataclass
class OLoRAConfig(MethodConfig):
    """Arguments of :class:`OLoRA`.

    Args:
        lambda_orth (`float`): weight of the orthogonality term (>= 0; 0.5 in the reference scripts).
        lambda_l2 (`float`): weight of the L2 term on the current adapter (>= 0; 0 in the reference scripts).
    """

    lambda_orth: float = field(default=0.5, metadata={"help": "orthogonality weight", "ge": 0})
    lambda_l2: float = field(default=0.0, metadata={"help": "L2 weight on the current adapter", "ge": 0})


def adapter_names(model: nn.Module) -> tuple[list[str], str]:
    """``(earlier adapters, current adapter)`` of a PEFT model: ``peft_config`` keys in order, the last current.

    Raises:
        ValueError: ``model`` is not a PEFT model.
    """
    names = list(getattr(model, "peft_config", None) or [])
    if not names:
        raise ValueError("method: olora needs a PEFT model with LoRA adapters (a peft: section)")
    return names[:-1], names[-1]


def _lora_layers(model: nn.Module) -> list[nn.Module]:
    """The modules holding LoRA matrices (``lora_A``/``lora_B`` dicts keyed by adapter)."""
    return [module for module in model.modules() if isinstance(getattr(module, "lora_A", None), nn.ModuleDict)]


def activate_adapters(model: nn.Module) -> None:
    """Makes every adapter's LoRA update part of the forward pass, only the current one trainable.

    The current adapter is set as the PEFT model's active adapter (its head copy trainable and
    used), then each LoRA layer is given all adapters as active and the earlier ones are frozen.
    """
    earlier, current = adapter_names(model)
    model.set_adapter(current)
    for layer in _lora_layers(model):
        present = [name for name in [*earlier, current] if name in layer.lora_A]
        layer.set_adapter(present)  # marks the listed adapters trainable: freeze the earlier ones again
        for attribute in layer.adapter_layer_names:
            adapters = getattr(layer, attribute)
            for name in earlier:
                if name in adapters:
                    adapters[name].requires_grad_(False)


def olora_terms(model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """``(sum |A_earlier A_current^T|, sum of the current adapter's LoRA matrix norms)`` (unweighted)."""
    earlier, current = adapter_names(model)
    orthogonality, norms = [], []
    for layer in _lora_layers(model):
        if current not in layer.lora_A:
            continue
        a_current = layer.lora_A[current].weight
        for name in earlier:
            if name in layer.lora_A:
                orthogonality.append((layer.lora_A[name].weight @ a_current.T).abs().sum())
    pattern = re.compile(rf"\.lora_(?:embedding_)?[AB]\.{re.escape(current)}(?:\.|$)")
    norms = [torch.linalg.vector_norm(p) for n, p in model.named_parameters() if pattern.search(n)]
    device = next(model.parameters()).device
    zero = torch.zeros((), device=device)
    return (torch.stack(orthogonality).sum() if orthogonality else zero, torch.stack(norms).sum() if norms else zero)


class OLoRA(ContinualMethod):
    """O-LoRA over per-task adapters (see :mod:`classp_hf.methods.olora`). Keeps no state of its own."""

    name = "olora"
    config_class = OLoRAConfig

    @classmethod
    def check_compatibility(cls, peft_section: Mapping[str, Any] | None) -> None:
        section = peft_section or {}
        if section.get("adapters") != "per_task" or section.get("init", "previous") != "fresh":
            raise ValueError(
                "method: olora trains a new LoRA adapter per task; it needs peft with adapters: per_task and "
                "init: fresh"
            )

    def before_task(self, ctx: TaskContext) -> None:
        """Keeps the earlier adapters in the forward pass, frozen; the task's adapter trains."""
        activate_adapters(ctx.model)

    def penalty(self, model: nn.Module, inputs: dict[str, Any], outputs: Any) -> dict[str, torch.Tensor] | None:
        """``{"olora_orth": lambda_orth * orthogonality, "olora_l2": lambda_l2 * norms}``."""
        orthogonality, norms = olora_terms(model)
        return {"olora_orth": self.config.lambda_orth * orthogonality, "olora_l2": self.config.lambda_l2 * norms}


register_method("olora", OLoRA, OLoRAConfig)
