"""A comparison's folder: its marker, the paths of each run, and what a run folder holds.

``DIR/classp-hf-owner.json`` marks a comparison's folder (:mod:`~classp_hf.continual.ownership`); each run has its
folder, config, log and timing file (:func:`run_paths`); a run found there is ``absent``, ``finished``,
``unfinished`` (resumed) or ``broken`` (started afresh) (:func:`run_state`), and its record is read back from disk
(:func:`record_from_disk`). ``--overwrite`` removes only what the earlier comparison wrote (:func:`clear_outputs`).
"""

from __future__ import annotations

import contextlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from classp_hf.continual.checkpoint import RUN_STATE
from classp_hf.continual.compare.results import RunRecord, run_metrics
from classp_hf.continual.config import ConfigError, RunConfig, stored_config_differences
from classp_hf.continual.outputs import OutputDirError
from classp_hf.continual.ownership import (
    MARKER_FILENAME,
    FolderLock,
    Owner,
    activate,
    folder_entries,
    legacy_entries,
)

__all__ = [
    "CACHE_FOLDER",
    "COMPARE_OUTPUTS",
    "COMPARISON_FILENAME",
    "PLAN_FILENAME",
    "RunPaths",
    "RunState",
    "check_existing_config",
    "check_output_dir",
    "clear_outputs",
    "earlier_owner",
    "is_comparison_folder",
    "own_folder",
    "read_results",
    "read_timing",
    "record_from_disk",
    "run_paths",
    "run_state",
]

PLAN_FILENAME = "compare_plan.json"
COMPARISON_FILENAME = "comparison.json"
#: The cache its runs share (tokenized tasks, the untrained model's scores; see ``classp-hf run --cache-dir``).
CACHE_FOLDER = "cache"
#: The names ``compare`` writes at the top of its folder (besides its marker); ``--overwrite`` removes what its
#: marker's manifest lists under them (and the shared cache whole), nothing else.
COMPARE_OUTPUTS = (
    PLAN_FILENAME,
    COMPARISON_FILENAME,
    "comparison.md",
    "figures",
    "runs",
    "configs",
    "logs",
    CACHE_FOLDER,
)


def is_comparison_folder(path: Path) -> bool:
    """A comparison's marker, or the plan of an earlier classp_hf's comparison (no marker)."""
    owner = Owner.read(path) if path.is_dir() else None
    return owner.kind == "compare" if owner is not None else (path / PLAN_FILENAME).is_file()


def check_output_dir(output_dir: Path) -> None:
    """Refuses a file, or a non-empty folder that is not a comparison folder (nothing is written).

    Raises:
        OutputDirError: naming the folder.
    """
    if output_dir.exists() and not output_dir.is_dir():
        raise OutputDirError(f"--output-dir {output_dir} exists and is not a directory")
    if folder_entries(output_dir) and not is_comparison_folder(output_dir):
        raise OutputDirError(
            f"--output-dir {output_dir} is not empty and holds no comparison ({PLAN_FILENAME}); choose another folder"
        )


def earlier_owner(output_dir: Path) -> Owner | None:
    """The earlier comparison's marker (or one made up from an earlier classp_hf's plan), `None` if there is none."""
    owner = Owner.read(output_dir) if output_dir.is_dir() else None
    if owner is None:
        entries = legacy_entries(output_dir, "compare")
        if entries is not None:
            owner = Owner(output_dir, {"tool": "classp-hf", "kind": "compare", "written": entries})
    return owner


def clear_outputs(output_dir: Path) -> list[str]:
    """``--overwrite``: removes what the earlier comparison wrote (its marker's manifest; each of its runs through
    the run's own marker), nothing else; the plan first. Each run folder's lock is taken before anything goes.

    Raises:
        FolderBusyError: another process holds a run folder's lock (nothing removed).

    Returns:
        The paths removed, relative to ``output_dir``.
    """
    owner = earlier_owner(output_dir)
    if owner is None:
        return []
    # run folders: this version's (a marker) and an earlier classp_hf's (run_state.json, no marker)
    runs = output_dir / "runs"
    run_dirs = sorted({found.parent for name in (MARKER_FILENAME, RUN_STATE) for found in runs.rglob(name)})
    with contextlib.ExitStack() as locks:
        # every run folder's lock first: a `classp-hf run --resume` still writing into one of them stops this
        # (FolderBusyError, naming its pid) before anything is removed
        for run_dir in run_dirs:
            locks.enter_context(FolderLock(run_dir, what="run folder"))
        cache = output_dir / CACHE_FOLDER
        if owner.owns(cache) and cache.is_dir() and not cache.is_symlink():
            shutil.rmtree(cache)  # only caches live there (tokenized tasks, scores), written by the runs
        removed = owner.remove(output_dir / PLAN_FILENAME) + owner.clear()
    for run_dir in run_dirs:  # the folders the lock files kept, once empty, up to the comparison folder
        for folder in (run_dir, *run_dir.parents):
            if folder == output_dir or output_dir not in folder.parents:
                break
            try:
                folder.rmdir()
            except OSError:
                break
    return removed


def own_folder(output_dir: Path, overwrite: bool) -> Owner:
    """The comparison's marker, written before anything else (after ``--overwrite`` cleared the earlier one's
    outputs); a comparison continued keeps its marker, one of an earlier classp_hf gets one."""
    if overwrite:
        clear_outputs(output_dir)
        owner = Owner.create(output_dir, "compare")
    else:
        owner = Owner.read(output_dir)
        if owner is None:
            entries = legacy_entries(output_dir, "compare")
            owner = Owner.create(output_dir, "compare", entries or [], adopted=entries is not None)
    activate(owner)
    return owner


@dataclass(frozen=True)
class RunPaths:
    """Where one run's folder, resolved config, log and timing file (its attempts) live."""

    run_dir: Path
    config_path: Path
    log_path: Path
    timing_path: Path


def run_paths(output_dir: Path, setting: str, point: str, seed: int) -> RunPaths:
    """The paths of the run of ``setting`` at grid point ``point`` on ``seed`` in the comparison ``output_dir``."""
    tail = Path(setting) / point
    return RunPaths(
        run_dir=output_dir / "runs" / tail / f"seed{seed}",
        config_path=output_dir / "configs" / tail / f"seed{seed}.yaml",
        log_path=output_dir / "logs" / tail / f"seed{seed}.log",
        timing_path=output_dir / "logs" / tail / f"seed{seed}.json",
    )


def check_existing_config(paths: RunPaths, config: RunConfig, output_dir: Path) -> None:
    """A run already in the folder must have been made with the config planned now.

    Raises:
        ConfigError: its ``config.yaml`` differs, naming the run and the keys.
    """
    stored_path = paths.run_dir / "config.yaml"
    if not stored_path.is_file():
        return
    where = paths.run_dir.relative_to(output_dir)
    try:
        differ = stored_config_differences(config, stored_path)
    except ConfigError as error:
        differ = [f"everything: {error}"]
    if differ:
        raise ConfigError(
            f"run {where} in {output_dir} was made with another config (differs in {', '.join(differ[:4])}); "
            "remove that run folder to run it again, or pass --overwrite to start the comparison afresh"
        )


RunState = Literal["absent", "finished", "unfinished", "broken"]


def run_state(run_dir: Path) -> RunState:
    """What a run folder holds: nothing, a finished run, one to resume, or a broken one (run again afresh)."""
    from classp_hf.continual.checkpoint import ResumeError, read_run_state

    if not folder_entries(run_dir):
        return "absent"
    try:
        state = read_run_state(run_dir, require_checkpoint=False)  # a finished run needs no checkpoint
    except ResumeError:
        return "broken"
    if state.done(run_dir):
        results = read_results(run_dir)
        if results is not None and results.get("status") == "complete":
            return "finished"
    if state.checkpoint is not None and not state.checkpoint.is_dir():
        return "broken"  # nothing to resume from
    if state.checkpoint is None and state.completed_tasks > 0:
        return "broken"  # recorded finished, but its results are not
    return "unfinished"


def read_results(run_dir: Path) -> dict[str, Any] | None:
    """The run's ``results.json``, or `None` when it is missing or unreadable."""
    try:
        return json.loads((run_dir / "results.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def read_timing(path: Path) -> list[dict[str, Any]]:
    """The attempts recorded in a run's timing file (``[]`` when it is missing or unreadable)."""
    try:
        attempts = json.loads(path.read_text(encoding="utf-8")).get("attempts", [])
        return attempts if isinstance(attempts, list) else []
    except (OSError, ValueError, AttributeError):
        return []


def record_from_disk(output_dir: Path, setting: str, point: str, seed: int) -> RunRecord:
    """A run's record as its folder and timing file say (``pending`` unless it finished or its last attempt failed)."""
    paths = run_paths(output_dir, setting, point, seed)
    attempts = read_timing(paths.timing_path)
    record = RunRecord(setting, point, seed, str(paths.run_dir.relative_to(output_dir)), attempts=len(attempts))
    if attempts:
        record.wall_seconds = round(sum(float(a.get("wall_seconds", 0.0)) for a in attempts), 3)
        record.cpu_seconds = round(sum(float(a.get("cpu_seconds", 0.0)) for a in attempts), 3)
    if run_state(paths.run_dir) == "finished":
        results = read_results(paths.run_dir)
        record.status, record.metrics = "complete", run_metrics(results)
    elif attempts and not attempts[-1].get("ok", False):
        record.status, record.error = "failed", attempts[-1].get("error") or "failed"
    return record
