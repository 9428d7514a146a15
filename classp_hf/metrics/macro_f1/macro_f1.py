"""Local `evaluate` metric: macro-averaged F1.

Loaded by path (``evaluate.load("<dir>/macro_f1")``), so it works without the Hugging Face Hub. Keep one import per
line: ``evaluate``'s loader scans this file line by line for its imports and misreads ``import a, b``. Import
``evaluate`` itself (not ``from evaluate import Metric``): the loader picks the first concrete ``EvaluationModule``
subclass it finds in the module namespace, which would then be ``evaluate.Metric`` itself.
"""

import evaluate
import numpy as np

from classp_hf.metrics._script import CLASS_ID_INPUTS, class_id_arrays, class_id_metric_info

_DESCRIPTION = """
Macro-F1 is the unweighted mean over classes of the per-class F1 = 2 TP / (2 TP + FP + FN). Classes are the labels
present in references or predictions (sorted), or the `labels` argument when given. A class with TP = FP = FN = 0
(only possible through `labels`) scores 0, as scikit-learn's `f1_score(average="macro", zero_division=0)` does.
"""

_KWARGS_DESCRIPTION = (
    CLASS_ID_INPUTS
    + """    labels (`list[int]`, *optional*):
        Classes to average over. Defaults to the sorted union of the labels in `references` and `predictions`.

Returns:
    `dict`: `{"macro_f1": float}`.

Examples:
    >>> f1 = evaluate.load("classp_hf/metrics/macro_f1")
    >>> f1.compute(predictions=[0, 0, 1, 2], references=[0, 1, 1, 2])  # (2/3 + 2/3 + 1) / 3
    {'macro_f1': 0.7777777777777777}
"""
)


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class MacroF1(evaluate.Metric):
    """Macro-averaged F1 computed with numpy (no scikit-learn dependency)."""

    def _info(self):
        return class_id_metric_info(_DESCRIPTION, _KWARGS_DESCRIPTION)

    def _compute(self, predictions, references, labels=None):
        preds, refs = class_id_arrays(predictions, references)
        if labels is None:
            classes = np.union1d(refs, preds)
        else:
            classes = np.unique(np.asarray(list(labels), dtype=np.int64))
        if classes.size == 0:
            raise ValueError("macro-F1 needs at least one class (empty predictions/references and no labels)")
        # One row per class: boolean masks broadcast over the examples.
        pred_is = preds[None, :] == classes[:, None]
        ref_is = refs[None, :] == classes[:, None]
        tp = np.sum(pred_is & ref_is, axis=1).astype(np.float64)
        fp = np.sum(pred_is & ~ref_is, axis=1).astype(np.float64)
        fn = np.sum(~pred_is & ref_is, axis=1).astype(np.float64)
        denom = 2.0 * tp + fp + fn
        f1 = np.divide(2.0 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
        return {"macro_f1": float(np.mean(f1))}
