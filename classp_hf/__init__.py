"""classp_hf: continual fine-tuning of Hugging Face transformers with the CLASSP optimizer.

``classp_hf.optim`` (CLASSP and the optimizer registry) imports no Hugging Face code; the
Hugging Face layer (``TrainingArguments``, ``Trainer``) is imported on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from classp_hf.optim import CLASSP, create_optimizer, list_optimizers, register_optimizer

__version__ = "0.2.0"

_LAZY = {
    "TrainingArguments": "classp_hf.training_args",
    "Trainer": "classp_hf.trainer",
}

__all__ = ["CLASSP", "create_optimizer", "list_optimizers", "register_optimizer", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'classp_hf' has no attribute {name!r}")
