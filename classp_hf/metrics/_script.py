"""What the local ``evaluate`` metric scripts (``accuracy/accuracy.py``, ``macro_f1/macro_f1.py``) share.

Each script imports it by its absolute name (``evaluate``'s loader copies a script alone into its module cache, so
a relative import would not resolve there).
"""

from __future__ import annotations

import datasets
import evaluate
import numpy as np

#: The start of every script's ``_KWARGS_DESCRIPTION``: the two inputs (each script adds its own options).
CLASS_ID_INPUTS = """
Args:
    predictions (`list[int]`):
        Predicted class ids.
    references (`list[int]`):
        Ground-truth class ids, same length as `predictions`.
"""


def class_id_metric_info(description: str, inputs_description: str, citation: str = "") -> evaluate.MetricInfo:
    """The ``MetricInfo`` of a metric over class ids: ``predictions`` and ``references``, both ``int64``.

    Args:
        description: what the metric measures.
        inputs_description: its ``compute`` arguments and result (the ``_KWARGS_DESCRIPTION``).
        citation: a BibTeX entry, if any.

    Returns:
        The ``evaluate.MetricInfo`` that ``_info`` returns.
    """
    return evaluate.MetricInfo(
        description=description,
        citation=citation,
        inputs_description=inputs_description,
        features=datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}),
    )


def class_id_arrays(predictions: object, references: object) -> tuple[np.ndarray, np.ndarray]:
    """``predictions`` and ``references`` as ``int64`` arrays of one length.

    Raises:
        ValueError: the two differ in length.
    """
    preds = np.asarray(predictions, dtype=np.int64)
    refs = np.asarray(references, dtype=np.int64)
    if preds.shape != refs.shape:
        raise ValueError(f"predictions and references differ in length: {preds.shape[0]} vs {refs.shape[0]}")
    return preds, refs
