"""Update sparsity across tasks (``training.diagnostics``): which elements CLASSP updated, task by task.

:class:`TrackUpdates` turns the optimizer's per-element tracking on when a task starts; :func:`task_sparsity` reads
it back after the task and keeps the union of every task's updates so far, so the overlap with earlier tasks can be
told (``results.json`` → ``per_task[*].sparsity``).
"""

from __future__ import annotations

from typing import Any

import torch
import transformers

from classp_hf.trainer import unwrap_optimizer

__all__ = ["TrackUpdates", "task_sparsity"]


class TrackUpdates(transformers.TrainerCallback):
    """Turns on CLASSP's per-element update tracking once the task's optimizer exists."""

    def on_train_begin(self, args: Any, state: Any, control: Any, optimizer: Any = None, **kwargs: Any) -> None:
        unwrap_optimizer(optimizer).track_updates()


def task_sparsity(
    optimizer: Any, model: torch.nn.Module, ever_updated: dict[str, torch.Tensor], first: bool
) -> dict[str, float | None]:
    """The sparsity of the task just trained; adds its updates to ``ever_updated`` (in place).

    Args:
        optimizer: the task's (unwrapped) optimizer, tracking updates.
        model: the model it trained (names the parameters).
        ever_updated: per parameter name, the elements updated by the earlier tasks (their union).
        first: the first task (or a fresh model): no overlap to tell.

    Returns:
        ``{"mean_update_fraction", "ever_updated_fraction", "overlap_with_earlier"}``; the overlap is the share
        of this task's updated elements that earlier tasks updated too (`None` for the first task or no update).
    """
    stats = optimizer.update_tracking()
    names = {id(p): name for name, p in model.named_parameters()}
    updated = overlap = 0
    for param, mask in stats["masks"].items():
        name = names.get(id(param), str(id(param)))
        mask = mask.detach().to("cpu")
        earlier = ever_updated.get(name)
        updated += int(mask.sum())
        if earlier is not None:
            overlap += int((mask & earlier).sum())
            ever_updated[name] = earlier | mask
        else:
            ever_updated[name] = mask.clone()
    return {
        "mean_update_fraction": stats["mean_update_fraction"],
        "ever_updated_fraction": stats["ever_updated_fraction"],
        "overlap_with_earlier": None if first or updated == 0 else overlap / updated,
    }
