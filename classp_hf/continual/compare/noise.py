"""Is a difference larger than the noise? ``compare``'s paired bootstrap of the ACC difference to a reference setting.

Two settings run on the same seeds see the same test examples (the test sample depends on the seed only), so their
per-example predictions (``predictions.json``, :mod:`classp_hf.continual.predictions`) pair up. The difference in
ACC (the mean over tasks of each task's final accuracy) is taken per seed and averaged over the seeds both settings
finished. Its 95% interval comes from a paired bootstrap: in each resample, every (seed, task) stratum draws its test
examples again with replacement, the same draw for both settings; the seeds themselves are kept (pooled), not
resampled. A difference whose interval holds 0 is *within noise*.

Drawing ``n`` examples with replacement changes only how many of them fall in each of three kinds (the setting right
and the reference wrong, both alike, the reverse), so each stratum's resampled difference is one multinomial draw
over those three counts: exact, and as fast for 25,000 test examples as for 500. Every stratum has its own random
generator, seeded from (bootstrap seed, run seed, task index), so the numbers do not depend on which settings are
compared or in what order.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "BOOTSTRAP_RESAMPLES",
    "BOOTSTRAP_SEED",
    "CONFIDENCE",
    "PairedDifference",
    "paired_bootstrap",
    "correct_by_task",
    "paired_difference",
]

BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0
CONFIDENCE = 0.95


@dataclass(frozen=True)
class PairedDifference:
    """The paired difference in ACC of a setting to the reference.

    Args:
        mean: the observed difference (fraction), averaged over the paired seeds.
        low, high: the bootstrap percentile interval at :data:`CONFIDENCE`.
        seeds: the seeds both settings finished with predictions.
        examples: test examples per seed, summed over the tasks.
    """

    mean: float
    low: float
    high: float
    seeds: list[int]
    examples: int

    @property
    def within_noise(self) -> bool:
        """Whether the interval holds 0."""
        return self.low <= 0.0 <= self.high

    def to_dict(self) -> dict[str, Any]:
        """The fields (copied) and ``within_noise``."""
        return {**dataclasses.asdict(self), "within_noise": self.within_noise}


def paired_bootstrap(
    strata: Mapping[tuple[int, int], tuple[Sequence[bool], Sequence[bool]]],
    *,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
    confidence: float = CONFIDENCE,
) -> PairedDifference:
    """The mean paired ACC difference (setting minus reference) and its bootstrap interval.

    Args:
        strata: ``{(run seed, task index): (setting correct, reference correct)}``: per test example, whether each
            of the two predicted it right, on the same examples in the same order. Every seed must hold the same
            tasks.
        resamples: bootstrap resamples.
        seed: the bootstrap's seed (with the run seed and task index it seeds each stratum's generator).
        confidence: the interval's coverage.

    Returns:
        The :class:`PairedDifference`: per seed the mean over tasks of the accuracy difference, averaged over seeds.

    Raises:
        ValueError: no strata, a stratum whose two vectors differ in length or are empty, or seeds with different
            tasks.
    """
    if not strata:
        raise ValueError("paired_bootstrap: no predictions to compare")
    seeds = sorted({run_seed for run_seed, _ in strata})
    tasks = sorted({task for _, task in strata})
    if len(strata) != len(seeds) * len(tasks):
        raise ValueError("paired_bootstrap: every seed needs predictions on the same tasks")
    observed = np.zeros(len(seeds))
    draws = np.zeros((resamples, len(seeds)))
    examples = 0
    for (run_seed, task), (mine, theirs) in strata.items():
        a, b = np.asarray(mine, dtype=bool), np.asarray(theirs, dtype=bool)
        if a.shape != b.shape or a.ndim != 1 or a.size == 0:
            raise ValueError(f"paired_bootstrap: seed {run_seed}, task {task}: the predictions do not pair up")
        n = a.size
        examples += n
        counts = np.array([np.sum(a & ~b), np.sum(a == b), np.sum(~a & b)], dtype=float)  # +1, 0, -1
        column = seeds.index(run_seed)
        observed[column] += (counts[0] - counts[2]) / n / len(tasks)
        rng = np.random.default_rng([seed, run_seed, task])
        drawn = rng.multinomial(n, counts / n, size=resamples)
        draws[:, column] += (drawn[:, 0] - drawn[:, 2]) / n / len(tasks)
    pooled = draws.mean(axis=1)
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(pooled, [tail, 1.0 - tail])
    return PairedDifference(
        mean=float(observed.mean()),
        low=float(low),
        high=float(high),
        seeds=seeds,
        examples=examples // len(seeds),
    )


def correct_by_task(
    predictions: Mapping[str, Any] | None, tasks: Sequence[str]
) -> dict[str, dict[str, np.ndarray]] | None:
    """Per task: ``{"example_index", "labels", "correct"}`` arrays from a run's ``predictions.json``.

    Args:
        predictions: the file's content (:func:`~classp_hf.continual.predictions.read_predictions`), or `None`.
        tasks: the queue's task names (every one must be there, with its final stage's predictions).

    Returns:
        ``{task: {...}}``, or `None` when the file is missing or lacks a task's final predictions.
    """
    from classp_hf.continual.predictions import final_stage

    if predictions is None:
        return None
    entries = {entry["name"]: entry for entry in predictions.get("tasks", [])}
    mode = predictions.get("queue_mode", "sequential")
    out = {}
    for j, name in enumerate(tasks):
        entry = entries.get(name)
        if entry is None or entry.get("stage") != final_stage(j, len(tasks), mode):
            return None
        labels = np.asarray(entry["labels"], dtype=np.int64)
        out[name] = {
            "example_index": np.asarray(entry["example_index"], dtype=np.int64),
            "labels": labels,
            "correct": np.asarray(entry["predictions"], dtype=np.int64) == labels,
        }
    return out


def _same_examples(mine: Mapping[str, np.ndarray], theirs: Mapping[str, np.ndarray]) -> bool:
    """Whether two runs' predictions of a task are on the same test examples, in the same order.

    The rows must match, and the labels. One exception: classp_hf 0.2.0 recorded a task read from a comparison's
    tokenized-task cache with the positions ``0 .. n-1`` of its seeded sample instead of the rows of its test file
    (the sample is the same: it depends on the seed only). Positions on one side pair with rows on the other when
    every label matches.
    """
    if not np.array_equal(mine["labels"], theirs["labels"]):
        return False
    rows, other = mine["example_index"], theirs["example_index"]
    if np.array_equal(rows, other):
        return True
    positions = np.arange(rows.size)
    return np.array_equal(rows, positions) or np.array_equal(other, positions)


def paired_difference(
    mine: Mapping[int, Mapping[str, Any] | None],
    reference: Mapping[int, Mapping[str, Any] | None],
    tasks: Sequence[str],
    *,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> tuple[PairedDifference | None, str | None]:
    """The paired bootstrap of a setting against the reference over the seeds both finished.

    Args:
        mine, reference: ``{run seed: predictions.json content (or None)}`` of each setting's complete runs.
        tasks: the queue's task names.
        resamples, seed: see :func:`paired_bootstrap`.

    Returns:
        ``(difference, None)``, or ``(None, why)`` when no seed pairs up (no common seed, missing predictions, or
        test examples that differ: another sample, another file).
    """
    strata: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}
    problems = []
    for run_seed in sorted(set(mine) & set(reference)):
        a, b = correct_by_task(mine[run_seed], tasks), correct_by_task(reference[run_seed], tasks)
        if a is None or b is None:
            problems.append(f"seed {run_seed}: no final predictions.json")
            continue
        same = all(_same_examples(a[t], b[t]) for t in tasks)
        if not same:
            problems.append(f"seed {run_seed}: the test examples differ")
            continue
        for j, name in enumerate(tasks):
            strata[(run_seed, j)] = (a[name]["correct"], b[name]["correct"])
    if not strata:
        return None, "; ".join(problems) or "no seed finished by both"
    return paired_bootstrap(strata, resamples=resamples, seed=seed), None
