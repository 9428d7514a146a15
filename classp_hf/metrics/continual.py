"""Continual-learning metrics over the accuracy matrix.

Notation (0-indexed, `T` tasks trained in order 0, 1, ..., T-1):

- `R[i][j]`: accuracy on the test set of task `j` after training on task `i` (so row `T-1` is the final model);
- `b[j]`: accuracy on task `j` of the model before any continual training (e.g. the pre-trained model with a fresh
  head, or a majority-class baseline, see [`majority_class_accuracy`]).

References:

- ACC, BWT and FWT: D. Lopez-Paz and M. Ranzato, "Gradient Episodic Memory for Continual Learning", NeurIPS 2017
  (https://arxiv.org/abs/1706.08840), Section 5.
- Forgetting: A. Chaudhry, P. K. Dokania, T. Ajanthan and P. H. S. Torr, "Riemannian Walk for Incremental Learning:
  Understanding Forgetting and Intransigence", ECCV 2018 (https://arxiv.org/abs/1801.10112), Section 4.1, evaluated
  after the last task.

All functions are pure, accept nested sequences or numpy arrays, and return plain Python floats (or `None` where a
quantity is undefined, e.g. transfer with a single task); they never return NaN.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Hashable, Iterable, Sequence

import numpy as np

MatrixLike = Sequence[Sequence[float]] | np.ndarray
VectorLike = Sequence[float] | np.ndarray


def _as_matrix(R: MatrixLike) -> np.ndarray:
    """Validate `R` and return it as a float64 `(T, T)` array.

    Raises:
        ValueError: if `R` is empty, not two-dimensional (e.g. ragged rows), not square, or holds non-finite values.
    """
    try:
        arr = np.asarray(R, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"accuracy matrix R must be a T x T numeric matrix: {err}") from err
    if arr.ndim != 2:
        raise ValueError(f"accuracy matrix R must be two-dimensional (T x T), got shape {arr.shape}")
    if arr.shape[0] != arr.shape[1]:
        raise ValueError(f"accuracy matrix R must be square (T x T), got shape {arr.shape}")
    if arr.shape[0] == 0:
        raise ValueError("accuracy matrix R is empty; need at least one task")
    if not np.all(np.isfinite(arr)):
        raise ValueError("accuracy matrix R holds NaN or infinite values")
    return arr


def _as_baseline(b: VectorLike, num_tasks: int) -> np.ndarray:
    """Validate `b` and return it as a float64 vector of length `num_tasks`."""
    try:
        arr = np.asarray(b, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"baseline b must be a numeric vector: {err}") from err
    if arr.shape != (num_tasks,):
        raise ValueError(f"baseline b must have one entry per task ({num_tasks}), got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError("baseline b holds NaN or infinite values")
    return arr


def _over_several_tasks(R: MatrixLike, measure: Callable[[np.ndarray], float]) -> float | None:
    """``measure`` of the checked matrix (:func:`_as_matrix`), or `None` for a single task (nothing earlier to
    compare with)."""
    arr = _as_matrix(R)
    return None if arr.shape[0] == 1 else float(measure(arr))


def average_accuracy(R: MatrixLike) -> float:
    """Average accuracy after the last task (ACC, Lopez-Paz & Ranzato 2017).

    `ACC = 1/T * sum_{j=0}^{T-1} R[T-1][j]`.

    Args:
        R (`Sequence[Sequence[float]]` or `np.ndarray` of shape `(T, T)`):
            Accuracy matrix; `R[i][j]` is the accuracy on task `j` after training on task `i`.

    Returns:
        `float`: mean of the last row of `R`.

    Raises:
        ValueError: if `R` is not a non-empty, finite, square matrix.
    """
    arr = _as_matrix(R)
    return float(np.mean(arr[-1]))


def backward_transfer(R: MatrixLike) -> float | None:
    """Backward transfer (BWT, Lopez-Paz & Ranzato 2017).

    `BWT = 1/(T-1) * sum_{j=0}^{T-2} (R[T-1][j] - R[j][j])`: how training on later tasks changed the accuracy on
    earlier ones (negative values mean forgetting).

    Args:
        R (`Sequence[Sequence[float]]` or `np.ndarray` of shape `(T, T)`):
            Accuracy matrix; `R[i][j]` is the accuracy on task `j` after training on task `i`.

    Returns:
        `float` or `None`: the backward transfer, or `None` when `T == 1` (no earlier task).

    Raises:
        ValueError: if `R` is not a non-empty, finite, square matrix.
    """
    return _over_several_tasks(R, lambda arr: np.mean(arr[-1, :-1] - np.diagonal(arr)[:-1]))


def forward_transfer(R: MatrixLike, b: VectorLike) -> float | None:
    """Forward transfer (FWT, Lopez-Paz & Ranzato 2017).

    `FWT = 1/(T-1) * sum_{j=1}^{T-1} (R[j-1][j] - b[j])`: how training on tasks `0..j-1` changed the accuracy on task
    `j` before it is trained, relative to the untrained model.

    Args:
        R (`Sequence[Sequence[float]]` or `np.ndarray` of shape `(T, T)`):
            Accuracy matrix; `R[i][j]` is the accuracy on task `j` after training on task `i`.
        b (`Sequence[float]` or `np.ndarray` of shape `(T,)`):
            Accuracy of the untrained model on each task.

    Returns:
        `float` or `None`: the forward transfer, or `None` when `T == 1` (no later task).

    Raises:
        ValueError: if `R` is not a non-empty, finite, square matrix, or `b` does not hold `T` finite values.
    """
    arr = _as_matrix(R)
    num_tasks = arr.shape[0]
    base = _as_baseline(b, num_tasks)
    if num_tasks == 1:
        return None
    later = np.arange(1, num_tasks)
    return float(np.mean(arr[later - 1, later] - base[later]))


def forgetting(R: MatrixLike) -> float | None:
    """Average forgetting after the last task (Chaudhry et al. 2018).

    `F = 1/(T-1) * sum_{j=0}^{T-2} (max_{i=0}^{T-2} R[i][j] - R[T-1][j])`. As in the paper, the maximum runs over all
    rows before the last one, including rows recorded before task `j` was trained.

    Args:
        R (`Sequence[Sequence[float]]` or `np.ndarray` of shape `(T, T)`):
            Accuracy matrix; `R[i][j]` is the accuracy on task `j` after training on task `i`.

    Returns:
        `float` or `None`: the average forgetting (higher means more forgetting; can be negative), or `None` when
        `T == 1`.

    Raises:
        ValueError: if `R` is not a non-empty, finite, square matrix.
    """
    return _over_several_tasks(R, lambda arr: np.mean(np.max(arr[:-1, :-1], axis=0) - arr[-1, :-1]))


def continual_metrics(R: MatrixLike, b: VectorLike | None = None) -> dict[str, float | None]:
    """All continual-learning summary metrics of an accuracy matrix.

    Args:
        R (`Sequence[Sequence[float]]` or `np.ndarray` of shape `(T, T)`):
            Accuracy matrix; `R[i][j]` is the accuracy on task `j` after training on task `i`.
        b (`Sequence[float]` or `np.ndarray` of shape `(T,)`, *optional*):
            Accuracy of the untrained model on each task. Without it `fwt` is `None`.

    Returns:
        `dict[str, float | None]`: keys `acc` ([`average_accuracy`]), `bwt` ([`backward_transfer`]), `fwt`
        ([`forward_transfer`]) and `forgetting` ([`forgetting`]); plain Python floats, or `None` where undefined,
        never NaN.

    Raises:
        ValueError: if `R` is not a non-empty, finite, square matrix, or `b` does not hold `T` finite values.
    """
    return {
        "acc": average_accuracy(R),
        "bwt": backward_transfer(R),
        "fwt": None if b is None else forward_transfer(R, b),
        "forgetting": forgetting(R),
    }


def majority_class_accuracy(labels: Iterable[Hashable]) -> float:
    """Accuracy of always predicting the most frequent label (a simple untrained baseline for `b`).

    Args:
        labels (`Iterable[Hashable]`):
            Ground-truth labels of an evaluation set (e.g. class ids).

    Returns:
        `float`: count of the most frequent label divided by the number of labels.

    Raises:
        ValueError: if `labels` is empty.
    """
    items = np.asarray(labels).ravel().tolist() if isinstance(labels, np.ndarray) else list(labels)
    if not items:
        raise ValueError("majority_class_accuracy needs at least one label")
    _, top_count = Counter(items).most_common(1)[0]
    return top_count / len(items)
