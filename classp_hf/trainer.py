"""A ``transformers.Trainer`` that builds its optimizer through the classp_hf registry."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
import transformers
from torch import nn
from torch.utils.data import DataLoader

from classp_hf.methods.base import ContinualMethod, label_column, output_logits
from classp_hf.optim.factory import apply_optim_groups, get_optimizer_info
from classp_hf.training_args import is_transformers_optimizer, optimizer_name, validate_optim_args

__all__ = [
    "Trainer",
    "optimizer_diagnostics",
    "optimizer_hyperparameters",
    "set_learning_rate",
    "masked_label_loss",
    "unwrap_optimizer",
]


def unwrap_optimizer(optimizer: Any) -> Any:
    """The torch optimizer inside accelerate's ``AcceleratedOptimizer`` (the one way classp_hf reaches it).

    Args:
        optimizer: ``trainer.optimizer`` (wrapped once the Trainer prepared it) or a plain optimizer.

    Returns:
        The innermost optimizer: the first with ``diagnostics()`` (CLASSP), or the one that wraps nothing.
    """
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
    optimizer = unwrap_optimizer(optimizer)
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


def _plain(value: Any) -> Any:
    """A JSON-able copy of an optimizer option (tuples as lists, 0-dim tensors as numbers, dtypes as text)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (tuple, list)):
        return [_plain(item) for item in value]
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    if isinstance(value, torch.dtype):
        return str(value).removeprefix("torch.")
    return repr(value)


# Per-group values a schedule or the runner changes as it trains (not the optimizer's settings).
_SCHEDULED_KEYS = frozenset({"params", "lr", "initial_lr"})


def optimizer_hyperparameters(optimizer: Any) -> dict[str, Any]:
    """The hyperparameters an optimizer was built with, read back from it (not from the config's text).

    Args:
        optimizer: a torch optimizer, possibly wrapped by accelerate.

    Returns:
        ``class`` (its class name), ``defaults`` (its ``defaults``, JSON-able) and ``groups``: for each param
        group the options that differ from ``defaults`` (the no-decay group's ``weight_decay``, an
        ``optim_groups`` entry's options), learning rates left out (the schedule moves them).
    """
    optimizer = unwrap_optimizer(optimizer)
    defaults = {key: _plain(value) for key, value in optimizer.defaults.items() if key not in ("params",)}
    groups = []
    for group in optimizer.param_groups:
        groups.append(
            {
                key: _plain(value)
                for key, value in group.items()
                if key not in _SCHEDULED_KEYS and (key not in defaults or _plain(value) != defaults[key])
            }
        )
    return {"class": type(optimizer).__name__, "defaults": defaults, "groups": groups}


def set_learning_rate(optimizer: Any, learning_rate: float) -> None:
    """Sets every param group's ``lr`` and ``initial_lr`` (what a new schedule starts from).

    A group's ``lr_scale`` (from ``optim_groups``) is kept: its learning rate is
    ``learning_rate * lr_scale``.
    """
    for group in unwrap_optimizer(optimizer).param_groups:
        group["lr"] = group["initial_lr"] = learning_rate * group.get("lr_scale", 1.0)


def masked_label_loss(logits: torch.Tensor, labels: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """Cross-entropy with the logits of labels absent from ``present`` (and from ``labels``) masked out.

    Args:
        logits (`torch.Tensor`): ``[batch, num_labels]``.
        labels (`torch.Tensor`): ``[batch]`` class indices (-100: ignored).
        present (`torch.Tensor`): label indices that keep their logits.

    Returns:
        The mean cross-entropy over the kept labels' softmax.
    """
    allowed = torch.zeros(logits.shape[-1], dtype=torch.bool, device=logits.device)
    allowed[present.to(logits.device)] = True
    allowed[labels[labels >= 0]] = True
    masked = logits.masked_fill(~allowed, torch.finfo(logits.dtype).min)
    return F.cross_entropy(masked.view(-1, logits.shape[-1]).float(), labels.view(-1))


def present_labels(dataset: Any) -> torch.Tensor:
    """The distinct labels of a training dataset's ``labels`` (or ``label``) column.

    Raises:
        ValueError: the dataset has no label column or its labels are not class indices.
    """
    column_names = getattr(dataset, "column_names", None)
    if column_names is None:
        raise ValueError("mask_absent_labels: needs a datasets.Dataset training set with a labels column")
    values = sorted(set(dataset[label_column(column_names)]))
    if not all(isinstance(value, int) and not isinstance(value, bool) for value in values):
        raise ValueError("mask_absent_labels: the training labels must be class indices (integers)")
    return torch.tensor(values, dtype=torch.long)


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

    With ``optim_groups`` in the arguments, the new optimizer's groups are split by parameter-name
    pattern (see :func:`classp_hf.optim.factory.apply_optim_groups`); with ``mask_absent_labels``
    the training loss leaves out the logits of labels absent from the training data.

    Args:
        continual_method (`ContinualMethod`, *optional*): a continual method: its ``collate``
            wraps the training collator, its ``extra_columns`` are kept in the training data and
            removed from the model's inputs, and the terms of its ``penalty`` are added to the
            training loss (see :mod:`classp_hf.methods`).
        *args, **kwargs: as for ``transformers.Trainer``.

    Optimizer diagnostics (for CLASSP the fraction of weights updated at the last step and
    statistics of S) are added to every training log under ``optim/``, and the continual method's
    terms under ``method/`` (their mean over the logging window, like ``loss``), so ``report_to``
    shows them; they are read from the device only when a log is written.
    """

    def __init__(self, *args: Any, continual_method: ContinualMethod | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.continual_method = continual_method
        self._method_term_sums: dict[str, torch.Tensor] = {}
        self._method_term_calls = 0
        self._present_labels: torch.Tensor | None = None
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

    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        """Builds the optimizer as ``transformers.Trainer`` does, then applies ``args.optim_groups``.

        Raises:
            ValueError: an ``optim_groups`` entry with an unknown option or a pattern that matches
                no trainable parameter.
        """
        building = self.optimizer is None
        optimizer = super().create_optimizer(model)
        optim_groups = getattr(self.args, "optim_groups", None)
        if building and optim_groups:
            opt_model = self.model if model is None else model
            decay_names = self.get_decay_parameter_names(opt_model)
            apply_optim_groups(unwrap_optimizer(optimizer), opt_model.named_parameters(), optim_groups, decay_names)
        return optimizer

    def _set_signature_columns_if_needed(self) -> None:
        """Keeps the continual method's extra columns in the training data."""
        super()._set_signature_columns_if_needed()
        if self.continual_method is not None:
            extra = [c for c in self.continual_method.extra_columns() if c not in self._signature_columns]
            self._signature_columns += extra

    def get_train_dataloader(self) -> DataLoader:
        """The training dataloader, its collator wrapped by the continual method's ``collate``."""
        if getattr(self.args, "mask_absent_labels", False):
            self._present_labels = present_labels(self.train_dataset)
        if self.continual_method is None:
            return super().get_train_dataloader()
        plain = self.data_collator
        self.data_collator = self.continual_method.collate(plain)
        try:
            return super().get_train_dataloader()
        finally:
            self.data_collator = plain

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, Any]:
        """The model's loss plus the continual method's terms while training (see ``transformers.Trainer``).

        The method's extra columns are removed from the inputs before the forward; with
        ``mask_absent_labels`` the training loss is :func:`masked_label_loss`.
        """
        method = self.continual_method
        extra = {}
        if method is not None:
            extra = {column: inputs.pop(column) for column in method.extra_columns() if column in inputs}
        if model.training and self._present_labels is not None and "labels" in inputs:
            labels = inputs.pop("labels")
            outputs = model(**inputs)
            inputs["labels"] = labels
            loss = masked_label_loss(output_logits(outputs), labels, self._present_labels)
        else:
            loss, outputs = super().compute_loss(
                model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch
            )
        if method is not None and model.training:
            terms = method.penalty(self.accelerator.unwrap_model(model), {**inputs, **extra}, outputs)
            for term, value in (terms or {}).items():
                loss = loss + value
                self._record_method_term(term, value)
            self._method_term_calls += 1
        return (loss, outputs) if return_outputs else loss

    def prediction_step(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        prediction_loss_only: bool,
        ignore_keys: list[str] | None = None,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        """As ``transformers.Trainer``, without the continual method's extra columns in the inputs."""
        if self.continual_method is not None:
            extra = set(self.continual_method.extra_columns())
            inputs = {key: value for key, value in inputs.items() if key not in extra}
        return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys=ignore_keys)

    def _record_method_term(self, term: str, value: torch.Tensor) -> None:
        value = value.detach().float()
        total = self._method_term_sums.get(term)
        self._method_term_sums[term] = value if total is None else total + value.to(total.device)

    def _method_term_means(self) -> dict[str, float]:
        """Mean of each method term since the last log (over processes too); resets the sums."""
        if not self._method_term_sums or self._method_term_calls == 0:
            return {}
        terms = sorted(self._method_term_sums)
        device = self._method_term_sums[terms[0]].device
        stacked = torch.stack([self._method_term_sums[term].to(device) for term in terms]) / self._method_term_calls
        means = self.accelerator.reduce(stacked, reduction="mean").tolist()
        self._method_term_sums, self._method_term_calls = {}, 0
        return dict(zip(terms, means))

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Adds the optimizer's diagnostics and the method's terms to training logs, then logs as transformers."""
        if "loss" in logs:
            if self.optimizer is not None:
                for key, value in optimizer_diagnostics(self.optimizer).items():
                    logs[f"optim/{key}"] = value
            for term, value in self._method_term_means().items():
                logs[f"method/{term}"] = value
        super().log(logs, start_time)
