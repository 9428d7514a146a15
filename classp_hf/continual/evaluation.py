"""Evaluating a model on every task of the queue: accuracy and macro-F1 with the local evaluate metrics."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from classp_hf.continual.tasks import TaskData
from classp_hf.metrics import load_metric

__all__ = ["TaskScores", "evaluate_tasks", "evaluate_own_adapters", "length_order", "task_label_predictions"]


@dataclass
class TaskScores:
    """A model's scores on every task of the queue, one value per task, as fractions.

    Args:
        accuracy: accuracy with the argmax over all shared labels (class-incremental: the task is not known).
        macro_f1: macro-F1 with the same predictions.
        task_label_accuracy: accuracy with the argmax over each task's own labels, the labels of its training
            data (task-incremental: the task is known at test time). It differs from ``accuracy`` when a task
            uses fewer labels than the head has, e.g. imdb (negative, positive) under a 3-way head.
        predictions: per task, the predicted label of every example (argmax over all shared labels).
        references: per task, every example's label.
    """

    accuracy: list[float]
    macro_f1: list[float]
    task_label_accuracy: list[float]
    predictions: list[np.ndarray] = field(default_factory=list)
    references: list[np.ndarray] = field(default_factory=list)


def length_order(dataset: Any) -> np.ndarray:
    """The indices of ``dataset``'s examples, longest ``input_ids`` first (stable: equal lengths keep their order).

    Predicting in this order puts examples of similar length in one batch, so the collator pads each batch to
    little more than its examples' own length (a random order pads most batches to the longest example of the
    split); :func:`_logits` puts the predictions back in the dataset's order.
    """
    lengths = np.fromiter((len(ids) for ids in dataset["input_ids"]), dtype=np.int64, count=len(dataset))
    return np.argsort(-lengths, kind="stable")


def _no_autograd(trainer: Any) -> Any:
    """``torch.inference_mode`` for a model trained whole in each process; ``torch.no_grad`` (what the Trainer uses
    anyway) under FSDP and DeepSpeed, whose gathered parameters must stay usable by the training that follows."""
    sharded = getattr(trainer, "is_fsdp_enabled", False) or getattr(trainer, "is_deepspeed_enabled", False)
    return torch.no_grad() if sharded else torch.inference_mode()


@contextlib.contextmanager
def _random_state_kept() -> Iterator[None]:
    """Restores torch's random state (CPU and the current CUDA device) after the block.

    Evaluating draws from it (each DataLoader iterator takes a base seed from the global generator), so without
    this a run that scores the untrained model itself and one that reads those scores from a comparison's cache
    would train with different dropout masks and batch orders from the same seed.
    """
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() and torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):
        yield


def _logits(trainer: Any, dataset: Any, prefix: str, sort_by_length: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """The logits and labels of every example of ``dataset``, in its order.

    The forward passes run under ``torch.inference_mode`` (``no_grad`` on sharded backends) and, with
    ``sort_by_length``, in :func:`length_order` (attention masks keep each example's logits those of its own
    tokens; the predictions are put back in the dataset's order).
    """
    order = length_order(dataset) if sort_by_length and "input_ids" in dataset.column_names else None
    if order is not None and np.array_equal(order, np.arange(len(order))):
        order = None
    with _random_state_kept(), _no_autograd(trainer):
        output = trainer.predict(dataset if order is None else dataset.select(order), metric_key_prefix=prefix)
    logits = output.predictions[0] if isinstance(output.predictions, tuple) else output.predictions
    logits, labels = np.asarray(logits), np.asarray(output.label_ids)
    if order is None:
        return logits, labels
    restored = np.empty_like(order)
    restored[order] = np.arange(len(order))
    return logits[restored], labels[restored]


def task_label_predictions(logits: np.ndarray, label_ids: Sequence[int]) -> np.ndarray:
    """The argmax over the given labels only (the others' logits count as minus infinity).

    Args:
        logits: ``(examples, num_labels)``.
        label_ids: the labels a prediction may take (a task's own labels); none given means all of them.

    Returns:
        The predicted label index of every example.
    """
    logits = np.asarray(logits, dtype=np.float64)
    if len(label_ids) == 0:
        return np.argmax(logits, axis=-1)
    allowed = np.zeros(logits.shape[-1], dtype=bool)
    allowed[list(label_ids)] = True
    return np.argmax(np.where(allowed, logits, -np.inf), axis=-1)


def evaluate_tasks(trainer: Any, tasks: Sequence[TaskData], split: str = "test") -> TaskScores:
    """Scores of ``trainer.model`` on every task's ``split``: argmax over all shared labels, and over the task's own.

    Args:
        trainer: a ``transformers.Trainer`` (its ``predict`` gathers predictions across processes).
        tasks: the queue's task data.
        split: ``test`` or ``validation``.

    Returns:
        The :class:`TaskScores`; both accuracies come from the same forward passes.
    """
    accuracy_metric, f1_metric = load_metric("accuracy"), load_metric("macro_f1")
    scores = TaskScores([], [], [])
    for data in tasks:
        logits, references = _logits(trainer, getattr(data, split), f"{split}_{data.name}")
        predictions = np.argmax(logits, axis=-1)
        scores.predictions.append(predictions)
        scores.references.append(np.asarray(references))
        scores.accuracy.append(_accuracy(accuracy_metric, predictions, references))
        scores.macro_f1.append(float(f1_metric.compute(predictions=predictions, references=references)["macro_f1"]))
        own = task_label_predictions(logits, data.label_ids)
        scores.task_label_accuracy.append(_accuracy(accuracy_metric, own, references))
    return scores


def _accuracy(metric: Any, predictions: np.ndarray, references: np.ndarray) -> float:
    return float(metric.compute(predictions=predictions, references=references)["accuracy"])


def evaluate_own_adapters(
    trainer: Any, model: Any, tasks: Sequence[TaskData], index: int, latest: Sequence[float], adapter_name: Any
) -> list[float]:
    """Per-task LoRA adapters: each task seen so far evaluated with its own adapter.

    Args:
        trainer: the task's trainer.
        model: the ``PeftModel``.
        tasks: the queue's task data.
        index: the task just trained (its own adapter is the active one; its accuracy is ``latest[index]``).
        latest: the accuracies with the active adapter (columns after ``index`` are kept as they are).
        adapter_name: maps a task name to its adapter's name.

    Returns:
        The row of ``accuracy_matrix_own_adapter``; the active adapter is set back afterwards.
    """
    accuracy_metric = load_metric("accuracy")
    row = list(latest)
    try:
        for j in range(index):
            model.set_adapter(adapter_name(tasks[j].name))
            logits, references = _logits(trainer, tasks[j].test, f"own_{tasks[j].name}")
            row[j] = _accuracy(accuracy_metric, np.argmax(logits, axis=-1), references)
    finally:
        model.set_adapter(adapter_name(tasks[index].name))
    return row
