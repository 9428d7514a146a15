"""A ``transformers.Trainer`` that builds its optimizer through the classp_hf registry."""

from __future__ import annotations

from typing import Any

import torch
import transformers
from torch import nn

from classp_hf.methods.base import ContinualMethod
from classp_hf.optim.factory import get_optimizer_info
from classp_hf.training_args import is_transformers_optimizer, optimizer_name, validate_optim_args

__all__ = ["Trainer", "optimizer_diagnostics"]


def _unwrap_optimizer(optimizer: Any) -> Any:
    """Returns the torch optimizer inside accelerate's ``AcceleratedOptimizer`` (or itself)."""
    while hasattr(optimizer, "optimizer") and not hasattr(optimizer, "diagnostics"):
        optimizer = optimizer.optimizer
    return optimizer


def optimizer_diagnostics(optimizer: Any) -> dict[str, float]:
    """Whole-model diagnostics of an optimizer that has ``diagnostics()`` (CLASSP), else ``{}``.

    Args:
        optimizer: a torch optimizer, possibly wrapped by accelerate.

    Returns:
        ``update_fraction`` (elements updated at the last step over all elements),
        ``grad_sum_mean``, ``grad_sum_max`` and ``grad_sum_nonzero_fraction``, weighted by the
        number of elements of each param group.
    """
    optimizer = _unwrap_optimizer(optimizer)
    if not hasattr(optimizer, "diagnostics"):
        return {}
    groups = optimizer.diagnostics()
    numel = sum(group["numel"] for group in groups)
    if numel == 0:
        return {}
    summary = {
        key: sum(group[key] * group["numel"] for group in groups) / numel
        for key in ("update_fraction", "grad_sum_mean", "grad_sum_nonzero_fraction")
    }
    summary["grad_sum_max"] = max(group["grad_sum_max"] for group in groups)
    return summary


def _mean_loss_classifier(model: nn.Module | None) -> bool:
    """Whether ``model`` (possibly a PeftModel) is a ``*ForSequenceClassification`` model."""
    if model is None:
        return False
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return type(base).__name__.endswith("ForSequenceClassification")


class Trainer(transformers.Trainer):
    """``transformers.Trainer`` whose ``optim`` may be any classp_hf registry name.

    With :class:`classp_hf.TrainingArguments`, ``optim="classp"`` builds
    :class:`classp_hf.optim.CLASSP` over the Trainer's usual decay / no-decay groups, with
    ``learning_rate`` as its ``lr`` and ``optim_args`` as its other options. Names transformers
    knows keep transformers' meaning. Checkpoints hold CLASSP's state, so
    ``train(resume_from_checkpoint=...)`` continues as if never stopped. To pass an optimizer class
    directly, ``Trainer(optimizer_cls_and_kwargs=(CLASSP, {...}))`` works as in transformers.

    Args:
        continual_method (`ContinualMethod`, *optional*): adds its ``penalty(model)`` to the
            training loss (EWC and similar methods plug in here).
        *args, **kwargs: as for ``transformers.Trainer``.

    Optimizer diagnostics (for CLASSP the fraction of weights updated at the last step and
    statistics of S) are added to every training log under ``optim/``, so ``report_to`` shows
    them; they are read from the device only when a log is written.
    """

    def __init__(self, *args: Any, continual_method: ContinualMethod | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.continual_method = continual_method
        if _mean_loss_classifier(self.model):
            # Sequence classifiers accept **kwargs but return a mean loss that ignores
            # num_items_in_batch; transformers would then multiply it by the number of processes
            # (huggingface/transformers#37474), doubling gradients and logged loss under DDP.
            self.model_accepts_loss_kwargs = False

    @staticmethod
    def get_optimizer_cls_and_kwargs(
        args: transformers.TrainingArguments, model: nn.Module | None = None
    ) -> tuple[Any, dict[str, Any]]:
        """Returns the optimizer class and keyword arguments for ``args.optim``.

        Args:
            args (`TrainingArguments`): the training arguments.
            model (`nn.Module`, *optional*): the model (some transformers optimizers need it).

        Returns:
            ``(optimizer_class, kwargs)``; the Trainer adds the parameter groups.
        """
        name = optimizer_name(args.optim)
        validate_optim_args(name, args.optim_args)
        if is_transformers_optimizer(name):
            return transformers.Trainer.get_optimizer_cls_and_kwargs(args, model)
        info = get_optimizer_info(name)
        kwargs: dict[str, Any] = dict(info.defaults)
        kwargs["lr"] = args.learning_rate
        if info.has_betas:
            kwargs["betas"] = (args.adam_beta1, args.adam_beta2)
        if info.has_eps:
            kwargs["eps"] = args.adam_epsilon
        kwargs.update(validate_optim_args(name, args.optim_args))
        return info.resolve_class(), kwargs

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, Any]:
        """The model's loss plus the continual method's penalty, if any (see ``transformers.Trainer``)."""
        result = super().compute_loss(
            model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch
        )
        if self.continual_method is None or not model.training:
            return result
        penalty = self.continual_method.penalty(model)
        if penalty is None:
            return result
        if return_outputs:
            loss, outputs = result
            return loss + penalty, outputs
        return result + penalty

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Adds the optimizer's diagnostics to training logs, then logs as ``transformers.Trainer``."""
        if "loss" in logs and self.optimizer is not None:
            for key, value in optimizer_diagnostics(self.optimizer).items():
                logs[f"optim/{key}"] = value
        super().log(logs, start_time)
