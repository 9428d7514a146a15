#!/usr/bin/env python3
"""Regenerate the embedded quick-start sample in ``recipes/data/quickstart/``.

The sample is drawn from the shared sentiment data folder (the one described by its ``SOURCES.md``),
given as the first argument or through the ``CLASSP_HF_DATA`` environment variable. For each task in
:data:`TASKS` it reads ``<data>/<task>/train.csv`` and ``test.csv`` (columns ``text,label``) and writes a
label-stratified random sample of them to ``<out>/<task>/train.csv`` and ``test.csv``:

* the per-label counts are proportional to the label distribution of the split (largest-remainder
  rounding, ties broken by label name, at least one row per label when the size allows it);
* rows are picked with ``random.Random(seed)`` (seed 0 by default), one generator per task and split, so
  each file depends only on its own source file and the seed;
* picked rows keep their order in the source file, and the files are written with the standard ``csv``
  module (UTF-8, minimal quoting, ``\\r\\n`` line ends, the same format as the source files).

Only the standard library is used, so the script runs without the package's dependencies::

    python recipes/data/make_quickstart_sample.py /path/to/shared/data/sentiment
    CLASSP_HF_DATA=/path/to/shared/data/sentiment python recipes/data/make_quickstart_sample.py
"""

from __future__ import annotations

import argparse
import csv
import os
import random
import sys
from collections import Counter
from pathlib import Path

TASKS: tuple[str, ...] = ("financial_phrasebank", "airline_tweets", "amazon_reviews")
"""Tasks in the sample, in the order a quick-start run visits them."""

SPLITS: tuple[str, ...] = ("train", "test")
FIELDS: list[str] = ["text", "label"]
DEFAULT_SIZES: dict[str, int] = {"train": 320, "test": 160}
DEFAULT_SEED = 0
DEFAULT_OUT = Path(__file__).resolve().parent / "quickstart"


def read_rows(path: Path) -> list[dict[str, str]]:
    """Read a ``text,label`` CSV file into a list of rows, checking its header."""
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames != FIELDS:
            raise ValueError(f"{path}: expected columns {FIELDS}, found {reader.fieldnames}")
        return [{"text": row["text"], "label": row["label"]} for row in reader]


def allocate(counts: Counter[str], size: int) -> dict[str, int]:
    """Split ``size`` rows over the labels in proportion to ``counts`` (largest remainder).

    Every label gets at least one row when ``size`` is at least the number of labels, and no label gets more
    rows than it has. If ``size`` is not smaller than the total, every row is taken.
    """
    total = sum(counts.values())
    labels = sorted(counts)
    if size >= total:
        return {label: counts[label] for label in labels}
    quotas = {label: counts[label] * size / total for label in labels}
    alloc = {label: int(quotas[label]) for label in labels}
    if size >= len(labels):
        for label in labels:
            alloc[label] = max(alloc[label], 1)
    # Hand out (or take back) the remaining rows by fractional part, largest first; ties by label name.
    by_remainder = sorted(labels, key=lambda label: (-(quotas[label] - int(quotas[label])), label))
    while sum(alloc.values()) < size:
        for label in by_remainder:
            if sum(alloc.values()) < size and alloc[label] < counts[label]:
                alloc[label] += 1
    while sum(alloc.values()) > size:
        for label in reversed(by_remainder):
            if sum(alloc.values()) > size and alloc[label] > 1:
                alloc[label] -= 1
    return alloc


def stratified_sample(rows: list[dict[str, str]], size: int, seed: int) -> list[dict[str, str]]:
    """Pick ``size`` rows stratified by label with ``random.Random(seed)``, keeping the source order."""
    rng = random.Random(seed)
    by_label: dict[str, list[int]] = {}
    for index, row in enumerate(rows):
        by_label.setdefault(row["label"], []).append(index)
    alloc = allocate(Counter({label: len(indices) for label, indices in by_label.items()}), size)
    chosen: list[int] = []
    for label in sorted(by_label):
        chosen.extend(rng.sample(by_label[label], alloc[label]))
    return [rows[index] for index in sorted(chosen)]


def write_rows(path: Path, rows: list[dict[str, str]]) -> None:
    """Write rows as a ``text,label`` CSV file (UTF-8, minimal quoting, ``\\r\\n`` line ends)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(rows)


def make_sample(data_dir: Path, out_dir: Path, sizes: dict[str, int], seed: int) -> dict[str, dict[str, Counter[str]]]:
    """Write the sample of every task and split; return the label counts written per task and split."""
    summary: dict[str, dict[str, Counter[str]]] = {}
    for task in TASKS:
        summary[task] = {}
        for split in SPLITS:
            rows = read_rows(data_dir / task / f"{split}.csv")
            sample = stratified_sample(rows, sizes[split], seed)
            write_rows(out_dir / task / f"{split}.csv", sample)
            summary[task][split] = Counter(row["label"] for row in sample)
    return summary


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "data_dir",
        nargs="?",
        type=Path,
        default=os.environ.get("CLASSP_HF_DATA"),
        help="shared sentiment data folder (default: $CLASSP_HF_DATA)",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output folder (default: {DEFAULT_OUT})")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="random seed (default: %(default)s)")
    parser.add_argument("--train-size", type=int, default=DEFAULT_SIZES["train"], help="train rows per task")
    parser.add_argument("--test-size", type=int, default=DEFAULT_SIZES["test"], help="test rows per task")
    args = parser.parse_args(argv)
    if args.data_dir is None:
        parser.error("give the shared data folder as an argument or set CLASSP_HF_DATA")
    args.data_dir = Path(args.data_dir)
    if not args.data_dir.is_dir():
        parser.error(f"no such folder: {args.data_dir}")
    return args


def main(argv: list[str] | None = None) -> int:
    """Regenerate the sample and print the label counts written."""
    args = parse_args(argv)
    sizes = {"train": args.train_size, "test": args.test_size}
    summary = make_sample(args.data_dir, args.out, sizes, args.seed)
    for task, splits in summary.items():
        for split, counts in splits.items():
            detail = ", ".join(f"{label} {count}" for label, count in sorted(counts.items()))
            print(f"{task}/{split}.csv: {sum(counts.values())} rows ({detail})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
