"""Loading a task's data: files or a Hub dataset, labels harmonised by name, sampled, tokenized."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import datasets

from classp_hf.continual.config import ConfigError, TaskConfig
from classp_hf.continual.data_cache import read_cached_task, task_cache_key, write_cached_task
from classp_hf.continual.results import JOINT_STAGE

__all__ = ["TaskData", "joint_stage", "load_task", "label_mapping"]

_FILE_BUILDERS = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}


@dataclass
class TaskData:
    """A task's tokenized splits.

    Args:
        name: the task name.
        train: tokenized training examples (``input_ids``, ``attention_mask``, ..., ``labels``).
        test: tokenized test examples.
        validation: tokenized examples held out of the training split, if asked for.
        cache_key: the key of these splits in a cache of tokenized tasks (:mod:`.data_cache`), when one was used.
        test_index: each test example's row in the task's test file (after the seeded subsample); `None`: in
            order, ``0 .. len(test) - 1``.
    """

    name: str
    train: datasets.Dataset
    test: datasets.Dataset
    validation: datasets.Dataset | None = None
    cache_key: str | None = None
    test_index: list[int] | None = None

    @property
    def test_labels(self) -> list[int]:
        return list(self.test["labels"])

    @cached_property
    def label_ids(self) -> list[int]:
        """The task's own labels: the shared label indices its training examples use, sorted (read once: every
        evaluation after every task asks for them)."""
        return sorted({int(label) for label in self.train["labels"]})


def label_mapping(task: TaskConfig, dataset_labels: list[str], labels: list[str]) -> dict[str, int]:
    """Maps every dataset label to a shared label index, by name.

    A dataset label ``positive`` lands on the shared ``positive`` whatever position it has in
    the dataset (the reference code mapped IMDB's positive onto index 1, the financial task's
    neutral).

    Args:
        task: the task (its ``label_map``, dataset label -> shared label name, if any).
        dataset_labels: the label values found in the data, as strings.
        labels: the shared labels, in head order.

    Returns:
        ``{dataset_label: shared_index}``.

    Raises:
        ConfigError: a dataset label without a mapping, naming it.
    """
    index = {name: i for i, name in enumerate(labels)}
    mapping = {}
    for value in sorted(set(dataset_labels)):
        if task.label_map is not None:
            if value not in task.label_map:
                raise ConfigError(
                    f"tasks ({task.name}).label_map: dataset label {value!r} has no mapping "
                    f"(mapped: {', '.join(sorted(task.label_map))})"
                )
            mapping[value] = index[task.label_map[value]]
        elif value in index:
            mapping[value] = index[value]
        else:
            raise ConfigError(
                f"tasks ({task.name}): dataset label {value!r} is not a shared label {labels}; add a label_map"
                + _integer_labels_hint(dataset_labels, labels)
            )
    return mapping


def _integer_labels_hint(dataset_labels: list[str], labels: list[str]) -> str:
    """For class indices as labels (``0``, ``1``, ... as GLUE-style files have them): the ``label_map`` that reads
    them in the order of the shared labels, to check against the dataset's card (nothing is assumed)."""
    values = set(dataset_labels)
    if not values or not all(value.isascii() and value.isdecimal() for value in values):
        return ""
    found = sorted(values, key=int)
    if [int(value) for value in found] != list(range(len(labels))):
        return ""
    pairs = ", ".join(f"{value}: {name}" for value, name in zip(found, labels))
    return f" (if {', '.join(found)} mean {', '.join(labels)}: label_map: {{{pairs}}})"


def _root_cause(error: BaseException) -> str:
    while error.__cause__ is not None or error.__context__ is not None:
        error = error.__cause__ or error.__context__
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"


def _check_files(task: TaskConfig) -> str:
    """Checks that the data files exist, are not empty (CSV) and share a known type; returns the builder."""
    for split, path in task.data_files.items():
        if not Path(path).is_file():
            raise ConfigError(f"tasks ({task.name}).data_files.{split}: file not found: {path}")
    for split, path in task.data_files.items():
        if Path(path).suffix.lower() in (".csv", ".tsv"):
            with open(path, encoding="utf-8", errors="replace") as handle:
                lines = sum(1 for line, _ in zip(handle, range(2)) if line.strip())
            if lines < 2:
                raise ConfigError(f"tasks ({task.name}): the {split} split is empty ({path})")
    suffixes = {Path(path).suffix.lower() for path in task.data_files.values()}
    builders = {_FILE_BUILDERS.get(suffix) for suffix in suffixes}
    if None in builders:
        unknown = sorted(suffix for suffix in suffixes if suffix not in _FILE_BUILDERS)
        raise ConfigError(f"tasks ({task.name}).data_files: unsupported file type {unknown[0]!r} (csv, json, parquet)")
    if len(builders) > 1:
        raise ConfigError(
            f"tasks ({task.name}).data_files: train and test are of different types ({', '.join(sorted(suffixes))})"
        )
    return builders.pop()


def _read_options(path: str) -> dict[str, Any]:
    """Reader options: in CSV files ``NA``, ``null``, ``nan``, ``None`` and empty fields stay text, not missing."""
    suffix = Path(path).suffix.lower()
    if suffix not in (".csv", ".tsv"):
        return {}
    options: dict[str, Any] = {"keep_default_na": False, "na_filter": False}
    if suffix == ".tsv":
        options["delimiter"] = "\t"
    return options


@contextlib.contextmanager
def _no_progress_bars() -> Iterator[None]:
    """Reading a task's files prints no "Generating split" bars (the runner reports the sizes)."""
    was_disabled = datasets.utils.are_progress_bars_disabled()
    datasets.utils.disable_progress_bars()
    try:
        yield
    finally:
        if not was_disabled:
            datasets.utils.enable_progress_bars()


def _load_raw(task: TaskConfig) -> dict[str, datasets.Dataset]:
    """The task's train and test splits, each read on its own (their columns need not agree)."""
    with _no_progress_bars():
        return _read_splits(task)


def _read_splits(task: TaskConfig) -> dict[str, datasets.Dataset]:
    if task.data_files is not None:
        builder = _check_files(task)
        splits = {}
        for split, path in task.data_files.items():
            try:
                splits[split] = datasets.load_dataset(
                    builder, data_files={split: path}, split=split, **_read_options(path)
                )
            except Exception as error:  # a malformed file: name it
                raise ConfigError(
                    f"tasks ({task.name}).data_files.{split}: cannot read {path}: {_root_cause(error)}"
                ) from None
        return splits
    try:
        return {
            split: datasets.load_dataset(task.dataset, task.dataset_config, split=source)
            for split, source in task.splits.items()
        }
    except Exception as error:
        hint = (
            " (the Hub is off here, HF_HUB_OFFLINE: load the dataset once with the Hub reachable, or give data_files)"
            if datasets.config.HF_HUB_OFFLINE
            else ""
        )
        raise ConfigError(
            f"tasks ({task.name}).dataset: cannot load {task.dataset!r}: {_root_cause(error)}{hint}"
        ) from None


def _check_columns(task: TaskConfig, raw: Mapping[str, datasets.Dataset]) -> None:
    """Both splits hold the text and label columns; if only one does, the message names both files."""
    for key in ("text_column", "label_column"):
        column = getattr(task, key)
        missing = [split for split in ("train", "test") if column not in raw[split].column_names]
        if not missing:
            continue
        if len(missing) == 1 and task.data_files is not None:
            (lacking,) = missing
            having = "train" if lacking == "test" else "test"
            raise ConfigError(
                f"tasks ({task.name}).{key}: column {column!r} is in the {having} file but not in the {lacking} "
                f"file; {task.data_files[having]} has columns {', '.join(raw[having].column_names)}, "
                f"{task.data_files[lacking]} has {', '.join(raw[lacking].column_names)}"
            )
        split = missing[0]
        raise ConfigError(
            f"tasks ({task.name}).{key}: column {column!r} not in the {split} split "
            f"(columns: {', '.join(raw[split].column_names)})"
        )


def _label_names(split: datasets.Dataset, column: str) -> list[str]:
    feature = split.features[column]
    values = split[column]
    if isinstance(feature, datasets.ClassLabel):
        return [feature.int2str(int(v)) for v in values]
    return [str(v) for v in values]


def _distinct_label_names(split: datasets.Dataset, column: str) -> list[str]:
    """The distinct labels of a whole split, as names, in order of first appearance."""
    feature = split.features[column]
    values = split.unique(column)
    if isinstance(feature, datasets.ClassLabel):
        return [feature.int2str(int(v)) for v in values]
    return [str(v) for v in values]


def load_task(
    task: TaskConfig,
    labels: list[str],
    tokenizer: Any,
    max_length: int,
    seed: int,
    validation_fraction: float = 0.0,
    cache_dir: str | Path | None = None,
) -> TaskData:
    """Loads, checks, samples and tokenizes one task (or reads it from ``cache_dir``).

    Args:
        task: the task's config.
        labels: the shared labels.
        tokenizer: a Hugging Face tokenizer.
        max_length: truncation length (longer texts keep their first ``max_length`` tokens).
        seed: seed of the random subsample (``max_train_samples`` / ``max_eval_samples``) and of
            the validation split.
        validation_fraction: share of the (subsampled) training examples held out as validation.
        cache_dir: a folder of tokenized tasks (:mod:`~classp_hf.continual.data_cache`) shared by runs: a task
            tokenized there before with the same data, settings and tokenizer is read back instead; a new one is
            added.

    Returns:
        The tokenized task.

    Raises:
        ConfigError: missing file, missing column, unmapped label or empty split, naming it.
    """
    key = None
    if cache_dir is not None:
        key = task_cache_key(task, labels, tokenizer, max_length, seed, validation_fraction)
        cached = read_cached_task(Path(cache_dir), task.name, key)
        if cached is not None:
            return TaskData(
                task.name,
                cached["train"],
                cached["test"],
                cached["validation"],
                test_index=cached["test_index"],
                cache_key=key,
            )
    data = _tokenize_task(task, labels, tokenizer, max_length, seed, validation_fraction)
    data.cache_key = key
    if key is not None:
        splits = {"train": data.train, "test": data.test, "validation": data.validation}
        write_cached_task(Path(cache_dir), task.name, key, splits, data.test_index)
    return data


def _tokenize_task(
    task: TaskConfig, labels: list[str], tokenizer: Any, max_length: int, seed: int, validation_fraction: float
) -> TaskData:
    raw = _load_raw(task)
    _check_columns(task, raw)
    prepared = {}
    test_index = None
    for split in ("train", "test"):
        data = raw[split]
        # every label of the whole split, not only the sampled rows: whether a config is accepted must not
        # depend on the seed
        label_mapping(task, _distinct_label_names(data, task.label_column), labels)
        limit = task.max_train_samples if split == "train" else task.max_eval_samples
        if limit is not None and limit < len(data):
            if split == "test":
                test_index = _sampled_rows(len(data), seed, limit)
            data = data.shuffle(seed=seed).select(range(limit))
        if len(data) == 0:
            raise ConfigError(f"tasks ({task.name}): the {split} split is empty")
        names = _label_names(data, task.label_column)
        mapping = label_mapping(task, names, labels)
        texts = [str(t) if t is not None else "" for t in data[task.text_column]]
        encoded = tokenizer(texts, truncation=True, max_length=max_length)
        columns = {key: list(values) for key, values in encoded.items()}
        columns["labels"] = [mapping[name] for name in names]
        prepared[split] = datasets.Dataset.from_dict(columns)
    train, validation = prepared["train"], None
    if validation_fraction > 0:
        held_out = max(1, round(validation_fraction * len(train)))
        if held_out >= len(train):
            raise ConfigError(f"tasks ({task.name}): validation_fraction leaves no training examples")
        split = train.train_test_split(test_size=held_out, seed=seed)
        train, validation = split["train"], split["test"]
    return TaskData(name=task.name, train=train, test=prepared["test"], validation=validation, test_index=test_index)


def _sampled_rows(length: int, seed: int, limit: int) -> list[int]:
    """The rows ``data.shuffle(seed=seed).select(range(limit))`` keeps of a dataset of ``length`` rows (the
    permutation depends on the seed and the length only)."""
    numbered = datasets.Dataset.from_dict({"row": list(range(length))})
    return [int(row) for row in numbered.shuffle(seed=seed).select(range(limit))["row"]]


def joint_stage(tasks: Sequence[TaskData]) -> TaskData:
    """The one stage of ``queue_mode: joint``: the union of every task's training (and test) examples.

    Args:
        tasks: the loaded tasks, in queue order.

    Returns:
        A :class:`TaskData` named ``joint`` over all of them.
    """
    return TaskData(
        name=JOINT_STAGE,
        train=datasets.concatenate_datasets([data.train for data in tasks]),
        test=datasets.concatenate_datasets([data.test for data in tasks]),
    )
