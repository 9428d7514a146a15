"""Per-task checkpoints of a continual run, and reading them back to resume it.

After each task the runner saves ``checkpoints/task-<i>-<name>/`` (the model or its adapters, the
tokenizer, ``optimizer.pt``, ``method.pt`` and, with diagnostics on, ``update_masks.pt``) and then
points ``run_state.json`` at it, atomically; the previous checkpoint is removed only after that. A
run killed at any moment therefore has a complete checkpoint named by ``run_state.json``, and
``classp-hf run CONFIG --output-dir DIR --resume`` continues with the next task.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from classp_hf.continual.config import RunConfig
from classp_hf.continual.io import write_json_atomic

__all__ = [
    "RUN_STATE",
    "ResumeError",
    "RunState",
    "check_same_config",
    "load_checkpoint",
    "read_run_state",
    "restore_adapters",
    "save_checkpoint",
]

RUN_STATE = "run_state.json"
OPTIMIZER_FILE = "optimizer.pt"
METHOD_FILE = "method.pt"
UPDATE_MASKS_FILE = "update_masks.pt"


class ResumeError(ValueError):
    """A run cannot be resumed (no run state, another config, a corrupt checkpoint); the message says which."""


@dataclass(frozen=True)
class RunState:
    """What ``run_state.json`` records: how many tasks are done and where their checkpoint is.

    Args:
        completed_tasks: tasks trained, evaluated and checkpointed.
        tasks: the queue's task names.
        checkpoint: the checkpoint folder (absolute).
    """

    completed_tasks: int
    tasks: list[str]
    checkpoint: Path


def save_checkpoint(
    output_dir: Path,
    index: int,
    task_names: list[str],
    model: Any,
    tokenizer: Any,
    optimizer: torch.optim.Optimizer,
    method_state: dict[str, Any],
    update_masks: dict[str, torch.Tensor] | None,
) -> Path:
    """Saves the state after task ``index`` and points ``run_state.json`` at it.

    Args:
        output_dir: the run's folder.
        index: the task just finished.
        task_names: the queue's task names.
        model: the model (a ``PeftModel`` saves all its adapters).
        tokenizer: saved beside the model so the folder loads on its own.
        optimizer: its ``state_dict()`` goes to ``optimizer.pt``.
        method_state: the continual method's ``state_dict()``.
        update_masks: CLASSP's union of updated elements so far (diagnostics), or `None`.

    Returns:
        The checkpoint folder.
    """
    name = f"task-{index:02d}-{task_names[index]}"
    folder = output_dir / "checkpoints" / name
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    torch.save(optimizer.state_dict(), folder / OPTIMIZER_FILE)
    torch.save(method_state, folder / METHOD_FILE)
    if update_masks is not None:
        torch.save(update_masks, folder / UPDATE_MASKS_FILE)
    previous = _previous_checkpoint(output_dir)
    write_json_atomic(
        output_dir / RUN_STATE,
        {"completed_tasks": index + 1, "tasks": list(task_names), "checkpoint": f"checkpoints/{name}"},
    )
    if previous is not None and previous != folder:
        shutil.rmtree(previous, ignore_errors=True)
    return folder


def _previous_checkpoint(output_dir: Path) -> Path | None:
    try:
        return read_run_state(output_dir).checkpoint
    except ResumeError:
        return None


def read_run_state(output_dir: Path) -> RunState:
    """Reads and checks ``run_state.json``.

    Raises:
        ResumeError: the file is missing, unreadable or inconsistent (naming it).
    """
    path = output_dir / RUN_STATE
    if not path.is_file():
        raise ResumeError(f"--resume: {output_dir} has no {RUN_STATE}; there is no run to resume there")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        completed, tasks, checkpoint = raw["completed_tasks"], raw["tasks"], raw["checkpoint"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ResumeError(f"--resume: {path} is corrupt ({type(error).__name__}: {error})") from None
    if not (isinstance(completed, int) and isinstance(tasks, list) and 0 < completed <= len(tasks)):
        raise ResumeError(f"--resume: {path} is corrupt (completed_tasks {completed!r} of {len(tasks)} tasks)")
    folder = output_dir / str(checkpoint)
    if not folder.is_dir():
        raise ResumeError(f"--resume: the checkpoint {folder} named by {path} is missing")
    return RunState(completed, [str(task) for task in tasks], folder)


def check_same_config(config: RunConfig, output_dir: Path) -> None:
    """Refuses to resume a run with another config than the one it started with.

    Raises:
        ResumeError: naming the top-level keys that differ from ``output_dir/config.yaml``.
    """
    path = output_dir / "config.yaml"
    try:
        stored = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as error:
        raise ResumeError(f"--resume: cannot read {path} ({type(error).__name__})") from None
    wanted = config.to_dict()
    if not isinstance(stored, dict):
        raise ResumeError(f"--resume: {path} is corrupt (not a mapping)")
    differ = sorted(key for key in set(wanted) | set(stored) if wanted.get(key) != stored.get(key))
    if differ:
        raise ResumeError(
            f"--resume: the config differs from the run's {path} in {', '.join(differ)}; "
            "resume with the same config, or start a new run"
        )


def load_checkpoint(folder: Path) -> dict[str, Any]:
    """Reads a checkpoint's optimizer state, method state and update masks (the model is loaded apart).

    Returns:
        ``{"optimizer": ..., "method": ..., "update_masks": ... or None}``.

    Raises:
        ResumeError: a missing or corrupt file, naming it.
    """
    loaded: dict[str, Any] = {}
    for key, file, required in (
        ("optimizer", OPTIMIZER_FILE, True),
        ("method", METHOD_FILE, True),
        ("update_masks", UPDATE_MASKS_FILE, False),
    ):
        path = folder / file
        if not path.is_file():
            if required:
                raise ResumeError(f"--resume: the checkpoint file {path} is missing")
            loaded[key] = None
            continue
        try:
            loaded[key] = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # torch raises many types for a damaged file
            first = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise ResumeError(f"--resume: the checkpoint file {path} is corrupt ({first})") from None
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
