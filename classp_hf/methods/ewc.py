"""Elastic weight consolidation (Kirkpatrick et al. 2017), separate or online (Schwarz et al. 2018).

After each task the method estimates the diagonal empirical Fisher information of the trainable
parameters on the task's own training data and keeps it with a copy of the weights; while later
tasks train, it adds ``(lambda_ / 2) * sum_i F_i (theta_i - theta*_i)^2`` to the loss.

Memory: ``mode: separate`` keeps one Fisher diagonal and one weight copy per earlier task
(``2 * tasks * trainable`` float32 numbers); ``mode: online`` keeps one of each
(``2 * trainable``). Only trainable parameters count: on a shared LoRA adapter that is the
adapter and its head copy.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from classp_hf.methods.base import (
    ContinualMethod,
    MethodConfig,
    TaskContext,
    label_column,
    model_input_columns,
    output_logits,
    process_rank_and_count,
    tensor_bytes,
)
from classp_hf.methods.registry import register_method

if TYPE_CHECKING:
    import datasets

__all__ = ["EWCConfig", "EWC", "empirical_fisher", "ewc_penalty"]


@dataclass
class EWCConfig(MethodConfig):
    """Arguments of :class:`EWC`.

    Args:
        lambda_ (`float`): strength of the penalty (>= 0). With the Fisher a mean over examples,
            ``lambda_`` about the number of training examples of a task is the Laplace approximation;
            tune it on validation data.
        mode (`str`): ``separate`` keeps a Fisher and weight copy per earlier task; ``online`` one
            running Fisher ``F = gamma * F + F_new`` and the latest weights.
        gamma (`float`): decay of the running Fisher in ``online`` mode, in (0, 1].
        fisher_samples (`int`): at most this many training examples (a seeded random subset) per
            Fisher estimate.
    """

    lambda_: float = field(metadata={"help": "penalty strength, >= 0", "ge": 0})
    mode: Literal["separate", "online"] = field(default="separate", metadata={"help": "separate or online"})
    gamma: float = field(default=1.0, metadata={"help": "online Fisher decay", "gt": 0, "le": 1})
    fisher_samples: int = field(default=500, metadata={"help": "examples per Fisher estimate", "ge": 1})


def sample_indices(size: int, limit: int, seed: tuple[int, ...]) -> list[int]:
    """All of ``range(size)`` if ``size <= limit``, else ``limit`` of them drawn with ``seed``, sorted."""
    if size <= limit:
        return list(range(size))
    return sorted(np.random.default_rng(list(seed)).choice(size, size=limit, replace=False).tolist())


def _trainable(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: param for name, param in model.named_parameters() if param.requires_grad}


def empirical_fisher(
    model: nn.Module,
    dataset: datasets.Dataset,
    data_collator: Callable[[list[dict[str, Any]]], Mapping[str, Any]],
    indices: list[int],
) -> dict[str, torch.Tensor]:
    """Diagonal empirical Fisher of the trainable parameters: the mean over examples of squared gradients.

    For each example ``(x, y)`` of ``dataset`` at ``indices`` the gradient of ``log p(y | x)`` (the
    model's softmax at the true label) is taken one example at a time with the model in eval
    mode (train mode is restored after). Under torch.distributed each process takes every
    ``world_size``-th example and the sums are all-reduced, so every process gets the same result.

    Args:
        model (`nn.Module`): a classifier whose outputs have ``logits``.
        dataset (`datasets.Dataset`): tokenized examples with a ``labels`` (or ``label``) column.
        data_collator (`Callable`): pads a list of examples into a batch.
        indices (`list[int]`): the examples to use.

    Returns:
        ``{parameter name: float32 tensor}`` for every trainable parameter.
    """
    params = _trainable(model)
    rank, world = process_rank_and_count()
    columns = model_input_columns(model, dataset.column_names)
    labels = label_column(dataset.column_names)
    device = next(iter(params.values())).device
    sums = {name: torch.zeros_like(param, dtype=torch.float32) for name, param in params.items()}
    mine = indices[rank::world]
    was_training = model.training
    model.eval()
    try:
        for index in mine:
            example = dataset[index]
            batch = data_collator([{column: example[column] for column in columns}])
            logits = output_logits(model(**{key: value.to(device) for key, value in batch.items()}))
            log_likelihood = F.log_softmax(logits.float(), dim=-1)[0, int(example[labels])]
            grads = torch.autograd.grad(log_likelihood, list(params.values()), allow_unused=True)
            for name, grad in zip(params, grads):
                if grad is not None:
                    sums[name] += grad.float() ** 2
    finally:
        model.train(was_training)
    count = torch.tensor(float(len(mine)), device=device)
    if world > 1:
        import torch.distributed as dist

        for total in sums.values():
            dist.all_reduce(total)
        dist.all_reduce(count)
    return {name: total / count for name, total in sums.items()}


def ewc_penalty(
    params: Mapping[str, torch.Tensor],
    fisher: Mapping[str, torch.Tensor],
    anchor: Mapping[str, torch.Tensor],
) -> torch.Tensor:
    """``sum_i F_i (theta_i - theta*_i)^2`` over the parameters of ``fisher`` present in ``params``."""
    terms = [(fisher[name] * (params[name] - anchor[name]) ** 2).sum() for name in fisher if name in params]
    if not terms:
        return torch.zeros(())
    return torch.stack(terms).sum()


class EWC(ContinualMethod):
    """Elastic weight consolidation over the trainable parameters (see :mod:`classp_hf.methods.ewc`).

    State: ``self.anchors``, a list of ``{"fisher": {name: tensor}, "weights": {name: tensor}}``
    (one per earlier task in ``separate`` mode, at most one in ``online`` mode).
    """

    name = "ewc"
    config_class = EWCConfig

    def __init__(self, config: EWCConfig | None = None, **options: Any) -> None:
        super().__init__(config, **options)
        self.anchors: list[dict[str, dict[str, torch.Tensor]]] = []

    @classmethod
    def check_compatibility(cls, peft_section: Mapping[str, Any] | None) -> None:
        if peft_section is not None and peft_section.get("adapters") == "per_task":
            raise ValueError(
                "method: ewc anchors the weights trained on earlier tasks, but with peft.adapters: per_task each "
                "task trains a new adapter (use adapters: shared)"
            )

    def after_task(self, ctx: TaskContext) -> None:
        """Estimates the task's Fisher diagonal and keeps it with a copy of the trained weights."""
        indices = sample_indices(len(ctx.train_dataset), self.config.fisher_samples, (ctx.seed, ctx.index))
        fisher = empirical_fisher(ctx.model, ctx.train_dataset, ctx.data_collator, indices)
        weights = {name: param.detach().float().clone() for name, param in _trainable(ctx.model).items()}
        if self.config.mode == "online" and self.anchors:
            previous = self.anchors[0]["fisher"]
            gamma = self.config.gamma
            fisher = {
                name: gamma * previous[name].to(value.device) + value if name in previous else value
                for name, value in fisher.items()
            }
            self.anchors = []
        self.anchors.append({"fisher": fisher, "weights": weights})

    def penalty(self, model: nn.Module, inputs: dict[str, Any], outputs: Any) -> dict[str, torch.Tensor] | None:
        """``{"ewc": (lambda_ / 2) * sum over kept tasks of sum_i F_i (theta_i - theta*_i)^2}``."""
        if not self.anchors:
            return None
        params = _trainable(model)
        total = sum(ewc_penalty(params, *self._on_device(anchor, params)) for anchor in self.anchors)
        return {"ewc": 0.5 * self.config.lambda_ * total}

    @staticmethod
    def _on_device(
        anchor: dict[str, dict[str, torch.Tensor]], params: Mapping[str, torch.Tensor]
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """The anchor's tensors on their parameters' devices (moved once, e.g. after a resume)."""
        for part in anchor.values():
            for name, value in part.items():
                if name in params and value.device != params[name].device:
                    part[name] = value.to(params[name].device)
        return anchor["fisher"], anchor["weights"]

    def state_bytes(self) -> int:
        """Bytes of the kept Fisher diagonals and weight copies."""
        return tensor_bytes(self.anchors)

    def state_dict(self) -> dict[str, Any]:
        return {
            "mode": self.config.mode,
            "anchors": [
                {part: {name: value.detach().cpu() for name, value in tensors.items()} for part, tensors in a.items()}
                for a in self.anchors
            ],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if set(state) != {"mode", "anchors"}:
            raise ValueError(f"continual method 'ewc': the checkpoint holds {sorted(state)}, not EWC's state")
        if state["mode"] != self.config.mode:
            raise ValueError(f"continual method 'ewc': the checkpoint is of mode {state['mode']!r}")
        self.anchors = [{part: dict(tensors) for part, tensors in anchor.items()} for anchor in state["anchors"]]


register_method("ewc", EWC, EWCConfig)
