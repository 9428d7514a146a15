"""What a comparison keeps of its runs: the numbers of each run, the choice of a grid point, the summary over seeds
and the typed :class:`Comparison` that ``comparison.json`` holds (:meth:`Comparison.to_dict`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from classp_hf.continual.compare.grid import GridPoint

__all__ = [
    "COMPARISON_SCHEMA_VERSION",
    "SUMMARY_SCALARS",
    "SUMMARY_VECTORS",
    "RunRecord",
    "PointResult",
    "SettingResult",
    "Comparison",
    "run_metrics",
    "select_point",
    "summarize",
    "LEARNED_MARGIN",
    "apply_references",
]

COMPARISON_SCHEMA_VERSION = 2
"""Version of ``comparison.json`` (``classp_hf/schemas/comparison.schema.json``; 2: references, the paired
bootstrap against a reference setting, "did not learn" marks)."""
LEARNED_MARGIN = 0.05
"""A task counts as learned when its accuracy right after training on it rose above its majority-class accuracy by
more than this (5 points)."""
RunStatus = Literal["complete", "failed", "pending"]


def _final_row(results: Mapping[str, Any]) -> list[float]:
    """Each task's final accuracy: the last row; a joint run's one row; a single-task run's diagonal (each task
    trained alone)."""
    matrix = results["accuracy_matrix"]
    if results.get("queue_mode") == "single_task":
        return [row[i] for i, row in enumerate(matrix)]
    return list(matrix[-1])


def _own_task_row(results: Mapping[str, Any]) -> list[float]:
    """Each task's accuracy right after it was trained: the diagonal (a joint run: its one row)."""
    matrix = results["accuracy_matrix"]
    if results.get("queue_mode") == "joint":
        return list(matrix[0])
    return [row[i] for i, row in enumerate(matrix)]


def run_metrics(results: Mapping[str, Any]) -> dict[str, Any]:
    """The numbers a comparison keeps of one complete run's ``results.json``.

    Returns:
        ``acc``, ``bwt``, ``fwt``, ``forgetting`` (test split), ``final_accuracy`` (each task after the last one),
        ``first_task_final`` and ``newest_task_final`` (the first and the last task after the last one),
        ``first_task_curve`` (the first task after each task), ``accuracy_matrix``, ``queue_mode``,
        ``own_task_accuracy`` (each task right after training on it: the diagonal; a joint run's row),
        ``majority_accuracy`` (each task's majority-class accuracy on its test split), ``validation_acc`` (`None`
        without a validation split), ``acc_task_labels`` (ACC with the argmax over each task's own labels; `None`
        for runs from before it was recorded), ``trainable_parameters``, ``total_parameters`` (the model after the
        last task: per-task adapters add theirs), ``optimizer_state_bytes``, ``method_state_bytes``,
        ``extra_memory_bytes`` (their sum), ``bytes_per_trainable_parameter``, ``train_seconds``,
        ``timed_training_seconds`` (``Trainer.train`` over all attempts, from results.json's ``timing``; `None` for
        runs from before it was recorded), ``training_share`` (that over the run's wall time in the runner; `None`
        likewise), and with CLASSP's
        update diagnostics (``diagnostics: true``; `None` otherwise) ``update_fraction`` (elements updated per
        step, mean over tasks), ``task_update_fraction`` (elements a task updated at least once, mean over tasks)
        and ``overlap_with_earlier`` (of those, the share earlier tasks had updated, mean over tasks 2 to T).
    """
    last = results["per_task"][-1]
    final = _final_row(results)
    validation = results.get("validation") or {}
    trainable = int(last.get("trainable_parameters", 0))
    optimizer_bytes = int(last.get("optimizer_state_bytes", 0))
    method_bytes = int(last.get("method_state_bytes", 0))
    extra = optimizer_bytes + method_bytes
    timing = results.get("timing") or {}
    return {
        **{key: results["metrics"].get(key) for key in ("acc", "bwt", "fwt", "forgetting")},
        "validation_acc": (validation.get("metrics") or {}).get("acc"),
        "acc_task_labels": ((results.get("task_labels") or {}).get("metrics") or {}).get("acc"),
        "final_accuracy": final,
        "first_task_final": final[0],
        "newest_task_final": final[-1],
        "first_task_curve": [row[0] for row in results["accuracy_matrix"]],
        "accuracy_matrix": [list(row) for row in results["accuracy_matrix"]],
        "queue_mode": results.get("queue_mode", "sequential"),
        "own_task_accuracy": _own_task_row(results),
        "majority_accuracy": list(results.get("majority_accuracy") or []),
        "trainable_parameters": trainable,
        "total_parameters": int(last.get("total_parameters", 0)),
        "optimizer_state_bytes": optimizer_bytes,
        "method_state_bytes": method_bytes,
        "extra_memory_bytes": extra,
        "bytes_per_trainable_parameter": extra / trainable if trainable else None,
        "train_seconds": round(sum(float(record.get("seconds", 0.0)) for record in results["per_task"]), 3),
        "timed_training_seconds": (timing.get("phases") or {}).get("training"),
        "training_share": timing.get("training_share"),
        **_update_sparsity(results["per_task"]),
    }


def _update_sparsity(per_task: Sequence[Mapping[str, Any]]) -> dict[str, float | None]:
    """CLASSP's per-task update diagnostics averaged over the tasks (all `None` when they were not recorded)."""
    sparsity = [record["sparsity"] for record in per_task if isinstance(record.get("sparsity"), Mapping)]
    return {
        "update_fraction": _stat([s.get("mean_update_fraction") for s in sparsity])["mean"],
        "task_update_fraction": _stat([s.get("ever_updated_fraction") for s in sparsity])["mean"],
        "overlap_with_earlier": _stat([s.get("overlap_with_earlier") for s in sparsity])["mean"],
    }


@dataclass
class RunRecord:
    """One run of a comparison and what it gave.

    Args:
        setting, point, seed: which run (``point`` is the grid point's folder name).
        run_dir: its folder, relative to the comparison folder.
        status: ``complete``, ``failed`` or ``pending`` (not run yet).
        error: the last attempt's error line (a failed run).
        wall_seconds, cpu_seconds: summed over the attempts this comparison made (`None`: none recorded).
        attempts: launches recorded.
        metrics: :func:`run_metrics` of a complete run.
    """

    setting: str
    point: str
    seed: int
    run_dir: str
    status: RunStatus = "pending"
    error: str | None = None
    wall_seconds: float | None = None
    cpu_seconds: float | None = None
    attempts: int = 0
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return self.status == "complete"

    @property
    def validation_acc(self) -> float | None:
        """The validation ACC: what grid points are chosen on."""
        return self.metrics.get("validation_acc") if self.complete else None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# -- selection ------------------------------------------------------------------------------------


def select_point(candidates: Sequence[tuple[GridPoint, float | None]]) -> GridPoint | None:
    """The grid point with the highest validation ACC (the first in grid order on a tie).

    Args:
        candidates: each grid point with its first-seed run's validation ACC (`None`: failed, left out).
            Only validation numbers come in: the test split cannot influence the choice.

    Returns:
        The chosen point, or `None` when no point has a validation ACC.
    """
    best: tuple[GridPoint, float] | None = None
    for point, value in candidates:
        if value is not None and (best is None or value > best[1]):
            best = (point, value)
    return best[0] if best else None


# -- aggregation ----------------------------------------------------------------------------------

#: Scalars of :func:`run_metrics` (and of the run record) summarised over seeds.
SUMMARY_SCALARS = (
    "acc",
    "bwt",
    "fwt",
    "forgetting",
    "validation_acc",
    "acc_task_labels",
    "first_task_final",
    "newest_task_final",
    "trainable_parameters",
    "total_parameters",
    "optimizer_state_bytes",
    "method_state_bytes",
    "extra_memory_bytes",
    "bytes_per_trainable_parameter",
    "train_seconds",
    "wall_seconds",
    "cpu_seconds",
    "training_share",
    "update_fraction",
    "task_update_fraction",
    "overlap_with_earlier",
)
#: Vectors summarised element by element.
SUMMARY_VECTORS = ("final_accuracy", "first_task_curve", "own_task_accuracy", "majority_accuracy")


def _stat(values: Sequence[float | None]) -> dict[str, Any]:
    """Mean and sample standard deviation (n - 1; `None` below two values) of the values that are not `None`."""
    kept = [float(v) for v in values if v is not None]
    n = len(kept)
    mean = sum(kept) / n if n else None
    std = math.sqrt(sum((v - mean) ** 2 for v in kept) / (n - 1)) if n >= 2 else None
    return {"mean": mean, "std": std, "n": n}


def _value(record: RunRecord, key: str) -> Any:
    if key == "training_share":
        return _training_share(record)
    return getattr(record, key) if key in ("wall_seconds", "cpu_seconds") else record.metrics.get(key)


def _training_share(record: RunRecord) -> float | None:
    """``Trainer.train``'s seconds over the run's process wall time (every attempt, start-up included), or the
    share the run recorded within its runner when the comparison has no wall time for it; `None` for older runs."""
    training = record.metrics.get("timed_training_seconds")
    if training is not None and record.wall_seconds:
        return min(1.0, float(training) / record.wall_seconds)
    return record.metrics.get("training_share")


def summarize(records: Sequence[RunRecord]) -> dict[str, Any]:
    """Mean ± std over the complete runs only (failed and pending runs are counted apart, never averaged).

    Args:
        records: one setting's runs of its chosen point, one per seed.

    Returns:
        ``{scalar: {mean, std, n}}`` for :data:`SUMMARY_SCALARS`, ``{vector: {mean: [...], std: [...]}}`` for
        :data:`SUMMARY_VECTORS`, ``accuracy_matrix`` (the mean matrix), and ``complete`` / ``failed`` /
        ``pending`` counts.
    """
    done = [record for record in records if record.complete]
    summary: dict[str, Any] = {key: _stat([_value(record, key) for record in done]) for key in SUMMARY_SCALARS}
    for key in SUMMARY_VECTORS:
        columns = list(zip(*(record.metrics.get(key) or [] for record in done)))
        stats = [_stat(column) for column in columns]
        summary[key] = {"mean": [s["mean"] for s in stats], "std": [s["std"] for s in stats]}
    matrices = [record.metrics["accuracy_matrix"] for record in done]
    summary["accuracy_matrix"] = (
        [[_stat(cells)["mean"] for cells in zip(*rows)] for rows in zip(*matrices)] if matrices else None
    )
    for status in ("complete", "failed", "pending"):
        summary[status] = sum(record.status == status for record in records)
    return summary


@dataclass
class PointResult:
    """A grid point and its run on the first seed."""

    name: str
    label: str
    overrides: dict[str, Any]
    run: RunRecord

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "label": self.label, "overrides": self.overrides, "run": self.run.to_dict()}


@dataclass
class SettingResult:
    """One setting of a comparison: its grid points, the chosen one, its runs over the seeds and their summary.

    Args:
        name, description, preset, overrides, grid: the setting (see :class:`~.grid.Setting`).
        points: every grid point's first-seed run (one ``default`` point without a grid).
        chosen: the chosen point's name (`None` while undecided, or when every point failed).
        runs: the chosen point's runs, one per seed (the first-seed one is the grid's).
        summary: :func:`summarize` of ``runs``.
        mode: its runs' ``queue_mode``: ``sequential`` (a competing setting) or a reference (``joint``,
            ``single_task``).
        references: ``gap_to_joint`` (ACC minus the joint reference's, fraction) and ``share_of_single_task``
            (each task's final accuracy over its single-task accuracy), `None` where the reference is missing.
        versus_reference: the paired bootstrap against the reference setting
            (:meth:`~classp_hf.continual.compare.noise.PairedDifference.to_dict`, or ``{"note": why}``); `None`
            for the reference itself.
        did_not_learn: the tasks whose mean accuracy right after training on them stayed at or below their
            majority-class accuracy + :data:`LEARNED_MARGIN`.
    """

    name: str
    description: str
    preset: str | None
    overrides: dict[str, Any]
    grid: dict[str, list[Any]]
    points: list[PointResult]
    chosen: str | None
    runs: list[RunRecord]
    summary: dict[str, Any]
    mode: str = "sequential"
    references: dict[str, Any] = field(default_factory=lambda: {"gap_to_joint": None, "share_of_single_task": None})
    versus_reference: dict[str, Any] | None = None
    did_not_learn: list[str] = field(default_factory=list)

    @property
    def is_reference(self) -> bool:
        """A reference row (``joint``, ``single_task``), not a competing setting."""
        return self.mode != "sequential"

    @property
    def chosen_point(self) -> PointResult | None:
        return next((point for point in self.points if point.name == self.chosen), None)

    @property
    def failed_runs(self) -> list[RunRecord]:
        """Every failed run of the setting: grid points and seeds."""
        seen, failed = set(), []
        for record in [point.run for point in self.points] + self.runs:
            key = (record.point, record.seed)
            if record.status == "failed" and key not in seen:
                seen.add(key)
                failed.append(record)
        return failed

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "preset": self.preset,
            "overrides": self.overrides,
            "grid": self.grid,
            "selection": {"metric": "validation_acc", "seed": self.runs[0].seed if self.runs else None},
            "points": [point.to_dict() for point in self.points],
            "chosen": self.chosen,
            "runs": [record.to_dict() for record in self.runs],
            "summary": self.summary,
            "mode": self.mode,
            "references": self.references,
            "versus_reference": self.versus_reference,
            "did_not_learn": list(self.did_not_learn),
        }


@dataclass
class Comparison:
    """The outcome of :func:`compare` (``comparison.json`` is :meth:`to_dict`).

    Args:
        source: the grid file (or ``--config``).
        description: the grid's description.
        base_config: the base run config.
        output_dir: the comparison folder.
        seeds: the seeds (grids run on the first).
        tasks: the queue's task names.
        queue: sizes of the queue (per task: training examples and steps; max_length, batch size, epochs and the
            validation fraction).
        environment: hardware, jobs, threads and versions.
        settings: one :class:`SettingResult` per setting, in grid order.
        wall_seconds, cpu_seconds: summed over every recorded run attempt (grid points included).
        noise: how the paired differences were measured: ``reference`` (the setting), ``method``, ``resamples``,
            ``seed``, ``confidence``.
        reference_settings: ``{"joint": name or None, "single_task": name or None}``: the reference rows used.
    """

    source: str
    description: str
    base_config: str
    output_dir: str
    seeds: list[int]
    tasks: list[str]
    queue: dict[str, Any]
    environment: dict[str, Any]
    settings: list[SettingResult]
    wall_seconds: float
    cpu_seconds: float
    noise: dict[str, Any] = field(default_factory=dict)
    reference_settings: dict[str, str | None] = field(default_factory=lambda: {"joint": None, "single_task": None})

    def setting(self, name: str) -> SettingResult:
        """The result of the setting called ``name``."""
        for setting in self.settings:
            if setting.name == name:
                return setting
        raise KeyError(name)

    @property
    def failed_runs(self) -> list[RunRecord]:
        return [record for setting in self.settings for record in setting.failed_runs]

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": COMPARISON_SCHEMA_VERSION,
            "source": self.source,
            "description": self.description,
            "base_config": self.base_config,
            "seeds": self.seeds,
            "tasks": self.tasks,
            "queue": self.queue,
            "environment": self.environment,
            "wall_seconds": round(self.wall_seconds, 3),
            "cpu_seconds": round(self.cpu_seconds, 3),
            "noise": self.noise,
            "reference_settings": self.reference_settings,
            "settings": [setting.to_dict() for setting in self.settings],
        }


def apply_references(settings: Sequence[SettingResult], tasks: Sequence[str]) -> dict[str, str | None]:
    """Fills every setting's ``references`` (gap to joint, share of single-task) and ``did_not_learn``.

    The first setting of each reference mode is that reference. The gap is in ACC (mean over complete seeds); the
    share divides each task's mean final accuracy by the single-task reference's mean accuracy on that task.

    Args:
        settings: the comparison's settings (their ``mode`` and ``summary`` set).
        tasks: the queue's task names.

    Returns:
        ``{"joint": name or None, "single_task": name or None}``.
    """
    found: dict[str, SettingResult | None] = {"joint": None, "single_task": None}
    for setting in settings:
        if setting.mode in found and found[setting.mode] is None:
            found[setting.mode] = setting
    joint_acc = found["joint"].summary["acc"]["mean"] if found["joint"] is not None else None
    ceiling = found["single_task"].summary["final_accuracy"]["mean"] if found["single_task"] is not None else None
    for setting in settings:
        summary = setting.summary
        acc, final = summary["acc"]["mean"], summary["final_accuracy"]["mean"]
        share = None
        if ceiling and final and len(ceiling) == len(final):
            share = [None if c is None or f is None or c <= 0 else f / c for f, c in zip(final, ceiling)]
        setting.references = {
            "gap_to_joint": None if acc is None or joint_acc is None else acc - joint_acc,
            "share_of_single_task": share,
        }
        own = (summary.get("own_task_accuracy") or {}).get("mean") or []
        majority = (summary.get("majority_accuracy") or {}).get("mean") or []
        setting.did_not_learn = [
            task
            for task, value, floor in zip(tasks, own, majority)
            if value is not None and floor is not None and value <= floor + LEARNED_MARGIN
        ]
    return {mode: (setting.name if setting is not None else None) for mode, setting in found.items()}
