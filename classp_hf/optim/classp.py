"""CLASSP: Continual Learning through Adjustment Suppression and Sparsity Promotion.

Implements the optimizer of O. Ludwig, "CLASSP: a Biologically-Inspired Approach to Continual
Learning through Adjustment Suppression and Sparsity Promotion" (arXiv:2405.09637, 2024), with a
per-element threshold mask (the reference code compares one boolean with the threshold), the
power applied to the accumulated gradients, per-group hyperparameters and the torch.optim
``step(closure)`` signature.

This module has no Hugging Face imports.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.optim.optimizer import Optimizer, _default_to_fused_or_foreach

__all__ = ["CLASSP", "classp", "DEFAULT_LR", "DEFAULT_EPS", "THRESHOLD_MODES"]

#: Default learning rate: with ``power=1`` the first step on a weight is about ``lr * sign(g)``,
#: so ``lr`` behaves like Adam's step size. 1e-3 fine-tunes MiniLM; see ``docs/hyperparameters.md``.
DEFAULT_LR = 1e-3
#: Default eps: with power 1 the first step on a weight is ``lr * |g| / (eps + |g|)``, so eps 1e-4
#: damps noise-sized encoder gradients (|g| ~1e-5 on MiniLM) while a head's (|g| ~1e-2) take a full
#: step; it beat 1e-8 by ~6 accuracy points on MiniLM (docs/hyperparameters.md).
DEFAULT_EPS = 1e-4

#: Name of CLASSP's one state tensor per parameter.
STATE_KEY = "grad_sum"
#: Use the accelerator's flat-buffer mask on the CPU too (tests check both give the same result).
_FLAT_MASK_ON_CPU = False
#: What ``threshold`` means: see :class:`CLASSP`.
THRESHOLD_MODES = ("absolute", "relative", "quantile")


def _check_number(name: str, value: Any, *, low: float, inclusive: bool) -> float:
    """Returns ``value`` as a float, or raises ``ValueError`` naming ``name``."""
    if isinstance(value, Tensor):
        if value.numel() != 1:
            raise ValueError(
                f"Invalid {name} value: {name} must be a number, got a tensor of shape {tuple(value.shape)}"
            )
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"Invalid {name} value: {name} must be a number, got {type(value).__name__} {value!r}")
    value = float(value)
    if math.isnan(value) or math.isinf(value):
        raise ValueError(f"Invalid {name} value: {value} (must be finite)")
    if value < low or (value == low and not inclusive):
        relation = ">=" if inclusive else ">"
        raise ValueError(f"Invalid {name} value: {value} (must be {relation} {low:g})")
    return value


def _check_flag(name: str, value: Any, *, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if not isinstance(value, bool):
        raise ValueError(f"Invalid {name} value: {name} must be a bool, got {type(value).__name__} {value!r}")


def validate_hyperparameters(group: dict[str, Any]) -> None:
    """Checks CLASSP's hyperparameters in a param group (or the defaults) in place.

    Args:
        group (`dict`): holds ``lr``, ``threshold``, ``threshold_mode``, ``power``, ``eps``, ``weight_decay``,
            ``apply_decay``, ``foreach`` and ``maximize``.

    Raises:
        ValueError: naming the first invalid hyperparameter.
    """
    _check_number("lr", group["lr"], low=0.0, inclusive=True)
    threshold = _check_number("threshold", group["threshold"], low=0.0, inclusive=True)
    mode = group.get("threshold_mode", "absolute")
    if mode not in THRESHOLD_MODES:
        raise ValueError(f"Invalid threshold_mode value: {mode!r} (one of {', '.join(THRESHOLD_MODES)})")
    if mode == "quantile" and not 0.0 < threshold <= 1.0:
        raise ValueError(
            f"Invalid threshold value: {threshold} (threshold_mode='quantile' takes the fraction of each "
            "tensor's elements to update, in (0, 1])"
        )
    _check_number("power", group["power"], low=0.0, inclusive=False)
    _check_number("eps", group["eps"], low=0.0, inclusive=False)
    _check_number("weight_decay", group["weight_decay"], low=0.0, inclusive=True)
    _check_flag("apply_decay", group["apply_decay"])
    _check_flag("maximize", group["maximize"])
    _check_flag("foreach", group["foreach"], allow_none=True)


class CLASSP(Optimizer):
    r"""Implements CLASSP, an AdaGrad generalisation for continual learning.

    For each element :math:`i` of a parameter at step :math:`t`, with gradient :math:`g`:

    .. math::
        \begin{aligned}
            &\textbf{if } g_i^2 > \tau_t \text{ and } g_i \text{ is finite:} \\
            &\quad w_i \leftarrow w_i - \gamma \lambda w_i
                \hspace{6mm}\text{(decoupled weight decay, passing elements only)} \\
            &\quad S_i \leftarrow S_i + |g_i|^p \\
            &\quad w_i \leftarrow w_i - \gamma \, g_i / (\epsilon + S_i)^{1/p}
                \hspace{6mm}\text{(} w_i - \gamma g_i \text{ if not apply\_decay)} \\
            &\textbf{else: } w_i, S_i \text{ unchanged}
        \end{aligned}

    The threshold :math:`\tau_t` depends on ``threshold_mode`` (per tensor, at each step):

    - ``"absolute"`` (the paper's): :math:`\tau_t = \tau`. A useful value depends on the loss
      scale, the batch size and the layer (MiniLM at batch 16: per-element :math:`g^2` has median
      ~4e-10 in the encoder, ~4e-5 in a fresh head). Gradient clipping (``max_grad_norm``) rescales
      :math:`g` before the test, so it moves elements across an absolute threshold; gradient
      accumulation sums (or averages) micro-batch gradients first, so the test sees the
      accumulated gradient; AMP loss scaling is undone before ``step()`` by ``GradScaler``/accelerate,
      but a loss you scale yourself scales :math:`g^2` by its square.
    - ``"relative"``: :math:`\tau_t = \tau \cdot \mathrm{mean}(g^2)` over the same tensor:
      scale-free (the same value works for any loss scale or batch size); an all-zero gradient
      tensor updates nothing.
    - ``"quantile"``: ``threshold`` in (0, 1] is the fraction of each tensor's elements to update,
      those with the largest :math:`|g|` (exact: the k-th value per tensor). Ties at the cut-off do not
      pass, so at most that fraction is updated; zero gradients never pass.

    :math:`S` includes the current step's gradient, as in AdaGrad and the paper's pseudo-code
    (the paper's printed sum over :math:`k < t` would divide the first step by
    :math:`\epsilon^{1/p}`). With ``power=2, threshold=0`` this is AdaGrad with ``eps`` inside
    the root (:class:`torch.optim.Adagrad` puts it outside: :math:`g / (\sqrt{S} + \epsilon)`).
    :math:`S` is CLASSP's memory of which weights earlier tasks used: keep one optimizer across
    tasks (a fresh optimizer per task throws the mechanism away).

    Non-finite gradient elements (``nan``, ``inf``) are skipped: neither :math:`w` nor
    :math:`S` changes there, so one bad batch cannot poison the accumulated state; they are not
    counted as updated in :meth:`diagnostics`. The check needs no device synchronisation.

    The paper's experiments used ``lr=0.025, threshold=0.99, eps=1e-4, power=1`` on a small
    transformer trained from scratch at batch 750. These values do not transfer to pretrained
    models: a fine-tuned transformer's per-element :math:`g^2` is around 1e-10 (MiniLM, batch 16),
    so ``threshold=0.99`` freezes every weight once the mask is per element, and ``lr=0.025``
    (a first step of about ``lr * sign(g)`` with ``power=1``) wrecks pretrained weights. The
    defaults (``lr=1e-3, eps=1e-4, threshold=0, power=1``) come from a short sweep on MiniLM
    documented in ``docs/hyperparameters.md``.

    Args:
        params (iterable): parameters to optimize, or dicts defining param groups.
        lr (`float`, defaults to 1e-3): learning rate :math:`\gamma` (>= 0).
        threshold (`float`, defaults to 0.0): per-element threshold :math:`\tau` on :math:`g^2`
            (>= 0; a fraction in (0, 1] in ``quantile`` mode); 0 updates every element with a
            non-zero gradient.
        threshold_mode (`str`, defaults to ``"absolute"``): ``"absolute"``, ``"relative"`` or
            ``"quantile"`` (see above).
        power (`float`, defaults to 1.0): the power :math:`p` (> 0).
        eps (`float`, defaults to 1e-4): :math:`\epsilon` inside the root (> 0).
        apply_decay (`bool`, defaults to `True`): divide by :math:`(\epsilon + S)^{1/p}`; if
            `False`, passing elements take a plain SGD step (:math:`S` is still accumulated).
        weight_decay (`float`, defaults to 0.0): decoupled weight decay :math:`\lambda`, as in
            AdamW, applied only to elements that pass the mask.
        foreach (`bool`, *optional*): use the multi-tensor (``torch._foreach_*``) path. By
            default chosen as torch.optim chooses it: on for CUDA tensors, off on CPU.
        maximize (`bool`, defaults to `False`): maximize the objective instead of minimizing.

    State:
        ``grad_sum``: :math:`S`, one float32 tensor per parameter whatever the parameter's
        dtype, kept in float32 by :meth:`load_state_dict` too.

    Example:
        >>> optimizer = CLASSP(model.parameters(), lr=1e-3)
        >>> loss_fn(model(x), y).backward()
        >>> optimizer.step()
        >>> optimizer.diagnostics()[0]["update_fraction"]
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = DEFAULT_LR,
        threshold: float = 0.0,
        power: float = 1.0,
        eps: float = DEFAULT_EPS,
        apply_decay: bool = True,
        weight_decay: float = 0.0,
        threshold_mode: str = "absolute",
        *,
        foreach: bool | None = None,
        maximize: bool = False,
    ) -> None:
        defaults = dict(
            lr=lr,
            threshold=threshold,
            threshold_mode=threshold_mode,
            power=power,
            eps=eps,
            apply_decay=apply_decay,
            weight_decay=weight_decay,
            foreach=foreach,
            maximize=maximize,
        )
        validate_hyperparameters(defaults)
        self._last_update_counts: dict[int, Tensor] = {}
        self._reset_tracking_attributes()
        super().__init__(params, defaults)
        for group in self.param_groups:
            for p in group["params"]:
                self._init_state(p)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Adds a param group after checking its hyperparameters (see :class:`CLASSP`)."""
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        validate_hyperparameters(group)
        if hasattr(self, "state"):
            for p in group["params"]:
                self._init_state(p)

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        if not hasattr(self, "_tracking"):  # unpickled; load_state_dict also comes here and keeps tracking
            self._last_update_counts = {}
            self._reset_tracking_attributes()
        for group in self.param_groups:
            group.setdefault("threshold_mode", "absolute")
            group.setdefault("foreach", None)
            group.setdefault("maximize", False)
            group.setdefault("apply_decay", True)
            group.setdefault("weight_decay", 0.0)

    def _init_state(self, p: Tensor) -> None:
        state = self.state[p]
        if STATE_KEY not in state:
            if p.is_sparse:
                raise RuntimeError("CLASSP does not support sparse parameters")
            state[STATE_KEY] = torch.zeros_like(p, dtype=torch.float32, memory_format=torch.preserve_format)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Loads the optimizer state, keeping ``grad_sum`` in float32.

        :class:`torch.optim.Optimizer` casts floating-point state to each parameter's dtype;
        for a bfloat16 parameter that would round :math:`S` to 8 bits of mantissa. The state is
        moved to each parameter's device and kept in float32 instead.

        Args:
            state_dict (`dict`): as returned by :meth:`state_dict`.

        Raises:
            ValueError: if a ``grad_sum`` tensor's shape does not match its parameter.
        """
        if not isinstance(state_dict, dict) or "state" not in state_dict or "param_groups" not in state_dict:
            raise ValueError("Invalid CLASSP state_dict: expected a dict with 'state' and 'param_groups'")
        states = {key: dict(value) for key, value in state_dict["state"].items()}
        held_back = {key: value.pop(STATE_KEY) for key, value in states.items() if STATE_KEY in value}
        super().load_state_dict({**state_dict, "state": states})
        saved_ids = [pid for group in state_dict["param_groups"] for pid in group["params"]]
        params = [p for group in self.param_groups for p in group["params"]]
        for pid, p in zip(saved_ids, params, strict=True):
            if pid not in held_back:
                continue
            grad_sum = held_back[pid]
            if not isinstance(grad_sum, Tensor) or grad_sum.shape != p.shape:
                shape = tuple(grad_sum.shape) if isinstance(grad_sum, Tensor) else type(grad_sum).__name__
                raise ValueError(
                    f"Invalid CLASSP state_dict: grad_sum of parameter {pid} has shape {shape}, "
                    f"the parameter has {tuple(p.shape)}"
                )
            self.state[p][STATE_KEY] = grad_sum.to(device=p.device, dtype=torch.float32).clone()
        for group in self.param_groups:
            for p in group["params"]:
                self._init_state(p)
        self._last_update_counts = {}

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """Performs a single optimization step.

        Args:
            closure (`Callable`, *optional*): re-evaluates the model and returns the loss.

        Returns:
            The loss returned by ``closure``, or `None`.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()

        for index, group in enumerate(self.param_groups):
            params, grads, grad_sums, masks = [], [], [], []
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("CLASSP does not support sparse gradients; use a dense embedding")
                state = self.state[p]
                if state[STATE_KEY].device != p.device:  # the model moved after the optimizer was built
                    state[STATE_KEY] = state[STATE_KEY].to(p.device)
                params.append(p)
                grads.append(p.grad)
                grad_sums.append(state[STATE_KEY])
                if self._tracking:
                    masks.append(self._update_mask(p))
            if not params:
                self._last_update_counts.pop(index, None)
                continue
            updated = classp(
                params,
                grads,
                grad_sums,
                update_masks=masks if self._tracking else None,
                lr=group["lr"],
                threshold=group["threshold"],
                threshold_mode=group["threshold_mode"],
                power=group["power"],
                eps=group["eps"],
                apply_decay=group["apply_decay"],
                weight_decay=group["weight_decay"],
                maximize=group["maximize"],
                foreach=group["foreach"],
            )
            self._last_update_counts[index] = updated
            if self._tracking:
                self._tracked_updates[index] = self._tracked_updates.get(index, 0) + updated
        if self._tracking:
            self._tracked_steps += 1
        return loss

    # -- optional diagnostic state: which elements were updated (not part of the update state) --
    def _reset_tracking_attributes(self) -> None:
        self._tracking = False
        self._update_masks: dict[Tensor, Tensor] = {}
        self._tracked_updates: dict[int, Tensor | int] = {}
        self._tracked_steps = 0

    def _update_mask(self, p: Tensor) -> Tensor:
        mask = self._update_masks.get(p)
        if mask is None or mask.device != p.device:
            mask = torch.zeros(p.shape, dtype=torch.bool, device=p.device)
            self._update_masks[p] = mask
        return mask

    def track_updates(self, enabled: bool = True) -> None:
        """Turns on (or off) the optional per-element "ever updated" mask, and resets it.

        The mask (one bool per element, kept outside :meth:`state_dict`) and the running count
        of updated elements are diagnostics only: CLASSP's update does not read them. Off by
        default; the continual runner turns it on per task when diagnostics are asked for.

        Args:
            enabled (`bool`): track from the next step on.
        """
        self._reset_tracking_attributes()
        self._tracking = enabled

    def update_tracking(self) -> dict[str, Any]:
        """What was updated since :meth:`track_updates` (reads the device once).

        Returns:
            ``steps``; ``mean_update_fraction`` (elements updated per step over all elements,
            averaged over the steps); ``ever_updated_fraction`` (elements updated at least once
            over all elements); ``masks``: ``{param: bool tensor}`` of the elements updated at
            least once.

        Raises:
            RuntimeError: if tracking is off.
        """
        if not self._tracking:
            raise RuntimeError("update tracking is off: call track_updates() first")
        params = [p for group in self.param_groups for p in group["params"]]
        numel = sum(p.numel() for p in params)
        updated = sum(float(count) for count in self._tracked_updates.values())
        ever = sum(int(mask.sum()) for mask in self._update_masks.values())
        steps = self._tracked_steps
        return {
            "steps": steps,
            "mean_update_fraction": updated / (numel * steps) if steps and numel else 0.0,
            "ever_updated_fraction": ever / numel if numel else 0.0,
            "masks": {p: self._update_masks[p] for p in params if p in self._update_masks},
        }

    @torch.no_grad()
    def diagnostics(self) -> list[dict[str, float]]:
        """Per-group statistics for logging.

        Reads the device once per call (not once per step): log it every ``logging_steps``.

        Returns:
            A list with one dict per param group: ``numel`` (elements in the group),
            ``update_fraction`` (elements updated at the
            last step over all elements of the group; 0 if the group had no gradient),
            ``grad_sum_mean``, ``grad_sum_max`` and ``grad_sum_nonzero_fraction`` (share of
            elements ever updated since the state began).
        """
        out = []
        for index, group in enumerate(self.param_groups):
            sums = [self.state[p][STATE_KEY] for p in group["params"]]
            numel = sum(s.numel() for s in sums)
            if numel == 0:
                out.append(
                    dict(
                        numel=0, update_fraction=0.0, grad_sum_mean=0.0, grad_sum_max=0.0, grad_sum_nonzero_fraction=0.0
                    )
                )
                continue
            total = sum(s.sum(dtype=torch.float64).cpu() for s in sums)
            largest = max(s.max().cpu() for s in sums)
            nonzero = sum(torch.count_nonzero(s).cpu() for s in sums)
            count = self._last_update_counts.get(index)
            updated = 0.0 if count is None else float(count)
            out.append(
                dict(
                    numel=numel,
                    update_fraction=updated / numel,
                    grad_sum_mean=float(total) / numel,
                    grad_sum_max=float(largest),
                    grad_sum_nonzero_fraction=float(nonzero) / numel,
                )
            )
        return out


def classp(
    params: list[Tensor],
    grads: list[Tensor],
    grad_sums: list[Tensor],
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
) -> Tensor:
    """Functional CLASSP: updates ``params`` and ``grad_sums`` in place.

    Args:
        params, grads, grad_sums (`list[Tensor]`): parameters, their gradients and their
            float32 accumulators :math:`S`.
        lr, threshold, threshold_mode, power, eps, apply_decay, weight_decay, maximize: see
            :class:`CLASSP`.
        update_masks (`list[Tensor]`, *optional*): bool tensors, or-ed with the elements updated.
        foreach (`bool`, *optional*): use the multi-tensor path; `None` chooses as torch.optim.

    Returns:
        A 0-dim tensor on the first parameter's device: the number of elements updated.
    """
    if foreach is None:
        _, foreach = _default_to_fused_or_foreach(params, differentiable=False, use_fused=False)
    impl = _multi_tensor_classp if foreach else _single_tensor_classp
    return impl(
        params,
        grads,
        grad_sums,
        update_masks,
        lr=lr,
        threshold=threshold,
        threshold_mode=threshold_mode,
        power=power,
        eps=eps,
        apply_decay=apply_decay,
        weight_decay=weight_decay,
        maximize=maximize,
    )


def _cutoff(magnitude: Tensor, threshold: float, mode: str) -> float | Tensor:
    """The value ``|g|`` must exceed: a float (absolute mode) or a 0-dim tensor (no device sync)."""
    if mode == "absolute":
        return math.sqrt(threshold)
    if mode == "relative":  # g^2 > t * mean(g^2)  <=>  |g| > sqrt(t / n) * ||g||
        # Accumulated in float64, so that CPU and CUDA (different summation orders) agree on the cut-off.
        norm = torch.linalg.vector_norm(magnitude, dtype=torch.float64)
        return (norm * math.sqrt(threshold / max(magnitude.numel(), 1))).to(torch.float32)
    numel = magnitude.numel()
    keep = math.ceil(threshold * numel)
    if keep >= numel:
        return 0.0
    return _kth_smallest(magnitude.reshape(-1), numel - keep)


def _kth_smallest(values: Tensor, k: int) -> Tensor:
    """The ``k``-th smallest element (1-based) of a 1-D tensor, as a 0-dim tensor on its device.

    On the CPU, numpy's introselect (``np.partition``) picks the same element as ``torch.kthvalue`` about
    twice as fast; elsewhere, and for dtypes numpy lacks (bfloat16), ``torch.kthvalue``.
    """
    if values.device.type == "cpu" and values.dtype in (torch.float32, torch.float64) and not values.requires_grad:
        return torch.from_numpy(np.partition(values.numpy(), k - 1)[k - 1 : k]).reshape(())
    return torch.kthvalue(values, k).values


def _apply_cutoff_(magnitude: Tensor, threshold: float, mode: str) -> None:
    """Zeroes, in place, the elements of one tensor's ``|g|`` that do not pass."""
    if threshold <= 0.0:
        return
    cutoff = _cutoff(magnitude, threshold, mode)
    if isinstance(cutoff, Tensor):
        magnitude.mul_(magnitude > cutoff)
    elif cutoff > 0.0:
        torch.threshold_(magnitude, cutoff, 0.0)


def _masked_magnitude(grad: Tensor, threshold: float, mode: str) -> Tensor:
    """Float32 ``|g|`` of one tensor, 0 wherever ``g`` is non-finite or does not pass the threshold.

    An element passes when ``|g|`` exceeds the mode's cut-off (absolute mode: ``sqrt(threshold)``,
    the same set as ``g**2 > threshold`` without float32 overflow or underflow of ``g**2``).
    A masked element changes neither ``S`` nor the weight.
    """
    magnitude = grad.abs() if grad.dtype == torch.float32 else grad.to(torch.float32).abs_()
    magnitude.nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0)
    _apply_cutoff_(magnitude, threshold, mode)
    return magnitude


def _masked_magnitudes(
    grads: list[Tensor], threshold: float, mode: str
) -> tuple[list[Tensor], Tensor | None, list[Tensor] | None]:
    """:func:`_masked_magnitude` for many tensors, elementwise identical.

    On an accelerator it works on one flat buffer (a handful of kernels whatever the number of
    tensors: there is no ``_foreach_where``); on the CPU, where launches are free and large fresh
    buffers cost page faults, tensor by tensor.

    Returns:
        The magnitudes shaped like ``grads``; on the flat path also the flat magnitude buffer and
        the masked signed gradients (``copysign(|g|, g)``), else `None` twice.
    """
    if (grads[0].device.type == "cpu" and not _FLAT_MASK_ON_CPU) or len(grads) == 1:
        return [_masked_magnitude(grad, threshold, mode) for grad in grads], None, None
    sizes = [grad.numel() for grad in grads]
    raw = torch.empty(sum(sizes), dtype=torch.float32, device=grads[0].device)
    # One multi-tensor copy (it also converts low-precision gradients); torch.cat is slower here.
    torch._foreach_copy_([view.view_as(grad) for view, grad in zip(raw.split(sizes), grads)], grads)
    flat = raw.abs()
    flat.nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0)
    if threshold > 0.0:
        if mode == "absolute":
            torch.threshold_(flat, math.sqrt(threshold), 0.0)
        else:
            for view in flat.split(sizes):
                _apply_cutoff_(view, threshold, mode)
    signed = torch.copysign(flat, raw, out=raw)
    shaped = [[view.view_as(grad) for view, grad in zip(buffer.split(sizes), grads)] for buffer in (flat, signed)]
    return shaped[0], flat, shaped[1]


def _count_updated(magnitude: Tensor) -> Tensor:
    """Non-zero elements of a masked ``|g|`` (every element is +0.0 or positive, so its int32 view
    is non-zero exactly where the float is; counting integers is much faster on the CPU)."""
    return torch.count_nonzero(magnitude.view(torch.int32))


def _signed_denominator_(denom: Tensor, grad: Tensor) -> Tensor:
    """Gives ``denom`` the sign of ``grad`` in place: ``|g| / copysign(d, g) == g / d`` exactly.

    Where ``grad`` is not finite the magnitude is 0, so the step is +-0 whatever sign this takes.
    """
    return torch.copysign(denom, grad, out=denom)


def _single_tensor_classp(
    params: list[Tensor],
    grads: list[Tensor],
    grad_sums: list[Tensor],
    update_masks: list[Tensor] | None,
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
    for index, (param, grad, grad_sum) in enumerate(zip(params, grads, grad_sums, strict=True)):
        magnitude = _masked_magnitude(grad, threshold, threshold_mode)
        updated += _count_updated(magnitude)
        if update_masks is not None:
            update_masks[index].logical_or_(magnitude != 0)
        weight = param if param.dtype == torch.float32 else param.to(torch.float32)
        if weight_decay != 0.0:
            weight.addcmul_(weight, magnitude.sign(), value=-lr * weight_decay)
        if power == 2.0:
            grad_sum.addcmul_(magnitude, magnitude)
        else:
            grad_sum.add_(magnitude if power == 1.0 else magnitude.pow(power))
        if apply_decay:
            denom = grad_sum.add(eps)
            if power == 2.0:
                denom.sqrt_()
            elif power != 1.0:
                denom.pow_(1.0 / power)
        else:
            denom = torch.ones_like(magnitude)
        weight.addcdiv_(magnitude, _signed_denominator_(denom, grad), value=step_size)
        if weight is not param:
            param.copy_(weight)
    return updated


#: On the CPU the multi-tensor path works through chunks of about this many elements, so that its
#: temporaries stay small enough for the allocator to reuse instead of faulting in fresh pages.
_CPU_CHUNK_NUMEL = 1 << 22


def _chunks(grouped: dict) -> list[tuple[tuple[torch.device, torch.dtype], tuple[list, list, list, list]]]:
    """Splits CPU groups into chunks of at most ``_CPU_CHUNK_NUMEL`` elements (a larger tensor alone)."""
    out = []
    for key, lists in grouped.items():
        if key[0].type != "cpu":
            out.append((key, lists))
            continue
        start, size = 0, 0
        for index, param in enumerate(lists[0]):
            if size and size + param.numel() > _CPU_CHUNK_NUMEL:
                out.append((key, tuple(items[start:index] for items in lists)))
                start, size = index, 0
            size += param.numel()
        out.append((key, tuple(items[start:] for items in lists)))
    return out


def _multi_tensor_classp(
    params: list[Tensor],
    grads: list[Tensor],
    grad_sums: list[Tensor],
    update_masks: list[Tensor] | None,
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
    masks = update_masks if update_masks is not None else [None] * len(params)
    grouped: dict[tuple[torch.device, torch.dtype], tuple[list, list, list, list]] = {}
    for param, grad, grad_sum, mask in zip(params, grads, grad_sums, masks, strict=True):
        lists = grouped.setdefault((param.device, param.dtype), ([], [], [], []))
        lists[0].append(param)
        lists[1].append(grad)
        lists[2].append(grad_sum)
        lists[3].append(mask)
    for (_, dtype), (device_params, device_grads, device_sums, device_masks) in _chunks(grouped):
        magnitudes, flat, signed = _masked_magnitudes(device_grads, threshold, threshold_mode)
        if flat is not None:
            updated += _count_updated(flat).to(updated.device)
        else:
            updated += torch.stack([_count_updated(m) for m in magnitudes]).sum().to(updated.device)
        if update_masks is not None:
            for mask, magnitude in zip(device_masks, magnitudes):
                mask.logical_or_(magnitude != 0)
        if dtype == torch.float32:
            weights = device_params
        else:
            weights = [p.to(torch.float32) for p in device_params]
        if weight_decay != 0.0:
            torch._foreach_addcmul_(weights, weights, torch._foreach_sign(magnitudes), value=-lr * weight_decay)
        if power == 2.0:
            torch._foreach_addcmul_(device_sums, magnitudes, magnitudes)
        elif power == 1.0:
            torch._foreach_add_(device_sums, magnitudes)
        else:
            torch._foreach_add_(device_sums, torch._foreach_pow(magnitudes, power))
        if apply_decay:
            denoms = torch._foreach_add(device_sums, eps)
            if power == 2.0:
                torch._foreach_sqrt_(denoms)
            elif power != 1.0:
                torch._foreach_pow_(denoms, 1.0 / power)
        else:
            denoms = [torch.ones_like(m) for m in magnitudes]
        if signed is not None:  # the sign is on the numerator: the same quotient, bit for bit
            torch._foreach_addcdiv_(weights, signed, denoms, value=step_size)
        else:
            for denom, grad in zip(denoms, device_grads):
                _signed_denominator_(denom, grad)
            torch._foreach_addcdiv_(weights, magnitudes, denoms, value=step_size)
        if dtype != torch.float32:
            torch._foreach_copy_(device_params, weights)
    return updated
