"""The results of a continual run (``results.json``): its JSON Schema and validation.

The schema lives in ``classp_hf/schemas/results.schema.json`` (JSON Schema draft 2020-12). On top of the schema,
[`validate_results`] refuses NaN and infinite numbers (JSON has no NaN: undefined values are ``null``) and checks that
the parts agree with each other: one matrix row per trained task, one column per task, one ``per_task`` record per
row, and a ``complete`` run has a row for every task.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any

import jsonschema
from jsonschema.exceptions import best_match

__all__ = ["RESULTS_SCHEMA_PATH", "load_results_schema", "validate_results"]

RESULTS_SCHEMA_PATH: Path = Path(__file__).resolve().parent.parent / "schemas" / "results.schema.json"
"""Path of the JSON Schema of ``results.json``."""

_MAX_MESSAGE = 200


@lru_cache(maxsize=1)
def _schema_text() -> str:
    return RESULTS_SCHEMA_PATH.read_text(encoding="utf-8")


def load_results_schema() -> dict[str, Any]:
    """Loads the JSON Schema of a continual run's results.

    Returns:
        The schema as a new dict (callers may modify it).
    """
    return json.loads(_schema_text())


@lru_cache(maxsize=1)
def _validator() -> jsonschema.Draft202012Validator:
    schema = load_results_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def _path(parts: Any) -> str:
    """``$.a.b[0][1]`` from a sequence of keys and indices."""
    text = "$"
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else f".{part}"
    return text


def _short(text: str) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= _MAX_MESSAGE else text[: _MAX_MESSAGE - 3] + "..."


def _fail(parts: Any, message: str) -> ValueError:
    return ValueError(_short(f"invalid results at {_path(parts)}: {message}"))


def _non_finite(value: Any, parts: tuple = ()) -> Iterator[tuple[tuple, Any]]:
    """Yields ``(path, value)`` for every NaN or infinite float inside ``value``."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _non_finite(item, (*parts, key))
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            yield from _non_finite(item, (*parts, index))
    elif isinstance(value, float) and not math.isfinite(value):
        yield parts, value


def _check_consistency(results: dict[str, Any]) -> None:
    """Checks that the lengths of the vectors, matrices and records agree with ``tasks``."""
    tasks = results["tasks"]
    num_tasks = len(tasks)
    for key in ("initial_accuracy", "initial_macro_f1", "majority_accuracy"):
        if len(results[key]) != num_tasks:
            raise _fail((key,), f"has {len(results[key])} values, expected one per task ({num_tasks})")
    num_rows = len(results["accuracy_matrix"])
    if num_rows > num_tasks:
        raise _fail(("accuracy_matrix",), f"has {num_rows} rows, more than the {num_tasks} tasks")
    for key in ("accuracy_matrix", "macro_f1_matrix"):
        matrix = results[key]
        if len(matrix) != num_rows:
            raise _fail((key,), f"has {len(matrix)} rows, expected {num_rows} like accuracy_matrix")
        for i, row in enumerate(matrix):
            if len(row) != num_tasks:
                raise _fail((key, i), f"has {len(row)} columns, expected one per task ({num_tasks})")
    per_task = results["per_task"]
    if len(per_task) != num_rows:
        raise _fail(("per_task",), f"has {len(per_task)} records, expected one per matrix row ({num_rows})")
    for i, record in enumerate(per_task):
        if record["name"] != tasks[i]:
            raise _fail(("per_task", i, "name"), f"is {record['name']!r}, expected task {i} {tasks[i]!r}")
    if results["status"] == "complete" and num_rows != num_tasks:
        raise _fail(("status",), f"is 'complete' but only {num_rows} of {num_tasks} tasks have a matrix row")


def validate_results(results: dict[str, Any]) -> None:
    """Checks a results dict against the schema and for internal consistency.

    Args:
        results: the results of a continual run, as written to ``results.json``.

    Raises:
        ValueError: on the first problem found, with a one-line message naming its JSON path (e.g.
            ``invalid results at $.accuracy_matrix[1][0]: NaN is not allowed (use null)``).
    """
    if not isinstance(results, dict):
        raise _fail((), f"expected an object (dict), got {type(results).__name__}")
    for parts, value in _non_finite(results):
        raise _fail(parts, f"{value} is not allowed (use null)")
    error = best_match(_validator().iter_errors(results))
    if error is not None:
        message = error.message
        if error.validator == "required":
            # The path of a missing key is its parent; name the key itself.
            missing = [key for key in error.validator_value if key not in error.instance]
            if missing:
                raise _fail((*error.absolute_path, missing[0]), "required key is missing")
        raise _fail(tuple(error.absolute_path), message)
    _check_consistency(results)
