"""The plug-in point for continual methods: a loss penalty and hooks around each task.

A method sees the model (a plain ``nn.Module`` or a ``PeftModel``: only trainable parameters
matter), never the optimizer, so any optimizer combines with any method.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

__all__ = ["ContinualMethod", "NoMethod", "register_method", "create_method", "list_methods"]


class ContinualMethod:
    """Base class of continual methods, used by :class:`classp_hf.Trainer` and the continual runner.

    Subclasses override any of the hooks; the defaults do nothing.
    """

    name: str = "base"

    def before_task(self, model: nn.Module, task_index: int, task_name: str) -> None:
        """Called before training on a task."""

    def penalty(self, model: nn.Module) -> torch.Tensor | None:
        """Returns a term added to the training loss (or `None` for no term)."""
        return None

    def after_task(self, model: nn.Module, task_index: int, task_name: str, train_dataset: Any) -> None:
        """Called after training on a task (e.g. to estimate a Fisher diagonal)."""

    def state_bytes(self) -> int:
        """Bytes of state the method keeps (e.g. EWC's Fisher diagonal and weight copy)."""
        return 0

    def state_dict(self) -> dict[str, Any]:
        """The method's state after a task, saved in each checkpoint so a resumed run continues it.

        Returns:
            A dict ``torch.save`` can write (tensors, numbers, strings); empty for stateless methods.
        """
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores what :meth:`state_dict` returned (when a run is resumed).

        Raises:
            ValueError: the state is not this method's.
        """
        if state:
            raise ValueError(f"continual method {self.name!r} keeps no state, but the checkpoint has {sorted(state)}")


class NoMethod(ContinualMethod):
    """Plain sequential fine-tuning: no penalty, no replay."""

    name = "none"


_METHODS: dict[str, Callable[..., ContinualMethod]] = {"none": NoMethod}


def register_method(name: str, factory: Callable[..., ContinualMethod]) -> None:
    """Registers a continual method under ``name`` (usable as ``method: name`` in a run config).

    Args:
        name (`str`): the config name.
        factory (`Callable`): called with the method's options, returns a :class:`ContinualMethod`.
    """
    _METHODS[name] = factory


def list_methods() -> list[str]:
    """Returns the registered method names, sorted."""
    return sorted(_METHODS)


def create_method(name: str, **options: Any) -> ContinualMethod:
    """Builds a registered continual method.

    Raises:
        ValueError: for an unknown name, listing the known ones.
    """
    if name not in _METHODS:
        close = difflib.get_close_matches(name, list(_METHODS), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"Unknown continual method {name!r}.{hint} Known methods: {', '.join(list_methods())}")
    return _METHODS[name](**options)
