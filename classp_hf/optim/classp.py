"""CLASSP: Continual Learning through Adjustment Suppression and Sparsity Promotion.

Implements the optimizer of O. Ludwig, "CLASSP: a Biologically-Inspired Approach to Continual
Learning through Adjustment Suppression and Sparsity Promotion" (arXiv:2405.09637, 2024), with a
per-element threshold mask (the reference code compares one boolean with the threshold), the
power applied to the accumulated gradients, per-group hyperparameters and the torch.optim
``step(closure)`` signature.

This module has no Hugging Face imports.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor
from torch.optim.optimizer import Optimizer, _device_dtype_check_for_fused

from classp_hf.optim._functional import _STOCHASTIC_ROUNDERS, _sharded_cutoffs, classp
from classp_hf.optim._hyperparameters import (
    THRESHOLD_MODES,
    _check_no_quantile_on_dtensors,
    _check_seed,
    update_rule,
    validate_hyperparameters,
)
from classp_hf.optim._rows import compute_dtype
from classp_hf.optim._sharded import is_dtensor, local_tensor
from classp_hf.optim._state import (
    CODES_KEY,
    RNG_KEY,
    SCALES_KEY,
    STATE_DTYPES,
    STATE_KEY,
    EncodedSum,
    _checked_rng_states,
    _loaded_sum,
    stored_format,
)

__all__ = ["CLASSP", "classp", "DEFAULT_LR", "DEFAULT_EPS", "THRESHOLD_MODES", "STATE_DTYPES", "STATE_KEY", "RNG_KEY"]

#: Default learning rate: with ``power=1`` the first step on a weight is about ``lr * sign(g)``,
#: so ``lr`` behaves like Adam's step size. 1e-3 fine-tunes MiniLM; see ``docs/hyperparameters.md``.
DEFAULT_LR = 1e-3
#: Default eps: with power 1 the first step on a weight is ``lr * |g| / (eps + |g|)``, so eps 1e-4
#: damps noise-sized encoder gradients (|g| ~1e-5 on MiniLM) while a head's (|g| ~1e-2) take a full
#: step; it beat 1e-8 by ~6 accuracy points on MiniLM (docs/hyperparameters.md).
DEFAULT_EPS = 1e-4

#: Let :meth:`CLASSP.step` skip the rows that cannot change (tests turn it off to compare with the dense step).
_SKIP_ROWS = True


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
        defaults = update_rule(locals())  # the update rule, then the path and the state's options
        defaults.update(foreach=foreach, fused=fused, stochastic_rounding=stochastic_rounding)
        defaults.update(state_dtype=state_dtype, grad_sum_decay=grad_sum_decay)
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
                    p, dtype=compute_dtype(p.dtype), memory_format=torch.preserve_format
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
        return EncodedSum(state, state_dtype, local.shape, compute_dtype(p.dtype), self._generator(local.device))

    def _convert_state(self, p: Tensor, stored: str, state_dtype: str) -> None:
        """Re-stores ``p``'s ``S`` in ``state_dtype`` (rounding stochastically into a low-precision format)."""
        self._store_sum(p, state_dtype, self.grad_sum(p).to(device=p.device, dtype=compute_dtype(p.dtype)))

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
        return EncodedSum(state, stored, local_tensor(param).shape, compute_dtype(param.dtype)).decode()

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
                values = self.grad_sum(p).to(device=local_tensor(p).device, dtype=compute_dtype(p.dtype))
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
                **update_rule(group),
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
