"""Experience replay: a buffer of earlier tasks' examples mixed into every training batch.

After each task the method adds examples of the task's training data to a buffer of at most
``buffer_size`` examples (``policy: balanced``: the same share for every task seen, earlier
tasks giving up examples when a task is added; ``policy: reservoir``: reservoir sampling over
all examples seen, in a seeded order). While a later task trains, each batch of ``B`` current
examples gets ``round(B * replay_ratio / (1 - replay_ratio))`` buffer examples, so
``replay_ratio`` is the buffer's share of every batch and the number of steps per task is set by
the current task's data alone (replay gets no extra steps against ``none``).

Buffer examples are drawn without replacement (a new seeded permutation of the buffer each time
it is used up), seeded by ``(seed, task index, process rank)`` (and the worker's id in a
dataloader worker process). Labels are the shared label
indices, so replayed examples train the same head.

Memory: the tokenized examples of the buffer (token ids, masks and label of each; at most
``buffer_size`` examples), counted by :meth:`Replay.state_bytes`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch

from classp_hf.methods.base import (
    ContinualMethod,
    MethodConfig,
    TaskContext,
    label_column,
    model_input_columns,
    process_rank_and_count,
    tensor_bytes,
)
from classp_hf.methods.registry import register_method

if TYPE_CHECKING:
    import datasets

__all__ = ["ReplayConfig", "Replay", "ReplayCollator", "replay_count", "balanced_quotas"]

#: Value given to a column a replayed example lacks (e.g. ``lwf_index``: no recorded logits).
MISSING = -1

Example = dict[str, Any]

# Keys of the numpy generators, one tag per use (a SeedSequence ignores trailing zeros of its key,
# so keys of different uses must differ before those).
_FILL, _DRAW, _WORKER_DRAW = 1, 2, 3


def _generator(*key: int) -> np.random.Generator:
    return np.random.default_rng(list(key))


@dataclass
class ReplayConfig(MethodConfig):
    """Arguments of :class:`Replay`.

    Args:
        buffer_size (`int`): the most examples the buffer keeps, over all tasks (>= 1).
        replay_ratio (`float`): share of each training batch drawn from the buffer, in (0, 1):
            ``B`` current examples get ``round(B * r / (1 - r))`` replayed ones (0.5: as many).
        policy (`str`): ``balanced`` (an even split over the tasks seen) or ``reservoir``.
    """

    buffer_size: int = field(metadata={"help": "examples kept over all tasks, >= 1", "ge": 1})
    replay_ratio: float = field(default=0.5, metadata={"help": "buffer share of a batch", "gt": 0, "lt": 1})
    policy: Literal["balanced", "reservoir"] = field(default="balanced", metadata={"help": "balanced or reservoir"})


def replay_count(batch_size: int, ratio: float) -> int:
    """Buffer examples added to a batch of ``batch_size`` current ones: ``round(B * r / (1 - r))``."""
    return round(batch_size * ratio / (1.0 - ratio))


def balanced_quotas(buffer_size: int, tasks: int) -> list[int]:
    """An even split of ``buffer_size`` over ``tasks`` (the earliest tasks get the remainder)."""
    share, extra = divmod(buffer_size, tasks)
    return [share + (1 if task < extra else 0) for task in range(tasks)]


def _rows(dataset: datasets.Dataset, indices: list[int], columns: list[str]) -> list[Example]:
    if not indices:
        return []
    block = dataset.select(indices).select_columns(columns)[:]
    return [{column: block[column][row] for column in columns} for row in range(len(indices))]


class ReplayCollator:
    """A training collator that appends buffer examples to each batch, then pads with ``collator``."""

    def __init__(self, collator: Callable[[list[Example]], Any], method: Replay) -> None:
        self.collator = collator
        self.method = method

    def __call__(self, features: list[Example]) -> Any:
        count = replay_count(len(features), self.method.config.replay_ratio) if self.method.buffer else 0
        if count and features:
            keys = list(features[0])
            replayed = [{key: example.get(key, MISSING) for key in keys} for example in self.method.draw(count)]
            features = list(features) + replayed
        return self.collator(features)


class Replay(ContinualMethod):
    """Experience replay (see :mod:`classp_hf.methods.replay`).

    State: ``self.buffer`` (examples as dicts of token lists and a label), ``self.buffer_tasks``
    (the task index of each), ``self.seen`` (examples offered to the buffer so far) and
    ``self.task_indices`` (the tasks added, in order).
    """

    name = "replay"
    config_class = ReplayConfig

    def __init__(self, config: ReplayConfig | None = None, **options: Any) -> None:
        super().__init__(config, **options)
        self.buffer: list[Example] = []
        self.buffer_tasks: list[int] = []
        self.seen = 0
        self.task_indices: list[int] = []
        self._seed: list[int] | None = None
        self._rng: np.random.Generator | None = None
        self._rng_worker: int | None = None
        self._order: list[int] = []

    # -- drawing ------------------------------------------------------------------------------
    def before_task(self, ctx: TaskContext) -> None:
        """Seeds this task's draws with ``(seed, task index, process rank)``."""
        rank, _ = process_rank_and_count()
        self._seed = [ctx.seed, ctx.index, rank]
        self._rng, self._rng_worker, self._order = _generator(_DRAW, *self._seed), None, []

    def collate(self, collator: Callable[[list[Example]], Any]) -> Callable[[list[Example]], Any]:
        return ReplayCollator(collator, self)

    def draw(self, count: int) -> list[Example]:
        """``count`` buffer examples, cycling through seeded permutations of the buffer.

        In a dataloader worker process the draws are seeded with the worker's id as well, so
        workers do not replay the same examples.
        """
        if self._seed is None:
            raise RuntimeError("replay: before_task() must be called before the training batches are drawn")
        worker = torch.utils.data.get_worker_info()
        if worker is not None and worker.id != self._rng_worker:
            self._rng, self._rng_worker, self._order = _generator(_WORKER_DRAW, *self._seed, worker.id), worker.id, []
        drawn = []
        for _ in range(count):
            if not self._order:
                self._order = self._rng.permutation(len(self.buffer)).tolist()
            drawn.append(self.buffer[self._order.pop()])
        return drawn

    # -- filling ------------------------------------------------------------------------------
    def after_task(self, ctx: TaskContext) -> None:
        """Adds examples of the task's training data to the buffer (same on every process)."""
        data = ctx.train_dataset
        columns = model_input_columns(ctx.model, data.column_names) + [label_column(data.column_names)]
        rng = _generator(_FILL, ctx.seed, ctx.index)
        order = rng.permutation(len(data)).tolist()  # the seeded order examples are offered in
        if self.config.policy == "balanced":
            self._add_balanced(data, columns, order, ctx.index)
        else:
            self._add_reservoir(data, columns, order, ctx.index, rng)
        self.seen += len(order)
        self.task_indices.append(ctx.index)
        self._order = []

    def _add_balanced(self, data: datasets.Dataset, columns: list[str], order: list[int], task: int) -> None:
        quotas = balanced_quotas(self.config.buffer_size, len(self.task_indices) + 1)
        quota = dict(zip(self.task_indices, quotas))
        kept, kept_tasks, taken = [], [], dict.fromkeys(quota, 0)
        for example, owner in zip(self.buffer, self.buffer_tasks):
            if taken[owner] < quota[owner]:  # each task's examples are in seeded order: keep the first ones
                kept.append(example)
                kept_tasks.append(owner)
                taken[owner] += 1
        new = _rows(data, order[: quotas[-1]], columns)
        self.buffer = kept + new
        self.buffer_tasks = kept_tasks + [task] * len(new)

    def _add_reservoir(
        self, data: datasets.Dataset, columns: list[str], order: list[int], task: int, rng: np.random.Generator
    ) -> None:
        size = self.config.buffer_size
        fill = min(max(size - len(self.buffer), 0), len(order))
        self.buffer += _rows(data, order[:fill], columns)
        self.buffer_tasks += [task] * fill
        rest = order[fill:]
        if rest:
            # Example k of the rest is the (seen + fill + k + 1)-th seen: it replaces slot j if j < size.
            counts = self.seen + fill + 1 + np.arange(len(rest))
            slots = rng.integers(0, counts)
            replacing = {int(slot): rest[k] for k, slot in enumerate(slots) if slot < size}  # later ones win
            rows = _rows(data, list(replacing.values()), columns)
            for slot, row in zip(replacing, rows):
                self.buffer[slot] = row
                self.buffer_tasks[slot] = task

    # -- state --------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The buffer as one flat tensor per column (with lengths for token columns)."""
        columns = list(self.buffer[0]) if self.buffer else []
        examples: dict[str, dict[str, torch.Tensor]] = {}
        for column in columns:
            values = [example[column] for example in self.buffer]
            if isinstance(values[0], list):
                examples[column] = {
                    "values": torch.tensor([v for value in values for v in value]),
                    "lengths": torch.tensor([len(value) for value in values]),
                }
            else:
                examples[column] = {"values": torch.tensor(values)}
        return {
            "examples": examples,
            "tasks": torch.tensor(self.buffer_tasks, dtype=torch.int64),
            "seen": self.seen,
            "task_indices": list(self.task_indices),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if set(state) != {"examples", "tasks", "seen", "task_indices"}:
            raise ValueError(f"continual method 'replay': the checkpoint holds {sorted(state)}, not replay's state")
        self.buffer_tasks = state["tasks"].tolist()
        columns: dict[str, list[Any]] = {}
        for column, parts in state["examples"].items():
            values = parts["values"].tolist()
            if "lengths" in parts:
                ends = np.cumsum(parts["lengths"].tolist()).tolist()
                values = [values[end - length : end] for end, length in zip(ends, parts["lengths"].tolist())]
            columns[column] = values
        self.buffer = [{column: columns[column][row] for column in columns} for row in range(len(self.buffer_tasks))]
        self.seen = int(state["seen"])
        self.task_indices = [int(index) for index in state["task_indices"]]
        self._order = []

    def state_bytes(self) -> int:
        """Bytes of the buffered tokenized examples (as the checkpoint stores them, int64)."""
        return tensor_bytes(self.state_dict()["examples"])


register_method("replay", Replay, ReplayConfig)
