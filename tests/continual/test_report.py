"""Results schema, validation and the report (console table, report.md, PNG plots) of a continual run."""

from __future__ import annotations

import copy
import json
import math

import pytest

from classp_hf.continual.report import (
    CURVES_PLOT_FILENAME,
    MATRIX_PLOT_FILENAME,
    REPORT_FILENAME,
    format_matrix_table,
    plot_accuracy_curves,
    plot_accuracy_matrix,
    render_markdown,
    write_report,
)
from classp_hf.continual.results import RESULTS_SCHEMA_PATH, load_results_schema, validate_results
from classp_hf.metrics.continual import continual_metrics

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TASKS = ["sst2", "imdb", "rotten_tomatoes"]
R = [
    [0.912, 0.801, 0.774],
    [0.873, 0.905, 0.842],
    [0.861, 0.887, 0.868],
]
F1 = [
    [0.911, 0.798, 0.770],
    [0.872, 0.905, 0.841],
    [0.860, 0.886, 0.868],
]
INITIAL = [0.509, 0.500, 0.502]
INITIAL_F1 = [0.337, 0.333, 0.334]
MAJORITY = [0.509, 0.500, 0.500]


def _per_task(name: str, index: int) -> dict:
    return {
        "name": name,
        "train_loss": 0.41 - 0.05 * index,
        "steps": 250 + index,
        "seconds": 31.5 + index,
        "train_examples": 4000,
        "eval_examples": 872,
        "learning_rate": 2e-5,
        "optimizer_diagnostics": {"update_fraction": 0.1234, "grad_sum_mean": 0.5},
    }


def _results(tasks: list[str], rows: int) -> dict:
    """Realistic results of a run over ``tasks`` with ``rows`` tasks trained so far."""
    num_tasks = len(tasks)
    acc = [row[:num_tasks] for row in R[:rows]]
    f1 = [row[:num_tasks] for row in F1[:rows]]
    if rows:
        metrics = continual_metrics([row[:rows] for row in acc], INITIAL[:rows])
    else:
        metrics = {"acc": None, "bwt": None, "fwt": None, "forgetting": None}
    return {
        "schema_version": 2,
        "status": "complete" if rows == num_tasks else "running",
        "model": "sentence-transformers/all-MiniLM-L6-v2",
        "labels": ["negative", "positive"],
        "seed": 42,
        "method": "finetune",
        "optimizer": {"name": "classp", "optim_args": "threshold=0.01,power=1.0", "learning_rate": 2e-5},
        "tasks": list(tasks),
        "initial_accuracy": INITIAL[:num_tasks],
        "initial_macro_f1": INITIAL_F1[:num_tasks],
        "majority_accuracy": MAJORITY[:num_tasks],
        "accuracy_matrix": acc,
        "macro_f1_matrix": f1,
        "metrics": metrics,
        "per_task": [_per_task(name, i) for i, name in enumerate(tasks[:rows])],
        "versions": {
            "python": "3.11.9",
            "torch": "2.4.1",
            "transformers": "4.46.0",
            "peft": None,
            "classp_hf": "0.1.0",
        },
    }


@pytest.fixture
def complete() -> dict:
    return _results(TASKS, 3)


@pytest.fixture
def partial() -> dict:
    return _results(TASKS, 1)


@pytest.fixture
def single() -> dict:
    return _results(TASKS[:1], 1)


ALL_RUNS = ["complete", "partial", "single"]


# ------------------------------------------------------------------------------------------------------------ schema


def test_schema_is_valid_draft_2020_12():
    import jsonschema

    schema = load_results_schema()
    assert RESULTS_SCHEMA_PATH.is_file()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(schema)
    load_results_schema()["title"] = "changed"
    assert load_results_schema()["title"] == schema["title"]


@pytest.mark.parametrize("run", ALL_RUNS + ["no_rows"])
def test_valid_results_pass(run, request):
    results = _results(TASKS, 0) if run == "no_rows" else request.getfixturevalue(run)
    validate_results(results)
    json.dumps(results, allow_nan=False)  # what results.json will hold


def test_extra_top_level_keys_are_allowed(complete):
    complete["dataset_revision"] = {"sst2": "abc"}
    validate_results(complete)


@pytest.mark.parametrize(
    "key", ["model", "status", "tasks", "accuracy_matrix", "metrics", "per_task", "versions", "schema_version"]
)
def test_missing_key_fails_naming_it(complete, key):
    del complete[key]
    with pytest.raises(ValueError, match=rf"\$\.{key}\b.*missing"):
        validate_results(complete)


def test_missing_nested_key_fails_naming_its_path(complete):
    del complete["per_task"][1]["steps"]
    with pytest.raises(ValueError, match=r"\$\.per_task\[1\]\.steps"):
        validate_results(complete)
    del complete["versions"]


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        (("accuracy_matrix", 1, 2), math.nan, r"\$\.accuracy_matrix\[1\]\[2\]: nan is not allowed"),
        (("metrics", "bwt"), math.nan, r"\$\.metrics\.bwt: nan"),
        (("per_task", 0, "train_loss"), math.inf, r"\$\.per_task\[0\]\.train_loss: inf"),
        (("initial_accuracy", 0), "NaN", r"\$\.initial_accuracy\[0\]: 'NaN' is not of type 'number'"),
        (("seed",), "42", r"\$\.seed: '42' is not of type 'integer'"),
        (("seed",), True, r"\$\.seed"),
        (("per_task", 2, "steps"), 2.5, r"\$\.per_task\[2\]\.steps"),
        (("status",), "done", r"\$\.status"),
        (("schema_version",), 1, r"\$\.schema_version"),
        (("accuracy_matrix", 0, 0), 91.2, r"\$\.accuracy_matrix\[0\]\[0\]: 91\.2 is greater than the maximum of 1"),
        (("majority_accuracy", 2), -0.1, r"\$\.majority_accuracy\[2\]"),
        (("optimizer", "optim_args"), 3, r"\$\.optimizer\.optim_args"),
        (("per_task", 0, "optimizer_diagnostics", "update_fraction"), "12%", r"update_fraction"),
        (("tasks",), "sst2", r"\$\.tasks"),
    ],
)
def test_bad_values_fail_naming_the_path(complete, path, value, expected):
    target = complete
    for part in path[:-1]:
        target = target[part]
    target[path[-1]] = value
    with pytest.raises(ValueError, match=expected) as info:
        validate_results(complete)
    assert "\n" not in str(info.value)


def test_null_is_allowed_where_undefined(complete):
    complete["metrics"] = {"acc": None, "bwt": None, "fwt": None, "forgetting": None}
    complete["per_task"][0]["train_loss"] = None
    complete["optimizer"]["optim_args"] = None
    complete["per_task"][0]["optimizer_diagnostics"] = {}
    validate_results(complete)


def test_not_a_dict_fails():
    with pytest.raises(ValueError, match=r"\$: expected an object"):
        validate_results([1, 2])


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda r: r["accuracy_matrix"][1].pop(), r"\$\.accuracy_matrix\[1\]: has 2 columns, expected one per task"),
        (lambda r: r["macro_f1_matrix"].pop(), r"\$\.macro_f1_matrix: has 2 rows, expected 3"),
        (lambda r: r["per_task"].pop(), r"\$\.per_task: has 2 records, expected one per matrix row \(3\)"),
        (lambda r: r["initial_accuracy"].pop(), r"\$\.initial_accuracy: has 2 values"),
        (lambda r: r["majority_accuracy"].append(0.5), r"\$\.majority_accuracy: has 4 values"),
        (lambda r: r["accuracy_matrix"].append(list(R[0])), r"\$\.accuracy_matrix: has 4 rows, more than the 3 tasks"),
        (lambda r: r["per_task"][1].update(name="sst2"), r"\$\.per_task\[1\]\.name"),
    ],
)
def test_inconsistent_shapes_fail(complete, mutate, expected):
    mutate(complete)
    with pytest.raises(ValueError, match=expected):
        validate_results(complete)


def test_complete_needs_every_row(partial):
    partial["status"] = "complete"
    with pytest.raises(ValueError, match=r"\$\.status: is 'complete' but only 1 of 3"):
        validate_results(partial)


# ------------------------------------------------------------------------------------------------------------ report


def test_console_table(complete):
    table = format_matrix_table(complete)
    lines = table.splitlines()
    for task in TASKS:
        assert task in lines[0]
        assert any(line.startswith(f"after {task} ") for line in lines)
    assert lines[2].split() == ["untrained", "50.9", "50.0", "50.2"]
    assert lines[3].split() == ["after", "sst2", "91.2", "80.1", "77.4"]
    assert lines[-2].split() == ["majority", "class", "50.9", "50.0", "50.0"]
    m = complete["metrics"]
    assert lines[-1] == (
        f"ACC {100 * m['acc']:.1f}%  BWT {100 * m['bwt']:+.1f} pts  FWT {100 * m['fwt']:+.1f} pts  "
        f"Forgetting {100 * m['forgetting']:.1f} pts"
    )
    assert lines[-1].startswith("ACC 87.2%  BWT -3.5 pts")


def test_console_table_partial_and_single(partial, single):
    lines = format_matrix_table(partial).splitlines()
    assert lines[4].split() == ["after", "imdb", "-", "-", "-"]
    assert lines[-1] == "ACC 91.2%  BWT n/a  FWT n/a  Forgetting n/a"
    lines = format_matrix_table(single).splitlines()
    assert lines[3].split() == ["after", "sst2", "91.2"]
    assert lines[-1].startswith("ACC 91.2%")


def test_markdown(complete):
    md = render_markdown(complete)
    assert md.startswith("# ")
    assert md.endswith("\n")
    for text in [
        complete["model"],
        "classp",
        "threshold=0.01,power=1.0",
        "2e-05",
        "finetune",
        "| Seed | 42 |",
        "complete (3 of 3 tasks trained)",
        "| after ↓ / on → | sst2 | imdb | rotten_tomatoes |",
        "| after sst2 | **91.2** | 80.1 | 77.4 |",
        "| after imdb | 87.3 | **90.5** | 84.2 |",
        "| untrained | 50.9 | 50.0 | 50.2 |",
        "| majority class | 50.9 | 50.0 | 50.0 |",
        "| untrained | 33.7 | 33.3 | 33.4 |",  # macro-F1 matrix
        "| after sst2 | **91.1** | 79.8 | 77.0 |",
        "| sst2 | 0.4100 | 250 | 31.5 | 4000 | 872 | 2e-05 | 12.34% | n/a | n/a | 50.9% |",
        "| ACC | 87.2% |",
        "| BWT | -3.5 pts |",
        "FWT",
        "Forgetting",
        "Chaudhry et al. 2018",
        "mean_{j<T-1} (R[T-1][j] - R[j][j])",
        "mean_{j>=1} (R[j-1][j] - b[j])",
        f"]({MATRIX_PLOT_FILENAME})",
        f"]({CURVES_PLOT_FILENAME})",
        "| transformers | 4.46.0 |",
        "| peft | n/a |",
    ]:
        assert text in md, text
    assert "nan" not in md.lower()


def test_markdown_partial_and_single(partial, single):
    md = render_markdown(partial)
    assert "running (1 of 3 tasks trained)" in md
    assert "| after imdb | - | - | - |" in md
    assert "Not trained yet: imdb, rotten_tomatoes." in md
    assert "| BWT | n/a |" in md
    md = render_markdown(single)
    assert "| after sst2 | **91.2** |" in md
    assert "| FWT | n/a |" in md


def test_markdown_escapes_pipes(complete):
    complete["optimizer"]["name"] = "a|b"
    assert "a\\|b" in render_markdown(complete)


def _assert_png(path, min_width=200):
    from matplotlib.image import imread

    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC)
    assert len(data) > 1000
    image = imread(path)
    assert image.ndim == 3 and image.shape[2] in (3, 4)
    assert image.shape[0] >= 200 and image.shape[1] >= min_width
    assert image.std() > 0  # not a blank canvas


@pytest.mark.parametrize("run", ALL_RUNS + ["no_rows"])
def test_write_report(run, request, tmp_path):
    results = _results(TASKS, 0) if run == "no_rows" else request.getfixturevalue(run)
    before = copy.deepcopy(results)
    out = tmp_path / "run" / "nested"
    paths = write_report(results, out)
    assert paths == [out / REPORT_FILENAME, out / MATRIX_PLOT_FILENAME, out / CURVES_PLOT_FILENAME]
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in paths)  # no leftover temporary files
    assert paths[0].read_text(encoding="utf-8") == render_markdown(results)
    _assert_png(paths[1])
    _assert_png(paths[2])
    assert results == before  # the results are not modified


def test_write_report_rejects_invalid_results(complete, tmp_path):
    complete["accuracy_matrix"][0][0] = math.nan
    with pytest.raises(ValueError, match=r"accuracy_matrix\[0\]\[0\]"):
        write_report(complete, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_plot_functions_return_their_path(complete, tmp_path):
    assert plot_accuracy_matrix(complete, tmp_path / "m.png") == tmp_path / "m.png"
    assert plot_accuracy_curves(complete, tmp_path / "c.png") == tmp_path / "c.png"
    _assert_png(tmp_path / "m.png")
    _assert_png(tmp_path / "c.png")


def test_failed_plot_keeps_old_file_and_leaves_no_temporary(complete, tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    target = plot_accuracy_matrix(complete, tmp_path / MATRIX_PLOT_FILENAME)
    old = target.read_bytes()

    def broken_savefig(self, fname, **kwargs):
        with open(fname, "wb") as handle:
            handle.write(PNG_MAGIC[:4])  # half a file
        raise OSError("disk full")

    monkeypatch.setattr(Figure, "savefig", broken_savefig)
    with pytest.raises(OSError, match="disk full"):
        plot_accuracy_matrix(complete, target)
    assert target.read_bytes() == old
    assert [p.name for p in tmp_path.iterdir()] == [MATRIX_PLOT_FILENAME]


def test_matplotlib_backend_is_not_changed(complete, tmp_path):
    import matplotlib

    backend = matplotlib.get_backend()
    write_report(complete, tmp_path)
    assert matplotlib.get_backend() == backend


# ------------------------------------------------------------------------------------------------ task-label accuracy


def test_task_label_predictions_never_pick_a_label_outside_the_task():
    from classp_hf.continual.evaluation import task_label_predictions

    logits = [[0.1, 5.0, 0.2], [3.0, 4.0, -1.0], [-2.0, 9.0, -1.0]]  # the middle label wins every plain argmax
    assert task_label_predictions(logits, [0, 2]).tolist() == [2, 0, 2]
    assert task_label_predictions(logits, [0, 1, 2]).tolist() == [1, 1, 1]
    assert task_label_predictions(logits, []).tolist() == [1, 1, 1]


def test_task_labels_part_is_validated(complete):
    complete["task_labels"] = {
        "initial_accuracy": list(INITIAL),
        "accuracy_matrix": [list(row) for row in R],
        "metrics": continual_metrics(R, INITIAL),
    }
    validate_results(complete)
    assert "## Accuracy with each task's own labels (%)" in render_markdown(complete)
    complete["task_labels"]["accuracy_matrix"][2].pop()
    with pytest.raises(ValueError, match=r"\$\.task_labels\.accuracy_matrix\[2\]: has 2 columns"):
        validate_results(complete)


def test_results_from_an_older_run_resume_without_the_task_labels_part(complete):
    from classp_hf.continual.results import RunResults

    old = copy.deepcopy(complete)
    old["per_task"] = old["per_task"][:2]
    old["accuracy_matrix"], old["macro_f1_matrix"] = old["accuracy_matrix"][:2], old["macro_f1_matrix"][:2]
    old["status"] = "running"
    results = RunResults.from_dict(old)
    assert results.task_labels is None
    results.add_task(list(R[2]), list(F1[2]), _per_task(TASKS[2], 2), task_label_accuracy=[0.9, 0.9, 0.9])
    assert results.task_labels is None and "task_labels" not in results.to_dict()
    results.validate()

    new = RunResults.start(
        **{k: complete[k] for k in ("model", "labels", "seed", "method", "optimizer", "tasks")},
        majority_accuracy=MAJORITY,
        versions={},
        total_parameters=10,
    )
    new.set_initial(list(INITIAL), list(INITIAL_F1), task_label_accuracy=[0.6, 0.6, 0.6])
    for i in range(3):
        new.add_task(list(R[i]), list(F1[i]), _per_task(TASKS[i], i), task_label_accuracy=[0.95, 0.9, 0.92])
    data = new.to_dict()
    assert data["task_labels"]["accuracy_matrix"] == [[0.95, 0.9, 0.92]] * 3
    assert data["task_labels"]["metrics"]["acc"] == pytest.approx((0.95 + 0.9 + 0.92) / 3)
    assert RunResults.from_dict(data).task_labels == new.task_labels
    new.truncate(1)
    assert len(new.task_labels.accuracy_matrix) == 1
