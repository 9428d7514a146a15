"""The comparison's figure file names (under ``figures/``), in a module that imports nothing, so the folder's
ownership records (:mod:`classp_hf.continual.ownership`) can name them without importing the report."""

from __future__ import annotations

__all__ = ["FIGURES"]

#: Figure file names, under ``figures/``.
FIGURES = {
    "matrices": "accuracy_matrices.png",
    "first_task": "first_task.png",
    "memory": "acc_vs_memory.png",
    "stability": "stability_plasticity.png",
}
