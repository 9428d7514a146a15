"""Evaluating a model on every task of the queue: accuracy and macro-F1 with the local evaluate metrics."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from classp_hf.continual.tasks import TaskData
from classp_hf.metrics import load_metric

__all__ = ["evaluate_tasks", "evaluate_own_adapters"]


def _predict(trainer: Any, dataset: Any, prefix: str) -> tuple[np.ndarray, np.ndarray]:
    output = trainer.predict(dataset, metric_key_prefix=prefix)
    return np.argmax(output.predictions, axis=-1), output.label_ids


def evaluate_tasks(trainer: Any, tasks: Sequence[TaskData], split: str = "test") -> tuple[list[float], list[float]]:
    """Accuracy and macro-F1 of ``trainer.model`` on every task's ``split`` (argmax over all shared labels).

    Args:
        trainer: a ``transformers.Trainer`` (its ``predict`` gathers predictions across processes).
        tasks: the queue's task data.
        split: ``test`` or ``validation``.

    Returns:
        ``(accuracies, macro_f1s)``, one value per task, as fractions.
    """
    accuracy_metric, f1_metric = load_metric("accuracy"), load_metric("macro_f1")
    accuracies, f1s = [], []
    for data in tasks:
        predictions, references = _predict(trainer, getattr(data, split), f"{split}_{data.name}")
        accuracies.append(float(accuracy_metric.compute(predictions=predictions, references=references)["accuracy"]))
        f1s.append(float(f1_metric.compute(predictions=predictions, references=references)["macro_f1"]))
    return accuracies, f1s


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
            predictions, references = _predict(trainer, tasks[j].test, f"own_{tasks[j].name}")
            row[j] = float(accuracy_metric.compute(predictions=predictions, references=references)["accuracy"])
    finally:
        model.set_adapter(adapter_name(tasks[index].name))
    return row
