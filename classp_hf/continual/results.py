"""The results of a continual run (``results.json``): its JSON Schema and validation.

The schema lives in ``classp_hf/schemas/results.schema.json`` (JSON Schema draft 2020-12). On top of the schema,
[`validate_results`] refuses NaN and infinite numbers (JSON has no NaN: undefined values are ``null``) and checks that
the parts agree with each other: one matrix row per trained task, one column per task, one ``per_task`` record per
row, and a ``complete`` run has a row for every task.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import jsonschema
from jsonschema.exceptions import best_match

from classp_hf.continual.errors import ResultsVersionError

__all__ = [
    "RESULTS_FILENAME",
    "RESULTS_SCHEMA_PATH",
    "SCHEMA_VERSION",
    "QUEUE_MODES",
    "JOINT_STAGE",
    "stage_names",
    "ResultsVersionError",
    "RunResults",
    "TaskRecord",
    "AccuracyPart",
    "TaskLabelResults",
    "ValidationResults",
    "load_results_schema",
    "validate_results",
]

RESULTS_SCHEMA_PATH: Path = Path(__file__).resolve().parent.parent / "schemas" / "results.schema.json"
"""Path of the JSON Schema of ``results.json``."""

_MAX_MESSAGE = 200

QUEUE_MODES = ("sequential", "joint", "single_task")
"""How a run trains its queue: ``sequential`` (the tasks in order, one model: continual learning), ``joint`` (one
stage on the union of every task's training data: the upper bound) or ``single_task`` (each task alone from the
pretrained model: each task's own ceiling)."""
JOINT_STAGE = "joint"
"""The name of the one training stage of a ``joint`` run."""


def stage_names(tasks: list[str], queue_mode: str = "sequential") -> list[str]:
    """The training stages of a queue: one per task, or the one ``joint`` stage.

    Args:
        tasks: the task names, in queue order.
        queue_mode: one of :data:`QUEUE_MODES`.

    Returns:
        The stage names: ``tasks`` itself, or ``["joint"]`` for a joint run.
    """
    return [JOINT_STAGE] if queue_mode == "joint" else list(tasks)


@lru_cache(maxsize=1)
def _schema_text() -> str:
    return RESULTS_SCHEMA_PATH.read_text(encoding="utf-8")


def load_results_schema() -> dict[str, Any]:
    """Loads the JSON Schema of a continual run's results.

    Returns:
        The schema as a new dict (callers may modify it).
    """
    return json.loads(_schema_text())


@lru_cache(maxsize=1)
def _validator() -> jsonschema.Draft202012Validator:
    schema = load_results_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def _path(parts: Any) -> str:
    """``$.a.b[0][1]`` from a sequence of keys and indices."""
    text = "$"
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else f".{part}"
    return text


def _short(text: str) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= _MAX_MESSAGE else text[: _MAX_MESSAGE - 3] + "..."


def _fail(parts: Any, message: str) -> ValueError:
    return ValueError(_short(f"invalid results at {_path(parts)}: {message}"))


def _non_finite(value: Any, parts: tuple = ()) -> Iterator[tuple[tuple, Any]]:
    """Yields ``(path, value)`` for every NaN or infinite float inside ``value``."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _non_finite(item, (*parts, key))
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            yield from _non_finite(item, (*parts, index))
    elif isinstance(value, float) and not math.isfinite(value):
        yield parts, value


def _check_consistency(results: dict[str, Any]) -> None:
    """Checks that the lengths of the vectors, matrices and records agree with ``tasks``."""
    tasks = results["tasks"]
    num_tasks = len(tasks)
    for key in ("initial_accuracy", "initial_macro_f1", "majority_accuracy"):
        if len(results[key]) != num_tasks:
            raise _fail((key,), f"has {len(results[key])} values, expected one per task ({num_tasks})")
    num_rows = len(results["accuracy_matrix"])
    if num_rows > num_tasks:
        raise _fail(("accuracy_matrix",), f"has {num_rows} rows, more than the {num_tasks} tasks")
    for key in ("accuracy_matrix", "macro_f1_matrix"):
        matrix = results[key]
        if len(matrix) != num_rows:
            raise _fail((key,), f"has {len(matrix)} rows, expected {num_rows} like accuracy_matrix")
        for i, row in enumerate(matrix):
            if len(row) != num_tasks:
                raise _fail((key, i), f"has {len(row)} columns, expected one per task ({num_tasks})")
    stages = stage_names(tasks, results.get("queue_mode", "sequential"))
    if num_rows > len(stages):
        raise _fail(("accuracy_matrix",), f"has {num_rows} rows, more than the {len(stages)} training stage(s)")
    per_task = results["per_task"]
    if len(per_task) != num_rows:
        raise _fail(("per_task",), f"has {len(per_task)} records, expected one per matrix row ({num_rows})")
    for i, record in enumerate(per_task):
        if record["name"] != stages[i]:
            raise _fail(("per_task", i, "name"), f"is {record['name']!r}, expected task {i} {stages[i]!r}")
    for key, part in (("validation", results.get("validation")), ("task_labels", results.get("task_labels"))):
        if part is None:
            continue
        if len(part["initial_accuracy"]) not in (0, num_tasks):
            raise _fail((key, "initial_accuracy"), f"has {len(part['initial_accuracy'])} values, expected {num_tasks}")
        for i, row in enumerate(part["accuracy_matrix"]):
            if len(row) != num_tasks:
                raise _fail((key, "accuracy_matrix", i), f"has {len(row)} columns, expected one per task ({num_tasks})")
    if results["status"] == "complete" and num_rows != len(stages):
        unit = "stages" if stages != tasks else "tasks"
        raise _fail(("status",), f"is 'complete' but only {num_rows} of {len(stages)} {unit} have a matrix row")


def validate_results(results: dict[str, Any]) -> None:
    """Checks a results dict against the schema and for internal consistency.

    Args:
        results: the results of a continual run, as written to ``results.json``.

    Raises:
        ValueError: on the first problem found, with a one-line message naming its JSON path (e.g.
            ``invalid results at $.accuracy_matrix[1][0]: NaN is not allowed (use null)``).
    """
    if not isinstance(results, dict):
        raise _fail((), f"expected an object (dict), got {type(results).__name__}")
    for parts, value in _non_finite(results):
        raise _fail(parts, f"{value} is not allowed (use null)")
    error = best_match(_validator().iter_errors(results))
    if error is not None:
        message = error.message
        if error.validator == "required":
            # The path of a missing key is its parent; name the key itself.
            missing = [key for key in error.validator_value if key not in error.instance]
            if missing:
                raise _fail((*error.absolute_path, missing[0]), "required key is missing")
        raise _fail(tuple(error.absolute_path), message)
    _check_consistency(results)


# ------------------------------------------------------------------------------------------------- the results object

SCHEMA_VERSION = 2
"""Version of ``results.json`` this package writes (1: before ``backend`` and method state bytes)."""

_EMPTY_METRICS: dict[str, float | None] = {"acc": None, "bwt": None, "fwt": None, "forgetting": None}
# Per-row lists that resume cuts back to the checkpointed tasks.
_ROW_KEYS = ("accuracy_matrix", "macro_f1_matrix", "per_task")


@dataclass
class AccuracyPart:
    """A second accuracy matrix a run keeps beside its main one, with its own ACC, BWT, FWT and forgetting.

    Args:
        initial_accuracy: the untrained model's accuracy on each task.
        accuracy_matrix: row ``i``, column ``j``: accuracy on task ``j`` after task ``i``.
        metrics: ACC, BWT, FWT and forgetting of that matrix.
    """

    initial_accuracy: list[float] = field(default_factory=list)
    accuracy_matrix: list[list[float]] = field(default_factory=list)
    metrics: dict[str, float | None] = field(default_factory=lambda: dict(_EMPTY_METRICS))


@dataclass
class ValidationResults(AccuracyPart):
    """Accuracy on the validation splits held out of each task's training data (for choosing settings).

    Args:
        fraction: the share of each task's training examples held out (keyword only).
        initial_accuracy, accuracy_matrix, metrics: as in :class:`AccuracyPart`, on the validation splits.
    """

    fraction: float = field(default=0.0, kw_only=True)


@dataclass
class TaskLabelResults(AccuracyPart):
    """Test accuracy with the argmax over each task's own labels (task-incremental: the task known at test time).

    The same forward passes as the main matrix; only the labels a prediction may take differ (a task's own labels
    are those of its training data). See :class:`~classp_hf.continual.evaluation.TaskScores`.

    Args:
        initial_accuracy, accuracy_matrix, metrics: as in :class:`AccuracyPart`, with task-restricted predictions.
    """


@dataclass
class TaskRecord:
    """One trained stage's ``per_task`` record in ``results.json`` (the runner makes one per task).

    Args:
        name: the stage's name (the task's, or ``joint``).
        train_loss: the mean training loss (`None` when not finite).
        steps: optimizer steps taken.
        seconds: the training's wall time.
        train_examples: examples trained on.
        eval_examples: test examples evaluated over every task.
        learning_rate: the task's learning rate.
        optimizer_diagnostics: the optimizer's own numbers after the task.
        optimizer_diagnostics_scope: ``global``, or ``rank`` when each process sees its shard (FSDP, ZeRO).
        trainable_parameters: parameters that train (counted after the task: per-task adapters add some).
        total_parameters: every parameter of the model after the task.
        optimizer_state_bytes: the size of the optimizer state carried to the next task.
        method_state_bytes: the size of the continual method's state.
        sparsity: with ``training.diagnostics`` and a tracking optimizer, the task's update sparsity
            (:func:`~classp_hf.continual.sparsity.task_sparsity`); left out of the record otherwise.
    """

    name: str
    train_loss: float | None
    steps: int
    seconds: float
    train_examples: int
    eval_examples: int
    learning_rate: float
    optimizer_diagnostics: dict[str, Any]
    optimizer_diagnostics_scope: str
    trainable_parameters: int
    total_parameters: int
    optimizer_state_bytes: int
    method_state_bytes: int
    sparsity: dict[str, float | None] | None = None

    def to_dict(self) -> dict[str, Any]:
        """The record as ``results.json`` holds it (no ``sparsity`` key without sparsity)."""
        record = dataclasses.asdict(self)
        if record["sparsity"] is None:
            del record["sparsity"]
        return record


@dataclass
class RunResults:
    """The results of a continual run, as ``results.json`` holds them (see ``schemas/results.schema.json``).

    Built with :meth:`start`, grown with :meth:`set_initial` and :meth:`add_task`, cut back with :meth:`truncate`
    when a run resumes, checked with :meth:`validate` and written with :meth:`write`. ``to_dict()`` is the JSON
    object; :meth:`from_dict` reads one back, upgrading older versions it can continue.
    """

    model: str
    labels: list[str]
    seed: int
    method: str | list[str]
    optimizer: dict[str, Any]
    tasks: list[str]
    majority_accuracy: list[float]
    versions: dict[str, str | None]
    total_parameters: int
    peft: dict[str, Any] | None = None
    backend: dict[str, Any] = field(default_factory=dict)
    status: str = "running"
    initial_accuracy: list[float] = field(default_factory=list)
    initial_macro_f1: list[float] = field(default_factory=list)
    accuracy_matrix: list[list[float]] = field(default_factory=list)
    macro_f1_matrix: list[list[float]] = field(default_factory=list)
    metrics: dict[str, float | None] = field(default_factory=lambda: dict(_EMPTY_METRICS))
    per_task: list[dict[str, Any]] = field(default_factory=list)
    validation: ValidationResults | None = None
    accuracy_matrix_own_adapter: list[list[float]] | None = None
    task_labels: TaskLabelResults | None = None
    resumed_after_tasks: list[int] = field(default_factory=list)
    timing: dict[str, Any] | None = None
    queue_mode: str = "sequential"
    schema_version: int = SCHEMA_VERSION

    @classmethod
    def start(cls, validation_fraction: float = 0.0, per_task_adapters: bool = False, **fields: Any) -> RunResults:
        """A new run's results: no rows yet, status ``running``, with a :class:`TaskLabelResults` part.

        Args:
            validation_fraction: when > 0, a :class:`ValidationResults` part is kept too.
            per_task_adapters: keep the own-adapter accuracy matrix (per-task LoRA adapters).
            **fields: the dataclass fields (model, labels, seed, method, optimizer, tasks, ...).
        """
        results = cls(**fields)
        results.task_labels = TaskLabelResults()
        if validation_fraction > 0:
            results.validation = ValidationResults(fraction=validation_fraction)
        if per_task_adapters:
            results.accuracy_matrix_own_adapter = []
        return results

    @property
    def trained(self) -> int:
        """The number of training stages (tasks, or the one joint stage) with a matrix row."""
        return len(self.accuracy_matrix)

    @property
    def stages(self) -> list[str]:
        """The training stages (:func:`stage_names`): the tasks, or the one ``joint`` stage."""
        return stage_names(self.tasks, self.queue_mode)

    def set_initial(
        self,
        accuracy: list[float],
        macro_f1: list[float],
        validation_accuracy: list[float] | None = None,
        task_label_accuracy: list[float] | None = None,
    ) -> None:
        """Records the untrained model's scores on every task."""
        self.initial_accuracy, self.initial_macro_f1 = list(accuracy), list(macro_f1)
        if self.validation is not None and validation_accuracy is not None:
            self.validation.initial_accuracy = list(validation_accuracy)
        if self.task_labels is not None and task_label_accuracy is not None:
            self.task_labels.initial_accuracy = list(task_label_accuracy)

    def add_task(
        self,
        accuracy: list[float],
        macro_f1: list[float],
        record: TaskRecord | dict[str, Any],
        *,
        validation_accuracy: list[float] | None = None,
        own_adapter_accuracy: list[float] | None = None,
        task_label_accuracy: list[float] | None = None,
    ) -> None:
        """Adds the row of the task just trained and updates the metrics over the tasks trained so far.

        Args:
            accuracy, macro_f1: scores on every task's test split.
            record: the task's ``per_task`` record (:class:`TaskRecord`, or its dict).
            validation_accuracy: scores on every task's validation split, when kept.
            own_adapter_accuracy: per-task adapters: each seen task with its own adapter.
            task_label_accuracy: scores on every task's test split with the argmax over the task's own labels.
        """
        self.accuracy_matrix.append(list(accuracy))
        self.macro_f1_matrix.append(list(macro_f1))
        record = record.to_dict() if isinstance(record, TaskRecord) else dict(record)
        self.per_task.append(record)
        if self.validation is not None and validation_accuracy is not None:
            self.validation.accuracy_matrix.append(list(validation_accuracy))
        if self.accuracy_matrix_own_adapter is not None and own_adapter_accuracy is not None:
            self.accuracy_matrix_own_adapter.append(list(own_adapter_accuracy))
        if self.task_labels is not None:
            if task_label_accuracy is None or len(self.task_labels.accuracy_matrix) != self.trained - 1:
                self.task_labels = None  # a row went missing (a run resumed from an older version): drop the part
            else:
                self.task_labels.accuracy_matrix.append(list(task_label_accuracy))
        if "total_parameters" in record:
            self.total_parameters = int(record["total_parameters"])
        self.status = "complete" if self.trained == len(self.stages) else "running"
        self._update_metrics()

    def truncate(self, completed_tasks: int) -> None:
        """Keeps the rows of the first ``completed_tasks`` tasks (resume: later rows are trained again)."""
        for key in _ROW_KEYS:
            setattr(self, key, getattr(self, key)[:completed_tasks])
        for part in (self.validation, self.task_labels):
            if part is not None:
                part.accuracy_matrix = part.accuracy_matrix[:completed_tasks]
        if self.accuracy_matrix_own_adapter is not None:
            self.accuracy_matrix_own_adapter = self.accuracy_matrix_own_adapter[:completed_tasks]
        self.status = "complete" if self.trained == len(self.stages) else "running"
        self._update_metrics()

    def _update_metrics(self) -> None:
        from classp_hf.metrics.continual import continual_metrics

        for part in (self, self.validation, self.task_labels):
            if part is None:
                continue
            seen = len(part.accuracy_matrix)
            if self.queue_mode != "sequential":
                part.metrics = _reference_metrics(part.accuracy_matrix, self.queue_mode)
            elif seen and len(part.initial_accuracy) >= seen:
                block = [row[:seen] for row in part.accuracy_matrix]  # the top-left seen x seen block
                part.metrics = continual_metrics(block, part.initial_accuracy[:seen])
            else:
                part.metrics = dict(_EMPTY_METRICS)

    def to_dict(self) -> dict[str, Any]:
        """The JSON object of ``results.json`` (optional parts left out when absent)."""
        data = dataclasses.asdict(self)
        for key in ("validation", "accuracy_matrix_own_adapter", "task_labels", "timing"):
            if data[key] is None:
                data.pop(key)
        if not data["resumed_after_tasks"]:
            data.pop("resumed_after_tasks")
        if data["queue_mode"] == "sequential":  # results.json of sequential runs reads as before
            data.pop("queue_mode")
        return data

    @classmethod
    def from_dict(cls, data: Any, source: str = "results.json") -> RunResults:
        """Reads a results object back (to resume a run), upgrading version 1.

        Raises:
            ResultsVersionError: a version this package cannot continue, or not a results object (one line).
        """
        if not isinstance(data, dict):
            raise ResultsVersionError(f"{source} is not a results object")
        version = data.get("schema_version")
        if version not in (1, SCHEMA_VERSION):
            raise ResultsVersionError(
                f"{source} has schema_version {version!r}; this classp_hf ({_package_version()}) continues versions "
                f"1 and {SCHEMA_VERSION}: finish that run with the version that started it, or start a new run"
            )
        data = dict(data)
        data["schema_version"] = SCHEMA_VERSION
        data.setdefault("backend", {})
        data.setdefault("total_parameters", 0)
        known = {f.name for f in dataclasses.fields(cls)}
        extra = sorted(set(data) - known)
        if extra:
            raise ResultsVersionError(f"{source} has keys this classp_hf does not know: {', '.join(extra)}")
        try:
            validation = data.pop("validation", None)
            task_labels = data.pop("task_labels", None)  # absent from older runs: the part stays off
            results = cls(**data)
            if validation is not None:
                results.validation = ValidationResults(**validation)
            if task_labels is not None:
                results.task_labels = TaskLabelResults(**task_labels)
        except TypeError as error:
            raise ResultsVersionError(f"{source} is incomplete ({error})") from None
        return results

    def validate(self) -> None:
        """Checks the results against the JSON Schema and for consistency (see :func:`validate_results`)."""
        validate_results(self.to_dict())

    def write(self, output_dir: str | Path) -> Path:
        """Validates the results and writes ``results.json`` atomically (the runner then writes the report from it,
        :func:`classp_hf.continual.report.write_report`).

        Args:
            output_dir: the run's folder.

        Returns:
            The path of ``results.json``.
        """
        from classp_hf.continual.io import write_json_atomic

        data = self.to_dict()
        validate_results(data)
        return write_json_atomic(Path(output_dir) / RESULTS_FILENAME, data)


RESULTS_FILENAME = "results.json"


def _reference_metrics(matrix: list[list[float]], queue_mode: str) -> dict[str, float | None]:
    """ACC of a reference run; BWT, FWT and forgetting are undefined without a sequence of tasks.

    ``joint``: the mean of its one row (every task after the joint stage). ``single_task``: the mean of the diagonal
    (each task after training on it alone) over the tasks trained so far.
    """
    metrics = dict(_EMPTY_METRICS)
    values = matrix[0] if queue_mode == "joint" and matrix else [row[i] for i, row in enumerate(matrix)]
    if values:
        metrics["acc"] = float(sum(values) / len(values))
    return metrics


def _package_version() -> str:
    import classp_hf

    return classp_hf.__version__
