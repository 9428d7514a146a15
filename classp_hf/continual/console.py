"""What a run prints: quiet by default, everything the libraries print with ``--verbose``.

Quiet (the default): the runner's progress lines (one per task start and end), the training progress bar when the
console is a terminal, and the final table. transformers' and datasets' logging (the weights' load report, notes),
their progress bars (loading weights, writing model shards, evaluation) and Python warnings (``FutureWarning``, ...)
are held back for the run and restored after it; nothing written to files changes. ``verbose`` leaves all of it as
the libraries do.
"""

from __future__ import annotations

import contextlib
import sys
import warnings
from collections.abc import Iterator
from typing import Any

import datasets.utils
import datasets.utils.logging
import transformers
import transformers.utils.logging
from transformers.trainer_callback import PrinterCallback, ProgressCallback

__all__ = ["library_output", "TrainingBar", "set_console_callbacks"]


@contextlib.contextmanager
def library_output(verbose: bool) -> Iterator[None]:
    """Within the block, transformers and datasets log errors only, show no progress bars and Python warnings are
    ignored, unless ``verbose``; their settings and the warning filters are restored afterwards.

    Args:
        verbose: leave the libraries' output as it is.
    """
    if verbose:
        yield
        return
    hf_level = transformers.utils.logging.get_verbosity()
    hf_bars = transformers.utils.logging.is_progress_bar_enabled()
    ds_level = datasets.utils.logging.get_verbosity()
    ds_bars = not datasets.utils.are_progress_bars_disabled()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
        datasets.utils.logging.set_verbosity_error()
        datasets.utils.disable_progress_bars()
        try:
            yield
        finally:
            transformers.utils.logging.set_verbosity(hf_level)
            datasets.utils.logging.set_verbosity(ds_level)
            if hf_bars:
                transformers.utils.logging.enable_progress_bar()
            if ds_bars:
                datasets.utils.enable_progress_bars()


class TrainingBar(ProgressCallback):
    """transformers' training progress bar alone: no evaluation bars and no printed log dicts."""

    def on_prediction_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """No evaluation bar."""

    def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
        """The logs go to the Trainer's ``report_to`` integrations, not to the console."""


def set_console_callbacks(trainer: transformers.Trainer, verbose: bool, terminal: bool | None = None) -> None:
    """Sets what a task's Trainer prints: as transformers does when ``verbose``, else the training bar alone when
    the console is a terminal (and ``disable_tqdm`` is off), else nothing.

    Args:
        trainer: the task's Trainer (its progress and printer callbacks are replaced).
        verbose: keep transformers' own console callbacks (bars for training and evaluation, the log dicts).
        terminal: whether the bar's stream (stderr) is a terminal; `None`: ask it.
    """
    if verbose:
        return
    trainer.remove_callback(ProgressCallback)
    trainer.remove_callback(PrinterCallback)
    if terminal is None:
        terminal = sys.stderr.isatty()
    if terminal and not trainer.args.disable_tqdm:
        trainer.add_callback(TrainingBar)
