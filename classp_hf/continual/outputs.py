"""The files and folders a run writes into its output folder, and the checks and clean-ups around them.

A run owns exactly the names in :data:`RUN_OUTPUTS` (plus its temporary files): ``--overwrite`` removes those and
never anything else in the folder, and a resumed run removes what a kill left half-written.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from classp_hf.continual.io import current_umask, write_failure

__all__ = [
    "RUN_OUTPUTS",
    "OutputDirError",
    "prepare_output_dir",
    "clear_run_outputs",
    "remove_stray_files",
    "save_model_atomic",
    "is_complete_model",
    "temporary_folder",
]

#: Everything a run writes into its output folder.
RUN_OUTPUTS = (
    "config.yaml",
    "run_state.json",
    "results.json",
    "predictions.json",
    "report.md",
    "accuracy_matrix.png",
    "accuracy_curves.png",
    "sparsity.png",
    "checkpoints",
    "model",
    "adapters",
    "merged",
    "trainer",
    "logs",
)
_TEMP_PREFIX = ".classp-tmp-"


class OutputDirError(ValueError):
    """The output directory is not usable (non-empty without ``--overwrite``, a file in the way)."""


def prepare_output_dir(output_dir: str | os.PathLike, overwrite: bool) -> Path:
    """Checks that ``output_dir`` is absent, empty, or may be overwritten. Writes nothing.

    Raises:
        OutputDirError: a non-empty directory without ``overwrite``, or a file in the way.
    """
    path = Path(output_dir)
    if path.exists() and not path.is_dir():
        raise OutputDirError(f"--output-dir {path} exists and is not a directory")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        hint = "pass --resume to continue its run, or " if (path / "run_state.json").exists() else "pass "
        raise OutputDirError(f"--output-dir {path} is not empty; {hint}--overwrite to start afresh")
    return path


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def clear_run_outputs(output_dir: Path) -> list[str]:
    """``--overwrite``: removes what an earlier run wrote (:data:`RUN_OUTPUTS` and temporary files), nothing else.

    The run state goes first, so a kill half-way leaves a folder that ``--resume`` refuses rather than continues.

    Returns:
        The names removed.
    """
    removed = []
    for name in RUN_OUTPUTS:
        if (output_dir / name).exists() or (output_dir / name).is_symlink():
            _remove(output_dir / name)
            removed.append(name)
    removed.extend(remove_stray_files(output_dir))
    return removed


def remove_stray_files(output_dir: Path, keep_checkpoint: Path | None = None) -> list[str]:
    """Removes what a kill can leave behind: temporary files of atomic writes, half-saved models, and
    checkpoints other than ``keep_checkpoint`` (the one ``run_state.json`` names).

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
        keep = keep_checkpoint.resolve() if keep_checkpoint is not None else None
        for item in checkpoints.iterdir():
            if item.resolve() != keep:
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


def save_model_atomic(model: Any, tokenizer: Any, folder: Path) -> Path:
    """Saves a model and its tokenizer into a temporary folder beside ``folder``, then renames it into place.

    A kill during the save leaves no ``folder`` (or the old one), never a half-written one.
    """
    tmp = temporary_folder(folder.parent, folder.name)
    try:
        model.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        if folder.exists():
            _remove(folder)
        os.replace(tmp, folder)
    except Exception as error:  # a full disk, mostly: the checkpoint stays, so --resume saves the model again
        shutil.rmtree(tmp, ignore_errors=True)
        raise write_failure(folder, error, "the model") from error
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def temporary_folder(parent: Path, name: str) -> Path:
    """A new temporary folder in ``parent`` that :func:`remove_stray_files` recognises."""
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{_TEMP_PREFIX}{name}-", dir=parent))
    os.chmod(tmp, 0o777 & ~current_umask())
    return tmp
