"""Tokenized tasks kept on disk, keyed by everything that makes them, so the runs of one comparison tokenize once.

``classp-hf compare`` gives its runs ``DIR/cache/`` (``classp-hf run --cache-dir``). A task's entry is the folder
``tokenized/<task>-<key>/`` with its splits saved by ``datasets`` (read back memory-mapped). The key is a hash of
what :func:`~classp_hf.continual.tasks.load_task` reads: the task's config (columns, label map, sample sizes),
each local data file's content (its SHA-256, so the same data copied elsewhere keeps its entries), the shared
labels, ``max_length``, the seed, the validation fraction and the tokenizer (``datasets``' fingerprint of the
tokenizer object: its vocabulary, special tokens and settings). Change any of them and the key changes; entries
are never modified, only added. Beside the splits, ``test_index.json`` keeps each test example's row in the task's
test file (what ``predictions.json`` records, so that runs pair up in ``compare``'s bootstrap whether they tokenized
the task or read it from here).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import datasets

__all__ = ["TOKENIZED_FOLDER", "task_cache_key", "read_cached_task", "write_cached_task"]

TOKENIZED_FOLDER = "tokenized"
_SPLITS = ("train", "test", "validation")
#: Bumped when an entry's content or key changes, so entries of an earlier format are not read (2: ``test_index.json``;
#: 3: data files keyed by content).
_ENTRY_FORMAT = 3
_TEST_INDEX = "test_index.json"


def _file_digest(path: str) -> dict[str, Any]:
    """A data file's size and SHA-256: its content, not where it lies or when it was copied there."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return {"size": os.path.getsize(path), "sha256": digest.hexdigest()}


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """``datasets``' deterministic hash of a tokenizer (what its ``map`` caching keys on)."""
    from datasets.fingerprint import Hasher

    return Hasher.hash(tokenizer)


def task_cache_key(
    task: Any,
    labels: list[str],
    tokenizer: Any,
    max_length: int,
    seed: int,
    validation_fraction: float,
) -> str:
    """The cache key of a task's tokenized splits (hex, 20 characters).

    Args:
        task: the task's :class:`~classp_hf.continual.config.TaskConfig`.
        labels, tokenizer, max_length, seed, validation_fraction: as :func:`~classp_hf.continual.tasks.load_task`
            takes them.
    """
    spec = {key: value for key, value in dataclasses.asdict(task).items() if key != "training"}
    local = {split: path for split, path in (task.data_files or {}).items() if os.path.isfile(path)}
    files = {split: _file_digest(path) for split, path in local.items()}
    # local files count by their content: the same data copied elsewhere (a node's scratch disk) keeps its entry
    spec["data_files"] = {split: path for split, path in (task.data_files or {}).items() if split not in local}
    payload = {
        "task": spec,
        "files": files,
        "labels": list(labels),
        "max_length": max_length,
        "seed": seed,
        "validation_fraction": validation_fraction,
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "datasets": datasets.__version__,
        "entry_format": _ENTRY_FORMAT,
    }
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:20]


def _entry(cache_dir: Path, name: str, key: str) -> Path:
    return Path(cache_dir) / TOKENIZED_FOLDER / f"{name}-{key}"


def read_cached_task(cache_dir: Path, name: str, key: str) -> dict[str, Any] | None:
    """The cached entry of a task, or `None` if not cached (or damaged).

    Returns:
        ``{"train", "test", "validation"}``: the splits (``validation`` `None` without one), and ``"test_index"``:
        each test example's row in the test file (`None` when the whole file is the test split).
    """
    folder = _entry(cache_dir, name, key)
    if not (folder / "complete").is_file():
        return None
    try:
        entry: dict[str, Any] = {
            split: datasets.load_from_disk(str(folder / split)) if (folder / split).is_dir() else None
            for split in _SPLITS
        }
        test_index = json.loads((folder / _TEST_INDEX).read_text(encoding="utf-8"))
    except (OSError, ValueError, FileNotFoundError):  # a damaged entry: tokenize again
        return None
    if test_index is not None and not (isinstance(test_index, list) and all(isinstance(i, int) for i in test_index)):
        return None
    entry["test_index"] = test_index
    return entry


def write_cached_task(
    cache_dir: Path,
    name: str,
    key: str,
    splits: dict[str, datasets.Dataset | None],
    test_index: list[int] | None = None,
) -> None:
    """Saves a task's splits and test rows under its key (into a temporary folder renamed into place; a run that
    finds the entry already written by another run keeps that one)."""
    folder = _entry(cache_dir, name, key)
    if (folder / "complete").is_file():
        return
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.parent / f".tmp-{folder.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        for split, data in splits.items():
            if data is not None:
                data.save_to_disk(str(tmp / split))
        (tmp / _TEST_INDEX).write_text(json.dumps(test_index), encoding="utf-8")
        (tmp / "complete").write_text("ok\n", encoding="utf-8")
        if folder.exists():  # an incomplete entry of a killed run
            shutil.rmtree(folder, ignore_errors=True)
        tmp.rename(folder)
    except OSError:  # another run wrote it first, or no room: the run goes on with what it tokenized
        shutil.rmtree(tmp, ignore_errors=True)
