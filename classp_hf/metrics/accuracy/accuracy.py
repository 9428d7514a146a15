"""Local `evaluate` metric: classification accuracy.

Loaded by path (``evaluate.load("<dir>/accuracy")``), so it works without the Hugging Face Hub. Keep one import per
line: ``evaluate``'s loader scans this file line by line for its imports and misreads ``import a, b``. Import
``evaluate`` itself (not ``from evaluate import Metric``): the loader picks the first concrete ``EvaluationModule``
subclass it finds in the module namespace, which would then be ``evaluate.Metric`` itself.
"""

import evaluate
import numpy as np

from classp_hf.metrics._script import CLASS_ID_INPUTS, class_id_arrays, class_id_metric_info

_DESCRIPTION = """
Accuracy is the share of predictions equal to the reference label: (number correct) / (number of examples).
"""

_KWARGS_DESCRIPTION = (
    CLASS_ID_INPUTS
    + """    normalize (`bool`, *optional*, defaults to `True`):
        If `False`, return the number of correct predictions instead of their share.
    sample_weight (`list[float]`, *optional*):
        Per-example weights.

Returns:
    `dict`: `{"accuracy": float}`.

Examples:
    >>> acc = evaluate.load("classp_hf/metrics/accuracy")
    >>> acc.compute(predictions=[0, 1, 1, 2], references=[0, 1, 2, 2])
    {'accuracy': 0.75}
"""
)


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Accuracy(evaluate.Metric):
    """Classification accuracy computed with numpy (no scikit-learn dependency)."""

    def _info(self):
        return class_id_metric_info(_DESCRIPTION, _KWARGS_DESCRIPTION)

    def _compute(self, predictions, references, normalize=True, sample_weight=None):
        preds, refs = class_id_arrays(predictions, references)
        if preds.size == 0:
            raise ValueError("accuracy of an empty set of predictions is undefined")
        correct = (preds == refs).astype(np.float64)
        if sample_weight is None:
            weights = np.ones_like(correct)
        else:
            weights = np.asarray(sample_weight, dtype=np.float64)
            if weights.shape != correct.shape:
                raise ValueError("sample_weight must have one weight per example")
        total = float(np.sum(correct * weights))
        if normalize:
            total = total / float(np.sum(weights))
        return {"accuracy": total}
