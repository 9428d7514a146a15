"""Local `evaluate` metric: classification accuracy.

Loaded by path (``evaluate.load("<dir>/accuracy")``), so it works without the Hugging Face Hub. Keep one import per
line: ``evaluate``'s loader scans this file line by line for its imports and misreads ``import a, b``. Import
``evaluate`` itself (not ``from evaluate import Metric``): the loader picks the first concrete ``EvaluationModule``
subclass it finds in the module namespace, which would then be ``evaluate.Metric`` itself.
"""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = """
Accuracy is the share of predictions equal to the reference label: (number correct) / (number of examples).
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[int]`):
        Predicted class ids.
    references (`list[int]`):
        Ground-truth class ids, same length as `predictions`.
    normalize (`bool`, *optional*, defaults to `True`):
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

_CITATION = ""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Accuracy(evaluate.Metric):
    """Classification accuracy computed with numpy (no scikit-learn dependency)."""

    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Value("int64"),
                    "references": datasets.Value("int64"),
                }
            ),
        )

    def _compute(self, predictions, references, normalize=True, sample_weight=None):
        preds = np.asarray(predictions, dtype=np.int64)
        refs = np.asarray(references, dtype=np.int64)
        if preds.shape != refs.shape:
            raise ValueError(f"predictions and references differ in length: {preds.shape[0]} vs {refs.shape[0]}")
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
