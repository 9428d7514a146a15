"""Who owns an output folder, and who writes into it now: the ownership marker and the folder lock.

**The marker.** A run folder and a comparison folder carry ``classp-hf-owner.json``, written before anything else:
the tool and version that wrote it, the kind (``run`` or ``compare``), a run id, and the manifest of every path the
owner wrote (recorded *before* the path is written, so a kill never leaves an unrecorded file). ``--overwrite``
removes exactly the manifest's paths (a folder only when that leaves it empty), so files a user put anywhere in the
folder, ``model/`` and ``logs/`` included, survive. A non-empty folder without a marker is nobody's to overwrite.

A folder written by an earlier classp_hf (``run_state.json`` or ``compare_plan.json``, no marker) is recognised
as ours: its manifest is rebuilt from the names that version wrote (:func:`legacy_entries`: the top-level outputs,
and inside ``model/``, ``checkpoints/task-NN-*``, ``adapters/<task>``, ``merged/<task>``, ``logs/<task>``,
``trainer/<task>`` only files named as ``save_pretrained``, the checkpoint and TensorBoard write them), and the
folder gets a marker the first time it is written again (``--resume``, ``--overwrite``, a continued comparison).

**The lock.** :class:`FolderLock` holds an OS lock (``fcntl.flock``) on ``.classp-hf.lock`` in the folder for as
long as a run or comparison writes there; the kernel releases it when the process ends, however it ends, so the
lock of a dead process is taken over by the next writer. A second writer gets :class:`FolderBusyError` naming the
holder's pid.

Writes are recorded through :func:`record_written`, which :mod:`.io`'s atomic writes call: it adds the path to the
manifest of the innermost active owner (a comparison's run done in its process records into the run's own).
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import os
import re
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

__all__ = [
    "LOCK_FILENAME",
    "MARKER_FILENAME",
    "FolderBusyError",
    "FolderLock",
    "Owner",
    "OwnershipError",
    "active_owner",
    "folder_entries",
    "legacy_entries",
    "record_written",
    "remove_owned",
]

MARKER_FILENAME = "classp-hf-owner.json"
LOCK_FILENAME = ".classp-hf.lock"
TOOL = "classp-hf"
Kind = Literal["run", "compare"]
TEMP_PREFIX = ".classp-tmp-"

#: What a run of an earlier classp_hf wrote at the top of its folder.
LEGACY_RUN_FILES = (
    "config.yaml",
    "run_state.json",
    "results.json",
    "predictions.json",
    "report.md",
    "accuracy_matrix.png",
    "accuracy_curves.png",
    "sparsity.png",
)
#: What a comparison of an earlier classp_hf wrote at the top of its folder.
LEGACY_COMPARE_FILES = ("compare_plan.json", "comparison.json", "comparison.md")
#: Names of the files ``save_pretrained`` (models, tokenizers, PEFT adapters), a checkpoint and TensorBoard write.
SAVED_FILE_PATTERNS = (
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "model-*-of-*.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model-*-of-*.bin",
    "pytorch_model.bin.index.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "spiece.model",
    "sentencepiece.bpe.model",
    "tokenizer.model",
    "chat_template.jinja",
    "chat_template.json",
    "adapter_config.json",
    "adapter_model.safetensors",
    "adapter_model.bin",
    "README.md",
    "optimizer.pt",
    "method.pt",
    "update_masks.pt",
    "training_args.bin",
    "events.out.tfevents.*",
)
_CHECKPOINT = re.compile(r"task-\d{2}-.+")


class OwnershipError(ValueError):
    """An output folder is not ours to write into, or its marker is unreadable; the message names the folder."""


class FolderBusyError(OwnershipError):
    """Another live process writes into the folder (it holds the folder's lock)."""


def folder_entries(folder: Path) -> list[Path]:
    """The entries of ``folder`` that count as content (the lock file does not); ``[]`` for a missing folder."""
    if not folder.is_dir():
        return []
    return [entry for entry in folder.iterdir() if entry.name != LOCK_FILENAME]


# -- the lock --------------------------------------------------------------------------------------


class FolderLock:
    """An exclusive ``flock`` on ``folder/.classp-hf.lock``, released by :meth:`release` or the process's end.

    The folder (and missing parents) is created to hold the lock file; :meth:`release` removes the lock file, and
    the folders it created when they are still empty, so a writer that failed before writing anything leaves
    nothing behind.

    Args:
        folder: the run or comparison folder.
        what: the option that named the folder, for messages (``--output-dir``).
    """

    def __init__(self, folder: str | os.PathLike, what: str = "--output-dir") -> None:
        self.folder, self.what = Path(folder), what
        self._fd: int | None = None
        self._created: list[Path] = []

    @property
    def path(self) -> Path:
        return self.folder / LOCK_FILENAME

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> FolderLock:
        """Takes the lock without waiting.

        Raises:
            FolderBusyError: another process holds it (its pid in the message).
            OwnershipError: the folder cannot hold a lock file (a file in the way, no permission).
        """
        try:
            import fcntl
        except ImportError:  # not POSIX: no lock
            return self
        if self._fd is not None:
            return self
        self._create_folder()
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            except OSError as error:
                self._remove_created()
                raise OwnershipError(f"{self.what} {self.folder}: cannot create its lock file ({error})") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_pid(fd)
                os.close(fd)
                raise FolderBusyError(
                    f"{self.what} {self.folder} is in use by another classp-hf process (pid {holder}); "
                    "wait for it to end, or choose another folder"
                ) from None
            try:  # the file we locked must still be the one at the path (a releasing holder unlinks it)
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        """Removes the lock file and lets the lock go; removes the folders :meth:`acquire` created if empty."""
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            self.path.unlink()
        os.close(self._fd)
        self._fd = None
        self._remove_created()

    def _create_folder(self) -> None:
        missing = []
        for folder in (self.folder, *self.folder.parents):
            if folder.exists():
                break
            missing.append(folder)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise OwnershipError(f"{self.what} {self.folder}: cannot create it ({error})") from None
        self._created = missing  # deepest first

    def _remove_created(self) -> None:
        for folder in self._created:
            try:
                folder.rmdir()
            except OSError:
                break
        self._created = []

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()

    def __del__(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)


def _read_pid(fd: int) -> str:
    for _ in range(10):  # the holder writes its pid right after taking the lock
        os.lseek(fd, 0, os.SEEK_SET)
        text = os.read(fd, 64).decode("ascii", "replace").strip()
        if text:
            return text
        time.sleep(0.02)
    return "unknown"


# -- the marker -------------------------------------------------------------------------------------


class Owner:
    """The marker of a folder: who wrote it, and the manifest of what it wrote.

    Args:
        root: the folder.
        data: the marker's content (``tool``, ``version``, ``kind``, ``run_id``, ``created``, ``written``).
    """

    def __init__(self, root: Path, data: dict[str, Any]) -> None:
        self.root = Path(os.path.abspath(root))
        self.data = data
        self.written: set[str] = {entry for entry in data.get("written", []) if _is_inside(entry)}
        self._lock = threading.Lock()

    @property
    def kind(self) -> str:
        return str(self.data.get("kind"))

    @property
    def run_id(self) -> str:
        return str(self.data.get("run_id"))

    @property
    def marker(self) -> Path:
        return self.root / MARKER_FILENAME

    @classmethod
    def read(cls, root: str | os.PathLike) -> Owner | None:
        """The folder's marker, or `None` when it has none.

        Raises:
            OwnershipError: the marker is unreadable or not ours (naming it).
        """
        path = Path(root) / MARKER_FILENAME
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            ok = isinstance(data, dict) and data.get("tool") == TOOL and isinstance(data.get("written"), list)
        except (OSError, ValueError) as error:
            raise OwnershipError(f"{path} is corrupt ({type(error).__name__}); remove the folder yourself") from None
        if not ok or data.get("kind") not in ("run", "compare"):
            raise OwnershipError(f"{path} is not a classp-hf ownership marker; remove the folder yourself")
        return cls(Path(root), data)

    @classmethod
    def create(cls, root: str | os.PathLike, kind: Kind, written: Iterable[str] = (), adopted: bool = False) -> Owner:
        """Writes a new marker (a new run id) into ``root``, before anything else is written there."""
        import classp_hf

        data: dict[str, Any] = {
            "tool": TOOL,
            "version": classp_hf.__version__,
            "kind": kind,
            "run_id": uuid.uuid4().hex,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "pid": os.getpid(),
        }
        if adopted:
            data["adopted"] = "written by an earlier classp_hf without a marker: the manifest lists the names it wrote"
        owner = cls(Path(root), {**data, "written": []})
        owner.written = set(written)
        owner.save()
        return owner

    def save(self) -> None:
        """Rewrites the marker atomically."""
        self.root.mkdir(parents=True, exist_ok=True)
        text = json.dumps({**self.data, "written": sorted(self.written)}, indent=2) + "\n"
        fd, tmp = tempfile.mkstemp(prefix=f".{MARKER_FILENAME}.", suffix=".tmp", dir=self.root)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(text)
            os.chmod(tmp, 0o666 & ~_umask())
            os.replace(tmp, self.marker)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def relative(self, path: str | os.PathLike) -> str | None:
        """``path`` relative to the folder (POSIX form), or `None` when it is outside (or the folder itself)."""
        absolute = os.path.abspath(path)
        root = str(self.root)
        if not absolute.startswith(root + os.sep):
            return None
        return Path(absolute[len(root) + 1 :]).as_posix()

    def record(self, *paths: str | os.PathLike) -> None:
        """Adds paths (files or folders inside the folder, and the folders on the way) to the manifest; rewrites the
        marker if it grew."""
        new = set()
        for rel in map(self.relative, paths):
            if rel is not None and rel != MARKER_FILENAME:
                parts = rel.split("/")
                new.update("/".join(parts[: i + 1]) for i in range(len(parts)))  # and the folders on the way
        with self._lock:
            if new - self.written:
                self.written |= new
                self.save()

    def record_tree(self, source: Path, destination: Path) -> None:
        """Records ``destination`` and, under it, every file and folder that ``source`` holds (a folder about to
        be moved or merged into ``destination``)."""
        paths = [destination] + [destination / item.relative_to(source) for item in sorted(source.rglob("*"))]
        self.record(*paths)

    def owns(self, path: str | os.PathLike) -> bool:
        """Whether the manifest lists ``path``."""
        return self.relative(path) in self.written

    def clear(self) -> list[str]:
        """``--overwrite``: removes every path of the manifest (folders only when that leaves them empty; a run
        folder inside a comparison is cleared through its own marker). The marker itself stays.

        Returns:
            The paths removed, relative to the folder.
        """
        removed = self._remove_entries(sorted(self.written))
        with self._lock:
            self.written = set()
        return removed

    def remove(self, path: Path) -> list[str]:
        """Removes what the manifest lists at and under ``path`` (user files there stay)."""
        rel = self.relative(path)
        if rel is None:
            return []
        entries = [entry for entry in self.written if entry == rel or entry.startswith(rel + "/")]
        return self._remove_entries(entries)

    def _remove_entries(self, entries: list[str]) -> list[str]:
        removed: list[str] = []
        # deepest first, so a folder is looked at after what it held
        real_root = os.path.realpath(self.root)
        for entry in sorted(set(entries), key=lambda e: (-e.count("/"), e)):
            path = self.root / entry
            parent = os.path.realpath(path.parent)
            if parent != real_root and not parent.startswith(real_root + os.sep):  # a symlink out of the folder
                continue
            if path.is_symlink() or path.is_file():
                path.unlink()
                removed.append(entry)
            elif path.is_dir():
                if (path / MARKER_FILENAME).is_file() or _is_legacy(path, "run"):  # a comparison's run
                    removed += [f"{entry}/{name}" for name in _clear_nested(path)]
                _remove_temporary(path)
                with contextlib.suppress(OSError):
                    path.rmdir()
                    removed.append(entry)
        return removed


def _is_inside(entry: Any) -> bool:
    """A manifest entry names a path inside the folder (relative, no ``..``): a crafted marker removes nothing else."""
    if not isinstance(entry, str) or not entry or entry.startswith("/") or "\\" in entry:
        return False
    return all(part not in ("", ".", "..") for part in entry.split("/"))


def _clear_nested(folder: Path) -> list[str]:
    """Clears a run folder inside a comparison (through its marker, or its legacy names). A folder left empty loses
    its marker; one that still holds a user's files keeps a marker (an empty manifest), so it stays a run folder."""
    nested = Owner.read(folder) if (folder / MARKER_FILENAME).is_file() else None
    if nested is None:
        entries = legacy_entries(folder)
        if entries is None:
            return []
        nested = Owner(folder, {"tool": TOOL, "kind": "run", "written": entries})
    removed = nested.clear()
    _remove_temporary(folder)
    if [entry.name for entry in folder_entries(folder)] in ([], [MARKER_FILENAME]):
        (folder / MARKER_FILENAME).unlink(missing_ok=True)
    elif (folder / MARKER_FILENAME).is_file():
        nested.save()
    else:
        Owner.create(folder, "run")
    return removed


def _remove_temporary(folder: Path) -> None:
    """Temporary files and folders of our atomic writes directly in ``folder``."""
    for item in folder.iterdir():
        if item.name.startswith(TEMP_PREFIX) or (item.name.startswith(".") and item.name.endswith(".tmp")):
            if item.is_dir() and not item.is_symlink():
                shutil.rmtree(item, ignore_errors=True)
            else:
                item.unlink(missing_ok=True)


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


# -- folders of earlier versions --------------------------------------------------------------------


def _is_legacy(folder: Path, kind: Kind) -> bool:
    name = "run_state.json" if kind == "run" else "compare_plan.json"
    return not (folder / MARKER_FILENAME).exists() and (folder / name).is_file()


def _saved_files(folder: Path, root: Path) -> list[str]:
    """The files under ``folder`` named as our writers name them, and the folders that hold them."""
    found = []
    if not folder.is_dir() or folder.is_symlink():
        return found
    for path in folder.rglob("*"):
        if path.is_file() and any(fnmatch.fnmatchcase(path.name, p) for p in SAVED_FILE_PATTERNS):
            found.append(path.relative_to(root).as_posix())
        elif path.is_dir():
            found.append(path.relative_to(root).as_posix())
    return found + [folder.relative_to(root).as_posix()]


def legacy_entries(folder: str | os.PathLike, kind: Kind = "run") -> list[str] | None:
    """The manifest of a folder an earlier classp_hf wrote (no marker), or `None` when it is not one.

    A run folder is recognised by ``run_state.json``, a comparison folder by ``compare_plan.json``. The manifest
    lists the top-level names that version wrote and, in its subfolders, only the files its writers name (see
    :data:`SAVED_FILE_PATTERNS`), so a user's ``model/my_weights.bin`` or ``checkpoints/mine/`` is not on it.
    """
    root = Path(folder)
    if not _is_legacy(root, kind):
        return None
    if kind == "compare":
        return _legacy_compare_entries(root)
    entries = [name for name in LEGACY_RUN_FILES if (root / name).exists()]
    try:
        tasks = json.loads((root / "run_state.json").read_text(encoding="utf-8")).get("tasks", [])
        tasks = [str(t) for t in tasks if isinstance(t, str) and t and "/" not in t and t not in (".", "..")]
    except (OSError, ValueError, AttributeError):
        tasks = []
    folders = [root / "model"]
    for parent in ("adapters", "merged", "logs", "trainer"):
        folders += [root / parent / task for task in tasks]
    if (root / "checkpoints").is_dir():
        folders += [item for item in (root / "checkpoints").iterdir() if _CHECKPOINT.fullmatch(item.name)]
    for sub in folders:
        entries += _saved_files(sub, root)
    entries += [name for name in ("adapters", "merged", "logs", "trainer", "checkpoints") if (root / name).is_dir()]
    return entries


def _legacy_compare_entries(root: Path) -> list[str]:
    from classp_hf.continual.compare.figures import FIGURES

    entries = [name for name in LEGACY_COMPARE_FILES if (root / name).exists()]
    entries += [f"figures/{name}" for name in FIGURES.values() if (root / "figures" / name).exists()]
    patterns = {"configs": ("seed*.yaml",), "logs": ("seed*.log", "seed*.json")}
    for top, names in patterns.items():
        if (root / top).is_dir():
            for path in (root / top).rglob("*"):
                if path.is_dir() or any(fnmatch.fnmatchcase(path.name, n) for n in names):
                    entries.append(path.relative_to(root).as_posix())
    if (root / "runs").is_dir():
        for path in (root / "runs").rglob("seed*"):
            if path.is_dir() and (path / "run_state.json").is_file():
                entries.append(path.relative_to(root).as_posix())
        entries += [p.relative_to(root).as_posix() for p in (root / "runs").rglob("*") if p.is_dir()]
    entries += [name for name in ("figures", "configs", "logs", "runs") if (root / name).is_dir()]
    return entries


# -- the owners writing in this process ---------------------------------------------------------------

_ACTIVE: dict[str, Owner] = {}
_ACTIVE_LOCK = threading.Lock()


def activate(owner: Owner) -> None:
    """Makes :func:`record_written` record paths under ``owner.root`` into ``owner``'s manifest."""
    with _ACTIVE_LOCK:
        _ACTIVE[str(owner.root)] = owner


def deactivate(owner: Owner | None) -> None:
    """Stops recording into ``owner``."""
    if owner is not None:
        with _ACTIVE_LOCK:
            if _ACTIVE.get(str(owner.root)) is owner:
                del _ACTIVE[str(owner.root)]


def active_owner(path: str | os.PathLike) -> Owner | None:
    """The innermost active owner whose folder holds ``path``."""
    absolute = os.path.abspath(path)
    with _ACTIVE_LOCK:
        owners = [o for o in _ACTIVE.values() if absolute.startswith(str(o.root) + os.sep)]
    return max(owners, key=lambda o: len(str(o.root)), default=None)


def record_written(*paths: str | os.PathLike) -> None:
    """Records paths about to be written into the manifest of the active owner holding them (if any)."""
    for path in paths:
        owner = active_owner(path)
        if owner is not None:
            owner.record(path)


def remove_owned(path: Path) -> list[str]:
    """Removes what the active owner wrote at and under ``path``; with no active owner, the whole of ``path``."""
    owner = active_owner(path)
    if owner is not None:
        return owner.remove(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()
    return [str(path)]
