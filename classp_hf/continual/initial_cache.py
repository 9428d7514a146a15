"""The untrained model's scores, kept in a comparison's cache so its runs evaluate that model once per seed.

Every run of a comparison starts from the same pretrained model with a head initialised from its seed, on the same
tokenized tasks; only the optimizer and the method differ, and neither touches the model before the first task. The
scores of the untrained model are therefore the same for all runs that share the key of :func:`initial_scores_key`:
the model folder's files (path, size, modification time), the labels, the seed, the tokenized tasks' cache keys
(:mod:`.data_cache`: data, sample sizes, ``max_length``, tokenizer), the evaluation batch size, the launch
(backend, precision), ``model_dtype``, the ``peft`` section and the versions of torch, transformers and classp_hf.
An entry is ``cache_dir/initial/<key>.json``, written atomically and never changed.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from classp_hf.continual.io import write_json_atomic

__all__ = ["INITIAL_FOLDER", "initial_scores_key", "read_initial_scores", "write_initial_scores"]

INITIAL_FOLDER = "initial"
_FIELDS = ("accuracy", "macro_f1", "validation_accuracy", "task_label_accuracy")


def _model_stamp(model_path: str) -> list[Any]:
    folder = Path(model_path)
    if not folder.is_dir():
        return [model_path]
    return sorted(
        [item.name, item.stat().st_size, item.stat().st_mtime_ns]
        for item in folder.iterdir()
        if item.is_file() and not item.name.startswith(".")
    )


def initial_scores_key(
    model_path: str,
    config: Any,
    task_keys: list[str],
    eval_batch_size: int,
    backend: dict[str, Any],
    versions: dict[str, Any],
) -> str:
    """The cache key of the untrained model's scores (hex, 20 characters).

    Args:
        model_path: the resolved model folder.
        config: the run's :class:`~classp_hf.continual.config.RunConfig` (labels, seed, ``model_dtype``, ``peft``,
            ``max_length``, ``validation_fraction``).
        task_keys: every task's :func:`~classp_hf.continual.data_cache.task_cache_key`, in queue order.
        eval_batch_size: ``per_device_eval_batch_size``.
        backend: the launch as results.json records it.
        versions: torch, transformers and classp_hf versions.
    """
    payload = {
        "model": str(Path(model_path).resolve()) if os.path.isdir(model_path) else model_path,
        "files": _model_stamp(model_path),
        "labels": list(config.labels),
        "seed": config.seed,
        "max_length": config.max_length,
        "validation_fraction": config.validation_fraction,
        "model_dtype": config.model_dtype,
        "peft": config.peft,
        "queue_mode": getattr(config, "queue_mode", "sequential"),
        "tasks": list(task_keys),
        "eval_batch_size": eval_batch_size,
        "backend": backend,
        "versions": {key: versions.get(key) for key in ("torch", "transformers", "classp_hf")},
    }
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:20]


def read_initial_scores(cache_dir: Path, key: str) -> dict[str, Any] | None:
    """The cached scores (``accuracy``, ``macro_f1``, ``validation_accuracy``, ``task_label_accuracy``), or `None`."""
    path = Path(cache_dir) / INITIAL_FOLDER / f"{key}.json"
    try:
        scores = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(scores, dict) or set(scores) != set(_FIELDS):
        return None
    return scores


def write_initial_scores(cache_dir: Path, key: str, scores: dict[str, Any]) -> None:
    """Stores the untrained model's scores under ``key`` (atomically; an existing entry is kept)."""
    path = Path(cache_dir) / INITIAL_FOLDER / f"{key}.json"
    if path.is_file():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        write_json_atomic(path, {field: scores[field] for field in _FIELDS})
    except OSError:  # no room: the run goes on, the next one evaluates again
        pass
