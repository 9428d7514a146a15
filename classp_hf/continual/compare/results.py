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
]

COMPARISON_SCHEMA_VERSION = 1
"""Version of ``comparison.json`` (``classp_hf/schemas/comparison.schema.json``)."""
RunStatus = Literal["complete", "failed", "pending"]


def _final_row(results: Mapping[str, Any]) -> list[float]:
    return list(results["accuracy_matrix"][-1])


def run_metrics(results: Mapping[str, Any]) -> dict[str, Any]:
    """The numbers a comparison keeps of one complete run's ``results.json``.

    Returns:
        ``acc``, ``bwt``, ``fwt``, ``forgetting`` (test split), ``final_accuracy`` (each task after the last one),
        ``first_task_final`` and ``newest_task_final`` (the first and the last task after the last one),
        ``first_task_curve`` (the first task after each task), ``accuracy_matrix``, ``validation_acc`` (`None`
        without a validation split), ``acc_task_labels`` (ACC with the argmax over each task's own labels; `None`
        for runs from before it was recorded), ``trainable_parameters``, ``total_parameters`` (the model after the
        last task: per-task adapters add theirs), ``optimizer_state_bytes``, ``method_state_bytes``,
        ``extra_memory_bytes`` (their sum), ``bytes_per_trainable_parameter``, ``train_seconds``, and with CLASSP's
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
    return {
        **{key: results["metrics"].get(key) for key in ("acc", "bwt", "fwt", "forgetting")},
        "validation_acc": (validation.get("metrics") or {}).get("acc"),
        "acc_task_labels": ((results.get("task_labels") or {}).get("metrics") or {}).get("acc"),
        "final_accuracy": final,
        "first_task_final": final[0],
        "newest_task_final": final[-1],
        "first_task_curve": [row[0] for row in results["accuracy_matrix"]],
        "accuracy_matrix": [list(row) for row in results["accuracy_matrix"]],
        "trainable_parameters": trainable,
        "total_parameters": int(last.get("total_parameters", 0)),
        "optimizer_state_bytes": optimizer_bytes,
        "method_state_bytes": method_bytes,
        "extra_memory_bytes": extra,
        "bytes_per_trainable_parameter": extra / trainable if trainable else None,
        "train_seconds": round(sum(float(record.get("seconds", 0.0)) for record in results["per_task"]), 3),
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
    "update_fraction",
    "task_update_fraction",
    "overlap_with_earlier",
)
#: Vectors summarised element by element.
SUMMARY_VECTORS = ("final_accuracy", "first_task_curve")


def _stat(values: Sequence[float | None]) -> dict[str, Any]:
    """Mean and sample standard deviation (n - 1; `None` below two values) of the values that are not `None`."""
    kept = [float(v) for v in values if v is not None]
    n = len(kept)
    mean = sum(kept) / n if n else None
    std = math.sqrt(sum((v - mean) ** 2 for v in kept) / (n - 1)) if n >= 2 else None
    return {"mean": mean, "std": std, "n": n}


def _value(record: RunRecord, key: str) -> Any:
    return getattr(record, key) if key in ("wall_seconds", "cpu_seconds") else record.metrics.get(key)


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
        columns = list(zip(*(record.metrics[key] for record in done)))
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
            "settings": [setting.to_dict() for setting in self.settings],
        }

    def table(self) -> str:
        """The console table (see :func:`classp_hf.continual.compare.report.format_table`)."""
        from classp_hf.continual.compare.report import format_table

        return format_table(self.to_dict())
