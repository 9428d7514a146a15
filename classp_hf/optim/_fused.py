"""CLASSP's fused step: each tensor's element-wise update compiled into one kernel with ``torch.compile``.

:func:`fused_update` is the whole update of one tensor (finite test, threshold mask, weight decay,
:math:`S` and the weight) written as one expression, compiled once (C++ through inductor on the CPU,
Triton on CUDA) for flat tensors of any length (``dynamic=True``), so the same kernel serves every
tensor, gathered rows included. The learning rate, weight decay, eps, power and the cut-off are 0-dim
tensors, so a learning-rate schedule (or any change of those values) does not recompile it; only the
structure recompiles: the kind of power (1, 2, other), ``apply_decay``, ``maximize``, the dtypes,
whether update tracking is on and whether a stochastically rounded weight is returned instead of
written. The cut-offs of the relative and quantile modes are computed by the eager code (the same
value the other paths use) and passed in.
"""

from __future__ import annotations

import types
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

__all__ = ["BACKEND", "fused_update", "compiled_update", "power_kind", "run_fused_update"]

#: The ``torch.compile`` backend of the fused step ("inductor"; tests may use "aot_eager" where no C++
#: compiler is installed, which traces the same graph but runs it with eager kernels).
BACKEND = "inductor"

_COMPILED: dict[tuple[str, tuple[Any, ...]], Callable[..., tuple[Tensor, Tensor | None]]] = {}
#: Structures whose compiled function hit dynamo's recompile limit: they take the eager path from then on.
_EAGER: set[tuple[str, tuple[Any, ...]]] = set()


def power_kind(power: float) -> str:
    """``"one"``, ``"two"`` or ``"general"``: the structure of the update for a power (specialised at compile)."""
    return "one" if power == 1.0 else "two" if power == 2.0 else "general"


def fused_update(
    param: Tensor,
    grad: Tensor,
    grad_sum: Tensor,
    update_mask: Tensor | None,
    lr: Tensor,
    weight_decay: Tensor,
    eps: Tensor,
    power: Tensor,
    cutoff: Tensor,
    *,
    kind: str,
    apply_decay: bool,
    maximize: bool,
    write_weight: bool,
) -> tuple[Tensor, Tensor | None]:
    """CLASSP's update of one flat tensor, in place (the function ``torch.compile`` compiles).

    Args:
        param, grad, grad_sum (`Tensor`): 1-D views of a parameter, its gradient and its :math:`S`
            (in the compute dtype: float32, or float64 for a float64 parameter).
        update_mask (`Tensor`, *optional*): a bool view, or-ed with the elements updated.
        lr, weight_decay, eps, power, cutoff (`Tensor`): 0-dim tensors in the compute dtype; an element
            passes when its gradient is finite and ``|g| > cutoff``.
        kind (`str`): :func:`power_kind` of ``power``.
        apply_decay, maximize: see :class:`~classp_hf.optim.CLASSP`.
        write_weight (`bool`): write the new weight into ``param`` (rounded to nearest for a low-precision
            parameter); if `False`, return it in the compute dtype instead (for stochastic rounding).

    Returns:
        The number of elements updated (0-dim int64), and the new weight or `None`.
    """
    dtype = grad_sum.dtype
    g = grad.to(dtype)
    magnitude = g.abs()
    passing = torch.isfinite(g) & (magnitude > cutoff)
    masked = torch.where(passing, magnitude, torch.zeros_like(magnitude))
    weight = param.to(dtype)
    weight = weight - (lr * weight_decay) * weight * passing.to(dtype)
    if kind == "one":
        new_sum = grad_sum + masked
    elif kind == "two":
        new_sum = grad_sum + masked * masked
    else:
        new_sum = grad_sum + torch.pow(masked, power)
    if apply_decay:
        denom = new_sum + eps
        if kind == "two":
            denom = torch.sqrt(denom)
        elif kind == "general":
            denom = torch.pow(denom, 1.0 / power)
        step = masked / denom
    else:
        step = masked
    step = torch.copysign(step, g)
    weight = weight + lr * step if maximize else weight - lr * step
    grad_sum.copy_(new_sum)
    if update_mask is not None:
        update_mask.logical_or_(passing)
    count = passing.sum()
    if write_weight:
        param.copy_(weight)
        return count, None
    return count, weight


def _own_copy(function: Callable[..., Any], suffix: str) -> Callable[..., Any]:
    """A copy of ``function`` with a code object of its own.

    Dynamo keeps compiled graphs, and counts recompilations against ``recompile_limit``, per code object: one
    copy per structure (dtypes, device, power kind, flags) gives each its own budget, so a process that builds
    many differently configured fused optimizers never exhausts one shared cache.
    """
    name = f"{function.__name__}_{suffix}"
    code = function.__code__.replace(co_name=name, co_qualname=name)
    copy = types.FunctionType(code, function.__globals__, name, function.__defaults__, function.__closure__)
    copy.__kwdefaults__ = function.__kwdefaults__
    copy.__doc__ = function.__doc__
    return copy


def compiled_update(
    backend: str | None = None, structure: tuple[Any, ...] = ()
) -> Callable[..., tuple[Tensor, Tensor | None]]:
    """:func:`fused_update` compiled for flat tensors of any length, one compiled function per ``structure``.

    Args:
        backend (`str`, *optional*): the ``torch.compile`` backend (default :data:`BACKEND`).
        structure (`tuple`): what the graph specialises on (dtypes, device type, power kind, flags); each
            structure gets a function (and a dynamo cache) of its own, made at its first call and reused.
    """
    backend = backend or BACKEND
    key = (backend, structure)
    compiled = _COMPILED.get(key)
    if compiled is None:
        function = _own_copy(fused_update, str(len(_COMPILED)))
        compiled = torch.compile(function, backend=backend, dynamic=True, fullgraph=True)
        _COMPILED[key] = compiled
    return compiled


def run_fused_update(structure: tuple[Any, ...], *args: Any, **kwargs: Any) -> tuple[Tensor, Tensor | None] | None:
    """Runs the compiled :func:`fused_update` of ``structure``; `None` where it cannot be compiled again.

    A structure whose function hits dynamo's recompile limit (many differently laid-out tensors) is not an
    error: it warns once and returns `None` from then on, and the caller steps that tensor on the eager path
    (the same update). A failing compiler still raises (``classp-hf`` checks it when a config is loaded).
    """
    key = (BACKEND, structure)
    if key in _EAGER:
        return None
    try:
        return compiled_update(BACKEND, structure)(*args, **kwargs)
    except torch._dynamo.exc.FailOnRecompileLimitHit:
        _EAGER.add(key)
        warnings.warn(
            f"CLASSP(fused=True): torch.compile reached its recompile limit for {structure}; those tensors now "
            "step on the eager single-tensor path (the same update, not compiled)",
            RuntimeWarning,
            stacklevel=4,
        )
        return None
