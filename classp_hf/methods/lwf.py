"""Learning without forgetting (Li & Hoiem 2016): distil the previous model on the new task's data.

Before a later task trains, the method records the current model's logits (the model as it
left the previous task, in eval mode) on the task's training examples and adds an index
column (``lwf_index``) so each training example finds its recorded logits; while the task trains
it adds ``alpha * T^2 * KL(softmax(old / T) || softmax(new / T))`` (mean over the batch's
examples) to the loss. Nothing is added on the first task. Examples without recorded logits
(``lwf_index`` = -1, e.g. replayed ones) are left out of the term.

Memory: the recorded logits, ``examples x labels`` float32 numbers for the task being trained
(the previous model itself is not kept).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from classp_hf.methods.base import ContinualMethod, MethodConfig, TaskContext, model_input_columns, output_logits
from classp_hf.methods.registry import register_method

if TYPE_CHECKING:
    import datasets

__all__ = ["LwFConfig", "LwF", "INDEX_COLUMN", "record_logits", "distillation_loss"]

#: The column mapping each training example to its row of recorded logits.
INDEX_COLUMN = "lwf_index"


@dataclass
class LwFConfig(MethodConfig):
    """Arguments of :class:`LwF`.

    Args:
        alpha (`float`): weight of the distillation term (>= 0; Li & Hoiem's lambda_o, 1 in the paper).
        temperature (`float`): softmax temperature T (> 0; 2 in the paper).
    """

    alpha: float = field(default=1.0, metadata={"help": "weight of the distillation term", "ge": 0})
    temperature: float = field(default=2.0, metadata={"help": "softmax temperature", "gt": 0})


@torch.no_grad()
def record_logits(
    model: nn.Module,
    dataset: datasets.Dataset,
    data_collator: Callable[[list[dict[str, Any]]], Mapping[str, Any]],
    batch_size: int,
) -> torch.Tensor:
    """The model's logits on every example of ``dataset``, in order, with the model in eval mode.

    Every process computes all of them (same model, same batches: the same result everywhere).

    Returns:
        A float32 tensor ``[len(dataset), num_labels]`` on the model's device.
    """
    columns = model_input_columns(model, dataset.column_names)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        rows = []
        for start in range(0, len(dataset), batch_size):
            block = dataset.select(range(start, min(start + batch_size, len(dataset)))).select_columns(columns)[:]
            batch = data_collator([{c: block[c][i] for c in columns} for i in range(len(block[columns[0]]))])
            rows.append(output_logits(model(**{k: v.to(device) for k, v in batch.items()})).float())
    finally:
        model.train(was_training)
    return torch.cat(rows)


def distillation_loss(new_logits: torch.Tensor, old_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T^2 * KL(softmax(old / T) || softmax(new / T))``, summed over labels and averaged over examples."""
    return (
        F.kl_div(
            F.log_softmax(new_logits.float() / temperature, dim=-1),
            F.log_softmax(old_logits.float() / temperature, dim=-1),
            log_target=True,
            reduction="batchmean",
        )
        * temperature**2
    )


class LwF(ContinualMethod):
    """Learning without forgetting (see :mod:`classp_hf.methods.lwf`).

    State: ``self.old_logits``, the logits recorded for the task being trained (`None` on the
    first task). Nothing needs to survive between tasks: a resumed run records them again from
    the restored model, so :meth:`state_dict` is empty.
    """

    name = "lwf"
    config_class = LwFConfig

    def __init__(self, config: LwFConfig | None = None, **options: Any) -> None:
        super().__init__(config, **options)
        self.old_logits: torch.Tensor | None = None

    def train_dataset(self, ctx: TaskContext) -> datasets.Dataset:
        """On a later task: records the previous model's logits and adds the ``lwf_index`` column."""
        self.old_logits = None
        if ctx.index == 0:
            return ctx.train_dataset
        self.old_logits = record_logits(ctx.model, ctx.train_dataset, ctx.data_collator, ctx.batch_size)
        return ctx.train_dataset.add_column(INDEX_COLUMN, list(range(len(ctx.train_dataset))))

    def extra_columns(self) -> list[str]:
        return [INDEX_COLUMN]

    def penalty(self, model: nn.Module, inputs: dict[str, Any], outputs: Any) -> dict[str, torch.Tensor] | None:
        """``{"lwf": alpha * T^2 * KL(old || new)}`` over the batch's examples with recorded logits."""
        if self.old_logits is None or INDEX_COLUMN not in inputs:
            return None
        logits = output_logits(outputs)
        index = inputs[INDEX_COLUMN].to(logits.device)
        recorded = index >= 0
        if not bool(recorded.any()):
            return {"lwf": logits.new_zeros(())}
        old = self.old_logits.to(logits.device)[index[recorded]]
        loss = distillation_loss(logits[recorded], old, self.config.temperature)
        return {"lwf": self.config.alpha * loss}

    def state_bytes(self) -> int:
        """Bytes of the recorded logits."""
        return 0 if self.old_logits is None else self.old_logits.numel() * self.old_logits.element_size()


register_method("lwf", LwF, LwFConfig)
