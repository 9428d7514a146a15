"""Per-task checkpoints of a continual run, and resuming a run from them.

When a run starts, ``run_state.json`` records that no task is done yet (so a run killed during its first task
can be resumed: it starts that task again). After each task the runner saves ``checkpoints/task-<i>-<name>/``
(only what ``--resume`` reads: the model's weights and config or its adapters, ``optimizer.pt``: the optimizer's full
state keyed by parameter name, ``method.pt`` and, with diagnostics on, ``update_masks.pt``; the tokenizer comes from
the config's model) into a temporary folder renamed into place, then points ``run_state.json`` at it, atomically; the
previous checkpoint is removed only after that. A run killed at any moment therefore has a complete checkpoint named
by ``run_state.json`` (or none yet), and ``classp-hf run CONFIG --output-dir DIR --resume`` continues with the next
task. What a kill left half-written (temporary files, a half-deleted old checkpoint) is removed when the run resumes.

Once the final model is saved (or skipped, ``save_final_model: false``), :func:`finish_run_state` records the run
finished (``"finished": true``): from then on it counts as finished whatever the user later removes (its final model
or its last checkpoint, to save room). With ``keep_last_checkpoint: false`` the last task's checkpoint is not
written, and :func:`finish_run_state` records no checkpoint (``"checkpoint": null``) and removes the one before.
``run_state.json`` from an earlier classp_hf has no ``finished``: such a run is finished when it records no checkpoint
after its last task, or when its final model is complete.
"""

from __future__ import annotations

import contextlib
import json
import pickle
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from classp_hf.continual.config import RunConfig, stored_config_differences
from classp_hf.continual.errors import ConfigError, ResumeError
from classp_hf.continual.io import first_line, write_failure, write_json_atomic
from classp_hf.continual.optimizer_state import check_named_state
from classp_hf.continual.outputs import is_complete_model, remove_stray_files, replace_folder, temporary_folder
from classp_hf.continual.ownership import remove_owned
from classp_hf.continual.results import RESULTS_FILENAME, ResultsVersionError, RunResults, stage_names

__all__ = [
    "RUN_STATE",
    "ResumeError",
    "RunState",
    "ResumePoint",
    "check_same_config",
    "finish_run_state",
    "load_checkpoint",
    "read_run_state",
    "restore_adapters",
    "save_checkpoint",
    "start_run_state",
]

RUN_STATE = "run_state.json"
OPTIMIZER_FILE = "optimizer.pt"
METHOD_FILE = "method.pt"
UPDATE_MASKS_FILE = "update_masks.pt"
#: A checkpoint's states beside the model: the key :func:`save_checkpoint` takes and :func:`load_checkpoint` returns,
#: the file, and whether every checkpoint has one (update masks only with ``diagnostics``).
_STATE_FILES = (
    ("optimizer", OPTIMIZER_FILE, True),
    ("method", METHOD_FILE, True),
    ("update_masks", UPDATE_MASKS_FILE, False),
)


@dataclass(frozen=True)
class RunState:
    """What ``run_state.json`` records: how many tasks are done and where their checkpoint is.

    Args:
        completed_tasks: tasks trained, evaluated and checkpointed (0 while the first task trains).
        tasks: the queue's task names.
        checkpoint: the checkpoint folder (absolute), or `None` before the first one (and, with
            ``keep_last_checkpoint: false``, once the run has finished).
        num_processes: the world size that wrote it.
        finished: every task is done and the final model saved (or skipped): nothing is left to do.
    """

    completed_tasks: int
    tasks: list[str]
    checkpoint: Path | None
    num_processes: int = 1
    finished: bool = False

    def done(self, output_dir: Path) -> bool:
        """Nothing is left to do: the run recorded itself finished, or (``run_state.json`` of an earlier classp_hf)
        every task is checkpointed and the final model in ``output_dir`` is saved completely."""
        return self.finished or self.completed_tasks == len(self.tasks) and is_complete_model(output_dir / "model")


def _write_run_state(
    output_dir: Path,
    completed: int,
    task_names: list[str],
    checkpoint: str | None,
    num_processes: int,
    finished: bool = False,
) -> None:
    """Writes ``run_state.json`` (see :class:`RunState`) atomically."""
    record = {"completed_tasks": completed, "tasks": list(task_names), "checkpoint": checkpoint}
    write_json_atomic(output_dir / RUN_STATE, {**record, "num_processes": num_processes, "finished": finished})


def start_run_state(output_dir: Path, task_names: list[str], num_processes: int) -> None:
    """Records a started run with no task done yet (``--resume`` then starts the first task again)."""
    _write_run_state(output_dir, 0, task_names, None, num_processes)


def save_checkpoint(
    output_dir: Path,
    index: int,
    task_names: list[str],
    save_model: Any,
    states: Mapping[str, Any],
    num_processes: int = 1,
) -> Path:
    """Saves the state after task ``index`` and points ``run_state.json`` at it (main process only).

    Args:
        output_dir: the run's folder.
        index: the task just finished.
        task_names: the queue's task names.
        save_model: writes the model (or its adapters) into the folder it is given.
        states: what :func:`load_checkpoint` returns: ``optimizer``, the full, name-keyed optimizer state (see
            :mod:`.optimizer_state`); ``method``, the continual method's ``state_dict()``; ``update_masks``, CLASSP's
            union of updated elements so far (diagnostics), or `None`.
        num_processes: the world size (recorded; a run may resume with another).

    Returns:
        The checkpoint folder.
    """
    name = f"task-{index:02d}-{task_names[index]}"
    folder = output_dir / "checkpoints" / name
    tmp = temporary_folder(folder.parent, name)
    try:
        save_model(tmp)
        for key, file, required in _STATE_FILES:
            if required or states.get(key) is not None:
                torch.save(states[key], tmp / file)
        replace_folder(tmp, folder)
    except Exception as error:  # a full disk, mostly: the run stops, the previous checkpoint stays usable
        shutil.rmtree(tmp, ignore_errors=True)
        raise write_failure(folder, error, "the checkpoint") from error
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    previous = _previous_checkpoint(output_dir)
    _write_run_state(output_dir, index + 1, task_names, f"checkpoints/{name}", num_processes)
    if previous is not None and previous.resolve() != folder.resolve():
        with contextlib.suppress(OSError):
            remove_owned(previous)  # what the run wrote there; a user's files stay
    return folder


def finish_run_state(
    output_dir: Path, task_names: list[str], num_processes: int = 1, keep_checkpoint: bool = False
) -> None:
    """Records the run finished; without ``keep_checkpoint`` (``keep_last_checkpoint: false``) it records no
    checkpoint, then removes the last one.

    Call it once the final model is saved (or skipped): from then on nothing is left to resume.
    """
    previous = _previous_checkpoint(output_dir)
    kept = None
    if keep_checkpoint and previous is not None:
        kept = previous.relative_to(output_dir).as_posix() if previous.is_relative_to(output_dir) else str(previous)
    _write_run_state(output_dir, len(task_names), task_names, kept, num_processes, finished=True)
    if previous is not None and not keep_checkpoint:
        with contextlib.suppress(OSError):
            remove_owned(previous)  # what the run wrote there; a user's files stay
    checkpoints = output_dir / "checkpoints"
    if checkpoints.is_dir() and not any(checkpoints.iterdir()):
        checkpoints.rmdir()


def _previous_checkpoint(output_dir: Path) -> Path | None:
    try:
        return read_run_state(output_dir).checkpoint
    except ResumeError:
        return None


def read_run_state(output_dir: Path, require_checkpoint: bool = True) -> RunState:
    """Reads and checks ``run_state.json``.

    Args:
        output_dir: the run's folder.
        require_checkpoint: refuse an unfinished run's state whose checkpoint folder is gone (what resuming needs);
            `False` for asking how far a run got. A finished run needs no checkpoint (it may have been deleted to
            save room).

    Raises:
        ResumeError: the file is missing, unreadable or inconsistent (naming it).
    """
    path = output_dir / RUN_STATE
    if not path.is_file():
        raise ResumeError(f"--resume: {output_dir} has no {RUN_STATE}; there is no run to resume there")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        completed, tasks, checkpoint = raw["completed_tasks"], raw["tasks"], raw["checkpoint"]
        processes = raw.get("num_processes", 1)
        finished = raw.get("finished")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise ResumeError(f"--resume: {path} is corrupt ({type(error).__name__}: {error})") from None
    if not (isinstance(completed, int) and isinstance(tasks, list) and 0 <= completed <= len(tasks)):
        raise ResumeError(f"--resume: {path} is corrupt (completed_tasks {completed!r} of {len(tasks)} tasks)")
    if finished is None:  # an earlier classp_hf: a finished run without a checkpoint (keep_last_checkpoint: false)
        finished = checkpoint is None and completed == len(tasks) > 0
    if not isinstance(finished, bool) or finished and completed != len(tasks):
        raise ResumeError(
            f"--resume: {path} is corrupt (finished {finished!r} after {completed} of {len(tasks)} tasks)"
        )
    if (completed == 0) != (checkpoint is None) and not (finished and checkpoint is None):
        raise ResumeError(f"--resume: {path} is corrupt (completed_tasks {completed}, checkpoint {checkpoint!r})")
    folder = None
    if checkpoint is not None:
        folder = output_dir / str(checkpoint)
        if require_checkpoint and not finished and not folder.is_dir():  # a finished run needs none
            raise ResumeError(f"--resume: the checkpoint {folder} named by {path} is missing")
    return RunState(completed, [str(task) for task in tasks], folder, int(processes), finished)


def check_same_config(config: RunConfig, output_dir: Path) -> None:
    """Refuses to resume a run with another config than the one it started with.

    Raises:
        ResumeError: naming the keys that differ from ``output_dir/config.yaml`` (see
            :func:`~classp_hf.continual.config.stored_config_differences`).
    """
    path = output_dir / "config.yaml"
    try:
        differ = stored_config_differences(config, path)
    except ConfigError as error:
        raise ResumeError(f"--resume: {error}") from None
    if differ:
        raise ResumeError(
            f"--resume: the config differs from the run's {path} in {', '.join(differ)}; "
            "resume with the same config, or start a new run"
        )


def _load_file(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:  # torch's weights_only loader: one paragraph of advice, then the cause
        found = re.search(r"GLOBAL ([\w.]+)", str(error))
        if found is None:
            raise ResumeError(f"--resume: the checkpoint file {path} is corrupt ({_unpickling_cause(error)})") from None
        raise ResumeError(
            f"--resume: the checkpoint file {path} refused: not a plain tensor file (it would load "
            f"{found.group(1)}; a run writes only tensors and plain data, so this file is not a run's)"
        ) from None
    except Exception as error:  # torch raises many types for a damaged file
        raise ResumeError(f"--resume: the checkpoint file {path} is corrupt ({first_line(error)})") from None


def _unpickling_cause(error: BaseException) -> str:
    """The cause in torch's weights_only message (the line after its advice), else its first line."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    causes = [line for line in lines[1:] if not line.startswith(("Check the documentation", "Please file an issue"))]
    return causes[0] if causes else first_line(error)


def load_checkpoint(folder: Path) -> dict[str, Any]:
    """Reads a checkpoint's optimizer state, method state and update masks (the model is loaded apart).

    Returns:
        ``{"optimizer": ..., "method": ..., "update_masks": ... or None}``.

    Raises:
        ResumeError: a missing or corrupt file, or an optimizer state of an older classp_hf, naming it.
    """
    loaded: dict[str, Any] = {}
    for key, file, required in _STATE_FILES:
        path = folder / file
        if not path.is_file():
            if required:
                raise ResumeError(f"--resume: the checkpoint file {path} is missing")
            loaded[key] = None
            continue
        loaded[key] = _load_file(path)
    try:
        check_named_state(loaded["optimizer"], str(folder / OPTIMIZER_FILE))
    except ValueError as error:
        raise ResumeError(
            f"--resume: {error}: it was written by an older classp_hf; finish that run with the version that "
            "started it, or start a new run"
        ) from None
    return loaded


def restore_adapters(model: Any, folder: Path, adapter_names: list[str]) -> None:
    """Loads every adapter's weights (LoRA matrices and head copy) from a ``PeftModel`` checkpoint.

    PEFT saves the adapter named ``default`` at the folder's top and any other one in a subfolder
    of its name.

    Raises:
        ResumeError: an adapter's weights are missing, corrupt or do not fit the model.
    """
    from peft import set_peft_model_state_dict
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    for name in adapter_names:
        path = (folder if name == "default" else folder / name) / "adapter_model.safetensors"
        if not path.is_file():
            raise ResumeError(f"--resume: the adapter weights {path} are missing")
        try:
            state = load_file(path)
        except (SafetensorError, OSError) as error:
            raise ResumeError(f"--resume: the adapter weights {path} are corrupt ({error})") from None
        result = set_peft_model_state_dict(model, state, adapter_name=name)
        if result.unexpected_keys:
            raise ResumeError(f"--resume: {path} does not fit the model (e.g. {result.unexpected_keys[0]})")


@dataclass
class ResumePoint:
    """Where a run stopped, read and checked before anything is loaded.

    Args:
        output_dir: the run's folder.
        run_state: its ``run_state.json``.
        results: the results so far (`None` when no task was finished).
        files: the checkpoint's optimizer state, method state and update masks (`None` before the first task).
    """

    output_dir: Path
    run_state: RunState
    results: RunResults | None
    files: dict[str, Any] | None

    @property
    def completed_tasks(self) -> int:
        return self.run_state.completed_tasks

    @classmethod
    def read(cls, output_dir: Path, config: RunConfig) -> ResumePoint:
        """Reads and checks the run state, the config, the checkpoint files and the results so far.

        Raises:
            ResumeError: a file is missing or corrupt, or the config is not the run's, naming the file.
        """
        run_state = read_run_state(output_dir)
        check_same_config(config, output_dir)
        names = stage_names([task.name for task in config.tasks], config.queue_mode)
        if run_state.tasks != names:
            raise ResumeError(f"--resume: {RUN_STATE} lists the tasks {run_state.tasks}, the config {names}")
        if run_state.checkpoint is None and run_state.completed_tasks == 0:
            return cls(output_dir, run_state, None, None)
        files = None if run_state.checkpoint is None or run_state.finished else load_checkpoint(run_state.checkpoint)
        path = output_dir / RESULTS_FILENAME
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise ResumeError(f"--resume: {path} is missing or corrupt ({type(error).__name__})") from None
        try:
            results = RunResults.from_dict(raw, str(path))
        except ResultsVersionError as error:
            raise ResumeError(f"--resume: {error}") from None
        if results.trained < run_state.completed_tasks:
            raise ResumeError(
                f"--resume: {path} has {results.trained} rows, {RUN_STATE} says {run_state.completed_tasks} "
                "tasks are done"
            )
        return cls(output_dir, run_state, results, files)

    def finished(self) -> bool:
        """Nothing is left to do (:meth:`RunState.done`)."""
        return self.run_state.done(self.output_dir)

    def clean_up(self) -> list[str]:
        """Removes what a kill left half-written: temporary files and checkpoints other than the current one."""
        return remove_stray_files(self.output_dir, keep_checkpoint=self.run_state.checkpoint)
