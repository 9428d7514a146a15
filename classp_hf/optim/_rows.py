"""Row skipping: CLASSP's step on only the rows of a 2-D tensor that can change.

An element whose gradient is zero, non-finite or masked changes neither the weight nor :math:`S`,
so a row of such elements (the embedding row of a token absent from the batch: about half of
MiniLM's parameters on a real batch) can be left out of the step. :func:`plan_rows` finds, for
each large 2-D CPU tensor whose gradient has mostly empty rows, the rows that can change and the
cut-off on :math:`|g|` of the whole tensor; the caller gathers those rows (``index_select``), runs
the ordinary update on them and scatters them back (``index_copy_``). The result is bit for bit
the dense step's: the dense step leaves every element of a skipped row unchanged, and the cut-offs
of the relative and quantile modes are computed from the whole tensor in a way that does not
depend on which rows are gathered (see :func:`relative_norm` and :func:`quantile_cutoff`).

The decision is cheap: a tensor is considered only if it is 2-D, on the CPU, has at least
:data:`MIN_NUMEL` elements, and a probe of its first and last columns finds at most
:data:`MAX_LIVE_SHARE` of its rows non-zero; only then is every row read.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "RowPlan",
    "MIN_NUMEL",
    "MAX_LIVE_SHARE",
    "eligible",
    "plan_rows",
    "relative_norm",
    "quantile_cutoff",
    "finite_magnitude",
    "compute_dtype",
    "relative_cutoff",
    "kth_smallest",
    "exact_power_layout",
    "pow_rows",
]

#: Tensors with fewer elements are always updated whole (the row test would cost more than it saves).
MIN_NUMEL = 1 << 16
#: Rows are skipped only when at most this share of them can change (gathering and scattering the
#: live rows costs about as much as the dense step on a bit more than half of them).
MAX_LIVE_SHARE = 0.5
#: Longest row for which the per-row reductions are certain not to be split between threads.
_MAX_ROW_LENGTH = 1 << 14
#: Elements per chunk of the float64 sums of squares (fits in a core's L2 cache).
_SQUARES_CHUNK_NUMEL = 1 << 16
#: A general power (not 1 or 2) is exact under row skipping only for rows of a multiple of this many
#: elements: ATen computes ``pow`` with SIMD (Sleef) on whole vectors and with ``std::pow`` on the rest,
#: which may differ in the last bit, so each element must land in a whole vector in both layouts.
_POW_ROW_MULTIPLE = 64
#: Elements per call of :func:`pow_rows`: below ATen's parallel grain size (32768), so that no call is
#: split between threads at a point that depends on the tensor's size.
_POW_CHUNK_NUMEL = 1 << 14


@dataclass(frozen=True)
class RowPlan:
    """The rows of one 2-D tensor that a step can change.

    Args:
        rows (`Tensor`): int64 indices of those rows, ascending.
        num_rows (`int`): the number of rows of the whole tensor.
        cutoff (`Tensor`, `float` or `None`): the value ``|g|`` must exceed, from the whole tensor
            (relative and quantile modes, or a cut-off given by the caller); `None` in absolute mode,
            whose cut-off does not depend on the tensor.
    """

    rows: Tensor
    num_rows: int
    cutoff: Tensor | float | None


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype CLASSP computes in for a parameter (or gradient) of ``dtype``: float64 stays, else float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def finite_magnitude(grad: Tensor) -> Tensor:
    """``|g|`` in the compute dtype (:func:`compute_dtype`), 0 wherever ``g`` is non-finite."""
    dtype = compute_dtype(grad.dtype)
    magnitude = grad.abs() if grad.dtype == dtype else grad.to(dtype).abs_()
    return magnitude.nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0)


def eligible(tensor: Tensor) -> bool:
    """Whether row skipping may apply to ``tensor`` (and its relative-mode norm is taken row by row)."""
    return (
        tensor.device.type == "cpu"
        and tensor.dim() == 2
        and tensor.numel() >= MIN_NUMEL
        and tensor.shape[1] <= _MAX_ROW_LENGTH
    )


def _row_sums_of_squares(values: Tensor) -> Tensor:
    """Per row of a 2-D tensor, the float64 sum of its squared elements (chunks of rows in a reused buffer).

    A row's sum depends only on that row: the same in a gathered subset of rows as in the whole tensor.
    """
    num_rows, length = values.shape
    sums = torch.empty(num_rows, dtype=torch.float64)
    if num_rows == 0:
        return sums
    step = max(1, _SQUARES_CHUNK_NUMEL // max(length, 1))
    buffer = torch.empty(min(step, num_rows), length, dtype=torch.float64)
    for start in range(0, num_rows, step):
        chunk = values[start : start + step]
        squares = buffer[: chunk.shape[0]]
        squares.copy_(chunk)
        squares.mul_(squares)  # a float32 square is exact in float64
        torch.sum(squares, dim=1, out=sums[start : start + chunk.shape[0]])
    return sums


def relative_norm(magnitude: Tensor) -> Tensor:
    """The float64 norm of an eligible tensor's ``|g|`` (or of any subset of its rows holding every non-zero).

    The per-row float64 sums of squares are added exactly (:func:`math.fsum`), so rows of zeros change
    nothing and the order of the rows does not matter: skipping rows gives the dense step's cut-off.
    """
    total = math.fsum(_row_sums_of_squares(magnitude).tolist())
    return torch.tensor(math.sqrt(total), dtype=torch.float64)


def relative_cutoff(norm: Tensor, threshold: float, numel: int, dtype: torch.dtype) -> Tensor:
    """``g^2 > t * mean(g^2)  <=>  |g| > sqrt(t / n) * ||g||``, from the float64 norm of the whole tensor."""
    return (norm * math.sqrt(threshold / max(numel, 1))).to(dtype)


def kth_smallest(values: Tensor, k: int) -> Tensor:
    """The ``k``-th smallest element (1-based) of a 1-D tensor, as a 0-dim tensor on its device.

    On the CPU, numpy's introselect (``np.partition``) picks the same element as ``torch.kthvalue`` about
    twice as fast; elsewhere, and for dtypes numpy lacks (bfloat16), ``torch.kthvalue``.
    """
    if values.device.type == "cpu" and values.dtype in (torch.float32, torch.float64) and not values.requires_grad:
        return torch.from_numpy(np.partition(values.numpy(), k - 1)[k - 1 : k]).reshape(())
    return torch.kthvalue(values, k).values


def quantile_cutoff(magnitude: Tensor, threshold: float, numel: int) -> Tensor | float:
    """The quantile mode's cut-off: the ``(numel - keep)``-th smallest ``|g|`` of the whole tensor.

    ``keep = ceil(threshold * numel)``. ``magnitude`` holds the whole tensor's finite ``|g|``, or on the
    CPU any subset of it holding every non-zero (the rest are zeros). With at most ``keep`` non-zeros the
    cut-off is 0 (no selection); else it is the ``(nnz - keep)``-th smallest non-zero, selected among the
    non-zeros only (introselect degrades on the ~99% zeros of an embedding gradient).

    Returns:
        ``0.0``, or a 0-dim tensor in ``magnitude``'s dtype.
    """
    keep = math.ceil(threshold * numel)
    if keep >= numel:
        return 0.0
    flat = magnitude.reshape(-1)
    if flat.device.type != "cpu":  # no host synchronisation: select among all elements of the whole tensor
        return kth_smallest(flat, numel - keep)
    nonzero = int(torch.count_nonzero(flat))
    if nonzero <= keep:
        return 0.0
    values = flat if nonzero == flat.numel() else flat[flat > 0]
    return kth_smallest(values, nonzero - keep)


def exact_power_layout(tensor: Tensor) -> bool:
    """Whether :func:`pow_rows` gives each element of ``tensor`` the same bits whatever rows surround it."""
    return (
        tensor.device.type == "cpu"
        and tensor.dim() == 2
        and tensor.shape[1] % _POW_ROW_MULTIPLE == 0
        and tensor.shape[1] <= _POW_CHUNK_NUMEL
        and tensor.is_contiguous()
    )


def pow_rows(values: Tensor, exponent: float, out: Tensor | None = None) -> Tensor:
    """``values ** exponent`` (into ``out``, which may be ``values``), in chunks of whole rows when
    :func:`exact_power_layout` holds, so that gathered rows get the bits the whole tensor's rows get."""
    if out is None:
        out = torch.empty_like(values)
    if not exact_power_layout(values) or not out.is_contiguous():
        return torch.pow(values, exponent, out=out)
    step = max(1, _POW_CHUNK_NUMEL // values.shape[1])
    for source, target in zip(values.split(step), out.split(step)):
        torch.pow(source, exponent, out=target)
    return out


def _probe_live_share(grad: Tensor) -> float:
    """The share of rows whose first or last gradient element is non-zero (or NaN): a cheap guess at the
    share of rows with any non-zero."""
    first, last = grad[:, 0], grad[:, -1]
    return int(torch.count_nonzero((first != 0) | (last != 0))) / grad.shape[0]


def _rows_above(grad: Tensor, cutoff: Tensor | float) -> Tensor:
    """Indices of the rows holding an element with ``|g| > cutoff``, or a NaN (kept: the dense step decides)."""
    dtype = compute_dtype(grad.dtype)
    largest = torch.maximum(grad.amax(dim=1).to(dtype), grad.amin(dim=1).to(dtype).neg_())
    return torch.nonzero(~(largest <= cutoff)).squeeze(1)


def _plan(grad: Tensor, threshold: float, mode: str, given: Tensor | float | None) -> RowPlan | None:
    """The rows of one eligible tensor that can change, or `None` when too many of them can."""
    num_rows = grad.shape[0]
    limit = MAX_LIVE_SHARE * num_rows
    if threshold <= 0.0:
        rows, cutoff = _rows_above(grad, 0.0), None
    elif given is not None:
        rows, cutoff = _rows_above(grad, given), given
    elif mode == "absolute":
        rows, cutoff = _rows_above(grad, math.sqrt(threshold)), None
    else:  # the cut-off comes from the whole tensor: computed on the rows holding its non-zeros
        rows = _rows_above(grad, 0.0)
        if rows.numel() > limit:
            return None
        magnitude = finite_magnitude(grad.index_select(0, rows))
        if mode == "relative":
            cutoff = relative_cutoff(relative_norm(magnitude), threshold, grad.numel(), magnitude.dtype)
        else:
            cutoff = quantile_cutoff(magnitude, threshold, grad.numel())
        largest = magnitude.amax(dim=1) if magnitude.numel() else magnitude.new_zeros(0)
        rows = rows[largest > cutoff]
    if rows.numel() > limit:
        return None
    return RowPlan(rows=rows, num_rows=num_rows, cutoff=cutoff)


def plan_rows(
    grads: list[Tensor],
    threshold: float,
    mode: str,
    cutoffs: list[Tensor | float | None] | None = None,
    power: float = 1.0,
) -> list[RowPlan | None]:
    """For each gradient, the rows a CLASSP step can change, or `None` to update the tensor whole.

    Args:
        grads (`list[Tensor]`): the gradients (plain tensors).
        threshold, mode: CLASSP's ``threshold`` and ``threshold_mode``.
        cutoffs (`list`, *optional*): per tensor, a cut-off given by the caller (a sharded tensor's
            relative-mode cut-off), or `None`.
        power (`float`): CLASSP's ``power``; a power other than 1 and 2 skips rows only where
            :func:`exact_power_layout` holds.

    Returns:
        One :class:`RowPlan` or `None` per gradient.
    """
    general_power = power not in (1.0, 2.0)
    plans: list[RowPlan | None] = []
    for index, grad in enumerate(grads):
        plan = None
        if (
            eligible(grad)
            and (not general_power or exact_power_layout(grad))
            and _probe_live_share(grad) <= MAX_LIVE_SHARE
        ):
            plan = _plan(grad, threshold, mode, None if cutoffs is None else cutoffs[index])
        plans.append(plan)
    return plans
