"""Where a run's wall time goes: seconds per phase (start-up, tokenization, training, evaluation, ...).

The runner times each phase with :meth:`PhaseTimer.phase`; ``results.json`` holds :meth:`PhaseTimer.to_dict` under
``timing``. A resumed run adds its attempt's seconds to those the earlier attempts recorded.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Mapping
from typing import Any

__all__ = ["PHASES", "PhaseTimer", "training_share"]

#: The phases of a run, in order. ``startup``: the config's model check, the tokenizer, the model and the first
#: files; ``tokenization``: reading, sampling and tokenizing every task (or reading them from the cache);
#: ``training``: ``Trainer.train``; ``method``: the continual method's hooks and building each task's Trainer;
#: ``evaluation``: every evaluation (the untrained model's too); ``checkpoint``: per-task checkpoints and adapters;
#: ``report``: results.json, report.md and the plots; ``final_model``: the final model's save.
PHASES = ("startup", "tokenization", "training", "method", "evaluation", "checkpoint", "report", "final_model")


class PhaseTimer:
    """Adds up wall seconds per phase; the rest of the run's wall time is ``other``.

    Args:
        earlier (`Mapping`, *optional*): a ``timing`` record of earlier attempts (``--resume``) to add to.
    """

    def __init__(self, earlier: Mapping[str, Any] | None = None) -> None:
        self.started = time.perf_counter()
        earlier = earlier or {}
        phases = earlier.get("phases") or {}
        self.seconds = {name: float(phases.get(name, 0.0)) for name in PHASES}
        self.earlier_total = float(earlier.get("total_seconds", 0.0))
        self.attempts = int(earlier.get("attempts", 0)) + 1
        self._open: list[str] = []

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Counts the time spent in the ``with`` block toward ``name`` (one of :data:`PHASES`).

        A phase opened inside another one pauses it: its seconds count toward the inner phase only (the same phase
        nested counts once).
        """
        if name not in self.seconds:
            raise ValueError(f"unknown phase {name!r} (one of {', '.join(PHASES)})")
        self._open.append(name)
        start = time.perf_counter()
        try:
            yield
        finally:
            elapsed = time.perf_counter() - start
            self.seconds[name] += elapsed
            self._open.pop()
            if self._open:
                self.seconds[self._open[-1]] -= elapsed

    def to_dict(self) -> dict[str, Any]:
        """The ``timing`` record so far.

        Returns:
            ``phases`` (seconds per phase), ``other_seconds`` (the wall time no phase covers), ``total_seconds`` (the
            run's wall time over all attempts, from the runner's start), ``training_share`` (``training`` over the
            total) and ``attempts``.
        """
        total = self.earlier_total + time.perf_counter() - self.started
        phases = {name: round(value, 3) for name, value in self.seconds.items()}
        total = max(total, sum(self.seconds.values()))
        return {
            "phases": phases,
            "other_seconds": round(max(0.0, total - sum(self.seconds.values())), 3),
            "total_seconds": round(total, 3),
            "training_share": training_share(self.seconds["training"], total),
            "attempts": self.attempts,
        }


def training_share(training_seconds: float, total_seconds: float) -> float | None:
    """``training_seconds / total_seconds`` rounded to 4 places, or `None` for a zero total."""
    return round(training_seconds / total_seconds, 4) if total_seconds > 0 else None
