"""Human-readable reports of a continual run: a console table, ``report.md`` and two PNG plots.

All functions take the results dict of a run (see ``classp_hf/schemas/results.schema.json`` and
[`classp_hf.continual.results.validate_results`]). They work on a run in progress (fewer matrix rows than tasks: the
rows still to come are left blank) and on a queue of a single task.

The plots are drawn on a bare [`matplotlib.figure.Figure`] rendered by the Agg canvas: pyplot is never imported, so
no GUI backend is touched, no global figure registry grows, and the caller's backend is left as it is.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from classp_hf.continual.io import atomic_write, write_text_atomic
from classp_hf.continual.results import validate_results

__all__ = [
    "METRIC_DEFINITIONS",
    "REPORT_FILENAME",
    "MATRIX_PLOT_FILENAME",
    "CURVES_PLOT_FILENAME",
    "format_matrix_table",
    "render_markdown",
    "plot_accuracy_matrix",
    "plot_accuracy_curves",
    "write_report",
]

REPORT_FILENAME = "report.md"
MATRIX_PLOT_FILENAME = "accuracy_matrix.png"
CURVES_PLOT_FILENAME = "accuracy_curves.png"
SPARSITY_PLOT_FILENAME = "sparsity.png"

_NA = "n/a"
_PENDING = "-"
_DPI = 120

METRIC_DEFINITIONS: dict[str, tuple[str, str]] = {
    "acc": ("ACC", "mean final accuracy: ACC = mean_j R[T-1][j]"),
    "bwt": (
        "BWT",
        "backward transfer (Lopez-Paz & Ranzato 2017): BWT = mean_{j<T-1} (R[T-1][j] - R[j][j]); "
        "negative means later tasks hurt earlier ones",
    ),
    "fwt": (
        "FWT",
        "forward transfer (Lopez-Paz & Ranzato 2017): FWT = mean_{j>=1} (R[j-1][j] - b[j]), "
        "b[j] = untrained accuracy on task j",
    ),
    "forgetting": (
        "Forgetting",
        "average forgetting (Chaudhry et al. 2018): F = mean_{j<T-1} (max_{i<T-1} R[i][j] - R[T-1][j]); "
        "higher means more forgetting",
    ),
}
"""Metric key -> (display name, one-line definition); ``R[i][j]`` is the accuracy on task j after task i."""


# --------------------------------------------------------------------------------------------------------- formatting


def _pct(value: float | None, digits: int = 1) -> str:
    """``0.8123`` -> ``"81.2"``; ``None`` -> ``"n/a"``."""
    return _NA if value is None else f"{100.0 * value:.{digits}f}"


def _pts(value: float | None, signed: bool = True) -> str:
    """A difference of fractions in percentage points: ``-0.034`` -> ``"-3.4 pts"``."""
    if value is None:
        return _NA
    return f"{100.0 * value:{'+' if signed else ''}.1f} pts"


def _metric_text(key: str, value: float | None) -> str:
    if key == "acc":
        return _NA if value is None else f"{_pct(value)}%"
    return _pts(value, signed=key != "forgetting")


def _metrics_line(results: dict[str, Any]) -> str:
    metrics = results["metrics"]
    return "  ".join(f"{name} {_metric_text(key, metrics.get(key))}" for key, (name, _) in METRIC_DEFINITIONS.items())


def _num_rows(results: dict[str, Any]) -> int:
    return len(results["accuracy_matrix"])


def _stage_labels(results: dict[str, Any]) -> list[str]:
    """The row labels of the matrices: ``after <task>``; a reference run's ``after joint training`` (its one stage)
    or ``<task> alone`` (each task trained alone)."""
    mode, tasks = results.get("queue_mode", "sequential"), results["tasks"]
    if mode == "joint":
        return ["after joint training"]
    return [f"{task} alone" for task in tasks] if mode == "single_task" else [f"after {task}" for task in tasks]


_MODE_NOTES = {
    "joint": "Reference run (`queue_mode: joint`): one stage on the union of every task's training data, evaluated on "
    "every task: the upper bound of the queue. ACC is the mean of that row; BWT, FWT and forgetting do not apply.",
    "single_task": "Reference run (`queue_mode: single_task`): each task trained alone from the pretrained model (row "
    "*t alone*: that model on every task): each task's own ceiling. ACC is the mean of the diagonal; BWT, FWT and "
    "forgetting do not apply.",
}


def _progress(results: dict[str, Any]) -> str:
    stages = len(_stage_labels(results))
    unit = "stage" if results.get("queue_mode") == "joint" else "tasks"
    return f"{_num_rows(results)} of {stages} {unit} trained"


def _matrix_rows(
    results: dict[str, Any], matrix_key: str, initial_key: str, with_majority: bool
) -> list[tuple[str, list[str]]]:
    """Labelled rows of percentages: untrained, one per task (blank until trained), then majority class."""
    tasks = results["tasks"]
    matrix = results[matrix_key]
    rows = [("untrained", [_pct(v) for v in results[initial_key]])]
    for i, label in enumerate(_stage_labels(results)):
        cells = [_pct(v) for v in matrix[i]] if i < len(matrix) else [_PENDING] * len(tasks)
        rows.append((label, cells))
    if with_majority:
        rows.append(("majority class", [_pct(v) for v in results["majority_accuracy"]]))
    return rows


def format_matrix_table(results: dict[str, Any]) -> str:
    """Plain-text accuracy matrix for the console.

    One column per task; rows ``untrained``, ``after <task>`` (``-`` for tasks not trained yet) and
    ``majority class``; accuracies in percent with one decimal. The last line holds the metrics, e.g.
    ``ACC 81.2%  BWT -3.4 pts  FWT +1.0 pts  Forgetting 4.0 pts`` (``n/a`` where undefined).

    Args:
        results: the results dict of a (possibly unfinished) run.

    Returns:
        The table, lines joined by ``\\n``, without a trailing newline.
    """
    tasks = results["tasks"]
    rows = _matrix_rows(results, "accuracy_matrix", "initial_accuracy", with_majority=True)
    label_width = max(len("accuracy (%)"), *(len(label) for label, _ in rows))
    widths = [max(6, len(task)) for task in tasks]

    def line(label: str, cells: Sequence[str]) -> str:
        body = "  ".join(cell.rjust(width) for cell, width in zip(cells, widths))
        return f"{label.ljust(label_width)}  {body}".rstrip()

    lines = [line("accuracy (%)", tasks)]
    lines.append("-" * len(line("", ["-" * w for w in widths])))
    lines.extend(line(label, cells) for label, cells in rows)
    lines.append(_metrics_line(results))
    return "\n".join(lines)


def _md_cell(value: Any) -> str:
    """Text safe inside a markdown table cell."""
    return str(value).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]], align: Sequence[str] | None = None) -> str:
    """A markdown table; ``align`` holds one ``---`` / ``---:`` per column (first left, the rest right by default)."""
    align = align or ["---"] + ["---:"] * (len(header) - 1)
    lines = ["| " + " | ".join(_md_cell(h) for h in header) + " |", "| " + " | ".join(align) + " |"]
    lines.extend("| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows)
    return "\n".join(lines)


def _md_matrix(results: dict[str, Any], matrix_key: str, initial_key: str, with_majority: bool) -> str:
    rows = _matrix_rows(results, matrix_key, initial_key, with_majority)
    num_rows = _num_rows(results)
    table_rows = []
    for r, (label, cells) in enumerate(rows):
        i = r - 1  # rows[0] is "untrained"
        if 0 <= i < num_rows:
            joint = results.get("queue_mode") == "joint"  # its one row is every task's own
            cells = [f"**{cell}**" if j == i or joint else cell for j, cell in enumerate(cells)]
        table_rows.append([label, *cells])
    return markdown_table(["after ↓ / on →", *results["tasks"]], table_rows)


def _bytes(value: int | None) -> str:
    """``1.29 MiB`` (binary units), or ``n/a``."""
    if value is None:
        return _NA
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if value >= size:
            return f"{value / size:.2f} {unit}"
    return f"{value} B"


def _float(value: float | None, spec: str) -> str:
    return _NA if value is None else format(value, spec)


def render_markdown(results: dict[str, Any]) -> str:
    """Renders ``report.md``: run summary, accuracy and macro-F1 matrices, per-task table, metrics, plots, versions.

    Args:
        results: the results dict of a (possibly unfinished) run.

    Returns:
        The markdown text, ending with a newline. The plots are linked as ``accuracy_matrix.png`` and
        ``accuracy_curves.png`` (relative to the report, see [`write_report`]).
    """
    tasks = results["tasks"]
    num_rows = _num_rows(results)
    optimizer = results["optimizer"]
    majority = results["majority_accuracy"]
    out: list[str] = [f"# Continual fine-tuning report: {results['model']}", ""]

    # Run summary.
    optim_args = optimizer.get("optim_args")
    summary = [
        ["Status", f"{results['status']} ({_progress(results)})"],
        ["Model", f"`{results['model']}`"],
        ["Labels", ", ".join(results["labels"])],
        ["Method", results["method"]],
        ["Optimizer", optimizer["name"] + (f" (`{optim_args}`)" if optim_args else "")],
        ["Learning rate", f"{optimizer['learning_rate']:g}"],
        ["Seed", results["seed"]],
        ["Tasks (training order)", " → ".join(tasks)],
    ]
    mode = results.get("queue_mode", "sequential")
    if mode != "sequential":
        summary.append(["Queue mode", mode])
    out += ["## Run", "", markdown_table(["Setting", "Value"], summary, align=["---", "---"]), ""]
    if mode in _MODE_NOTES:
        out += [f"*{_MODE_NOTES[mode]}*", ""]

    # Metrics.
    out += ["## Metrics", ""]
    out += [
        "`R[i][j]` is the accuracy on task `j` after training on task `i` (0-indexed, `T` tasks); "
        "`b[j]` is the untrained model's accuracy on task `j`. BWT, FWT and forgetting are in percentage points.",
        "",
    ]
    if results["status"] != "complete":
        out += [f"*Run in progress ({_progress(results)}): the metrics are those recorded so far.*", ""]
    metric_rows = [
        [name, _metric_text(key, results["metrics"].get(key)), definition]
        for key, (name, definition) in METRIC_DEFINITIONS.items()
    ]
    out += [markdown_table(["Metric", "Value", "Definition"], metric_rows, align=["---", "---:", "---"]), ""]

    # Matrices.
    out += ["## Accuracy matrix (%)", ""]
    out += [
        "Row *after t*: accuracy on each task (column) after training on task *t*; the diagonal (bold) is the "
        "accuracy on the task just trained. `-`: not trained yet.",
        "",
        _md_matrix(results, "accuracy_matrix", "initial_accuracy", with_majority=True),
        "",
        f"![Accuracy matrix]({MATRIX_PLOT_FILENAME})",
        "",
    ]
    out += ["## Macro-F1 matrix (%)", "", _md_matrix(results, "macro_f1_matrix", "initial_macro_f1", False), ""]
    out += [
        "## Accuracy curves",
        "",
        "Accuracy on each task after each training stage; dotted lines: majority-class accuracy of the task.",
        "",
        f"![Accuracy curves]({CURVES_PLOT_FILENAME})",
        "",
    ]

    # Per-task training.
    per_task_rows = []
    for i, record in enumerate(results["per_task"]):
        diagnostics = record.get("optimizer_diagnostics") or {}
        update = diagnostics.get("update_fraction")
        per_task_rows.append(
            [
                record["name"],
                _float(record.get("train_loss"), ".4f"),
                record["steps"],
                f"{record['seconds']:.1f}",
                record["train_examples"],
                record["eval_examples"],
                f"{record['learning_rate']:g}",
                _NA if update is None else f"{_pct(update, 2)}%",
                _bytes(record.get("optimizer_state_bytes")),
                _bytes(record.get("method_state_bytes")),
                f"{_pct(majority[i])}%" if mode != "joint" else _NA,
            ]
        )
    header = [
        "Task",
        "Train loss",
        "Steps",
        "Seconds",
        "Train examples",
        "Eval examples",
        "Learning rate",
        "Update fraction",
        "Optimizer state",
        "Method state",
        "Majority acc.",
    ]
    out += ["## Per-task training", ""]
    out += [
        "Update fraction: share of the weights the optimizer changed at the last step (CLASSP diagnostics; "
        f"`{_NA}` for other optimizers). Optimizer state and method state: the memory the optimizer (CLASSP's S, "
        "AdamW's moments) and the continual method (EWC's Fisher and anchor, replay's examples, ...) keep after the "
        "task. Majority acc.: accuracy of always predicting the test split's most frequent class.",
        "",
        markdown_table(header, per_task_rows) if per_task_rows else "*No task trained yet.*",
        "",
    ]
    if num_rows < len(_stage_labels(results)):
        out += [f"Not trained yet: {', '.join(tasks[num_rows:])}.", ""]

    out += _sparsity_section(results)
    out += _validation_section(results)
    out += _task_labels_section(results)

    # Versions.
    version_rows = [[name, _NA if version is None else version] for name, version in results["versions"].items()]
    out += ["## Versions", "", markdown_table(["Package", "Version"], version_rows, align=["---", "---"]), ""]
    return "\n".join(out)


def _sparsity_rows(results: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [(record["name"], record["sparsity"]) for record in results["per_task"] if record.get("sparsity")]


def _sparsity_section(results: dict[str, Any]) -> list[str]:
    """Which weights each task updated (runs with ``diagnostics: true``)."""
    rows = _sparsity_rows(results)
    if not rows:
        return []
    table = [
        [
            name,
            f"{_pct(record['mean_update_fraction'], 2)}%",
            f"{_pct(record['ever_updated_fraction'], 2)}%",
            _NA if record.get("overlap_with_earlier") is None else f"{_pct(record['overlap_with_earlier'], 1)}%",
        ]
        for name, record in rows
    ]
    return [
        "## Sparsity of the updates",
        "",
        "Per step: elements updated per step over all trainable elements, averaged over the task's steps. "
        "Ever: elements updated at least once in the task. Overlap: of the elements this task updated, the share "
        "that earlier tasks had already updated (CLASSP's premise is that sparse updates leave weights free for "
        "later tasks: a low overlap shows that happening).",
        "",
        markdown_table(["Task", "Per step", "Ever", "Overlap with earlier tasks"], table),
        "",
        f"![Sparsity]({SPARSITY_PLOT_FILENAME})",
        "",
    ]


def _part_section(results: dict[str, Any], key: str, heading: str, explanation: str) -> list[str]:
    """A matrix part of the results (``validation``, ``task_labels``): untrained row, one row per task, metrics."""
    part = results.get(key)
    if not part or not part.get("accuracy_matrix"):
        return []
    tasks = results["tasks"]
    rows = [["untrained", *[f"{_pct(v)}" for v in part["initial_accuracy"]]]] if part["initial_accuracy"] else []
    labels = _stage_labels(results)
    rows += [[labels[i], *[f"{_pct(v)}" for v in row]] for i, row in enumerate(part["accuracy_matrix"])]
    metrics = ", ".join(
        f"{name} {_metric_text(name_key, part['metrics'].get(name_key))}"
        for name_key, (name, _) in METRIC_DEFINITIONS.items()
    )
    return [heading, "", f"{explanation} {metrics}.", "", markdown_table(["", *tasks], rows), ""]


def _validation_section(results: dict[str, Any]) -> list[str]:
    """The validation accuracy matrix (held out of the training data; the one to tune on)."""
    fraction = (results.get("validation") or {}).get("fraction", 0.0)
    explanation = (
        f"Held out: {_pct(fraction, 0)}% of each task's training examples. Choose hyperparameters on these numbers, "
        "not on the test split."
    )
    return _part_section(results, "validation", "## Validation accuracy matrix (%)", explanation)


def _task_labels_section(results: dict[str, Any]) -> list[str]:
    """The test accuracy matrix with the argmax over each task's own labels (the task known at test time)."""
    explanation = (
        "The same test predictions, with the argmax over the labels of each task's training data only (the "
        "task-incremental protocol: the task is known at test time). It differs from the accuracy matrix when a task "
        "uses fewer labels than the head has."
    )
    return _part_section(results, "task_labels", "## Accuracy with each task's own labels (%)", explanation)


def plot_sparsity(results: dict[str, Any], path: str | os.PathLike) -> Path | None:
    """Bar chart of each task's update sparsity and overlap with earlier tasks (PNG), if recorded.

    Args:
        results: the results dict.
        path: where to write the PNG (written atomically).

    Returns:
        The path of the PNG, or `None` when the run recorded no sparsity diagnostics.
    """
    import numpy as np

    rows = _sparsity_rows(results)
    if not rows:
        return None
    names = [name for name, _ in rows]
    series = [
        ("updated per step", [r["mean_update_fraction"] for _, r in rows]),
        ("updated at least once", [r["ever_updated_fraction"] for _, r in rows]),
        ("overlap with earlier tasks", [r.get("overlap_with_earlier") for _, r in rows]),
    ]
    fig = new_figure(max(6.0, 1.6 * len(names) + 2.5), 4.2)
    ax = fig.add_subplot()
    width = 0.27
    positions = np.arange(len(names))
    for k, ((label, values), color) in enumerate(zip(series, figure_colors(3))):
        heights = [np.nan if v is None else 100.0 * v for v in values]
        bars = ax.bar(positions + (k - 1) * width, heights, width, label=label, color=color)
        ax.bar_label(bars, labels=["" if np.isnan(h) else f"{h:.1f}" for h in heights], fontsize=7, padding=1)
    ax.set_xticks(
        positions, labels=names, rotation=20 if len(names) > 2 else 0, ha="right" if len(names) > 2 else "center"
    )
    ax.set_ylabel("% of trainable elements (overlap: % of the task's updated elements)")
    ax.set_ylim(0, 105)
    ax.set_title("Which weights each task updated")
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    return save_png(fig, path)


# ---------------------------------------------------------------------------------------------------------- plotting


def new_figure(width: float, height: float) -> Any:
    """A figure attached to the Agg canvas (no pyplot, no GUI backend)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=_DPI)
    FigureCanvasAgg(fig)
    return fig


def save_png(fig: Any, path: str | os.PathLike) -> Path:
    """Saves ``fig`` as PNG to ``path`` atomically (through a temporary file beside it)."""
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=_DPI, bbox_inches="tight"))


def figure_colors(n: int) -> list[Any]:
    """``n`` colours for lines or points: matplotlib's tab10 (tab20 above 10; repeated beyond 20)."""
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def _plotted(results: dict[str, Any]) -> tuple[list[str], list[list[float]], list[str], bool]:
    """What the two accuracy figures draw: the tasks, the accuracy matrix's rows so far, each row's stage label,
    and whether the run is a joint one (one row, every task trained at once)."""
    return results["tasks"], results["accuracy_matrix"], _stage_labels(results), results.get("queue_mode") == "joint"


def _set_title(ax: Any, title: str, results: dict[str, Any]) -> None:
    """``title``, with the run's progress while it is unfinished."""
    status = "" if results["status"] == "complete" else f" ({_progress(results)})"
    ax.set_title(f"{title}{status}")


def plot_accuracy_matrix(results: dict[str, Any], path: str | os.PathLike) -> Path:
    """Draws the accuracy matrix as an annotated heatmap (PNG).

    Rows are "after task i", columns "task j", cells the accuracy in percent (the colour scale runs from the
    lowest multiple of 10 at or below every value and majority-class accuracy, up to 100); rows of tasks
    not trained yet are blank; the diagonal (accuracy on the task just trained) is outlined.

    Args:
        results: the results dict of a (possibly unfinished) run: its ``accuracy_matrix``, ``majority_accuracy``
            (the colour scale's floor), stages and ``status``.
        path: where to write the heatmap (a PNG, written atomically).

    Returns:
        The path of the PNG.
    """
    import numpy as np
    from matplotlib import colormaps
    from matplotlib.patches import Rectangle

    tasks, matrix, labels, joint = _plotted(results)
    num_tasks = len(tasks)
    data = np.full((len(labels), num_tasks), np.nan)
    for i, row in enumerate(matrix):
        data[i, :] = np.asarray(row, dtype=float) * 100.0

    size = 2.0 + 1.1 * num_tasks
    fig = new_figure(size + 1.2, 2.0 + 1.1 * len(labels) if joint else size)
    ax = fig.add_subplot()
    cmap = colormaps["viridis"].with_extremes(bad="white")
    # Colour scale from the lowest multiple of 10 at or below every value and majority-class level, up to 100.
    floor = np.nanmin(np.concatenate([data.ravel(), 100.0 * np.asarray(results["majority_accuracy"])]))
    vmin = min(90.0, 10.0 * np.floor(floor / 10.0))
    image = ax.imshow(np.ma.masked_invalid(data), cmap=cmap, vmin=vmin, vmax=100.0, aspect="equal")
    for i in range(len(labels)):
        for j in range(num_tasks):
            if np.isfinite(data[i, j]):
                color = "black" if image.norm(data[i, j]) >= 0.45 else "white"
                weight = "bold" if i == j or joint else "normal"
                ax.text(j, i, f"{data[i, j]:.1f}", ha="center", va="center", color=color, fontweight=weight)
        if i < len(matrix) and not joint:
            ax.add_patch(Rectangle((i - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=2))
    tilt = {"rotation": 30, "ha": "right"} if num_tasks > 1 else {}
    ax.set_xticks(range(num_tasks), labels=tasks, **tilt)
    ax.set_yticks(range(len(labels)), labels=labels)
    ax.set_xlabel("evaluated on task j")
    ax.set_ylabel("trained up to task i" if results.get("queue_mode", "sequential") == "sequential" else "trained")
    ax.set_xticks(np.arange(-0.5, num_tasks, 1), minor=True)
    ax.set_yticks(np.arange(-0.5, len(labels), 1), minor=True)
    ax.grid(which="minor", color="lightgrey", linewidth=0.8)
    ax.tick_params(which="minor", length=0)
    _set_title(ax, "Accuracy (%) R[i][j]", results)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="accuracy (%)")
    return save_png(fig, path)


def plot_accuracy_curves(results: dict[str, Any], path: str | os.PathLike) -> Path:
    """Draws the accuracy on each task across the training stages (PNG).

    One line per task: its accuracy (y, percent) at each stage (x: ``untrained``, then after each task in training
    order; a run in progress stops at the last trained task). The stage at which the task itself was trained is
    marked with a star; the task's majority-class accuracy is a dotted line in the same colour.

    Args:
        results: the results dict of a (possibly unfinished) run: its ``initial_accuracy`` (the first point),
            ``accuracy_matrix``, ``majority_accuracy`` (the dotted lines), stages and ``status``.
        path: where to write the curves (a PNG, written atomically).

    Returns:
        The path of the PNG.
    """
    tasks, matrix, labels, joint = _plotted(results)
    num_tasks, num_rows = len(tasks), len(matrix)
    stages = ["untrained", *labels]

    fig = new_figure(max(6.0, 1.3 * (num_tasks + 1) + 2.5), 4.5)
    ax = fig.add_subplot()
    values: list[float] = []
    for j, (task, color) in enumerate(zip(tasks, figure_colors(num_tasks))):
        ys = [100.0 * results["initial_accuracy"][j]] + [100.0 * matrix[i][j] for i in range(num_rows)]
        values += ys
        ax.plot(range(len(ys)), ys, marker="o", color=color, label=task, linewidth=2)
        if joint and num_rows:
            ax.plot([1], [ys[1]], marker="*", markersize=15, color=color, linestyle="none")
        elif j < num_rows:
            ax.plot([j + 1], [ys[j + 1]], marker="*", markersize=15, color=color, linestyle="none")
        majority = 100.0 * results["majority_accuracy"][j]
        values.append(majority)
        ax.axhline(majority, color=color, linestyle=":", linewidth=1.5)
    ax.plot([], [], color="grey", linestyle=":", label="majority class")
    ax.plot([], [], color="grey", marker="*", markersize=12, linestyle="none", label="task just trained")

    low, high = min(values), max(values)
    pad = max(3.0, 0.08 * (high - low))
    ax.set_ylim(max(0.0, low - pad), min(100.0, high + pad))
    ax.set_xlim(-0.3, len(stages) - 1 + 0.3)
    tilt = {"rotation": 20, "ha": "right"} if len(stages) > 3 else {}
    ax.set_xticks(range(len(stages)), labels=stages, **tilt)
    ax.set_xlabel("training stage")
    ax.set_ylabel("accuracy (%)")
    ax.grid(axis="y", alpha=0.3)
    _set_title(ax, "Accuracy on each task during training", results)
    ax.legend(title="task", loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    return save_png(fig, path)


# ------------------------------------------------------------------------------------------------------------ report


def write_report(results: dict[str, Any], output_dir: str | os.PathLike) -> list[Path]:
    """Validates ``results`` and writes ``report.md``, ``accuracy_matrix.png`` and ``accuracy_curves.png``.

    Every file is written atomically (temporary file, then rename), the plots before the report that links them.

    Args:
        results: the results dict of a (possibly unfinished) run.
        output_dir: the folder to write into (created if missing).

    Returns:
        The paths of ``report.md``, ``accuracy_matrix.png`` and ``accuracy_curves.png``, in that order.

    Raises:
        ValueError: if ``results`` fails [`validate_results`].
    """
    validate_results(results)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    matrix_png = plot_accuracy_matrix(results, output_dir / MATRIX_PLOT_FILENAME)
    curves_png = plot_accuracy_curves(results, output_dir / CURVES_PLOT_FILENAME)
    sparsity_png = plot_sparsity(results, output_dir / SPARSITY_PLOT_FILENAME)
    report = write_text_atomic(output_dir / REPORT_FILENAME, render_markdown(results))
    return [report, matrix_png, curves_png] + ([sparsity_png] if sparsity_png else [])
