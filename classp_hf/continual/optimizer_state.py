"""Carrying the optimizer's state (CLASSP's S) from one task's Trainer to the next, on every accelerate backend.

Each task's ``Trainer`` builds its own optimizer, which accelerate wraps for the backend (DDP, FSDP2, DeepSpeed).
After a task, :func:`capture_optimizer_state` reads the optimizer's per-parameter state as a *full* (unsharded)
state keyed by parameter name; the next task's :class:`StateCarryingTrainer` loads it after
``accelerator.prepare`` and before its scheduler is built. The hyperparameters (the task's learning rate and
``initial_lr``) stay the new optimizer's own. Keyed by name, the state also goes into checkpoints and loads into a
run resumed with another number of processes.

- one process and DDP: the state tensors themselves (every rank holds the same full state);
- FSDP (1 and 2): ``torch.distributed.checkpoint.state_dict``'s ``get_optimizer_state_dict`` /
  ``set_optimizer_state_dict`` with full state dicts;
- DeepSpeed ZeRO: ``deepspeed.utils.safe_get_full_optimizer_state`` / ``safe_set_full_optimizer_state``.
"""

from __future__ import annotations

from typing import Any

import torch

from classp_hf.trainer import Trainer, unwrap_optimizer

__all__ = [
    "NAMED_STATE_FORMAT",
    "StateCarryingTrainer",
    "capture_optimizer_state",
    "named_state_bytes",
    "check_named_state",
]

#: Marks a name-keyed optimizer state (``optimizer.pt`` of a checkpoint).
NAMED_STATE_FORMAT = "classp_hf.named_optimizer_state/1"


def _backend(trainer: Any) -> str:
    if getattr(trainer, "is_deepspeed_enabled", False):
        return "deepspeed"
    if getattr(trainer, "is_fsdp_enabled", False):
        return "fsdp"
    return "plain"


def _extras(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Optimizer-level state beside ``state`` / ``param_groups`` (e.g. CLASSP's stochastic-rounding generator)."""
    state_dict = optimizer.state_dict()
    return {key: value for key, value in state_dict.items() if key not in ("state", "param_groups")}


def capture_optimizer_state(trainer: Any) -> dict[str, Any]:
    """Reads the trained optimizer's per-parameter state as a full state keyed by parameter name.

    Collective under FSDP and DeepSpeed: call it on every process.

    Args:
        trainer: the task's ``transformers.Trainer`` after ``train()``.

    Returns:
        ``{"format": NAMED_STATE_FORMAT, "optimizer": class name, "state": {name: {key: tensor, ...}},
        "extra": {...}}``. Under FSDP with ``cpu_offload`` only the main process holds the tensors.
    """
    optimizer = unwrap_optimizer(trainer.optimizer)
    backend = _backend(trainer)
    if backend == "fsdp":
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        full = get_optimizer_state_dict(
            trainer.model_wrapped, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
        )
        state = {str(name): dict(values) for name, values in full.get("state", {}).items()}
    elif backend == "deepspeed":
        from deepspeed.utils import safe_get_full_optimizer_state

        keys = sorted({key for values in optimizer.state.values() for key in values})
        state = {}
        for name, param in trainer.model.named_parameters():
            if not param.requires_grad:
                continue
            values = {key: safe_get_full_optimizer_state(param, key) for key in keys}
            state[name] = {key: value.detach().cpu() for key, value in values.items() if value is not None}
    else:
        names = {id(param): name for name, param in trainer.model.named_parameters()}
        state = {
            names[id(param)]: dict(values)
            for group in optimizer.param_groups
            for param in group["params"]
            if id(param) in names and (values := optimizer.state.get(param))
        }
    return {
        "format": NAMED_STATE_FORMAT,
        "optimizer": type(optimizer).__name__,
        "state": state,
        "extra": _extras(optimizer),
    }


def check_named_state(named: Any, source: str) -> dict[str, Any]:
    """Checks that ``named`` is a name-keyed optimizer state (as read from a checkpoint).

    Raises:
        ValueError: it is not, naming ``source``.
    """
    if not (isinstance(named, dict) and named.get("format") == NAMED_STATE_FORMAT and isinstance(named["state"], dict)):
        raise ValueError(f"{source} is not a classp_hf optimizer state ({NAMED_STATE_FORMAT})")
    return named


def named_state_bytes(named: dict[str, Any]) -> int:
    """Bytes of every tensor in a name-keyed state (CLASSP: 4 per trained element)."""
    return sum(
        value.numel() * value.element_size()
        for values in named["state"].values()
        for value in values.values()
        if isinstance(value, torch.Tensor)
    )


def _load_plain(trainer: Any, optimizer: torch.optim.Optimizer, named: dict[str, Any]) -> int:
    """Loads through the optimizer's own ``load_state_dict``, over a state dict built from its own param groups,
    so the hyperparameters (this task's learning rate) stay the new optimizer's."""
    index_of = {}
    state_dict = optimizer.state_dict()
    params = [param for group in optimizer.param_groups for param in group["params"]]
    ids = [index for group in state_dict["param_groups"] for index in group["params"]]
    position = {id(param): index for param, index in zip(params, ids, strict=True)}
    for name, param in trainer.model.named_parameters():
        if id(param) in position:
            index_of[name] = position[id(param)]
    state = {index_of[name]: dict(values) for name, values in named["state"].items() if name in index_of}
    optimizer.load_state_dict({**state_dict, **named.get("extra", {}), "state": state})
    return len(state)


def _load_fsdp(trainer: Any, optimizer: torch.optim.Optimizer, named: dict[str, Any]) -> int:
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_optimizer_state_dict,
        set_optimizer_state_dict,
    )

    model = trainer.model_wrapped
    own = get_optimizer_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True))
    trained = set(own["state"]) | {name for group in own["param_groups"] for name in group["params"]}
    state = {name: values for name, values in named["state"].items() if name in trained}
    set_optimizer_state_dict(
        model,
        optimizer,
        {"state": state, "param_groups": own["param_groups"]},
        options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True),
    )
    return len(state)


def _load_deepspeed(trainer: Any, named: dict[str, Any]) -> int:
    from deepspeed.utils import safe_set_full_optimizer_state

    loaded = 0
    for name, param in trainer.model.named_parameters():
        values = named["state"].get(name)
        if not param.requires_grad or not values:
            continue
        for key, value in values.items():
            safe_set_full_optimizer_state(param, value, key)
        loaded += 1
    return loaded


class StateCarryingTrainer(Trainer):
    """A :class:`classp_hf.Trainer` that starts from a carried optimizer state.

    The state is loaded into the optimizer accelerate prepared, before the learning-rate scheduler is built, so
    the schedule starts from this task's learning rate. Under DeepSpeed (whose scheduler is built before the
    engine) it is loaded right after ``accelerator.prepare``.

    Args:
        carried_optimizer_state (`dict`, *optional*): from :func:`capture_optimizer_state` (or a checkpoint).
        *args, **kwargs: as for :class:`classp_hf.Trainer`.
    """

    def __init__(self, *args: Any, carried_optimizer_state: dict[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.carried_optimizer_state = carried_optimizer_state
        self.loaded_state_entries: int | None = None

    def _load_carried_state(self) -> None:
        """Loads the carried state, then marks the task boundary (CLASSP's ``grad_sum_decay``).

        The boundary is applied here, once per task that starts from a carried state: a checkpoint holds the
        state as the previous task left it, so a resumed run decays it exactly once as well.
        """
        named, self.carried_optimizer_state = self.carried_optimizer_state, None
        if named is None:
            return
        backend = _backend(self)
        optimizer = unwrap_optimizer(self.optimizer)
        if backend == "deepspeed":
            self.loaded_state_entries = _load_deepspeed(self, named)
        elif backend == "fsdp":
            self.loaded_state_entries = _load_fsdp(self, optimizer, named)
        else:
            self.loaded_state_entries = _load_plain(self, optimizer, named)
        decay = getattr(optimizer, "decay_grad_sum", None)
        if decay is not None:
            decay()

    def create_scheduler(
        self, num_training_steps: int, optimizer: torch.optim.Optimizer | None = None
    ) -> torch.optim.lr_scheduler.LRScheduler:
        """Loads the carried state (not under DeepSpeed), then builds the scheduler as ``transformers.Trainer``."""
        if self.lr_scheduler is None and not self.is_deepspeed_enabled:
            self._load_carried_state()
        return super().create_scheduler(num_training_steps, optimizer)

    def _prepare_for_training(self, *args: Any, **kwargs: Any) -> Any:
        # Why a private hook: under DeepSpeed the scheduler is built before the engine (deepspeed_init), so
        # create_scheduler comes too early; transformers has no public hook between accelerator.prepare and the first
        # step. We rely on Trainer.train calling _prepare_for_training(max_steps, train_dataloader,
        # resume_from_checkpoint) once per train(), returning (model, train_dataloader) with self.optimizer prepared
        # and no step taken; tests/test_optimizer_state.py::test_transformers_prepares_as_the_carried_state_expects
        # pins that (and that create_scheduler runs inside it, after the optimizer is prepared).
        prepared = super()._prepare_for_training(*args, **kwargs)
        if self.is_deepspeed_enabled:
            self._load_carried_state()
        return prepared
