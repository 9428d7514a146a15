"""Atomic file writes: a reader sees the old file or the new one, never half of one."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from classp_hf.continual.errors import OutputWriteError
from classp_hf.continual.ownership import record_written

__all__ = [
    "OutputWriteError",
    "UnwritableFolderError",
    "check_writable_folder",
    "atomic_write",
    "current_umask",
    "first_line",
    "write_failure",
    "write_text_atomic",
    "write_json_atomic",
]


class UnwritableFolderError(ValueError):
    """An output folder (or a file's folder) cannot be written, found before anything is loaded or written."""


def check_writable_folder(path: str | os.PathLike, where: str = "--output-dir") -> Path:
    """Checks that a folder is, or can be made, writable here: not a file, not below a file, and its nearest
    existing ancestor writable (a read-only disk or folder). Writes nothing.

    Args:
        path: the folder (it may not exist yet).
        where: the option or key it comes from, first in the message.

    Returns:
        ``path`` as a `Path`.

    Raises:
        UnwritableFolderError: ``"<where>: <path> ..."`` naming the folder or file in the way.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UnwritableFolderError(f"{where}: {path} is a file, not a folder")
    for folder in (path, *path.parents):
        if folder.exists():
            if not folder.is_dir():
                raise UnwritableFolderError(f"{where}: {path} is below a file ({folder} is a file, not a folder)")
            if not os.access(folder, os.W_OK | os.X_OK):
                what = "" if folder == path else f" ({folder} is not)"
                raise UnwritableFolderError(
                    f"{where}: {path} is not writable{what}; a read-only disk or folder? choose another folder"
                )
            break
    return path


def first_line(error: BaseException) -> str:
    """An exception's message cut to its first line (its type's name when the message is empty)."""
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def _free_bytes(path: Path) -> int | None:
    """Free bytes on the disk that holds ``path`` (its nearest existing ancestor); `None` if unknown."""
    for folder in (path, *path.parents):
        if folder.exists():
            try:
                return shutil.disk_usage(folder).free
            except OSError:
                return None
    return None


def write_failure(path: str | os.PathLike, error: BaseException, what: str = "") -> OutputWriteError:
    """The one-line error of a failed write: what, where, the underlying error's first line and the free space.

    torch reports a full disk as ``RuntimeError: [enforce fail at inline_container.cc] unexpected pos``; saying how
    much room is left turns that into a cause.

    Args:
        path: what was being written.
        error: the exception the write raised.
        what: a word for it (``"the checkpoint"``), before the path.
    """
    path = Path(path)
    first = first_line(error)
    free = _free_bytes(path)
    room = "" if free is None else f"; {free / 2**20:.0f} MiB free on its disk"
    return OutputWriteError(f"cannot write {what + ' ' if what else ''}{path} ({type(error).__name__}: {first}){room}")


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Calls ``write(tmp_path)`` on a temporary file beside ``path``, then renames it over ``path``.

    Args:
        path: the destination.
        write: writes the content to the path it is given.

    Returns:
        The destination path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    record_written(path)  # into the folder's manifest before the file exists (see .ownership)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        os.chmod(tmp, _file_mode())  # mkstemp makes 0600; results are ordinary files
        write(tmp)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def current_umask() -> int:
    """The process's umask (read by setting it and putting it back)."""
    umask = os.umask(0)
    os.umask(umask)
    return umask


def _file_mode() -> int:
    """The mode ``open()`` would give a new file under the current umask (usually 0644)."""
    return 0o666 & ~current_umask()


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Writes ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_json_atomic(path: str | os.PathLike, data: Any) -> Path:
    """Writes ``data`` as indented JSON to ``path`` atomically (NaN is refused: use null)."""
    text = json.dumps(data, indent=2, allow_nan=False) + "\n"
    return write_text_atomic(path, text)
