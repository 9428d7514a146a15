"""CLASSP's functional update: :func:`classp` and its single-tensor, multi-tensor (``foreach``), row-skipping,
low-precision, sharded and compiled (``fused``) paths, as ``torch.optim``'s functional optimizers are.

:class:`classp_hf.optim.CLASSP` holds the state and calls :func:`classp`. This module has no Hugging Face imports.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor
from torch.optim.optimizer import _default_to_fused_or_foreach

from classp_hf.optim import _fused
from classp_hf.optim._hyperparameters import update_rule
from classp_hf.optim._rows import (
    RowPlan,
    compute_dtype,
    eligible,
    finite_magnitude,
    kth_smallest,
    plan_rows,
    pow_rows,
    quantile_cutoff,
    relative_cutoff,
    relative_norm,
)
from classp_hf.optim._sharded import local_tensor, sum_over_shards
from classp_hf.optim._state import (
    EncodedSum,
)

#: Use the accelerator's flat-buffer mask on the CPU too (tests check both give the same result).
_FLAT_MASK_ON_CPU = False

#: The dtype CLASSP computes in, and keeps a float ``S`` in, for a parameter of a dtype.
_compute_dtype = compute_dtype
#: Kept under its old name for callers and tests.
_kth_smallest = kth_smallest
_relative_cutoff = relative_cutoff
_finite_magnitude = finite_magnitude


def _sharded_cutoffs(sharded_grads: list[Tensor | None], threshold: float, mode: str) -> list[Tensor | None] | None:
    """Relative mode's cut-offs on ``|g|`` for DTensor gradients, from the sum of :math:`g^2` over all shards.

    Returns `None` when no tensor needs one (no DTensor, another mode, or threshold 0); else one
    entry per gradient: a 0-dim tensor for a DTensor, `None` for a whole tensor. Every rank must
    call this for the same tensors (one all-reduce per sharding layout).
    """
    indices = [index for index, grad in enumerate(sharded_grads) if grad is not None]
    if not indices or mode != "relative" or threshold <= 0.0:
        return None
    dtensors = [sharded_grads[index] for index in indices]
    squares = [
        torch.linalg.vector_norm(_finite_magnitude(local_tensor(grad)), dtype=torch.float64).square()
        for grad in dtensors
    ]
    cutoffs: list[Tensor | None] = [None] * len(sharded_grads)
    for index, grad, total in zip(indices, dtensors, sum_over_shards(squares, dtensors)):
        cutoffs[index] = _relative_cutoff(total.sqrt(), threshold, grad.numel(), _compute_dtype(grad.dtype))
    return cutoffs


def classp(
    params: list[Tensor],
    grads: list[Tensor],
    grad_sums: list[Tensor | EncodedSum],
    *,
    lr: float,
    threshold: float,
    power: float,
    eps: float,
    apply_decay: bool,
    weight_decay: float,
    maximize: bool,
    threshold_mode: str = "absolute",
    update_masks: list[Tensor] | None = None,
    foreach: bool | None = None,
    fused: bool = False,
    cutoffs: list[Tensor | None] | None = None,
    generators: Mapping[torch.device, torch.Generator] | None = None,
    skip_rows: bool = True,
) -> Tensor:
    """Functional CLASSP: updates ``params`` and ``grad_sums`` in place.

    Args:
        params, grads, grad_sums (`list`): parameters, their gradients and their accumulators
            :math:`S` (float64 for float64 parameters, else float32, or an
            :class:`~classp_hf.optim._state.EncodedSum` for an :math:`S` kept in bfloat16 or 8 bits,
            rounded back in the order of :func:`_draw_order`); plain tensors (pass a DTensor's local
            shard).
        lr, threshold, threshold_mode, power, eps, apply_decay, weight_decay, maximize: see
            :class:`CLASSP`.
        update_masks (`list[Tensor]`, *optional*): bool tensors, or-ed with the elements updated.
        foreach (`bool`, *optional*): use the multi-tensor path; `None` chooses as torch.optim.
        fused (`bool`, defaults to `False`): use the compiled path (see :class:`CLASSP`).
        cutoffs (`list`, *optional*): per tensor, a 0-dim tensor that ``|g|`` must exceed instead of
            the one ``threshold_mode`` computes from the tensor itself, or `None` (used for shards,
            whose relative-mode cut-off comes from the whole tensor).
        generators (`Mapping[torch.device, torch.Generator]`, *optional*): round bfloat16 and float16
            parameters stochastically, with the generator of their device; `None` rounds to nearest.
            Parameters draw in the order of :func:`_by_device_and_dtype` on both paths.
        skip_rows (`bool`, defaults to `True`): update only the rows that can change of large 2-D CPU
            tensors whose gradient rows are mostly zero or masked (see :mod:`classp_hf.optim._rows`);
            bit for bit the same result as updating them whole.

    Returns:
        A 0-dim tensor on the first parameter's device: the number of elements updated.
    """
    rule = update_rule(locals())  # the keywords every path takes
    if fused and foreach:
        raise ValueError("Invalid fused value: fused=True and foreach=True are exclusive (pick one path)")
    if foreach is None and not fused:
        _, foreach = _default_to_fused_or_foreach(params, differentiable=False, use_fused=False)
    impl = _fused_classp if fused else _multi_tensor_classp if foreach else _single_tensor_classp
    if skip_rows:
        plans = plan_rows(grads, threshold, threshold_mode, cutoffs, power)
    else:
        plans = [None] * len(params)
    work_params, work_grads = _gather_rows(params, plans), _gather_rows(grads, plans)
    work_sums = [
        grad_sum.decode(plan) if isinstance(grad_sum, EncodedSum) else _gather_rows([grad_sum], [plan])[0]
        for grad_sum, plan in zip(grad_sums, plans)
    ]
    work_masks = None if update_masks is None else _gather_rows(update_masks, plans)
    updated = impl(
        work_params,
        work_grads,
        work_sums,
        work_masks,
        _work_cutoffs(cutoffs, plans),
        generators,
        plans,
        **rule,
    )
    _scatter_rows_(params, work_params, plans)
    for index in _draw_order(params):  # an encoded S rounds stochastically: in the same order on every path
        grad_sum, plan = grad_sums[index], plans[index]
        if isinstance(grad_sum, EncodedSum):
            grad_sum.encode_(work_sums[index], plan)
        elif plan is not None:
            grad_sum.index_copy_(0, plan.rows, work_sums[index])
    if update_masks is not None:
        _scatter_rows_(update_masks, work_masks, plans)
    return updated


def _gather_rows(tensors: list[Tensor], plans: list[RowPlan | None]) -> list[Tensor]:
    """Each tensor itself, or a copy of the rows its plan keeps."""
    return [tensor if plan is None else tensor.index_select(0, plan.rows) for tensor, plan in zip(tensors, plans)]


def _scatter_rows_(tensors: list[Tensor], rows: list[Tensor], plans: list[RowPlan | None]) -> None:
    """Writes gathered rows back into their tensors."""
    for tensor, part, plan in zip(tensors, rows, plans):
        if plan is not None:
            tensor.index_copy_(0, plan.rows, part)


def _work_cutoffs(
    cutoffs: list[Tensor | float | None] | None, plans: list[RowPlan | None]
) -> list[Tensor | float | None] | None:
    """The cut-off of each tensor the update sees: a gathered tensor's is its whole tensor's."""
    if cutoffs is None and all(plan is None for plan in plans):
        return None
    given = cutoffs if cutoffs is not None else [None] * len(plans)
    return [cutoff if plan is None else plan.cutoff for cutoff, plan in zip(given, plans)]


def _cutoff(magnitude: Tensor, threshold: float, mode: str) -> float | Tensor:
    """The value ``|g|`` must exceed: a float (absolute mode, or 0) or a 0-dim tensor (no device sync)."""
    if mode == "absolute":
        return math.sqrt(threshold)
    if mode == "relative":
        # Accumulated in float64, so that CPU and CUDA (different summation orders) agree on the cut-off;
        # row by row for a tensor that may skip rows, so that skipping them gives the same cut-off.
        if eligible(magnitude):
            norm = relative_norm(magnitude)
        else:
            norm = torch.linalg.vector_norm(magnitude, dtype=torch.float64)
        return _relative_cutoff(norm, threshold, magnitude.numel(), magnitude.dtype)
    return quantile_cutoff(magnitude, threshold, magnitude.numel())


def _apply_cutoff_(magnitude: Tensor, threshold: float, mode: str, cutoff: Tensor | float | None = None) -> None:
    """Zeroes, in place, the elements of one tensor's ``|g|`` that do not pass (``cutoff`` overrides the mode's)."""
    if threshold <= 0.0:
        return
    if cutoff is None:
        cutoff = _cutoff(magnitude, threshold, mode)
    if isinstance(cutoff, Tensor):
        magnitude.mul_(magnitude > cutoff)
    elif cutoff > 0.0:
        torch.threshold_(magnitude, cutoff, 0.0)


def _masked_magnitude(grad: Tensor, threshold: float, mode: str, cutoff: Tensor | float | None = None) -> Tensor:
    """``|g|`` of one tensor in the compute dtype, 0 wherever ``g`` is non-finite or does not pass the threshold.

    An element passes when ``|g|`` exceeds the mode's cut-off (absolute mode: ``sqrt(threshold)``,
    the same set as ``g**2 > threshold`` without overflow or underflow of ``g**2``), or ``cutoff``
    when given. A masked element changes neither ``S`` nor the weight.
    """
    magnitude = _finite_magnitude(grad)
    _apply_cutoff_(magnitude, threshold, mode, cutoff)
    return magnitude


def _masked_magnitudes(
    grads: list[Tensor], threshold: float, mode: str, cutoffs: list[Tensor | float | None] | None
) -> tuple[list[Tensor], Tensor | None, list[Tensor] | None]:
    """:func:`_masked_magnitude` for many tensors of one dtype, elementwise identical.

    On an accelerator it works on one flat buffer (a handful of kernels whatever the number of
    tensors: there is no ``_foreach_where``); on the CPU, where launches are free and large fresh
    buffers cost page faults, tensor by tensor.

    Returns:
        The magnitudes shaped like ``grads``; on the flat path also the flat magnitude buffer and
        the masked signed gradients (``copysign(|g|, g)``), else `None` twice.
    """
    if cutoffs is None:
        cutoffs = [None] * len(grads)
    if (grads[0].device.type == "cpu" and not _FLAT_MASK_ON_CPU) or len(grads) == 1:
        magnitudes = [_masked_magnitude(grad, threshold, mode, cutoff) for grad, cutoff in zip(grads, cutoffs)]
        return magnitudes, None, None
    sizes = [grad.numel() for grad in grads]
    raw = torch.empty(sum(sizes), dtype=_compute_dtype(grads[0].dtype), device=grads[0].device)
    # One multi-tensor copy (it also converts low-precision gradients); torch.cat is slower here.
    torch._foreach_copy_([view.view_as(grad) for view, grad in zip(raw.split(sizes), grads)], grads)
    flat = raw.abs()
    flat.nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0)
    if threshold > 0.0:
        if mode == "absolute":
            torch.threshold_(flat, math.sqrt(threshold), 0.0)
        else:
            for view, grad, cutoff in zip(flat.split(sizes), grads, cutoffs):
                _apply_cutoff_(view.view_as(grad), threshold, mode, cutoff)
    signed = torch.copysign(flat, raw, out=raw)
    shaped = [[view.view_as(grad) for view, grad in zip(buffer.split(sizes), grads)] for buffer in (flat, signed)]
    return shaped[0], flat, shaped[1]


def _foreach_pow(tensors: list[Tensor], exponent: float, in_place: bool = False) -> list[Tensor]:
    """``torch._foreach_pow``; on the CPU tensor by tensor with :func:`pow_rows` (the single-tensor path's bits)."""
    if tensors and tensors[0].device.type == "cpu":
        return [pow_rows(t, exponent, out=t if in_place else None) for t in tensors]
    if in_place:
        torch._foreach_pow_(tensors, exponent)
        return tensors
    return torch._foreach_pow(tensors, exponent)


#: Integer dtypes of the same width as the float dtypes CLASSP computes in.
_SAME_WIDTH_INT = {4: torch.int32, 8: torch.int64}


def _count_updated(magnitude: Tensor) -> Tensor:
    """Non-zero elements of a masked ``|g|`` (every element is +0.0 or positive, so its integer view
    is non-zero exactly where the float is; counting integers is much faster on the CPU)."""
    return torch.count_nonzero(magnitude.view(_SAME_WIDTH_INT[magnitude.element_size()]))


def _signed_denominator_(denom: Tensor, grad: Tensor) -> Tensor:
    """Gives ``denom`` the sign of ``grad`` in place: ``|g| / copysign(d, g) == g / d`` exactly.

    Where ``grad`` is not finite the magnitude is 0, so the step is +-0 whatever sign this takes.
    """
    return torch.copysign(denom, grad, out=denom)


def _round_to_bfloat16_stochastically_(
    param: Tensor, weight: Tensor, generator: torch.Generator, plan: RowPlan | None = None
) -> None:
    """Writes float32 ``weight`` (overwritten) into bfloat16 ``param``, rounding stochastically.

    bfloat16 is float32 without its 16 low mantissa bits: adding 16 uniform random bits to the
    integer view and truncating rounds the magnitude up with probability equal to the discarded
    fraction (exactly unbiased). A value already representable in bfloat16 is left unchanged.
    """
    noise = _rounding_noise(
        lambda shape: torch.randint(0, 1 << 16, shape, generator=generator, device=weight.device, dtype=torch.int32),
        weight.shape,
        plan,
    )
    weight.view(torch.int32).add_(noise).bitwise_and_(-(1 << 16))
    param.copy_(weight)


def _round_to_float16_stochastically_(
    param: Tensor, weight: Tensor, generator: torch.Generator, plan: RowPlan | None = None
) -> None:
    """Writes float32 ``weight`` into float16 ``param``, rounding stochastically between its two neighbours.

    float16's range and subnormals differ from float32's, so the neighbours come from the integer
    view of the nearest float16: ``low`` (toward zero) and the next one away from zero; ``weight``
    rounds away from zero with probability ``(|w| - |low|) / (|high| - |low|)`` (exact in float32).
    A value already representable in float16 is left unchanged.
    """
    nearest = weight.to(torch.float16)
    toward_zero = nearest.view(torch.int16) - (nearest.float().abs() > weight.abs()).to(torch.int16)
    low = toward_zero.view(torch.float16).float().abs()
    high = (toward_zero + 1).view(torch.float16).float().abs()
    fraction = (weight.abs() - low).div_(high - low)
    noise = _rounding_noise(
        lambda shape: torch.rand(shape, generator=generator, device=weight.device), weight.shape, plan
    )
    away = noise < fraction
    param.copy_(toward_zero.add_(away).view(torch.float16))


_STOCHASTIC_ROUNDERS = {
    torch.bfloat16: _round_to_bfloat16_stochastically_,
    torch.float16: _round_to_float16_stochastically_,
}


def _write_back(
    params: list[Tensor],
    weights: list[Tensor],
    generators: Mapping[torch.device, torch.Generator] | None,
    plans: list[RowPlan | None],
) -> None:
    """Copies the updated ``weights`` (the compute dtype) into low-precision ``params`` of one dtype.

    A tensor gathered from some rows (``plans``) draws its stochastic-rounding noise for the whole
    tensor and keeps those rows' share, so that it rounds as the dense step would.
    """
    rounder = _STOCHASTIC_ROUNDERS.get(params[0].dtype) if generators is not None else None
    if rounder is None:
        torch._foreach_copy_(params, weights)
        return
    for param, weight, plan in zip(params, weights, plans, strict=True):
        rounder(param, weight, generators[param.device], plan)


def _rounding_noise(draw: Callable[[tuple[int, ...]], Tensor], shape: torch.Size, plan: RowPlan | None) -> Tensor:
    """Noise for a tensor of ``shape``: drawn for the whole tensor, and only the rows of ``plan`` kept."""
    if plan is None:
        return draw(tuple(shape))
    return draw((plan.num_rows, *shape[1:])).index_select(0, plan.rows)


def _draw_order(tensors: list[Tensor]) -> list[int]:
    """Indices of ``tensors`` in the order every path rounds them stochastically (by device and dtype)."""
    return [index for indices in _by_device_and_dtype(tensors).values() for index in indices]


def _by_device_and_dtype(tensors: list[Tensor]) -> dict[tuple[torch.device, torch.dtype], list[int]]:
    """Indices of ``tensors`` grouped by device and dtype, groups in order of first appearance."""
    grouped: dict[tuple[torch.device, torch.dtype], list[int]] = {}
    for index, tensor in enumerate(tensors):
        grouped.setdefault((tensor.device, tensor.dtype), []).append(index)
    return grouped


def _single_tensor_classp(
    params: list[Tensor],
    grads: list[Tensor],
    grad_sums: list[Tensor],
    update_masks: list[Tensor] | None,
    cutoffs: list[Tensor | float | None] | None,
    generators: Mapping[torch.device, torch.Generator] | None,
    plans: list[RowPlan | None],
    *,
    lr: float,
    threshold: float,
    threshold_mode: str,
    power: float,
    eps: float,
    apply_decay: bool,
    weight_decay: float,
    maximize: bool,
) -> Tensor:
    step_size = lr if maximize else -lr
    updated = torch.zeros((), dtype=torch.int64, device=params[0].device)
    # In the multi-tensor path's order, so that stochastic rounding draws the same numbers.
    for index in _draw_order(params):
        param, grad, grad_sum = params[index], grads[index], grad_sums[index]
        magnitude = _masked_magnitude(grad, threshold, threshold_mode, None if cutoffs is None else cutoffs[index])
        updated += _count_updated(magnitude)
        if update_masks is not None:
            update_masks[index].logical_or_(magnitude != 0)
        weight = param if param.dtype == magnitude.dtype else param.to(magnitude.dtype)
        if weight_decay != 0.0:
            weight.addcmul_(weight, magnitude.sign(), value=-lr * weight_decay)
        if power == 2.0:
            grad_sum.addcmul_(magnitude, magnitude)
        else:
            grad_sum.add_(magnitude if power == 1.0 else pow_rows(magnitude, power))
        if apply_decay:
            denom = grad_sum.add(eps)
            if power == 2.0:
                denom.sqrt_()
            elif power != 1.0:
                pow_rows(denom, 1.0 / power, out=denom)
        else:
            denom = torch.ones_like(magnitude)
        weight.addcdiv_(magnitude, _signed_denominator_(denom, grad), value=step_size)
        if weight is not param:
            _write_back([param], [weight], generators, [plans[index]])
    return updated


#: On the CPU the multi-tensor path works through chunks of about this many elements, so that its
#: temporaries stay small enough for the allocator to reuse instead of faulting in fresh pages, and
#: for the cache to hold them between kernels (1 << 22 made it ~1.5x slower than the single-tensor
#: path on real MiniLM gradients; 1 << 18 matches it).
_CPU_CHUNK_NUMEL = 1 << 18


def _chunks(tensors: list[Tensor]) -> list[list[int]]:
    """Indices of ``tensors`` by device and dtype; CPU groups cut into chunks of at most ``_CPU_CHUNK_NUMEL``
    elements (a larger tensor alone)."""
    out = []
    for (device, _), indices in _by_device_and_dtype(tensors).items():
        if device.type != "cpu":
            out.append(indices)
            continue
        chunk: list[int] = []
        size = 0
        for index in indices:
            if size and size + tensors[index].numel() > _CPU_CHUNK_NUMEL:
                out.append(chunk)
                chunk, size = [], 0
            chunk.append(index)
            size += tensors[index].numel()
        out.append(chunk)
    return out


def _multi_tensor_classp(
    params: list[Tensor],
    grads: list[Tensor],
    grad_sums: list[Tensor],
    update_masks: list[Tensor] | None,
    cutoffs: list[Tensor | float | None] | None,
    generators: Mapping[torch.device, torch.Generator] | None,
    plans: list[RowPlan | None],
    *,
    lr: float,
    threshold: float,
    threshold_mode: str,
    power: float,
    eps: float,
    apply_decay: bool,
    weight_decay: float,
    maximize: bool,
) -> Tensor:
    step_size = lr if maximize else -lr
    updated = torch.zeros((), dtype=torch.int64, device=params[0].device)
    for indices in _chunks(params):
        device_params = [params[i] for i in indices]
        device_grads = [grads[i] for i in indices]
        device_sums = [grad_sums[i] for i in indices]
        device_cutoffs = None if cutoffs is None else [cutoffs[i] for i in indices]
        magnitudes, flat, signed = _masked_magnitudes(device_grads, threshold, threshold_mode, device_cutoffs)
        if flat is not None:
            updated += _count_updated(flat).to(updated.device)
        else:
            updated += torch.stack([_count_updated(m) for m in magnitudes]).sum().to(updated.device)
        if update_masks is not None:
            for i, magnitude in zip(indices, magnitudes):
                update_masks[i].logical_or_(magnitude != 0)
        compute_dtype = magnitudes[0].dtype
        if device_params[0].dtype == compute_dtype:
            weights = device_params
        else:
            weights = [p.to(compute_dtype) for p in device_params]
        if weight_decay != 0.0:
            torch._foreach_addcmul_(weights, weights, torch._foreach_sign(magnitudes), value=-lr * weight_decay)
        if power == 2.0:
            torch._foreach_addcmul_(device_sums, magnitudes, magnitudes)
        elif power == 1.0:
            torch._foreach_add_(device_sums, magnitudes)
        else:
            torch._foreach_add_(device_sums, _foreach_pow(magnitudes, power))
        if apply_decay:
            denoms = torch._foreach_add(device_sums, eps)
            if power == 2.0:
                torch._foreach_sqrt_(denoms)
            elif power != 1.0:
                _foreach_pow(denoms, 1.0 / power, in_place=True)
        else:
            denoms = [torch.ones_like(m) for m in magnitudes]
        if signed is not None:  # the sign is on the numerator: the same quotient, bit for bit
            torch._foreach_addcdiv_(weights, signed, denoms, value=step_size)
        else:
            for denom, grad in zip(denoms, device_grads):
                _signed_denominator_(denom, grad)
            torch._foreach_addcdiv_(weights, magnitudes, denoms, value=step_size)
        if weights is not device_params:
            _write_back(device_params, weights, generators, [plans[i] for i in indices])
    return updated


def _fused_cutoff(
    grad: Tensor, threshold: float, mode: str, given: Tensor | float | None, dtype: torch.dtype
) -> Tensor:
    """The cut-off the fused kernel compares ``|g|`` with, as a 0-dim tensor: the one the other paths use."""
    if threshold <= 0.0:
        cutoff: Tensor | float = 0.0
    elif given is not None:
        cutoff = given
    elif mode == "absolute":
        cutoff = math.sqrt(threshold)
    else:
        cutoff = _cutoff(_finite_magnitude(grad), threshold, mode)
    return torch.as_tensor(cutoff, dtype=dtype, device=grad.device)


def _flat_alias(tensor: Tensor) -> Tensor:
    """A 1-D tensor on ``tensor``'s memory that is not a view (``torch.compile`` guards on a view's base, whose
    shape differs from tensor to tensor, and would recompile)."""
    alias = tensor.new_empty(0)
    return alias.set_(tensor.untyped_storage(), tensor.storage_offset(), (tensor.numel(),), (1,))


def _fusable(*tensors: Tensor | None) -> bool:
    """Whether the tensors can be seen as flat views (the fused kernel writes through them)."""
    return all(t is None or t.is_contiguous() for t in tensors)


def _fused_classp(
    params: list[Tensor],
    grads: list[Tensor],
    grad_sums: list[Tensor],
    update_masks: list[Tensor] | None,
    cutoffs: list[Tensor | float | None] | None,
    generators: Mapping[torch.device, torch.Generator] | None,
    plans: list[RowPlan | None],
    **rule: Any,
) -> Tensor:
    """The compiled path: one :func:`~classp_hf.optim._fused.fused_update` kernel per tensor, in the
    other paths' order (so stochastic rounding draws alike); a non-contiguous tensor takes the single-tensor
    path, given the same ``rule`` (:func:`~classp_hf.optim._hyperparameters.update_rule`)."""
    lr, weight_decay, eps, power = (rule[name] for name in ("lr", "weight_decay", "eps", "power"))
    threshold, threshold_mode = rule["threshold"], rule["threshold_mode"]
    apply_decay, maximize = rule["apply_decay"], rule["maximize"]
    device = params[0].device
    counts = []
    for (param_device, _), indices in _by_device_and_dtype(params).items():
        dtype = grad_sums[indices[0]].dtype
        scalars = [torch.tensor(value, dtype=dtype, device=param_device) for value in (lr, weight_decay, eps, power)]
        rounder = _STOCHASTIC_ROUNDERS.get(params[indices[0]].dtype) if generators is not None else None
        for index in indices:
            param, grad, grad_sum, plan = params[index], grads[index], grad_sums[index], plans[index]
            mask = None if update_masks is None else update_masks[index]
            given = None if cutoffs is None else cutoffs[index]
            result = None
            if _fusable(param, grad, grad_sum, mask):
                if param.numel() == 0:  # nothing to update; a gathered tensor still draws its whole tensor's noise
                    if rounder is not None:
                        rounder(param, param.to(dtype), generators[param_device], plan)
                    continue
                structure = (
                    param_device.type,
                    param.dtype,
                    grad.dtype,
                    dtype,
                    mask is None,
                    _fused.power_kind(power),
                    apply_decay,
                    maximize,
                    rounder is None,
                )
                result = _fused.run_fused_update(
                    structure,
                    _flat_alias(param.detach()),
                    _flat_alias(grad.detach()),
                    _flat_alias(grad_sum),
                    None if mask is None else _flat_alias(mask),
                    *scalars,
                    _fused_cutoff(grad, threshold, threshold_mode, given, dtype),
                    kind=_fused.power_kind(power),
                    apply_decay=apply_decay,
                    maximize=maximize,
                    write_weight=rounder is None,
                )
            if result is None:  # not contiguous, or past the recompile limit: the single-tensor path
                counts.append(
                    _single_tensor_classp(
                        [param],
                        [grad],
                        [grad_sum],
                        None if mask is None else [mask],
                        [given],
                        generators,
                        [plan],
                        **rule,
                    ).to(device)
                )
                continue
            count, weight = result
            if weight is not None:
                rounder(param, weight.view_as(param), generators[param_device], plan)
            counts.append(count.to(device))
    if not counts:
        return torch.zeros((), dtype=torch.int64, device=device)
    return torch.stack(counts).sum()
