"""The plug-in point for continual methods: hooks around each task, a batch hook and loss terms.

A method sees the model (a plain ``nn.Module`` or a ``PeftModel``: only trainable parameters
matter), never the optimizer, so any optimizer combines with any method. The continual runner
calls, for each task in the queue::

    ctx = TaskContext(index, name, train_dataset, model, data_collator, batch_size, seed, num_labels)
    dataset = method.train_dataset(ctx)          # may add columns (see extra_columns)
    trainer = classp_hf.Trainer(model, args, train_dataset=dataset, data_collator=collator,
                                continual_method=method)
    ctx.trainer = trainer
    method.before_task(ctx)
    trainer.train()                              # collate() wraps the training collator,
                                                 # penalty() adds named terms to each loss
    method.after_task(ctx)                       # ctx.train_dataset: the task's original data

and saves ``method.state_dict()`` after each task; a resumed run calls ``load_state_dict`` on a
fresh method and continues with the next task.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from classp_hf.validation import check_fields

if TYPE_CHECKING:
    import datasets

    from classp_hf.trainer import Trainer

__all__ = [
    "TaskContext",
    "ContinualMethod",
    "NoMethod",
    "CompositeMethod",
    "MethodConfig",
    "check_method_args",
    "LABEL_COLUMNS",
    "model_input_columns",
    "label_column",
    "output_logits",
    "process_rank_and_count",
    "tensor_bytes",
]

#: Column names that hold a classification label (``DataCollatorWithPadding`` renames ``label``).
LABEL_COLUMNS = ("labels", "label", "label_ids")


@dataclass
class TaskContext:
    """What a continual method knows about the task being trained.

    Args:
        index (`int`): the task's position in the queue (0 for the first task).
        name (`str`): the task's name.
        train_dataset (`datasets.Dataset`): the task's tokenized training split (``input_ids``,
            ``attention_mask``, ``labels``, ...), as loaded: without columns a method added.
        model (`nn.Module`): the model being trained (plain or ``PeftModel``).
        data_collator (`Callable`): the padding collator (a list of examples to a batch of tensors).
        batch_size (`int`): the per-device training batch size of the task.
        seed (`int`): the run's seed.
        num_labels (`int`): the number of shared labels (outputs of the classification head).
        trainer (`Trainer`, *optional*): the task's :class:`classp_hf.Trainer`; set before
            :meth:`ContinualMethod.before_task`, `None` in :meth:`ContinualMethod.train_dataset`.
    """

    index: int
    name: str
    train_dataset: datasets.Dataset
    model: nn.Module
    data_collator: Callable[[list[dict[str, Any]]], dict[str, Any]]
    batch_size: int
    seed: int
    num_labels: int
    trainer: Trainer | None = None


class ContinualMethod:
    """Base class of continual methods, used by :class:`classp_hf.Trainer` and the continual runner.

    Subclasses override any of the hooks; the defaults do nothing. A method with options declares
    a :class:`MethodConfig` dataclass as ``config_class`` and is built as ``Method(config)`` or
    ``Method(**options)``; the options are then in ``self.config``.

    The method's state (what it keeps between tasks) must be the same on every process of a
    distributed run: estimate it from data with an all-reduce, or from the same data and seed on
    every process.
    """

    name: str = "base"
    config_class: type[MethodConfig] | None = None

    def __init__(self, config: MethodConfig | None = None, **options: Any) -> None:
        if self.config_class is None:
            if config is not None or options:
                raise TypeError(f"continual method {self.name!r} takes no options")
        elif config is None:
            config = self.config_class(**options)
        elif options:
            raise TypeError(f"continual method {self.name!r}: pass a config or options, not both")
        elif not isinstance(config, self.config_class):
            raise TypeError(f"continual method {self.name!r} expects a {self.config_class.__name__}")
        self.config = config

    @classmethod
    def check_compatibility(cls, peft_section: Mapping[str, Any] | None) -> None:
        """Checks that the method fits the run's ``peft:`` section (`None`: full fine-tuning).

        Raises:
            ValueError: one line starting with ``method:``.
        """

    # -- hooks around a task ---------------------------------------------------------------
    def train_dataset(self, ctx: TaskContext) -> datasets.Dataset:
        """Returns the dataset the task trains on (default: ``ctx.train_dataset`` unchanged).

        Called before the task's Trainer is built. A method may add columns here; it names them in
        :meth:`extra_columns` so the Trainer keeps them and hands them to :meth:`penalty`.
        """
        return ctx.train_dataset

    def before_task(self, ctx: TaskContext) -> None:
        """Called before training on a task (``ctx.trainer`` is set)."""

    def after_task(self, ctx: TaskContext) -> None:
        """Called after training on a task (e.g. to estimate a Fisher diagonal or fill a buffer)."""

    # -- hooks inside training --------------------------------------------------------------
    def collate(self, collator: Callable[[list[dict[str, Any]]], Any]) -> Callable[[list[dict[str, Any]]], Any]:
        """Wraps the training collator (batch-level changes such as mixing in replayed examples).

        Only training batches go through the wrapper; evaluation and prediction use the plain one.
        """
        return collator

    def extra_columns(self) -> list[str]:
        """Columns the method adds to the training data.

        :class:`classp_hf.Trainer` keeps them (``remove_unused_columns`` would drop them) and
        removes them from the inputs before the model's forward; :meth:`penalty` sees them.
        """
        return []

    def penalty(self, model: nn.Module, inputs: dict[str, Any], outputs: Any) -> dict[str, torch.Tensor] | None:
        """Named terms added to the training loss of a batch.

        Args:
            model (`nn.Module`): the model being trained (unwrapped from DDP).
            inputs (`dict`): the batch, including ``labels`` and the :meth:`extra_columns`.
            outputs: the model's outputs on the batch (``outputs["logits"]``).

        Returns:
            ``{term: scalar tensor}``, each added to the loss and logged as ``method/<term>``
            (mean over the logging window, like ``loss``), or `None` for no term.
        """
        return None

    # -- state -----------------------------------------------------------------------------
    def state_bytes(self) -> int:
        """Bytes of state a deployment of the method must keep (e.g. EWC's Fisher and weight copy)."""
        return 0

    def state_dict(self) -> dict[str, Any]:
        """The method's state after a task, saved in each checkpoint so a resumed run continues it.

        Returns:
            A dict that ``torch.load(weights_only=True)`` reads back (tensors, numbers, strings,
            lists, dicts); empty for stateless methods.
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


class CompositeMethod(ContinualMethod):
    """Several methods at once (``method: [replay, ewc]``).

    Hooks run in the listed order (the first method's collator wrapper is the innermost, each
    method's :meth:`train_dataset` sees the previous one's output), penalties add up, and a term
    name two methods share is prefixed with the method's name (``ewc.penalty``).

    Args:
        methods (`list[tuple[str, ContinualMethod]]`): ``(name, method)`` pairs, names unique.
    """

    def __init__(self, methods: list[tuple[str, ContinualMethod]]) -> None:
        names = [name for name, _ in methods]
        if len(set(names)) != len(names):
            raise ValueError(f"method: a method is listed twice in {names}")
        self.methods = list(methods)
        self.name = "+".join(names)
        self.config = None

    def train_dataset(self, ctx: TaskContext) -> datasets.Dataset:
        dataset = ctx.train_dataset
        for _, method in self.methods:
            dataset = method.train_dataset(dataclasses.replace(ctx, train_dataset=dataset))
        return dataset

    def before_task(self, ctx: TaskContext) -> None:
        for _, method in self.methods:
            method.before_task(ctx)

    def after_task(self, ctx: TaskContext) -> None:
        for _, method in self.methods:
            method.after_task(ctx)

    def collate(self, collator: Callable[[list[dict[str, Any]]], Any]) -> Callable[[list[dict[str, Any]]], Any]:
        for _, method in self.methods:
            collator = method.collate(collator)
        return collator

    def extra_columns(self) -> list[str]:
        columns: list[str] = []
        for _, method in self.methods:
            columns += [column for column in method.extra_columns() if column not in columns]
        return columns

    def penalty(self, model: nn.Module, inputs: dict[str, Any], outputs: Any) -> dict[str, torch.Tensor] | None:
        results = [(name, method.penalty(model, inputs, outputs) or {}) for name, method in self.methods]
        counts: dict[str, int] = {}
        for _, terms in results:
            for term in terms:
                counts[term] = counts.get(term, 0) + 1
        merged = {
            (f"{name}.{term}" if counts[term] > 1 else term): value
            for name, terms in results
            for term, value in terms.items()
        }
        return merged or None

    def state_bytes(self) -> int:
        return sum(method.state_bytes() for _, method in self.methods)

    def state_dict(self) -> dict[str, Any]:
        return {name: method.state_dict() for name, method in self.methods}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        names = [name for name, _ in self.methods]
        if sorted(state) != sorted(names):
            raise ValueError(f"continual method {self.name!r}: the checkpoint holds the states of {sorted(state)}")
        for name, method in self.methods:
            method.load_state_dict(state[name])


# -- configs ------------------------------------------------------------------------------------
def check_method_args(config_class: type, args: Mapping[str, Any], prefix: str, method: str) -> dict[str, Any]:
    """Checks a method's arguments against its config dataclass (:func:`classp_hf.validation.check_fields`).

    Each field's type (``float``, ``int``, ``bool``, ``str`` or a ``Literal`` of choices) is
    checked, with the bounds in its metadata (``ge``, ``gt``, ``le``, ``lt``); a field without
    default is required.

    Args:
        config_class (`type`): the method's config dataclass.
        args (`Mapping`): the arguments.
        prefix (`str`): how the arguments are named in messages (``method_args``).
        method (`str`): the method's name (for messages).

    Returns:
        The arguments, numbers converted to the field's type.

    Raises:
        ValueError: one line naming ``<prefix>.<argument>``.
    """
    return check_fields(config_class, args, prefix, method)


@dataclass
class MethodConfig:
    """Base of the config dataclasses of continual methods: fields are checked when built.

    Declare each field with its type (``float``, ``int``, ``bool``, ``str`` or a ``Literal``) and
    optional bounds in its metadata: ``field(default=1.0, metadata={"help": ..., "ge": 0})``.
    """

    def __post_init__(self) -> None:
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.init}
        for name, value in check_method_args(type(self), values, type(self).__name__, type(self).__name__).items():
            setattr(self, name, value)


# -- helpers for methods ---------------------------------------------------------------------
def model_input_columns(model: nn.Module, column_names: list[str]) -> list[str]:
    """The columns of a dataset that ``model``'s forward takes as inputs (labels excluded)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    accepted = inspect.signature(base.forward).parameters
    return [name for name in column_names if name in accepted and name not in LABEL_COLUMNS]


def label_column(column_names: list[str]) -> str:
    """The label column of a dataset (``labels`` or ``label``).

    Raises:
        ValueError: the dataset has no label column.
    """
    for name in LABEL_COLUMNS:
        if name in column_names:
            return name
    raise ValueError(f"the training data has no label column (one of {', '.join(LABEL_COLUMNS)}): {column_names}")


def output_logits(outputs: Any) -> torch.Tensor:
    """The logits of a model's outputs (a ``ModelOutput``/dict, or a tuple ``(loss, logits, ...)``)."""
    if isinstance(outputs, Mapping):
        return outputs["logits"]
    return outputs[1] if len(outputs) > 1 else outputs[0]


def process_rank_and_count() -> tuple[int, int]:
    """``(rank, world_size)`` of a distributed run, ``(0, 1)`` when torch.distributed is not initialised."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def tensor_bytes(tensors: Any) -> int:
    """Bytes of every tensor in a nested structure of dicts and lists."""
    if isinstance(tensors, torch.Tensor):
        return tensors.numel() * tensors.element_size()
    if isinstance(tensors, Mapping):
        return sum(tensor_bytes(value) for value in tensors.values())
    if isinstance(tensors, (list, tuple)):
        return sum(tensor_bytes(value) for value in tensors)
    return 0
