"""``classp-hf compare``: settings side by side over seeds, grids chosen on validation accuracy.

A comparison (:class:`~classp_hf.continual.compare.grid.Grid`: a base config, settings, seeds) runs in one folder::

    DIR/classp-hf-owner.json                       the marker: a comparison's folder, and what it wrote (.ownership)
    DIR/compare_plan.json                          what is compared
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

This module plans and schedules; the parts: :mod:`.folder` (the folder's marker, each run's paths and state on
disk), :mod:`.grid` (grid files and presets), :mod:`.launch`
(launching one run), :mod:`.results` (a run's numbers, the choice of a grid point, the summary over seeds,
the :class:`Comparison` object) and :mod:`.report` (comparison.json, comparison.md, the figures).
"""

from __future__ import annotations

import contextlib
import os
import platform
import time
from collections import Counter, deque
from collections.abc import Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any, Literal

import yaml

from classp_hf.continual.compare.folder import (
    CACHE_FOLDER,
    COMPARISON_FILENAME,
    PLAN_FILENAME,
    check_existing_config,
    check_output_dir,
    is_comparison_folder,
    own_folder,
    read_results,
    read_timing,
    record_from_disk,
    run_paths,
    run_state,
)
from classp_hf.continual.compare.grid import Grid, GridPoint, Setting, grid_from_presets, load_grid
from classp_hf.continual.compare.launch import (
    Attempt,
    InProcessLauncher,
    Launcher,
    RunJob,
    SubprocessLauncher,
    available_cores,
    error_line,
)
from classp_hf.continual.compare.results import (
    COMPARISON_SCHEMA_VERSION,
    Comparison,
    PointResult,
    RunRecord,
    SettingResult,
    apply_references,
    run_metrics,
    select_point,
    summarize,
)
from classp_hf.continual.config import ConfigError
from classp_hf.continual.io import check_writable_folder, write_json_atomic, write_text_atomic
from classp_hf.continual.ownership import (
    FolderLock,
    deactivate,
    record_written,
)
from classp_hf.continual.versions import library_versions

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

_PREFIX = "[compare]"


# -- running --------------------------------------------------------------------------------------


class _Progress:
    """Progress lines (``[compare] 3/12 ...``) and a bar over the runs; silent when ``log`` is false."""

    def __init__(self, total: int, log: bool) -> None:
        self.log, self.total, self.done = log, total, 0
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

    def advance(self) -> str:
        """Counts a finished run; returns ``done/total``."""
        self.done += 1
        if self.bar is not None:
            self.bar.update(1)
        return f"{self.done}/{self.total}"

    def shrink(self, runs: int) -> None:
        """``runs`` fewer runs than planned (a setting whose every grid point failed)."""
        self.total -= runs
        if self.bar is not None and runs:
            self.bar.total = self.total
            self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100.0 * value:.1f}%"


class _Execution:
    """Schedules the runs: grids on the first seed, then the chosen points on the other seeds."""

    def __init__(
        self,
        grid: Grid,
        output_dir: Path,
        launcher: Launcher | None,
        schedule: dict[str, Any],
        progress: _Progress,
    ) -> None:
        self.grid, self.output_dir, self.launcher = grid, output_dir, launcher
        self.schedule, self.jobs = schedule, schedule["jobs"]
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
        paths = run_paths(self.output_dir, setting.name, point.name, seed)
        state = run_state(paths.run_dir)
        if state == "finished":
            return None
        config = self.grid.run_config(setting, point, seed)
        mode = {"absent": "start", "unfinished": "resume", "broken": "overwrite"}[state]
        return RunJob(
            setting.name,
            point,
            seed,
            config,
            paths.run_dir,
            paths.config_path,
            paths.log_path,
            mode,
            cache_dir=self.output_dir / CACHE_FOLDER,
        )

    # -- after a run
    def _finish(self, setting: Setting, point: GridPoint, seed: int, attempt: Attempt | None) -> RunRecord:
        paths = run_paths(self.output_dir, setting.name, point.name, seed)
        if attempt is not None:
            attempts = read_timing(paths.timing_path) + [
                {
                    "ok": attempt.ok,
                    "error": attempt.error,
                    "wall_seconds": round(attempt.wall_seconds, 3),
                    "cpu_seconds": round(attempt.cpu_seconds, 3),
                    "returncode": attempt.returncode,
                    "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
                    **self.schedule,  # what the run shared the machine with: its timing means little without it
                }
            ]
            write_json_atomic(paths.timing_path, {"attempts": attempts})
        record = record_from_disk(self.output_dir, setting.name, point.name, seed)
        if attempt is not None and attempt.ok and not record.complete:  # the run said it finished; its folder not
            record.status, record.error = "failed", "the run ended without complete results"
        self.records[(setting.name, point.name, seed)] = record
        self._report(record, point, attempt, self.progress.advance())
        if seed == self.grid.seeds[0] and len(setting.points) > 1:
            self._maybe_select(setting)
        return record

    def _report(self, record: RunRecord, point: GridPoint, attempt: Attempt | None, count: str) -> None:
        at = "" if point.name == "default" else f" {point.label}"
        title = f"{count} {record.setting}{at} seed {record.seed}"
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
        others = list(self.grid.seeds[1:])
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
        record_written(job.run_dir, job.log_path)  # the run's folder (the run records its files) and its log
        _write_config(job)
        how = {"start": "start", "resume": "resume (killed earlier)", "overwrite": "start afresh"}[job.mode]
        self.progress.line(f"{job.title}: {how}")
        if run_now:
            self._finish(setting, point, seed, self._launch(job))
        return job

    def _launch(self, job: RunJob) -> Attempt:
        """The launcher's attempt; a launcher that raises (no log file, no interpreter) gives a failed attempt."""
        try:
            return self.launcher.launch(job)
        except Exception as error:  # KeyboardInterrupt still ends the comparison
            return Attempt(False, error_line(error), 0.0, 0.0)

    def _run_parallel(self) -> None:
        running: dict[Future, tuple[Setting, GridPoint, int]] = {}
        with ThreadPoolExecutor(max_workers=self.jobs) as pool:
            try:
                while self.queue or running:
                    while self.queue and len(running) < self.jobs:
                        item = self.queue.popleft()
                        job = self._step(*item, run_now=False)
                        if job is not None:
                            running[pool.submit(self._launch, job)] = item
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


def _schedules(output_dir: Path, records: Sequence[RunRecord]) -> list[dict[str, Any]]:
    """How the runs' attempts were scheduled (launcher, jobs, threads per job), most run first, with counts."""
    counts: Counter[tuple[str, int, int | None]] = Counter()
    for record in records:
        for attempt in read_timing(run_paths(output_dir, record.setting, record.point, record.seed).timing_path):
            if isinstance(attempt, dict) and isinstance(attempt.get("jobs"), int):
                counts[(str(attempt.get("launcher")), attempt["jobs"], attempt.get("threads_per_job"))] += 1
    return [
        {"launcher": launcher, "jobs": jobs, "threads_per_job": threads, "attempts": n}
        for (launcher, jobs, threads), n in counts.most_common()
    ]


def _environment(schedule: dict[str, Any], schedules: list[dict[str, Any]]) -> dict[str, Any]:
    """The machine and versions, and the schedule the runs ran under (this invocation's when none is recorded).

    Args:
        schedule: this invocation's launcher, jobs and threads per job.
        schedules: the schedules recorded with the runs' attempts (:func:`_schedules`), most used first; a
            comparison continued with another ``--jobs``, or reported with ``--report-only``, keeps what its runs
            really ran under.
    """
    import torch

    accelerator = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    main = {key: schedules[0][key] for key in ("launcher", "jobs", "threads_per_job")} if schedules else schedule
    return {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor() or None,
        "cpu_cores": available_cores(),
        "accelerator": accelerator,
        **main,
        "schedules": schedules,
        "versions": library_versions(peft=False),
    }


def _queue_sizes(grid: Grid, output_dir: Path, settings: Sequence[SettingResult]) -> dict[str, Any]:
    """The queue's sizes: from the first setting's config, and per task from the first complete run."""
    first = grid.settings[0]
    config = grid.run_config(first, first.points[0], grid.seeds[0])
    tasks: list[dict[str, Any]] = [{"name": task.name} for task in config.tasks]
    complete = [r for s in settings if not s.is_reference for r in [p.run for p in s.points] + s.runs if r.complete]
    results = read_results(output_dir / complete[0].run_dir) if complete else None  # a joint run has one stage
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
    mode = grid.run_config(setting, setting.points[0], first).queue_mode
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
                record = record_from_disk(execution.output_dir, setting.name, chosen, seed)
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
        mode=mode,
    )


def _check_reference(grid: Grid, reference: str | None) -> str:
    """The reference setting's name (default: the first setting).

    Raises:
        ConfigError: no setting of that name.
    """
    names = [setting.name for setting in grid.settings]
    if reference is None:
        return names[0]
    if reference not in names:
        raise ConfigError(f"--reference {reference}: no setting of that name (settings: {', '.join(names)})")
    return reference


def _noise(output_dir: Path, settings: Sequence[SettingResult], reference: str, tasks: list[str]) -> dict[str, Any]:
    """Fills each setting's ``versus_reference`` (the paired bootstrap against ``reference``); returns the method."""
    from classp_hf.continual.compare.noise import BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED, CONFIDENCE, paired_difference
    from classp_hf.continual.predictions import read_predictions

    def predictions(setting: SettingResult) -> dict[int, dict[str, Any] | None]:
        return {r.seed: read_predictions(output_dir / r.run_dir) for r in setting.runs if r.complete}

    base = next(setting for setting in settings if setting.name == reference)
    theirs = predictions(base)
    for setting in settings:
        if setting.name == reference:
            setting.versus_reference = None
            continue
        difference, why = paired_difference(predictions(setting), theirs, tasks)
        setting.versus_reference = difference.to_dict() if difference is not None else {"note": why}
    return {
        "reference": reference,
        "method": "test examples resampled within each seed and task (the same draw for both settings), the ACC "
        "difference averaged over the seeds both finished (seeds pooled, not resampled), percentile interval",
        "resamples": BOOTSTRAP_RESAMPLES,
        "seed": BOOTSTRAP_SEED,
        "confidence": CONFIDENCE,
    }


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
                paths = run_paths(output_dir, setting.name, point.name, seed)
                if (paths.run_dir / "config.yaml").is_file():
                    check_existing_config(paths, grid.run_config(setting, point, seed), output_dir)


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
    reference: str | None = None,
    jobs: int = 1,
    launcher: Literal["subprocess", "inprocess"] | Launcher = "subprocess",
    overwrite: bool = False,
    report_only: bool = False,
    log: bool = True,
) -> Comparison:
    """Runs a comparison (or continues one) and writes ``comparison.json``, ``comparison.md`` and the figures.

    Args:
        grid: a grid file, a :class:`~classp_hf.continual.compare.grid.Grid`, or `None` with ``config``.
        output_dir: the comparison folder (absent, empty, or a comparison folder to continue).
        config, presets: instead of a grid file: a base run config and shipped preset names (``"classp,adamw"``).
        seeds: replace the grid's seeds (``[0, 1, 2]`` or ``"0,1,2"``); grids run on the first.
        overrides: dotted keys applied over every setting's own (``{"validation_fraction": 0.2}``); a grid point's
            values still win.
        profile: a ``profiles:`` entry of the grid file (e.g. ``gpu``).
        reference: the setting every other one is compared with, paired over seeds and test examples (default:
            the first setting); see :mod:`.noise`.
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
        FolderBusyError: another live process writes into ``output_dir`` (naming its pid).
    """
    grid = _resolve_grid(grid, config, presets, seeds, overrides, profile)
    reference = _check_reference(grid, reference)
    runner, launcher_name, threads = _make_launcher(launcher, jobs)
    output_dir = check_writable_folder(output_dir)
    check_output_dir(output_dir)  # before the lock creates the folder: a file in the way is named as such
    lock = FolderLock(output_dir).acquire()  # a second comparison on the folder is refused here, at once
    owner = None
    try:
        check_output_dir(output_dir)
        if report_only and (overwrite or not is_comparison_folder(output_dir)):
            raise ConfigError(
                f"--report-only reads the comparison in --output-dir {output_dir}: there is none (or --overwrite was "
                "given)"
            )
        if not overwrite:
            _check_existing_runs(grid, output_dir)
        owner = own_folder(output_dir, overwrite)
        return _compare(grid, output_dir, runner, launcher_name, threads, jobs, report_only, log, reference)
    finally:
        deactivate(owner)
        lock.release()


def _compare(
    grid: Grid,
    output_dir: Path,
    runner: Launcher,
    launcher_name: str,
    threads: int | None,
    jobs: int,
    report_only: bool,
    log: bool,
    reference: str,
) -> Comparison:
    from classp_hf.continual.compare.report import format_table, write_comparison

    if not report_only:  # marks the folder as a comparison before any run starts
        write_json_atomic(output_dir / PLAN_FILENAME, _plan(grid))
        record_written(output_dir / CACHE_FOLDER)  # the runs fill it from their processes: it is cleared whole
    expected = sum(len(s.points) + len(grid.seeds) - 1 if len(s.points) > 1 else len(grid.seeds) for s in grid.settings)
    progress = _Progress(expected, log)
    schedule = {"launcher": launcher_name, "jobs": jobs, "threads_per_job": threads}
    execution = _Execution(grid, output_dir, None if report_only else runner, schedule, progress)
    try:
        execution.run()
    finally:
        progress.close()
    settings = [_setting_result(grid, setting, execution) for setting in grid.settings]
    records = list(execution.records.values())
    queue = _queue_sizes(grid, output_dir, settings)
    task_names = [task["name"] for task in queue["tasks"]]
    reference_settings = apply_references(settings, task_names)
    noise = _noise(output_dir, settings, reference, task_names)
    comparison = Comparison(
        source=grid.source,
        description=grid.description,
        base_config=str(grid.base_config),
        output_dir=str(output_dir),
        seeds=list(grid.seeds),
        tasks=[task["name"] for task in queue["tasks"]],
        queue=queue,
        environment=_environment(schedule, _schedules(output_dir, records)),
        settings=settings,
        wall_seconds=sum(r.wall_seconds or 0.0 for r in records),
        cpu_seconds=sum(r.cpu_seconds or 0.0 for r in records),
        noise=noise,
        reference_settings=reference_settings,
    )
    write_comparison(comparison.to_dict(), output_dir)
    if log:
        print("\n" + format_table(comparison.to_dict()), flush=True)
    return comparison
