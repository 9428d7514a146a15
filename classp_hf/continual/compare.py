"""``classp-hf compare``: settings side by side over seeds, grids chosen on validation accuracy.

A comparison (:class:`~classp_hf.continual.compare_grid.Grid`: a base config, settings, seeds) runs in one folder::

    DIR/compare_plan.json                          what is compared (marks DIR as a comparison folder)
    DIR/runs/<setting>/<grid point>/seed<k>/       ordinary run folders (classp-hf run)
    DIR/configs/<setting>/<grid point>/seed<k>.yaml   each run's resolved config
    DIR/logs/<setting>/<grid point>/seed<k>.log|.json  its output, and the wall and CPU time of each attempt
    DIR/comparison.json, comparison.md, figures/   the comparison (schema: classp_hf/schemas/comparison.schema.json)

Selection: a setting with a grid runs every grid point on the first seed; the point with the best validation ACC
(``results.json`` → ``validation.metrics.acc``: the mean final accuracy on the validation splits held out of the
training data; never the test split) is kept, its run reused, and run on the other seeds. Ties go to the first
point in grid order; failed points are left out.

Running again in the same folder continues the comparison: a finished run whose ``config.yaml`` equals the one
planned now is skipped (another config is an error naming the run), a killed run is resumed (``--resume``), a
failed one is tried again. Runs are subprocesses (``classp-hf run``), ``jobs`` at a time, each with
``OMP_NUM_THREADS = max(1, cores // jobs)`` unless the environment sets it; ``launcher="inprocess"`` runs them one
by one in this process. A failed run is recorded with its error line and reported, never averaged.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import yaml

from classp_hf.continual.compare_grid import Grid, GridPoint, Setting, grid_from_presets, load_grid
from classp_hf.continual.config import ConfigError, RunConfig
from classp_hf.continual.io import write_json_atomic, write_text_atomic
from classp_hf.continual.outputs import OutputDirError, is_complete_model

__all__ = [
    "COMPARISON_FILENAME",
    "PLAN_FILENAME",
    "Attempt",
    "Comparison",
    "InProcessLauncher",
    "Launcher",
    "RunJob",
    "RunRecord",
    "SettingResult",
    "SubprocessLauncher",
    "compare",
    "run_metrics",
    "select_point",
    "summarize",
]

PLAN_FILENAME = "compare_plan.json"
COMPARISON_FILENAME = "comparison.json"
#: Everything ``compare`` writes into its folder (``--overwrite`` removes these, nothing else).
COMPARE_OUTPUTS = (PLAN_FILENAME, COMPARISON_FILENAME, "comparison.md", "figures", "runs", "configs", "logs")
COMPARISON_SCHEMA_VERSION = 1
RunStatus = Literal["complete", "failed", "pending"]
_PREFIX = "[compare]"


# -- one run ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunJob:
    """One run of a comparison, ready to launch.

    Args:
        setting, point, seed: which run.
        config: its validated config.
        run_dir: its run folder.
        config_path: where its resolved config is written (what a subprocess reads).
        log_path: its output.
        mode: ``start`` (new folder), ``resume`` (a killed run) or ``overwrite`` (a folder without a run state).
    """

    setting: str
    point: GridPoint
    seed: int
    config: RunConfig
    run_dir: Path
    config_path: Path
    log_path: Path
    mode: Literal["start", "resume", "overwrite"]

    @property
    def title(self) -> str:
        at = "" if self.point.name == "default" else f" {self.point.label}"
        return f"{self.setting}{at} seed {self.seed}"


@dataclass(frozen=True)
class Attempt:
    """What one launch of a run gave.

    Args:
        ok: the run finished.
        error: its error line when it did not.
        wall_seconds, cpu_seconds: elapsed and CPU (user + system) time of the attempt.
        returncode: the subprocess's exit code (`None` in process).
    """

    ok: bool
    error: str | None
    wall_seconds: float
    cpu_seconds: float
    returncode: int | None = None


class Launcher(Protocol):
    """Runs one :class:`RunJob` to its end (or failure) and says how it went."""

    def launch(self, job: RunJob) -> Attempt: ...


def _first_line(text: str) -> str:
    lines = [line.strip() for line in str(text).strip().splitlines() if line.strip()]
    return lines[0] if lines else ""


def _error_line(error: BaseException) -> str:
    line = _first_line(str(error))
    if isinstance(error, ValueError) and line:
        return line
    return f"{type(error).__name__}: {line}" if line else type(error).__name__


class InProcessLauncher:
    """Runs each job in this process (:func:`classp_hf.continual.runner.run_continual`), one at a time.

    The run's own output (the Trainer's logs and bars) goes to the job's log file; an exception is the attempt's
    error (a traceback in the log), except ``KeyboardInterrupt``, which ends the comparison.
    """

    def launch(self, job: RunJob) -> Attempt:
        from classp_hf.continual.runner import run_continual

        started, cpu_before = time.perf_counter(), _self_cpu_seconds()
        error = None
        job.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(job.log_path, "a", encoding="utf-8") as log:
            try:
                with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
                    run_continual(
                        job.config,
                        job.run_dir,
                        overwrite=job.mode == "overwrite",
                        resume=job.mode == "resume",
                        log=True,
                    )
            except Exception as caught:  # any failure of one run is recorded, the comparison goes on
                error = _error_line(caught)
                log.write(traceback.format_exc())
        return Attempt(error is None, error, time.perf_counter() - started, _self_cpu_seconds() - cpu_before)


def _self_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def available_cores() -> int:
    """CPU cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _package_root() -> str:
    import classp_hf

    return str(Path(classp_hf.__file__).resolve().parent.parent)


class SubprocessLauncher:
    """Runs each job as ``python -m classp_hf.cli run CONFIG --output-dir RUN``, output to its log file.

    Args:
        threads: ``OMP_NUM_THREADS`` of each run, unless the environment sets it.

    CPU time is the child's own (``os.wait4``); the child imports the same ``classp_hf`` as this process.
    """

    def __init__(self, threads: int) -> None:
        self.threads = threads
        self._live: dict[int, subprocess.Popen] = {}
        self._lock = threading.Lock()

    def _environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env.setdefault("OMP_NUM_THREADS", str(self.threads))
        env.setdefault("TOKENIZERS_PARALLELISM", "false")
        env["TQDM_DISABLE"] = "1"
        env["PYTHONPATH"] = os.pathsep.join(p for p in (_package_root(), env.get("PYTHONPATH")) if p)
        return env

    def command(self, job: RunJob) -> list[str]:
        """The command line of ``job``."""
        command = [sys.executable, "-m", "classp_hf.cli", "run", str(job.config_path), "--output-dir", str(job.run_dir)]
        if job.mode == "resume":
            command.append("--resume")
        elif job.mode == "overwrite":
            command.append("--overwrite")
        return command

    def launch(self, job: RunJob) -> Attempt:
        job.log_path.parent.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        with open(job.log_path, "ab") as log:
            process = subprocess.Popen(
                self.command(job), stdout=log, stderr=subprocess.STDOUT, env=self._environment(), cwd=os.getcwd()
            )
            with self._lock:
                self._live[process.pid] = process
            try:
                _, status, usage = os.wait4(process.pid, 0)
            except BaseException:  # Ctrl-C: end the run (it resumes later) before going on
                with contextlib.suppress(ProcessLookupError):
                    process.terminate()
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(process.pid, 0)
                process.returncode = -signal.SIGTERM
                raise
            finally:
                with self._lock:
                    self._live.pop(process.pid, None)
        process.returncode = os.waitstatus_to_exitcode(status)
        wall, cpu = time.perf_counter() - started, usage.ru_utime + usage.ru_stime
        if process.returncode == 0:
            return Attempt(True, None, wall, cpu, 0)
        return Attempt(False, _log_error(job.log_path, process.returncode), wall, cpu, process.returncode)

    def stop_all(self) -> None:
        """Sends SIGTERM to every run still going (after Ctrl-C; a run resumes later)."""
        with self._lock:
            processes = list(self._live.values())
        for process in processes:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)


def _log_error(log_path: Path, returncode: int) -> str:
    """The error line of a failed subprocess: its ``classp-hf: error:`` line, else its last line."""
    if returncode < 0:
        return f"killed by signal {signal.Signals(-returncode).name}"
    try:
        with open(log_path, "rb") as log:
            log.seek(max(0, log_path.stat().st_size - 65536))
            lines = [line.strip() for line in log.read().decode("utf-8", "replace").splitlines() if line.strip()]
    except OSError:
        lines = []
    for line in reversed(lines):
        if line.startswith("classp-hf: error:"):
            return line[len("classp-hf: error:") :].strip()
    if returncode == 130:
        return "interrupted"
    return lines[-1] if lines else f"exit code {returncode}"


# -- what a finished run gives --------------------------------------------------------------------


def _final_row(results: Mapping[str, Any]) -> list[float]:
    return list(results["accuracy_matrix"][-1])


def run_metrics(results: Mapping[str, Any]) -> dict[str, Any]:
    """The numbers a comparison keeps of one complete run's ``results.json``.

    Returns:
        ``acc``, ``bwt``, ``fwt``, ``forgetting`` (test split), ``final_accuracy`` (each task after the last one),
        ``first_task_final`` and ``newest_task_final`` (the first and the last task after the last one),
        ``first_task_curve`` (the first task after each task), ``accuracy_matrix``, ``validation_acc`` (`None`
        without a validation split), ``trainable_parameters``, ``optimizer_state_bytes``, ``method_state_bytes``,
        ``extra_memory_bytes`` (their sum), ``bytes_per_trainable_parameter`` and ``train_seconds``.
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
        "final_accuracy": final,
        "first_task_final": final[0],
        "newest_task_final": final[-1],
        "first_task_curve": [row[0] for row in results["accuracy_matrix"]],
        "accuracy_matrix": [list(row) for row in results["accuracy_matrix"]],
        "trainable_parameters": trainable,
        "optimizer_state_bytes": optimizer_bytes,
        "method_state_bytes": method_bytes,
        "extra_memory_bytes": extra,
        "bytes_per_trainable_parameter": extra / trainable if trainable else None,
        "train_seconds": round(sum(float(record.get("seconds", 0.0)) for record in results["per_task"]), 3),
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
    "first_task_final",
    "newest_task_final",
    "trainable_parameters",
    "optimizer_state_bytes",
    "method_state_bytes",
    "extra_memory_bytes",
    "bytes_per_trainable_parameter",
    "train_seconds",
    "wall_seconds",
    "cpu_seconds",
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
        name, description, preset, overrides, grid: the setting (see :class:`~.compare_grid.Setting`).
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
        """The console table (see :func:`classp_hf.continual.compare_report.format_table`)."""
        from classp_hf.continual.compare_report import format_table

        return format_table(self.to_dict())


# -- the comparison folder --------------------------------------------------------------------------


def _is_comparison_folder(path: Path) -> bool:
    return (path / PLAN_FILENAME).is_file()


def check_output_dir(output_dir: Path) -> None:
    """Refuses a file, or a non-empty folder that is not a comparison folder (nothing is written).

    Raises:
        OutputDirError: naming the folder.
    """
    if output_dir.exists() and not output_dir.is_dir():
        raise OutputDirError(f"--output-dir {output_dir} exists and is not a directory")
    if output_dir.is_dir() and any(output_dir.iterdir()) and not _is_comparison_folder(output_dir):
        raise OutputDirError(
            f"--output-dir {output_dir} is not empty and holds no comparison ({PLAN_FILENAME}); choose another folder"
        )


def clear_outputs(output_dir: Path) -> None:
    """``--overwrite``: removes what a comparison wrote (:data:`COMPARE_OUTPUTS`), nothing else; the plan first."""
    for name in COMPARE_OUTPUTS:
        path = output_dir / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()


@dataclass(frozen=True)
class _RunPaths:
    run_dir: Path
    config_path: Path
    log_path: Path
    timing_path: Path


def _paths(output_dir: Path, setting: str, point: str, seed: int) -> _RunPaths:
    tail = Path(setting) / point
    return _RunPaths(
        run_dir=output_dir / "runs" / tail / f"seed{seed}",
        config_path=output_dir / "configs" / tail / f"seed{seed}.yaml",
        log_path=output_dir / "logs" / tail / f"seed{seed}.log",
        timing_path=output_dir / "logs" / tail / f"seed{seed}.json",
    )


def _normalised(config: RunConfig) -> dict[str, Any]:
    """The config as its ``config.yaml`` reads back."""
    return yaml.safe_load(yaml.safe_dump(config.to_dict(), sort_keys=False))


def _differences(wanted: Any, stored: Any, prefix: str = "") -> list[str]:
    if isinstance(wanted, dict) and isinstance(stored, dict) and prefix.count(".") < 2:
        keys = sorted(set(wanted) | set(stored), key=str)
        return [d for key in keys for d in _differences(wanted.get(key), stored.get(key), f"{prefix}{key}.")]
    return [] if wanted == stored else [prefix.rstrip(".")]


def _check_existing_config(paths: _RunPaths, config: RunConfig, output_dir: Path) -> None:
    stored_path = paths.run_dir / "config.yaml"
    if not stored_path.is_file():
        return
    try:
        stored = yaml.safe_load(stored_path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        stored = None
    differ = _differences(_normalised(config), stored)
    if differ:
        where = paths.run_dir.relative_to(output_dir)
        raise ConfigError(
            f"run {where} in {output_dir} was made with another config (differs in {', '.join(differ[:4])}); "
            "remove that run folder to run it again, or pass --overwrite to start the comparison afresh"
        )


_RunState = Literal["absent", "finished", "unfinished", "broken"]


def _run_state(run_dir: Path) -> _RunState:
    from classp_hf.continual.checkpoint import ResumeError, read_run_state

    if not run_dir.is_dir() or not any(run_dir.iterdir()):
        return "absent"
    try:
        state = read_run_state(run_dir)
    except ResumeError:
        return "broken"
    if state.completed_tasks == len(state.tasks) and is_complete_model(run_dir / "model"):
        results = _read_results(run_dir)
        if results is not None and results.get("status") == "complete":
            return "finished"
    return "unfinished"


def _read_results(run_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((run_dir / "results.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _read_timing(path: Path) -> list[dict[str, Any]]:
    try:
        attempts = json.loads(path.read_text(encoding="utf-8")).get("attempts", [])
        return attempts if isinstance(attempts, list) else []
    except (OSError, ValueError, AttributeError):
        return []


def _record_from_disk(output_dir: Path, setting: str, point: str, seed: int) -> RunRecord:
    """A run's record as its folder and timing file say (``pending`` unless it finished or its last attempt failed)."""
    paths = _paths(output_dir, setting, point, seed)
    attempts = _read_timing(paths.timing_path)
    record = RunRecord(setting, point, seed, str(paths.run_dir.relative_to(output_dir)), attempts=len(attempts))
    if attempts:
        record.wall_seconds = round(sum(float(a.get("wall_seconds", 0.0)) for a in attempts), 3)
        record.cpu_seconds = round(sum(float(a.get("cpu_seconds", 0.0)) for a in attempts), 3)
    if _run_state(paths.run_dir) == "finished":
        results = _read_results(paths.run_dir)
        record.status, record.metrics = "complete", run_metrics(results)
    elif attempts and not attempts[-1].get("ok", False):
        record.status, record.error = "failed", attempts[-1].get("error") or "failed"
    return record


# -- running --------------------------------------------------------------------------------------


class _Progress:
    """Progress lines and a bar over the runs (silent when ``log`` is false)."""

    def __init__(self, total: int, log: bool) -> None:
        self.log = log
        self.done = 0
        self.bar = None
        if log:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc="runs", unit="run", dynamic_ncols=True, leave=False)

    def line(self, message: str) -> None:
        if not self.log:
            return
        if self.bar is not None:
            self.bar.write(f"{_PREFIX} {message}")
        else:
            print(f"{_PREFIX} {message}", flush=True)

    def advance(self) -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.update(1)

    def shrink(self, runs: int) -> None:
        if self.bar is not None and runs:
            self.bar.total -= runs
            self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100.0 * value:.1f}%"


class _Execution:
    """Schedules the runs: grids on the first seed, then the chosen points on the other seeds."""

    def __init__(self, grid: Grid, output_dir: Path, launcher: Launcher | None, jobs: int, progress: _Progress) -> None:
        self.grid, self.output_dir, self.launcher, self.jobs = grid, output_dir, launcher, jobs
        self.progress = progress
        self.records: dict[tuple[str, str, int], RunRecord] = {}
        self.chosen: dict[str, str | None] = {}
        self.queue: deque[tuple[Setting, GridPoint, int]] = deque()

    # -- what to run
    def initial_runs(self) -> list[tuple[Setting, GridPoint, int]]:
        first = self.grid.seeds[0]
        runs = []
        for setting in self.grid.settings:
            if len(setting.points) > 1:
                runs += [(setting, point, first) for point in setting.points]
            else:
                self.chosen[setting.name] = setting.points[0].name
                runs += [(setting, setting.points[0], seed) for seed in self.grid.seeds]
        return runs

    def _job(self, setting: Setting, point: GridPoint, seed: int) -> RunJob | None:
        """The job of a run, or `None` when it finished already (its record is then filled from disk)."""
        paths = _paths(self.output_dir, setting.name, point.name, seed)
        state = _run_state(paths.run_dir)
        if state == "finished":
            return None
        config = self.grid.run_config(setting, point, seed)
        mode = {"absent": "start", "unfinished": "resume", "broken": "overwrite"}[state]
        return RunJob(setting.name, point, seed, config, paths.run_dir, paths.config_path, paths.log_path, mode)

    # -- after a run
    def _finish(self, setting: Setting, point: GridPoint, seed: int, attempt: Attempt | None) -> RunRecord:
        paths = _paths(self.output_dir, setting.name, point.name, seed)
        if attempt is not None:
            attempts = _read_timing(paths.timing_path) + [
                {
                    "ok": attempt.ok,
                    "error": attempt.error,
                    "wall_seconds": round(attempt.wall_seconds, 3),
                    "cpu_seconds": round(attempt.cpu_seconds, 3),
                    "returncode": attempt.returncode,
                    "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
                }
            ]
            write_json_atomic(paths.timing_path, {"attempts": attempts})
        record = _record_from_disk(self.output_dir, setting.name, point.name, seed)
        if attempt is not None and attempt.ok and not record.complete:  # the run said it finished; its folder not
            record.status, record.error = "failed", "the run ended without complete results"
        self.records[(setting.name, point.name, seed)] = record
        self.progress.advance()
        self._report(record, point, attempt)
        if seed == self.grid.seeds[0] and len(setting.points) > 1:
            self._maybe_select(setting)
        return record

    def _report(self, record: RunRecord, point: GridPoint, attempt: Attempt | None) -> None:
        at = "" if point.name == "default" else f" {point.label}"
        title = f"{self.progress.done} {record.setting}{at} seed {record.seed}"
        if record.complete:
            how = "already finished" if attempt is None else f"done in {attempt.wall_seconds:.0f} s"
            validation = record.metrics.get("validation_acc")
            extra = "" if validation is None else f", validation ACC {_percent(validation)}"
            self.progress.line(f"{title}: {how}, ACC {_percent(record.metrics.get('acc'))}{extra}")
        elif record.status == "failed":
            self.progress.line(f"{title}: FAILED: {record.error}")

    def _maybe_select(self, setting: Setting) -> None:
        first = self.grid.seeds[0]
        records = [self.records.get((setting.name, point.name, first)) for point in setting.points]
        if any(record is None or record.status == "pending" for record in records):
            return
        point = select_point([(p, r.validation_acc) for p, r in zip(setting.points, records)])
        self.chosen[setting.name] = point.name if point else None
        others = [seed for seed in self.grid.seeds[1:]]
        if point is None:
            self.progress.line(f"{setting.name}: every grid point failed; its other seeds are not run")
            self.progress.shrink(len(others))
            return
        scores = ", ".join(f"{p.label} {_percent(r.validation_acc)}" for p, r in zip(setting.points, records))
        self.progress.line(f"{setting.name}: chose {point.label} by validation ACC on seed {first} ({scores})")
        self.queue.extend((setting, point, seed) for seed in others)

    # -- the loop
    def run(self) -> None:
        self.queue.extend(self.initial_runs())
        if self.launcher is None:  # report only: read what is on disk
            while self.queue:
                setting, point, seed = self.queue.popleft()
                self._finish(setting, point, seed, None)
            return
        if self.jobs == 1:
            while self.queue:
                self._step(*self.queue.popleft(), run_now=True)
            return
        self._run_parallel()

    def _step(self, setting: Setting, point: GridPoint, seed: int, run_now: bool) -> RunJob | None:
        job = self._job(setting, point, seed)
        if job is None:
            self._finish(setting, point, seed, None)
            return None
        _write_config(job)
        how = {"start": "start", "resume": "resume (killed earlier)", "overwrite": "start afresh"}[job.mode]
        self.progress.line(f"{job.title}: {how}")
        if run_now:
            self._finish(setting, point, seed, self.launcher.launch(job))
        return job

    def _run_parallel(self) -> None:
        running: dict[Future, tuple[Setting, GridPoint, int]] = {}
        with ThreadPoolExecutor(max_workers=self.jobs) as pool:
            try:
                while self.queue or running:
                    while self.queue and len(running) < self.jobs:
                        item = self.queue.popleft()
                        job = self._step(*item, run_now=False)
                        if job is not None:
                            running[pool.submit(self.launcher.launch, job)] = item
                    if not running:
                        continue
                    finished, _ = wait(running, return_when=FIRST_COMPLETED)
                    for future in finished:
                        self._finish(*running.pop(future), future.result())
            except BaseException:
                stop = getattr(self.launcher, "stop_all", None)
                if stop is not None:
                    stop()
                raise


def _write_config(job: RunJob) -> None:
    write_text_atomic(job.config_path, yaml.safe_dump(job.config.to_dict(), sort_keys=False))


# -- the comparison -------------------------------------------------------------------------------


def _environment(jobs: int, threads: int | None, launcher: str) -> dict[str, Any]:
    import torch
    import transformers

    import classp_hf

    accelerator = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor() or None,
        "cpu_cores": available_cores(),
        "accelerator": accelerator,
        "launcher": launcher,
        "jobs": jobs,
        "threads_per_job": threads,
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "classp_hf": classp_hf.__version__,
        },
    }


def _queue_sizes(grid: Grid, output_dir: Path, settings: Sequence[SettingResult]) -> dict[str, Any]:
    """The queue's sizes: from the first setting's config, and per task from the first complete run."""
    first = grid.settings[0]
    config = grid.run_config(first, first.points[0], grid.seeds[0])
    tasks: list[dict[str, Any]] = [{"name": task.name} for task in config.tasks]
    complete = [r for s in settings for r in [p.run for p in s.points] + s.runs if r.complete]
    results = _read_results(output_dir / complete[0].run_dir) if complete else None
    if results is not None:
        for task, record in zip(tasks, results["per_task"]):
            task.update(train_examples=record.get("train_examples"), steps=record.get("steps"))
    return {
        "max_length": config.max_length,
        "batch_size": config.training.get("per_device_train_batch_size", 8),
        "num_train_epochs": config.training.get("num_train_epochs", 3),
        "validation_fraction": config.validation_fraction,
        "tasks": tasks,
    }


def _setting_result(grid: Grid, setting: Setting, execution: _Execution) -> SettingResult:
    first = grid.seeds[0]
    points = [
        PointResult(p.name, p.label, p.overrides, execution.records[(setting.name, p.name, first)])
        for p in setting.points
    ]
    chosen = execution.chosen.get(setting.name)
    runs = []
    if chosen is not None:
        for seed in grid.seeds:
            record = execution.records.get((setting.name, chosen, seed))
            if record is None:  # not run yet (report only)
                record = _record_from_disk(execution.output_dir, setting.name, chosen, seed)
            runs.append(record)
    return SettingResult(
        name=setting.name,
        description=setting.description,
        preset=setting.preset,
        overrides=dict(setting.overrides),
        grid={key: list(values) for key, values in setting.grid.items()},
        points=points,
        chosen=chosen,
        runs=runs,
        summary=summarize(runs),
    )


def _plan(grid: Grid) -> dict[str, Any]:
    return {
        "schema_version": COMPARISON_SCHEMA_VERSION,
        "source": grid.source,
        "base_config": str(grid.base_config),
        "seeds": grid.seeds,
        "overrides": grid.overrides,
        "command_overrides": grid.command_overrides,
        "settings": [
            {
                "name": setting.name,
                "preset": setting.preset,
                "overrides": setting.overrides,
                "points": [{"name": p.name, "label": p.label, "overrides": p.overrides} for p in setting.points],
            }
            for setting in grid.settings
        ],
    }


def _check_existing_runs(grid: Grid, output_dir: Path) -> None:
    """Every run folder already there must hold the config planned now (a mismatch names the run)."""
    for setting in grid.settings:
        for point in setting.points:
            for seed in grid.seeds:
                paths = _paths(output_dir, setting.name, point.name, seed)
                if (paths.run_dir / "config.yaml").is_file():
                    _check_existing_config(paths, grid.run_config(setting, point, seed), output_dir)


def _resolve_grid(
    grid: Grid | str | os.PathLike | None,
    config: str | os.PathLike | None,
    presets: Sequence[str] | str | None,
    seeds: Sequence[int] | str | None,
    overrides: Mapping[str, Any] | None,
    profile: str | None,
) -> Grid:
    if (grid is None) == (config is None):
        raise ConfigError("give a grid file, or --config with --presets (not both)")
    if config is not None:
        if presets is None:
            raise ConfigError("--config needs --presets (e.g. --presets classp,adamw)")
        if profile is not None:
            raise ConfigError("--profile: profiles belong to grid files, not to --config")
        return grid_from_presets(config, presets, seeds=seeds, overrides=overrides)
    if presets is not None:
        raise ConfigError("--presets goes with --config; a grid file names its settings itself")
    if isinstance(grid, Grid):
        if seeds is not None or overrides or profile is not None:
            raise ConfigError("seeds, overrides and profile apply to a grid file; set them on the Grid itself")
        grid.check()
        return grid
    return load_grid(grid, profile=profile, seeds=seeds, overrides=overrides)


def _make_launcher(launcher: str | Launcher, jobs: int) -> tuple[Launcher, str, int | None]:
    if not isinstance(jobs, int) or isinstance(jobs, bool) or jobs < 1:
        raise ConfigError(f"--jobs: expected a positive integer, got {jobs!r}")
    if launcher == "subprocess":
        threads = max(1, available_cores() // jobs)
        if "OMP_NUM_THREADS" in os.environ:
            with contextlib.suppress(ValueError):
                threads = int(os.environ["OMP_NUM_THREADS"])
        return SubprocessLauncher(threads), "subprocess", threads
    if launcher == "inprocess":
        if jobs != 1:
            raise ConfigError("--jobs: runs in this process go one at a time; use subprocesses for --jobs > 1")
        return InProcessLauncher(), "inprocess", None
    if isinstance(launcher, str):
        raise ConfigError(f"launcher: expected subprocess or inprocess, got {launcher!r}")
    return launcher, type(launcher).__name__, None


def compare(
    grid: Grid | str | os.PathLike | None,
    output_dir: str | os.PathLike,
    *,
    config: str | os.PathLike | None = None,
    presets: Sequence[str] | str | None = None,
    seeds: Sequence[int] | str | None = None,
    overrides: Mapping[str, Any] | None = None,
    profile: str | None = None,
    jobs: int = 1,
    launcher: Literal["subprocess", "inprocess"] | Launcher = "subprocess",
    overwrite: bool = False,
    report_only: bool = False,
    log: bool = True,
) -> Comparison:
    """Runs a comparison (or continues one) and writes ``comparison.json``, ``comparison.md`` and the figures.

    Args:
        grid: a grid file, a :class:`~classp_hf.continual.compare_grid.Grid`, or `None` with ``config``.
        output_dir: the comparison folder (absent, empty, or a comparison folder to continue).
        config, presets: instead of a grid file: a base run config and shipped preset names (``"classp,adamw"``).
        seeds: replace the grid's seeds (``[0, 1, 2]`` or ``"0,1,2"``); grids run on the first.
        overrides: dotted keys applied over every setting's own (``{"validation_fraction": 0.2}``); a grid point's
            values still win.
        profile: a ``profiles:`` entry of the grid file (e.g. ``gpu``).
        jobs: runs at once (subprocesses, each with ``OMP_NUM_THREADS = max(1, cores // jobs)`` unless set).
        launcher: ``subprocess`` (default), ``inprocess`` (one at a time, in this process), or a :class:`Launcher`.
        overwrite: remove what an earlier comparison wrote into ``output_dir`` and start afresh.
        report_only: run nothing; report what the folder holds (runs not finished are ``pending``).
        log: progress lines and a bar over the runs, and the table at the end.

    Returns:
        The :class:`Comparison` (also in ``output_dir/comparison.json``).

    Raises:
        ConfigError, OutputDirError: bad input in one line (the grid, a preset, a key, a folder, a run made with
            another config), before anything is written or run.
    """
    from classp_hf.continual.compare_report import write_comparison

    grid = _resolve_grid(grid, config, presets, seeds, overrides, profile)
    runner, launcher_name, threads = _make_launcher(launcher, jobs)
    output_dir = Path(output_dir)
    check_output_dir(output_dir)
    if overwrite and report_only:
        raise ConfigError("--report-only reads an existing comparison; it cannot go with --overwrite")
    if not overwrite:
        _check_existing_runs(grid, output_dir)
    if overwrite and output_dir.is_dir():
        clear_outputs(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    if not report_only:
        write_json_atomic(output_dir / PLAN_FILENAME, _plan(grid))
    expected = sum(len(s.points) + len(grid.seeds) - 1 if len(s.points) > 1 else len(grid.seeds) for s in grid.settings)
    progress = _Progress(expected, log)
    execution = _Execution(grid, output_dir, None if report_only else runner, jobs, progress)
    try:
        execution.run()
    finally:
        progress.close()
    settings = [_setting_result(grid, setting, execution) for setting in grid.settings]
    records = list(execution.records.values())
    queue = _queue_sizes(grid, output_dir, settings)
    comparison = Comparison(
        source=grid.source,
        description=grid.description,
        base_config=str(grid.base_config),
        output_dir=str(output_dir),
        seeds=list(grid.seeds),
        tasks=[task["name"] for task in queue["tasks"]],
        queue=queue,
        environment=_environment(jobs, threads, launcher_name),
        settings=settings,
        wall_seconds=sum(r.wall_seconds or 0.0 for r in records),
        cpu_seconds=sum(r.cpu_seconds or 0.0 for r in records),
    )
    write_comparison(comparison.to_dict(), output_dir)
    if log:
        print("\n" + comparison.table(), flush=True)
    return comparison
