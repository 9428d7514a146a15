"""Evaluation metrics for continual fine-tuning.

Two parts:

- local `evaluate` modules (`accuracy`, `macro_f1`) shipped inside this package and loaded by path with
  [`load_metric`], so no Hugging Face Hub access is needed;
- pure functions over the continual-learning accuracy matrix in [`classp_hf.metrics.continual`].
"""

from __future__ import annotations

import pathlib
from typing import TYPE_CHECKING, Any

from .continual import (
    average_accuracy,
    backward_transfer,
    continual_metrics,
    forgetting,
    forward_transfer,
    majority_class_accuracy,
)

if TYPE_CHECKING:
    import evaluate

_METRICS_ROOT = pathlib.Path(__file__).resolve().parent

KNOWN_METRICS: tuple[str, ...] = ("accuracy", "macro_f1")
"""Names accepted by [`load_metric`] and [`metric_dir`]."""


def metric_dir(name: str) -> pathlib.Path:
    """Directory of one of the local `evaluate` modules shipped with `classp_hf`.

    Args:
        name (`str`):
            Metric name, one of [`KNOWN_METRICS`].

    Returns:
        `pathlib.Path`: absolute path of the directory holding `<name>/<name>.py`, suitable for `evaluate.load`.

    Raises:
        ValueError: if `name` is not a known metric.
    """
    if name not in KNOWN_METRICS:
        raise ValueError(f"Unknown metric {name!r}; known metrics: {', '.join(KNOWN_METRICS)}")
    return _METRICS_ROOT / name


def load_metric(name: str, **load_kwargs: Any) -> evaluate.EvaluationModule:
    """Load one of the local `evaluate` modules by path (works offline, never contacts the Hub).

    Args:
        name (`str`):
            Metric name, one of [`KNOWN_METRICS`] (`"accuracy"`, `"macro_f1"`).
        load_kwargs:
            Extra keyword arguments for `evaluate.load` (e.g. `experiment_id`, `num_process`, `process_id`).
            `keep_in_memory` defaults to `True` for single-process use, so no temporary Arrow files or lock files
            are written under `~/.cache/huggingface/metrics`.

    Returns:
        `evaluate.EvaluationModule`: the metric; call `.compute(predictions=..., references=...)`.

    Raises:
        ValueError: if `name` is not a known metric.
    """
    path = metric_dir(name)
    import evaluate  # deferred: importing evaluate (and datasets) takes several seconds

    if load_kwargs.get("num_process", 1) == 1:
        load_kwargs.setdefault("keep_in_memory", True)
    return evaluate.load(str(path), **load_kwargs)


__all__ = [
    "KNOWN_METRICS",
    "average_accuracy",
    "backward_transfer",
    "continual_metrics",
    "forgetting",
    "forward_transfer",
    "load_metric",
    "majority_class_accuracy",
    "metric_dir",
]
