"""A :class:`RunConfig` from parsed YAML (:func:`config_from_dict`: every key checked, the tasks resolved) or from a
file (:func:`load_config`). Each error is one line naming the key and comes before any model, data or output
folder is touched.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from classp_hf.continual.config.load import expand_env, read_yaml_file
from classp_hf.continual.config.overrides import apply_overrides
from classp_hf.continual.config.schema import _RUN_KEYS, _TASK_KEYS, MAX_SEED, QueueMode, RunConfig, TaskConfig
from classp_hf.continual.config.sections import (
    _check_method,
    _check_optimizer,
    _check_optimizer_values,
    _check_training,
    _check_training_arguments,
    parse_peft_section,
)
from classp_hf.continual.config.validate import _field_types, _positive_int, check_keys, check_value, require
from classp_hf.continual.errors import ConfigError
from classp_hf.continual.launch import detect_backend

# -- tasks -------------------------------------------------------------------------------------


def _resolve_data_files(data_files: Any, where: str, base_dir: Path | None) -> dict[str, str]:
    require(isinstance(data_files, dict), f"{where}.data_files: expected {{train: path, test: path}}")
    for split in ("train", "test"):
        require(isinstance(data_files.get(split), str), f"{where}.data_files.{split}: required, a path")
    check_keys(data_files, {"train", "test"}, f"{where}.data_files")
    resolved = {}
    for split, path in data_files.items():
        path = Path(path).expanduser()
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
        resolved[split] = str(path)
    return resolved


def _task_from_dict(raw: Any, index: int, labels: list[str], base_dir: Path | None) -> TaskConfig:
    where = f"tasks[{index}]"
    require(isinstance(raw, dict), f"{where}: expected a mapping")
    check_keys(raw, _TASK_KEYS, where)
    require(isinstance(raw.get("name"), str) and raw["name"].strip() != "", f"{where}.name: required, a string")
    name = raw["name"]
    require(re.fullmatch(r"[A-Za-z0-9_.-]+", name) is not None, f"{where}.name: use letters, digits, '_', '-', '.'")
    where = f"tasks[{index}] ({name})"
    data_files, dataset = raw.get("data_files"), raw.get("dataset")
    require((data_files is None) != (dataset is None), f"{where}: give exactly one of data_files or dataset")
    if data_files is not None:
        data_files = _resolve_data_files(data_files, where, base_dir)
    else:
        require(isinstance(dataset, str), f"{where}.dataset: expected a dataset name")
    splits = raw.get("splits", {"train": "train", "test": "test"})
    require(
        isinstance(splits, dict)
        and set(splits) == {"train", "test"}
        and all(isinstance(v, str) for v in splits.values()),
        f"{where}.splits: expected {{train: <split>, test: <split>}}",
    )
    label_map = raw.get("label_map")
    if label_map is not None:
        require(isinstance(label_map, dict) and label_map, f"{where}.label_map: expected a non-empty mapping")
        label_map = {str(k): v for k, v in label_map.items()}
        for source, target in label_map.items():
            require(
                target in labels,
                f"{where}.label_map.{source}: {target!r} is not one of the shared labels {labels}",
            )
    for key in ("text_column", "label_column"):
        require(isinstance(raw.get(key, "x"), str), f"{where}.{key}: expected a column name")
    return TaskConfig(
        name=name,
        data_files=data_files,
        dataset=dataset,
        dataset_config=raw.get("dataset_config"),
        splits=dict(splits),
        text_column=raw.get("text_column", "text"),
        label_column=raw.get("label_column", "label"),
        label_map=label_map,
        max_train_samples=_positive_int(raw.get("max_train_samples"), f"{where}.max_train_samples"),
        max_eval_samples=_positive_int(raw.get("max_eval_samples"), f"{where}.max_eval_samples"),
        training=_check_training(raw.get("training"), f"{where}.training", per_task=True),
    )


def _check_queue_mode(queue_mode: str, method: Any, peft_section: Any, tasks: list[TaskConfig]) -> None:
    """The references (``joint``, ``single_task``) train plain fine-tuning: no method, no ``peft``; ``joint`` one
    set of training options for its one stage."""
    if queue_mode == "sequential":
        return
    require(
        method == "none",
        f"config.method: queue_mode {queue_mode} is a reference trained without a continual method (got {method!r}); "
        "use method: none",
    )
    require(
        peft_section is None, f"config.peft: queue_mode {queue_mode} trains the full model; remove the peft section"
    )
    if queue_mode == "joint":
        for index, task in enumerate(tasks):
            require(
                not task.training,
                f"tasks[{index}] ({task.name}).training: queue_mode joint trains every task in one stage; set "
                "training options at the top level",
            )


# -- the whole config --------------------------------------------------------------------------


def config_from_dict(
    raw: Any,
    base_dir: str | os.PathLike | None = None,
    source: str | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> RunConfig:
    """Validates a parsed config (environment variables not yet expanded) and builds a :class:`RunConfig`.

    Args:
        raw: the parsed YAML.
        base_dir: folder that relative data paths are resolved against.
        source: where the config came from (for messages).
        overrides: dotted keys and values applied to ``raw`` first (see :func:`apply_overrides`).

    Returns:
        The validated config.

    Raises:
        ConfigError: naming the first invalid key.
    """
    require(isinstance(raw, dict), "config: expected a mapping at the top level")
    if overrides:
        raw = apply_overrides(raw, overrides)
    raw = expand_env(raw)
    check_keys(raw, _RUN_KEYS, "config")
    for key in ("model", "labels", "tasks"):
        require(key in raw, f"config.{key}: required")
    require(isinstance(raw["model"], str) and raw["model"], "config.model: expected a Hub id, folder or pkg:<module>")
    labels = raw["labels"]
    require(
        isinstance(labels, list) and len(labels) >= 2 and all(isinstance(x, str) for x in labels),
        "config.labels: expected a list of at least two label names",
    )
    require(len(set(labels)) == len(labels), "config.labels: duplicate label names")
    seed = raw.get("seed", 0)
    require(isinstance(seed, int) and not isinstance(seed, bool), "config.seed: expected an integer")
    require(0 <= seed <= MAX_SEED, f"config.seed: expected an integer in [0, 2**32 - 1], got {seed}")
    max_length = _positive_int(raw.get("max_length", 128), "config.max_length", allow_none=False)
    model_dtype = check_value(raw.get("model_dtype"), _field_types(RunConfig)["model_dtype"], "config.model_dtype")
    method, method_args = raw.get("method", "none"), raw.get("method_args") or {}
    diagnostics = raw.get("diagnostics", False)
    require(isinstance(diagnostics, bool), "config.diagnostics: expected true or false")
    keep_last_checkpoint = raw.get("keep_last_checkpoint", True)
    require(isinstance(keep_last_checkpoint, bool), "config.keep_last_checkpoint: expected true or false")
    save_final_model = raw.get("save_final_model", True)
    require(isinstance(save_final_model, bool), "config.save_final_model: expected true or false")
    queue_mode = check_value(raw.get("queue_mode", "sequential"), QueueMode, "config.queue_mode")
    validation_fraction = raw.get("validation_fraction", 0.0)
    require(
        isinstance(validation_fraction, (int, float))
        and not isinstance(validation_fraction, bool)
        and 0 <= validation_fraction < 1,
        "config.validation_fraction: expected a number in [0, 1)",
    )
    peft_section = parse_peft_section(raw.get("peft"))
    method, method_args = _check_method(method, method_args, peft_section)
    training = _check_training(raw.get("training"), "config.training", per_task=False)
    _check_optimizer(training)
    tasks_raw = raw["tasks"]
    require(isinstance(tasks_raw, list) and tasks_raw, "config.tasks: expected a non-empty list")
    base = Path(base_dir) if base_dir is not None else None
    tasks = [_task_from_dict(task, index, labels, base) for index, task in enumerate(tasks_raw)]
    names = [task.name for task in tasks]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    require(not duplicates, f"config.tasks: duplicate task name {duplicates[0]!r}" if duplicates else "")
    _check_queue_mode(queue_mode, method, peft_section, tasks)
    config = RunConfig(
        model=raw["model"],
        labels=list(labels),
        tasks=tasks,
        max_length=max_length,
        seed=seed,
        training=training,
        method=method,
        method_args=method_args,
        diagnostics=diagnostics,
        keep_last_checkpoint=keep_last_checkpoint,
        save_final_model=save_final_model,
        validation_fraction=float(validation_fraction),
        peft=peft_section,
        model_dtype=model_dtype,
        queue_mode=queue_mode,
        source=source,
    )
    backend = detect_backend(training, peft_section)  # the launch first: it decides what the arguments mean
    _check_optimizer_values(_check_training_arguments(config, backend))
    return config


def load_config(path: str | os.PathLike, overrides: Mapping[str, Any] | None = None) -> RunConfig:
    """Reads, overrides, expands and validates a YAML run config.

    Args:
        path: the YAML file.
        overrides: dotted keys and values (see :func:`apply_overrides`; from the command line,
            :func:`parse_override_args`); relative data paths in them resolve against the file's folder.

    Returns:
        The validated :class:`RunConfig`.

    Raises:
        ConfigError: missing file, malformed YAML or an invalid key (named in the message).
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    raw = read_yaml_file(path)
    return config_from_dict(raw, base_dir=path.resolve().parent, source=str(path), overrides=overrides)
