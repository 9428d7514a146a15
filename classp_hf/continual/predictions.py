"""``predictions.json``: a run's final per-example test predictions, the input of ``compare``'s paired bootstrap.

Beside ``results.json`` a run keeps, for every task, the predictions that make its final accuracy: the model after
the last task (``sequential``), after the joint stage (``joint``), or the model trained on that task alone
(``single_task``). Each task's entry holds the test examples' row numbers in the task's test file
(``example_index``), their labels and the predicted labels (argmax over every shared label, as ``accuracy_matrix``),
and the stage whose model predicted them::

    {"format_version": 1, "queue_mode": "sequential", "seed": 0, "split": "test",
     "tasks": [{"name": "imdb", "stage": 1, "example_index": [...], "labels": [...], "predictions": [...]}, ...]}

It is rewritten atomically after each stage (entries of the tasks that stage decides replace the old ones), so a
finished run holds the final predictions; ``--overwrite`` removes it with the rest of the run's outputs.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from classp_hf.continual.io import write_json_atomic

__all__ = ["PREDICTIONS_FILENAME", "PREDICTIONS_FORMAT", "final_stage", "record_predictions", "read_predictions"]

PREDICTIONS_FILENAME = "predictions.json"
PREDICTIONS_FORMAT = 1


def final_stage(task_index: int, num_tasks: int, queue_mode: str) -> int:
    """The stage whose predictions on task ``task_index`` make its final accuracy.

    Args:
        task_index: the task's position in the queue.
        num_tasks: the queue's length.
        queue_mode: ``sequential``, ``joint`` or ``single_task``.

    Returns:
        The last stage (``sequential``), 0 (``joint``: its one stage) or ``task_index`` (``single_task``).
    """
    if queue_mode == "joint":
        return 0
    return task_index if queue_mode == "single_task" else num_tasks - 1


def record_predictions(
    output_dir: str | Path,
    *,
    stage: int,
    task_names: Sequence[str],
    columns: Sequence[int],
    example_index: Sequence[Sequence[int]],
    labels: Sequence[Sequence[int]],
    predictions: Sequence[Sequence[int]],
    queue_mode: str,
    seed: int,
) -> Path:
    """Records the predictions of stage ``stage`` on the tasks ``columns`` (other tasks' entries are kept).

    Args:
        output_dir: the run's folder.
        stage: the training stage just evaluated.
        task_names: every task's name, in queue order.
        columns: the tasks whose entries this stage writes (every task, or in ``single_task`` runs its own).
        example_index, labels, predictions: per task of the queue (indexed like ``task_names``): the test
            examples' rows in the task's test file, their labels and the predicted labels.
        queue_mode, seed: the run's.

    Returns:
        The path written.
    """
    path = Path(output_dir) / PREDICTIONS_FILENAME
    entries: dict[str, dict[str, Any]] = {}
    existing = read_predictions(output_dir)
    if existing is not None and existing.get("queue_mode") == queue_mode and existing.get("seed") == seed:
        entries = {entry["name"]: entry for entry in existing["tasks"] if entry.get("name") in task_names}
    for j in columns:
        entries[task_names[j]] = {
            "name": task_names[j],
            "stage": int(stage),
            "example_index": [int(v) for v in example_index[j]],
            "labels": [int(v) for v in np.asarray(labels[j]).tolist()],
            "predictions": [int(v) for v in np.asarray(predictions[j]).tolist()],
        }
    data = {
        "format_version": PREDICTIONS_FORMAT,
        "queue_mode": queue_mode,
        "seed": int(seed),
        "split": "test",
        "tasks": [entries[name] for name in task_names if name in entries],
    }
    return write_json_atomic(path, data)


def read_predictions(output_dir: str | Path) -> dict[str, Any] | None:
    """A run's ``predictions.json``, or `None` when it is absent, unreadable or of another format.

    Every entry is checked to hold ``example_index``, ``labels`` and ``predictions`` lists of one length.
    """
    path = Path(output_dir) / PREDICTIONS_FILENAME
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("format_version") != PREDICTIONS_FORMAT:
        return None
    tasks = data.get("tasks")
    if not isinstance(tasks, list):
        return None
    for entry in tasks:
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            return None
        lists = [entry.get(key) for key in ("example_index", "labels", "predictions")]
        if not all(isinstance(v, list) for v in lists) or len({len(v) for v in lists}) != 1:
            return None
    return data
