"""``classp-hf compare``: settings side by side over seeds, grids chosen on validation accuracy.

The parts: :mod:`.grid` (grid files and presets into run configs), :mod:`.execute` (planning and scheduling the
runs, :func:`compare`), :mod:`.launch` (launching one run), :mod:`.results` (a run's numbers, the choice of a grid
point, the summary over seeds, the :class:`Comparison` object) and :mod:`.report` (comparison.json, comparison.md,
the figures).
"""

from classp_hf.continual.compare.execute import compare
from classp_hf.continual.compare.results import Comparison

__all__ = ["Comparison", "compare"]
