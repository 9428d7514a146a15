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
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import Tensor
from torch.optim.optimizer import Optimizer, _default_to_fused_or_foreach, _device_dtype_check_for_fused

from classp_hf.optim import _fused
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
from classp_hf.optim._sharded import is_dtensor, local_tensor, match_layout, sum_over_shards
from classp_hf.optim._state import (
    CODES_KEY,
    SCALES_KEY,
    STATE_DTYPES,
    EncodedSum,
    block_layout,
    stored_format,
)

__all__ = ["CLASSP", "classp", "DEFAULT_LR", "DEFAULT_EPS", "THRESHOLD_MODES", "STATE_DTYPES"]

#: Default learning rate: with ``power=1`` the first step on a weight is about ``lr * sign(g)``,
#: so ``lr`` behaves like Adam's step size. 1e-3 fine-tunes MiniLM; see ``docs/hyperparameters.md``.
DEFAULT_LR = 1e-3
#: Default eps: with power 1 the first step on a weight is ``lr * |g| / (eps + |g|)``, so eps 1e-4
#: damps noise-sized encoder gradients (|g| ~1e-5 on MiniLM) while a head's (|g| ~1e-2) take a full
#: step; it beat 1e-8 by ~6 accuracy points on MiniLM (docs/hyperparameters.md).
DEFAULT_EPS = 1e-4

#: Name of CLASSP's one state tensor per parameter.
STATE_KEY = "grad_sum"
#: Top-level :meth:`CLASSP.state_dict` key of the stochastic-rounding generators' states.
RNG_KEY = "stochastic_rounding_rng"
#: Use the accelerator's flat-buffer mask on the CPU too (tests check both give the same result).
_FLAT_MASK_ON_CPU = False
#: Let :meth:`CLASSP.step` skip the rows that cannot change (tests turn it off to compare with the dense step).
_SKIP_ROWS = True
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


def _check_seed(seed: Any) -> int:
    """Returns ``seed`` if it is an int in [0, 2**64), or raises ``ValueError``."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**64:
        raise ValueError(f"Invalid seed value: seed must be an int in [0, 2**64), got {type(seed).__name__} {seed!r}")
    return seed


def validate_hyperparameters(group: dict[str, Any]) -> None:
    """Checks CLASSP's hyperparameters in a param group (or the defaults) in place.

    Args:
        group (`dict`): holds ``lr``, ``threshold``, ``threshold_mode``, ``power``, ``eps``, ``weight_decay``,
            ``apply_decay``, ``foreach``, ``fused``, ``maximize``, ``stochastic_rounding``, ``state_dtype`` and
            ``grad_sum_decay``.

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
    _check_flag("fused", group.get("fused"), allow_none=True)
    if group.get("fused") and group["foreach"]:
        raise ValueError("Invalid fused value: fused=True and foreach=True are exclusive (pick one path)")
    _check_flag("stochastic_rounding", group.get("stochastic_rounding", False))
    state_dtype = group.get("state_dtype", "float32")
    if state_dtype not in STATE_DTYPES:
        raise ValueError(f"Invalid state_dtype value: {state_dtype!r} (one of {', '.join(STATE_DTYPES)})")
    decay = _check_number("grad_sum_decay", group.get("grad_sum_decay", 1.0), low=0.0, inclusive=True)
    if not 0.0 < decay <= 1.0:
        raise ValueError(f"Invalid grad_sum_decay value: {decay} (must be in (0, 1])")


#: The dtype CLASSP computes in, and keeps a float ``S`` in, for a parameter of a dtype.
_compute_dtype = compute_dtype
#: Kept under its old name for callers and tests.
_kth_smallest = kth_smallest
_relative_cutoff = relative_cutoff
_finite_magnitude = finite_magnitude


def _check_no_quantile_on_dtensors(param_groups: list[dict[str, Any]]) -> None:
    """Raises ``ValueError`` if a quantile-mode group holds a DTensor (its shards cannot see the whole tensor)."""
    for group in param_groups:
        if group["threshold_mode"] == "quantile" and any(is_dtensor(p) for p in group["params"]):
            raise ValueError(
                "Invalid threshold_mode value: 'quantile' needs whole tensors and is not supported with "
                "FSDP (DTensor) parameters; use 'absolute' or 'relative'"
            )


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
      accumulated gradient; AMP loss scaling is undone before ``step()`` by ``GradScaler``/accelerate
      (a step it skips for overflow never reaches CLASSP), but a loss you scale yourself scales
      :math:`g^2` by its square.
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

    Rows that cannot change are skipped: on the CPU, a large 2-D tensor whose gradient rows are
    mostly zero or masked (an embedding on a real batch: the rows of the tokens absent from it)
    is updated on the rows that can change only, gathered and scattered back in a few kernels
    (``index_select``/``index_copy_``). The result is bit for bit the dense update's (the relative
    and quantile cut-offs still come from the whole tensor); see :mod:`classp_hf.optim._rows`.

    Precision: float64 parameters are updated in float64 with a float64 :math:`S`; every other
    dtype is updated in float32 with a float32 :math:`S` (a bfloat16 or float16 parameter is
    rounded back after the update, to nearest or, with ``stochastic_rounding``, stochastically).
    Elements that do not pass the mask keep their value bit for bit in every dtype (a ``-0.0``
    weight may come back as ``+0.0``).

    Sharded parameters: under FSDP2 (``torch.distributed.fsdp.fully_shard``, also accelerate's
    FSDP2) the parameters are DTensors, possibly swapped in after the optimizer was built; :math:`S`
    is then a DTensor with the parameter's placements (``torch.distributed.checkpoint.state_dict``'s
    ``get_optimizer_state_dict``/``set_optimizer_state_dict`` gather and scatter it) and the update
    runs on each rank's local shard. ``"absolute"`` mode gives exactly the unsharded result;
    ``"relative"`` mode all-reduces each tensor's sum of :math:`g^2` (float64) over the shards, so
    it matches the unsharded cut-off up to summation order; ``"quantile"`` mode is refused at the
    first step; a low-precision ``state_dtype`` is refused at the first step (float32 only).
    ``set_optimizer_state_dict`` makes a new optimizer's state with a zero-gradient
    step, which it skips while any parameter has a gradient: zero them (``set_to_none=True``)
    first. Under DeepSpeed ZeRO the optimizer sees each rank's flat float32 partition of all
    parameters as one tensor: ``"absolute"`` mode is exact, but ``"relative"`` and ``"quantile"``
    measure a partition (pieces of several parameters), not a parameter.

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
        fused (`bool`, *optional*): use the compiled path (opt-in; not with ``foreach=True``): each
            tensor's update is one kernel made by ``torch.compile`` (C++ through inductor on the CPU,
            which needs a C++ compiler; Triton on CUDA), compiled at the first step for flat tensors of
            any length. The learning rate, weight decay, eps, power and threshold are passed to it as
            0-dim tensors, so a learning-rate schedule does not recompile it. Equal to the foreach path
            up to float rounding (the compiler may fuse or reorder operations).
        maximize (`bool`, defaults to `False`): maximize the objective instead of minimizing.
        stochastic_rounding (`bool`, defaults to `False`): round the float32 result of the update
            of a bfloat16 or float16 parameter stochastically (up with probability equal to the
            distance from the value below, in units of the spacing), so that steps smaller than
            half a unit in the last place still move the weight on average instead of being
            rounded away. Elements that do not pass the mask are never changed, and a step with
            ``lr=0`` draws nothing.
        seed (`int`, defaults to 0): seed of the stochastic-rounding generators, one
            ``torch.Generator`` per device, created at the first rounding. Their states are
            saved by :meth:`state_dict` and restored by :meth:`load_state_dict`, so a resumed run
            rounds as an uninterrupted one. Every data-parallel (DDP) rank with the same seed draws
            the same stream, which keeps replicated weights identical; FSDP2 ranks draw the same
            stream for different shards.
        state_dtype (`str`, defaults to ``"float32"``): how :math:`S` is stored: ``"float32"`` (float64
            for a float64 parameter), ``"bfloat16"`` (2 bytes per element) or ``"8bit"`` (block-wise,
            about 1 byte per element plus a float32 scale per block of at most 256 elements of a row, a
            4-bit-exponent 4-bit-mantissa code; see :mod:`classp_hf.optim._state`). A low-precision
            :math:`S` is decoded for each step (the update computes in float32) and rounded back
            stochastically with the seeded generator of ``seed`` (so that the many increments far below
            its rounding step still add up: rounding to nearest would freeze it); the generator's state
            is saved with the optimizer's. Not with FSDP (DTensor) parameters.
        grad_sum_decay (`float`, defaults to 1.0): :math:`\gamma_S` in (0, 1]: at each task boundary
            :meth:`decay_grad_sum` multiplies :math:`S` by it (the continual runner calls it when the
            carried state is loaded into the next task's optimizer), so that earlier tasks' memory fades and
            later tasks keep some plasticity. 1 (the default) is the paper's rule: :math:`S` only grows. The
            step itself never reads it.

    State:
        :math:`S`, per parameter, created at the parameter's first step with a gradient (a parameter
        that never had one has no state and counts as :math:`S=0`); :meth:`grad_sum` gives it as a
        float tensor in every format. With ``state_dtype="float32"``, ``grad_sum``: float64 for a
        float64 parameter and float32 for any other dtype, a DTensor with the parameter's placements
        for a DTensor. With ``"bfloat16"``, ``grad_sum`` in bfloat16. With ``"8bit"``,
        ``grad_sum_codes`` (uint8, rows of the last dimension in blocks) and ``grad_sum_scales``
        (float32, one power of two per block). :meth:`load_state_dict` keeps each format (and a group
        whose ``state_dtype`` changes converts its state at the next step). With stochastic rounding
        (of the weights or of a low-precision :math:`S`), :meth:`state_dict` also holds the
        generators' states under the top-level key ``"stochastic_rounding_rng"`` (device name to
        ``uint8`` tensor; plain tensors, loadable with ``torch.load(weights_only=True)``).
        ``torch.distributed.checkpoint`` keeps only ``state`` and ``param_groups``: a run resumed
        through it draws a new stream.

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
        fused: bool | None = None,
        maximize: bool = False,
        stochastic_rounding: bool = False,
        seed: int = 0,
        state_dtype: str = "float32",
        grad_sum_decay: float = 1.0,
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
            fused=fused,
            maximize=maximize,
            stochastic_rounding=stochastic_rounding,
            state_dtype=state_dtype,
            grad_sum_decay=grad_sum_decay,
        )
        validate_hyperparameters(defaults)
        self._seed = _check_seed(seed)
        self._generators: dict[torch.device, torch.Generator] = {}
        self._pending_rng_states: dict[str, Tensor] = {}
        self._last_update_counts: dict[int, Tensor] = {}
        self._reset_tracking_attributes()
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Adds a param group after checking its hyperparameters (see :class:`CLASSP`)."""
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        try:
            validate_hyperparameters(group)
            if any(p.is_sparse for p in group["params"]):
                raise RuntimeError("CLASSP does not support sparse parameters")
            if any(torch.is_complex(p) for p in group["params"]):
                raise RuntimeError(
                    "CLASSP does not support complex parameters; optimize torch.view_as_real(p) (a real parameter "
                    "holding the real and imaginary parts) instead"
                )
        except (ValueError, RuntimeError):
            self.param_groups.pop()  # a refused group leaves the optimizer as it was
            raise

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state["_seed"] = self._seed
        state["_pending_rng_states"] = self._rng_states()
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        if not hasattr(self, "_tracking"):  # unpickled; load_state_dict also comes here and keeps tracking
            self._last_update_counts = {}
            self._reset_tracking_attributes()
        if not hasattr(self, "_generators"):
            self._seed = getattr(self, "_seed", 0)
            self._pending_rng_states = getattr(self, "_pending_rng_states", {})
            self._generators = {}
        for group in self.param_groups:
            group.setdefault("threshold_mode", "absolute")
            group.setdefault("foreach", None)
            group.setdefault("fused", None)
            group.setdefault("maximize", False)
            group.setdefault("apply_decay", True)
            group.setdefault("weight_decay", 0.0)
            group.setdefault("stochastic_rounding", self.defaults.get("stochastic_rounding", False))
            group.setdefault("state_dtype", "float32")
            group.setdefault("grad_sum_decay", 1.0)

    def _grad_sum(self, p: Tensor, state_dtype: str = "float32") -> Tensor | EncodedSum:
        """``S`` of ``p`` for a step: the local float tensor, or an :class:`EncodedSum` (bfloat16 or 8-bit).

        Made (zeros, laid out as ``p``) at ``p``'s first step, moved to ``p``'s device if the model moved,
        and converted if it is stored in another format than ``state_dtype``.

        Raises:
            ValueError: for a low-precision ``state_dtype`` on a DTensor (FSDP) parameter.
        """
        if state_dtype != "float32" and is_dtensor(p):
            raise ValueError(
                f"Invalid state_dtype value: {state_dtype!r} is not supported with FSDP (DTensor) parameters; "
                "use 'float32'"
            )
        state = self.state[p]
        local = local_tensor(p)
        stored = stored_format(state)
        if stored is None:
            if state_dtype == "float32":
                state[STATE_KEY] = torch.zeros_like(
                    p, dtype=_compute_dtype(p.dtype), memory_format=torch.preserve_format
                )
            else:
                state.update(EncodedSum.zeros(state_dtype, local))
        elif stored != state_dtype:
            self._convert_state(p, stored, state_dtype)
        else:
            for key in (STATE_KEY, CODES_KEY, SCALES_KEY):
                if key in state and state[key].device != p.device:  # the model moved after the state was made
                    state[key] = state[key].to(p.device)
        if state_dtype == "float32":
            return local_tensor(state[STATE_KEY])
        return EncodedSum(state, state_dtype, local.shape, _compute_dtype(p.dtype), self._generator(local.device))

    def _convert_state(self, p: Tensor, stored: str, state_dtype: str) -> None:
        """Re-stores ``p``'s ``S`` in ``state_dtype`` (rounding stochastically into a low-precision format)."""
        self._store_sum(p, state_dtype, self.grad_sum(p).to(device=p.device, dtype=_compute_dtype(p.dtype)))

    def _store_sum(self, p: Tensor, state_dtype: str, values: Tensor) -> None:
        """Replaces ``p``'s ``S`` with ``values`` (a float tensor) stored in ``state_dtype``."""
        state = self.state[p]
        for key in (STATE_KEY, CODES_KEY, SCALES_KEY):
            state.pop(key, None)
        if state_dtype == "float32":
            state[STATE_KEY] = values
        else:
            state.update(EncodedSum.encode(state_dtype, values, self._generator(values.device)))

    def grad_sum(self, param: Tensor) -> Tensor | None:
        """The accumulated :math:`S` of a parameter as a float tensor, or `None` before its first gradient.

        The state tensor itself when ``S`` is kept in float32 (float64 for a float64 parameter; a DTensor
        for a DTensor parameter); a decoded copy (float32) when it is kept in bfloat16 or 8 bits.

        Args:
            param (`Tensor`): one of the optimizer's parameters.
        """
        state = self.state.get(param, {})
        stored = stored_format(state)
        if stored is None:
            return None
        if stored == "float32":
            return state[STATE_KEY]
        return EncodedSum(state, stored, local_tensor(param).shape, _compute_dtype(param.dtype)).decode()

    @torch.no_grad()
    def decay_grad_sum(self) -> None:
        """Multiplies every parameter's :math:`S` by its group's ``grad_sum_decay`` (a task boundary).

        Call it once per task boundary: after a task has trained and before the next one trains (the
        continual runner calls it right after loading the carried state into the next task's optimizer,
        so a checkpoint holds :math:`S` as the task left it and ``--resume`` decays it exactly once). A
        group with ``grad_sum_decay=1`` is left untouched, bit for bit. A float :math:`S` is scaled in
        place (``S * gamma`` in its dtype; a DTensor on its local shards); a bfloat16 or 8-bit :math:`S`
        is decoded, scaled and encoded again (stochastic rounding, as after a step).
        """
        for group in self.param_groups:
            gamma = float(group.get("grad_sum_decay", 1.0))
            if gamma == 1.0:
                continue
            for p in group["params"]:
                state = self.state.get(p, {})
                stored = stored_format(state)
                if stored is None:
                    continue
                if stored == "float32":
                    state[STATE_KEY].mul_(gamma)
                    continue
                values = self.grad_sum(p).to(device=local_tensor(p).device, dtype=_compute_dtype(p.dtype))
                self._store_sum(p, stored, values.mul_(gamma))

    def state_bytes(self) -> int:
        """Bytes held by the optimizer's state tensors (:math:`S` in its stored format; this rank's shards of
        DTensors), e.g. 4 per parameter element in float32, 2 in bfloat16, about 1.02 in 8 bits."""
        total = 0
        for state in self.state.values():
            for value in state.values():
                if isinstance(value, Tensor):
                    local = local_tensor(value)
                    total += local.numel() * local.element_size()
        return total

    def _generator(self, device: torch.device) -> torch.Generator:
        """The stochastic-rounding generator of ``device``: restored from a loaded state, else seeded."""
        generator = self._generators.get(device)
        if generator is None:
            generator = torch.Generator(device=device)
            saved = self._pending_rng_states.pop(str(device), None)
            if saved is None:
                generator.manual_seed(self._seed)
            else:
                generator.set_state(saved.detach().to(device="cpu", dtype=torch.uint8).contiguous())
            self._generators[device] = generator
        return generator

    def _rng_states(self) -> dict[str, Tensor]:
        """Device name to generator state (``uint8``), including loaded states not used yet."""
        states = {name: state.clone() for name, state in self._pending_rng_states.items()}
        states.update({str(device): generator.get_state() for device, generator in self._generators.items()})
        return states

    def state_dict(self) -> dict[str, Any]:
        """The optimizer state (see :class:`torch.optim.Optimizer.state_dict`), plus the generators' states.

        Returns:
            ``state`` (``grad_sum`` per parameter that has had a gradient), ``param_groups`` and,
            once stochastic rounding has drawn, ``"stochastic_rounding_rng"``: ``{device name: uint8 tensor}``.
        """
        state_dict = super().state_dict()
        rng_states = self._rng_states()
        if rng_states:
            state_dict[RNG_KEY] = rng_states
        return state_dict

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Loads the optimizer state, keeping :math:`S` in the format it was saved in.

        :class:`torch.optim.Optimizer` casts floating-point state to each parameter's dtype; for a
        bfloat16 parameter that would round a float32 :math:`S` to 8 bits of mantissa. Instead, the
        state is moved to each parameter's device and layout (sharded like a DTensor parameter) and
        keeps its format: a float ``grad_sum`` stays in float32 (float64 for a float64 parameter), a
        bfloat16 one (``state_dtype="bfloat16"``) in bfloat16, and the 8-bit codes and scales as they
        are. A group whose ``state_dtype`` differs from the format of its loaded state converts it at
        its next step. Saved stochastic-rounding generator states replace the current ones (without
        any, the generators restart from ``seed``).

        Args:
            state_dict (`dict`): as returned by :meth:`state_dict`.

        Raises:
            ValueError: if the dict is malformed, a state tensor's shape does not match its parameter,
                or a generator state is not a tensor.
        """
        if not isinstance(state_dict, dict) or "state" not in state_dict or "param_groups" not in state_dict:
            raise ValueError("Invalid CLASSP state_dict: expected a dict with 'state' and 'param_groups'")
        rng_states = _checked_rng_states(state_dict.get(RNG_KEY, {}))
        states = {key: dict(value) for key, value in state_dict["state"].items()}
        held_back = {
            key: {name: value.pop(name) for name in (STATE_KEY, CODES_KEY, SCALES_KEY) if name in value}
            for key, value in states.items()
        }
        plain = {key: value for key, value in state_dict.items() if key != RNG_KEY}
        super().load_state_dict({**plain, "state": states})
        saved_ids = [pid for group in state_dict["param_groups"] for pid in group["params"]]
        params = [p for group in self.param_groups for p in group["params"]]
        for pid, p in zip(saved_ids, params, strict=True):
            if held_back.get(pid):
                self.state[p].update(_loaded_sum(pid, p, held_back[pid]))
        self._generators = {}
        self._pending_rng_states = rng_states
        self._last_update_counts = {}

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """Performs a single optimization step.

        Args:
            closure (`Callable`, *optional*): re-evaluates the model and returns the loss.

        Returns:
            The loss returned by ``closure``, or `None`.

        Raises:
            ValueError: if a ``threshold_mode="quantile"`` group holds DTensor (FSDP) parameters.
        """
        _check_no_quantile_on_dtensors(self.param_groups)
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()

        for index, group in enumerate(self.param_groups):
            params, grads, grad_sums, masks, sharded_grads = [], [], [], [], []
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("CLASSP does not support sparse gradients; use a dense embedding")
                if group["fused"]:  # as torch's fused optimizers: a meta (or other unsupported) device is refused
                    _device_dtype_check_for_fused(p)
                params.append(local_tensor(p))
                grads.append(local_tensor(p.grad))
                grad_sums.append(self._grad_sum(p, group["state_dtype"]))
                sharded_grads.append(p.grad if is_dtensor(p.grad) else None)
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
                fused=bool(group["fused"]),
                cutoffs=_sharded_cutoffs(sharded_grads, group["threshold"], group["threshold_mode"]),
                generators=self._rounding_generators(group, params),
                skip_rows=_SKIP_ROWS,
            )
            self._last_update_counts[index] = updated
            if self._tracking:
                self._tracked_updates[index] = self._tracked_updates.get(index, 0) + updated
        if self._tracking:
            self._tracked_steps += 1
        return loss

    def _rounding_generators(
        self, group: dict[str, Any], params: list[Tensor]
    ) -> dict[torch.device, torch.Generator] | None:
        """The generators of the devices of a group's low-precision parameters, if it rounds stochastically."""
        if not group["stochastic_rounding"] or float(group["lr"]) == 0.0:  # lr 0 cannot move a weight
            return None
        devices = {p.device for p in params if p.dtype in _STOCHASTIC_ROUNDERS}
        return {device: self._generator(device) for device in devices} or None

    def _scope(self) -> str:
        """``"rank"`` if statistics cover only this rank's shards (DTensor parameters), else ``"global"``."""
        sharded = any(is_dtensor(p) for group in self.param_groups for p in group["params"])
        return "rank" if sharded else "global"

    # -- optional diagnostic state: which elements were updated (not part of the update state) --
    def _reset_tracking_attributes(self) -> None:
        self._tracking = False
        self._update_masks: dict[Tensor, Tensor] = {}
        self._tracked_updates: dict[int, Tensor | int] = {}
        self._tracked_steps = 0

    def _update_mask(self, p: Tensor) -> Tensor:
        local = local_tensor(p)
        mask = self._update_masks.get(p)
        if mask is None or mask.device != local.device:
            mask = torch.zeros(local.shape, dtype=torch.bool, device=local.device)
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
            least once; ``scope``: ``"global"``, or ``"rank"`` when the parameters are DTensors
            (the fractions and masks then cover this rank's local shards only).

        Raises:
            RuntimeError: if tracking is off.
        """
        if not self._tracking:
            raise RuntimeError("update tracking is off: call track_updates() first")
        params = [p for group in self.param_groups for p in group["params"]]
        numel = sum(local_tensor(p).numel() for p in params)
        updated = sum(float(count) for count in self._tracked_updates.values())
        ever = sum(int(mask.sum()) for mask in self._update_masks.values())
        steps = self._tracked_steps
        return {
            "steps": steps,
            "mean_update_fraction": updated / (numel * steps) if steps and numel else 0.0,
            "ever_updated_fraction": ever / numel if numel else 0.0,
            "masks": {p: self._update_masks[p] for p in params if p in self._update_masks},
            "scope": self._scope(),
        }

    @torch.no_grad()
    def diagnostics(self) -> list[dict[str, float | str]]:
        """Per-group statistics for logging.

        Reads the device once per call (not once per step): log it every ``logging_steps``.

        Returns:
            A list with one dict per param group: ``numel`` (elements in the group),
            ``update_fraction`` (elements updated at the
            last step over all elements of the group; 0 if the group had no gradient),
            ``grad_sum_mean``, ``grad_sum_max`` and ``grad_sum_nonzero_fraction`` (share of
            elements ever updated since the state began; a parameter without state counts as
            :math:`S=0`), and ``scope``: ``"global"``, or ``"rank"`` when the parameters are
            DTensors (every number then covers this rank's local shards only).
        """
        scope = self._scope()
        return [
            {**self._group_diagnostics(index, group), "scope": scope} for index, group in enumerate(self.param_groups)
        ]

    def _group_diagnostics(self, index: int, group: dict[str, Any]) -> dict[str, float]:
        numel = sum(local_tensor(p).numel() for p in group["params"])
        if numel == 0:
            return dict(
                numel=0, update_fraction=0.0, grad_sum_mean=0.0, grad_sum_max=0.0, grad_sum_nonzero_fraction=0.0
            )
        sums = [local_tensor(self.grad_sum(p)) for p in group["params"] if self._has_state(p)]
        sums = [s for s in sums if s.numel()]  # an FSDP2 rank may hold an empty shard
        total = sum(s.sum(dtype=torch.float64).cpu() for s in sums)
        largest = max((s.max().cpu() for s in sums), default=0.0)
        nonzero = sum(torch.count_nonzero(s).cpu() for s in sums)
        count = self._last_update_counts.get(index)
        updated = 0.0 if count is None else float(count)
        return dict(
            numel=numel,
            update_fraction=updated / numel,
            grad_sum_mean=float(total) / numel,
            grad_sum_max=float(largest),
            grad_sum_nonzero_fraction=float(nonzero) / numel,
        )

    def _has_state(self, p: Tensor) -> bool:
        """Whether ``p`` has ``S`` yet (without adding an empty entry to ``self.state``)."""
        return stored_format(self.state.get(p, {})) is not None


def _checked_shape(pid: Any, name: str, value: Any, expected: tuple[int, ...], what: str = "the parameter has") -> None:
    """Raises ``ValueError`` unless ``value`` is a tensor of shape ``expected``."""
    if not isinstance(value, Tensor) or tuple(value.shape) != tuple(expected):
        shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
        raise ValueError(
            f"Invalid CLASSP state_dict: {name} of parameter {pid} has shape {shape}, {what} {tuple(expected)}"
        )


def _loaded_sum(pid: Any, p: Tensor, entries: dict[str, Any]) -> dict[str, Tensor]:
    """The ``S`` entries of a loaded state for parameter ``p``, checked and placed (:meth:`CLASSP.load_state_dict`)."""
    if STATE_KEY in entries:
        grad_sum = entries[STATE_KEY]
        _checked_shape(pid, STATE_KEY, grad_sum, tuple(p.shape))
        dtype = torch.bfloat16 if grad_sum.dtype == torch.bfloat16 else _compute_dtype(p.dtype)
        return {STATE_KEY: match_layout(grad_sum, p, dtype)}
    rows, _, blocks, length = block_layout(p.shape)
    codes, scales = entries.get(CODES_KEY), entries.get(SCALES_KEY)
    _checked_shape(pid, CODES_KEY, codes, (rows, blocks * length), "expected")
    _checked_shape(pid, SCALES_KEY, scales, (rows, blocks), "expected")
    device = local_tensor(p).device
    return {
        CODES_KEY: codes.to(device=device, dtype=torch.uint8, copy=True),
        SCALES_KEY: scales.to(device=device, dtype=torch.float32, copy=True),
    }


def _checked_rng_states(value: Any) -> dict[str, Tensor]:
    """The generator states of a state_dict's ``"stochastic_rounding_rng"`` entry, copied, or ``ValueError``."""
    if not isinstance(value, dict) or not all(
        isinstance(name, str) and isinstance(state, Tensor) for name, state in value.items()
    ):
        raise ValueError(
            f"Invalid CLASSP state_dict: {RNG_KEY!r} must map device names to uint8 tensors, got {value!r:.80}"
        )
    return {name: state.detach().clone() for name, state in value.items()}


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
        lr=lr,
        threshold=threshold,
        threshold_mode=threshold_mode,
        power=power,
        eps=eps,
        apply_decay=apply_decay,
        weight_decay=weight_decay,
        maximize=maximize,
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
    """The compiled path: one :func:`~classp_hf.optim._fused.fused_update` kernel per tensor, in the
    other paths' order (so stochastic rounding draws alike); a non-contiguous tensor takes the single-tensor
    path."""
    hyperparameters = dict(
        lr=lr,
        threshold=threshold,
        threshold_mode=threshold_mode,
        power=power,
        eps=eps,
        apply_decay=apply_decay,
        weight_decay=weight_decay,
        maximize=maximize,
    )
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
                        **hyperparameters,
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
