"""The files and folders a run writes into its output folder, and the checks and clean-ups around them.

A run folder is owned through its marker (:mod:`.ownership`): ``--overwrite`` removes what the marker's manifest
lists and nothing else, a non-empty folder without a marker (and not written by an earlier classp_hf) is refused,
and a resumed run removes what a kill left half-written. Folders the run saves whole (the model, a checkpoint, an
adapter) replace their earlier copy by a rename, or file by file when a user's files are in it (they stay).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from classp_hf.continual.errors import OutputDirError
from classp_hf.continual.io import current_umask, write_failure
from classp_hf.continual.ownership import (
    _CHECKPOINT,
    LEGACY_RUN_FILES,
    MARKER_FILENAME,
    TEMP_PREFIX,
    Owner,
    activate,
    active_owner,
    folder_entries,
    legacy_entries,
)

__all__ = [
    "RUN_OUTPUTS",
    "OutputDirError",
    "adopt_run_folder",
    "prepare_output_dir",
    "clear_run_outputs",
    "remove_stray_files",
    "replace_folder",
    "save_model_atomic",
    "start_run_folder",
    "is_complete_model",
    "temporary_folder",
]

#: The names a run writes at the top of its output folder (besides its marker).
RUN_OUTPUTS = (*LEGACY_RUN_FILES, "checkpoints", "model", "adapters", "merged", "trainer", "logs")
_TEMP_PREFIX = TEMP_PREFIX


def prepare_output_dir(output_dir: str | os.PathLike, overwrite: bool) -> Path:
    """Checks that ``output_dir`` is absent, empty, or a run's folder that may be overwritten. Writes nothing.

    A non-empty folder is a run's when it holds a run marker, or ``run_state.json`` of an earlier classp_hf;
    any other non-empty folder is refused, ``--overwrite`` or not.

    Raises:
        OutputDirError: a file in the way, a folder that is not a run's, or a run's folder without ``overwrite``.
    """
    path = Path(output_dir)
    if path.exists() and not path.is_dir():
        raise OutputDirError(f"--output-dir {path} exists and is not a directory")
    if not folder_entries(path):
        return path
    owner = Owner.read(path)
    if owner is not None and owner.kind != "run" or owner is None and (path / "compare_plan.json").is_file():
        raise OutputDirError(f"--output-dir {path} holds a comparison, not a run; choose another folder")
    if owner is None and legacy_entries(path) is None:
        raise OutputDirError(
            f"--output-dir {path} is not empty and holds no classp-hf run (no {MARKER_FILENAME}); choose another folder"
        )
    if not overwrite:
        hint = "pass --resume to continue its run, or " if (path / "run_state.json").exists() else "pass "
        raise OutputDirError(f"--output-dir {path} is not empty; {hint}--overwrite to start afresh")
    return path


def _earlier_owner(output_dir: Path) -> Owner | None:
    """The folder's owner as its marker says, or as an earlier classp_hf's names say; `None` for neither."""
    owner = Owner.read(output_dir)
    if owner is None:
        entries = legacy_entries(output_dir)
        if entries is not None:
            owner = Owner(output_dir, {"tool": "classp-hf", "kind": "run", "written": entries})
    return owner


def clear_run_outputs(output_dir: Path) -> list[str]:
    """``--overwrite``: removes what the folder's earlier run wrote (its marker's manifest) and temporary files.

    The run state goes first, so a kill half-way leaves a folder that ``--resume`` refuses rather than continues.

    Returns:
        The paths removed, relative to ``output_dir``.
    """
    owner = _earlier_owner(output_dir) if output_dir.is_dir() else None
    removed = []
    if owner is not None:
        removed += owner.remove(output_dir / "run_state.json")
        removed += owner.clear()
    removed.extend(remove_stray_files(output_dir, owner=owner))
    return removed


def start_run_folder(output_dir: Path) -> Owner:
    """A new run: clears what an earlier run wrote (``--overwrite``), then writes the folder's new marker (a new run
    id) before anything else and records the run's writes into it from now on."""
    clear_run_outputs(output_dir)
    owner = Owner.create(output_dir, "run")
    activate(owner)
    return owner


def adopt_run_folder(output_dir: Path) -> Owner:
    """``--resume``: records into the folder's marker; a folder of an earlier classp_hf gets one (its manifest from
    the names that version wrote)."""
    owner = Owner.read(output_dir)
    if owner is None:
        owner = Owner.create(output_dir, "run", legacy_entries(output_dir) or [], adopted=True)
    activate(owner)
    return owner


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def remove_stray_files(output_dir: Path, keep_checkpoint: Path | None = None, owner: Owner | None = None) -> list[str]:
    """Removes what a kill can leave behind: temporary files of atomic writes, half-saved models, and
    checkpoints other than ``keep_checkpoint`` (the one ``run_state.json`` names).

    A checkpoint is the run's when the folder's manifest lists it (or, with no active marker, when it is named
    ``task-NN-<task>``); anything else in ``checkpoints/`` is a user's and stays.

    Args:
        output_dir: the run folder.
        keep_checkpoint: the checkpoint to keep.
        owner: whose manifest says what is the run's (default: the active owner of the folder).

    Returns:
        The paths removed, relative to ``output_dir``.
    """
    removed = []
    if not output_dir.is_dir():
        return removed
    for folder in (output_dir, output_dir / "adapters", output_dir / "merged", output_dir / "checkpoints"):
        if not folder.is_dir():
            continue
        for item in folder.iterdir():
            if item.name.startswith(_TEMP_PREFIX) or (item.name.startswith(".") and item.name.endswith(".tmp")):
                _remove(item)
                removed.append(str(item.relative_to(output_dir)))
    checkpoints = output_dir / "checkpoints"
    if checkpoints.is_dir():
        owner = owner or active_owner(checkpoints)
        keep = keep_checkpoint.resolve() if keep_checkpoint is not None else None
        for item in checkpoints.iterdir():
            if item.resolve() == keep:
                continue
            if owner is not None and owner.owns(item):
                removed += owner.remove(item)
            elif owner is None and _CHECKPOINT.fullmatch(item.name):
                _remove(item)
                removed.append(str(item.relative_to(output_dir)))
    return removed


_WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


def is_complete_model(folder: Path) -> bool:
    """Whether ``folder`` holds a saved model: ``config.json`` and a weights file."""
    return (folder / "config.json").is_file() and any((folder / name).is_file() for name in _WEIGHT_FILES)


def save_model_atomic(model: Any, tokenizer: Any, folder: Path, *, state_dict: dict[str, Any] | None = None) -> Path:
    """Saves a model and its tokenizer into a temporary folder beside ``folder``, then moves it into place
    (:func:`replace_folder`).

    A kill during the save leaves no ``folder`` (or the old one), never a half-written one. ``state_dict``: the
    gathered full state dict to save instead of the model's own (sharded backends).
    """
    tmp = temporary_folder(folder.parent, folder.name)
    try:
        model.save_pretrained(tmp, **({"state_dict": state_dict} if state_dict is not None else {}))
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        replace_folder(tmp, folder)
    except Exception as error:  # a full disk, mostly: the checkpoint stays, so --resume saves the model again
        shutil.rmtree(tmp, ignore_errors=True)
        raise write_failure(folder, error, "the model") from error
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def _weights_last(item: Path) -> tuple[bool, str]:
    return item.name in _WEIGHT_FILES or item.suffix in (".safetensors", ".bin"), item.name


def _holds_foreign(folder: Path, owner: Owner | None) -> bool:
    """Whether ``folder`` holds anything its owner did not write (with no owner: anything at all)."""
    for item in folder.rglob("*"):
        if item.name.startswith(_TEMP_PREFIX):
            continue
        if owner is None or not owner.owns(item):
            return True
    return False


def _merge_into(source: Path, folder: Path) -> None:
    folder.mkdir(exist_ok=True)
    for item in sorted(source.iterdir(), key=_weights_last):  # the weights last: complete only when all is there
        target = folder / item.name
        if item.is_dir() and target.is_dir() and not target.is_symlink():
            _merge_into(item, target)
        else:
            os.replace(item, target)
    shutil.rmtree(source, ignore_errors=True)


def replace_folder(source: Path, folder: Path) -> None:
    """Moves ``source`` (written aside, on the same disk) into place as ``folder``.

    Its files are recorded in the folder's manifest first. An absent ``folder``, or one holding only what the run
    wrote, is replaced by a rename (atomic); one holding a user's files keeps them: the run's earlier files there
    are removed and the new ones moved in one by one (the weights last).
    """
    owner = active_owner(folder)
    if owner is not None:
        owner.record_tree(source, folder)
    if folder.is_dir() and not folder.is_symlink():
        if _holds_foreign(folder, owner):
            if owner is not None:
                owner.remove(folder)
            _merge_into(source, folder)
            return
        shutil.rmtree(folder)
    elif folder.exists() or folder.is_symlink():
        folder.unlink()
    os.replace(source, folder)


def temporary_folder(parent: Path, name: str) -> Path:
    """A new temporary folder in ``parent`` that :func:`remove_stray_files` recognises."""
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{_TEMP_PREFIX}{name}-", dir=parent))
    os.chmod(tmp, 0o777 & ~current_umask())
    return tmp
