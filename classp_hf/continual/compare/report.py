"""What ``classp-hf compare`` writes: ``comparison.json`` (checked against its schema), ``comparison.md``, a console
table and four figures (accuracy matrices side by side, the first task across the queue, ACC against extra memory,
stability against plasticity).

Every function takes the comparison dict (:meth:`classp_hf.continual.compare.results.Comparison.to_dict`, see
``classp_hf/schemas/comparison.schema.json``). Figures are drawn on a bare Agg figure (no pyplot), as in
:mod:`classp_hf.continual.report`.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import jsonschema
from jsonschema.exceptions import best_match

from classp_hf.continual.compare.figures import FIGURES
from classp_hf.continual.compare.results import LEARNED_MARGIN
from classp_hf.continual.io import write_json_atomic, write_text_atomic
from classp_hf.continual.report import figure_colors, markdown_table, new_figure, save_png

__all__ = [
    "COMPARISON_SCHEMA_PATH",
    "FIGURES",
    "load_comparison_schema",
    "validate_comparison",
    "format_difference",
    "format_mean_std",
    "format_table",
    "render_markdown",
    "plot_accuracy_matrices",
    "plot_first_task",
    "plot_acc_vs_memory",
    "plot_stability_plasticity",
    "write_comparison",
]

COMPARISON_SCHEMA_PATH = Path(__file__).resolve().parents[2] / "schemas" / "comparison.schema.json"
_NA = "n/a"
_MIB = 2.0**20


# -- schema ---------------------------------------------------------------------------------------


def load_comparison_schema() -> dict[str, Any]:
    """The JSON Schema of ``comparison.json`` (a new dict)."""
    return json.loads(COMPARISON_SCHEMA_PATH.read_text(encoding="utf-8"))


@lru_cache(maxsize=1)
def _validator() -> jsonschema.Draft202012Validator:
    schema = load_comparison_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def _non_finite(value: Any, path: str = "$") -> Iterator[str]:
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _non_finite(item, f"{path}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _non_finite(item, f"{path}[{index}]")
    elif isinstance(value, float) and not math.isfinite(value):
        yield path


def validate_comparison(data: Any) -> None:
    """Checks a comparison dict against the schema (NaN and infinities refused).

    Raises:
        ValueError: one line naming the JSON path of the first problem.
    """
    for path in _non_finite(data):
        raise ValueError(f"invalid comparison at {path}: not a finite number (use null)")
    error = best_match(_validator().iter_errors(data))
    if error is not None:
        path = "$" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path)
        raise ValueError(f"invalid comparison at {path}: {' '.join(error.message.split())[:200]}")


# -- formatting -----------------------------------------------------------------------------------


def format_mean_std(
    stat: Mapping[str, Any] | None,
    scale: float = 100.0,
    digits: int = 1,
    signed: bool = False,
    runs: int | None = None,
) -> str:
    """One summary entry as ``mean ± std``, the way comparison.md prints it.

    Args:
        stat (`Mapping`, *optional*): ``{"mean": ..., "std": ..., "n": ...}`` of comparison.json's summaries
            (``std`` is null for one seed).
        scale (`float`): multiplies mean and std (100 for accuracies stored as fractions).
        digits (`int`): decimals.
        signed (`bool`): print the mean's sign (``+0.6``).
        runs (`int`, *optional*): the runs a complete setting has; ``(n=2)`` is added when fewer have the entry.

    Returns:
        ``61.2 ± 2.1``, ``61.2`` (one seed), ``61.2 ± 2.1 (n=2)``, or ``n/a`` where no run has it.
    """
    if not stat or stat.get("mean") is None:
        return _NA
    sign = "+" if signed else ""
    text = f"{scale * stat['mean']:{sign}.{digits}f}"
    if stat.get("std") is not None:
        text += f" ± {scale * stat['std']:.{digits}f}"
    n = stat.get("n")
    return text + f" (n={n})" if runs is not None and isinstance(n, int) and n < runs else text


def _pct(value: float | None) -> str:
    return _NA if value is None else f"{100.0 * value:.1f}"


def _pts(value: float | None) -> str:
    return _NA if value is None else f"{_points(value):+.1f}"


def _points(value: float) -> float:
    """A fraction in points, rounded to one decimal, without a negative zero (``-1e-17`` reads ``+0.0``)."""
    return round(100.0 * value, 1) + 0.0


def _count(stat: dict[str, Any]) -> str:
    return _NA if stat.get("mean") is None else f"{stat['mean']:,.0f}"


def _runs_text(summary: dict[str, Any]) -> str:
    text = f"{summary['complete']}"
    if summary["failed"]:
        text += f" ({summary['failed']} failed)"
    if summary["pending"]:
        text += f" ({summary['pending']} pending)"
    return text


def _chosen_label(setting: dict[str, Any]) -> str:
    for point in setting["points"]:
        if point["name"] == setting["chosen"]:
            return "-" if point["name"] == "default" else point["label"]
    return (
        "none (all failed)"
        if setting["points"] and all(p["run"]["status"] == "failed" for p in setting["points"])
        else "pending"
    )


def _is_reference(setting: dict[str, Any]) -> bool:
    return setting.get("mode", "sequential") != "sequential"


def _ordered(data: dict[str, Any]) -> list[dict[str, Any]]:
    """The competing settings in grid order, then the reference rows (``joint``, ``single_task``)."""
    settings = data["settings"]
    return [s for s in settings if not _is_reference(s)] + [s for s in settings if _is_reference(s)]


def _row_name(setting: dict[str, Any]) -> str:
    return f"{setting['name']} (reference: {setting['mode']})" if _is_reference(setting) else setting["name"]


def format_difference(setting: Mapping[str, Any]) -> str:
    """A setting's paired ACC difference to the comparison's reference, the way comparison.md prints it.

    Args:
        setting (`Mapping`): one entry of comparison.json's ``settings``.

    Returns:
        ``+1.2 [-0.4, +2.9]`` (points, the 95% interval in brackets), ``reference`` for the reference setting, or
        ``n/a`` where no seed paired up.
    """
    versus = setting.get("versus_reference")
    if versus is None:
        return "reference"
    if "mean" not in versus:
        return _NA
    return f"{_points(versus['mean']):+.1f} [{_points(versus['low']):+.1f}, {_points(versus['high']):+.1f}]"


def _notes(setting: dict[str, Any], data: dict[str, Any]) -> str:
    """``within noise``, ``did not learn <task>`` marks."""
    notes = []
    versus = setting.get("versus_reference") or {}
    if versus.get("within_noise"):
        notes.append(f"within noise of {(data.get('noise') or {}).get('reference', 'the reference')}")
    if setting.get("did_not_learn"):
        notes.append(f"did not learn {', '.join(setting['did_not_learn'])}")
    return "; ".join(notes)


def _text_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows)]
    line = lambda cells: "  ".join(  # noqa: E731
        str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(cells, widths))
    )
    return "\n".join([line(header), "-" * (sum(widths) + 2 * (len(widths) - 1)), *(line(row) for row in rows)])


def format_table(data: dict[str, Any]) -> str:
    """The console table: per setting the chosen point, ACC, BWT, forgetting, the first task after the last one,
    extra memory, wall time per run and the runs (mean ± std over the complete seeds)."""
    reference = (data.get("noise") or {}).get("reference", "?")
    header = ["setting", "chosen", "ACC %", f"vs {reference} pts [95% CI]", "BWT pts", "forgetting pts"]
    header += ["first task %", "extra MiB", "wall s", "runs", "notes"]
    rows = []
    for setting in _ordered(data):
        s = setting["summary"]
        rows.append(
            [
                _row_name(setting),
                _chosen_label(setting),
                format_mean_std(s["acc"]),
                format_difference(setting),
                format_mean_std(s["bwt"], signed=True),
                format_mean_std(s["forgetting"]),
                format_mean_std(s["first_task_final"]),
                format_mean_std(s["extra_memory_bytes"], 1 / _MIB, 2),
                format_mean_std(s["wall_seconds"], 1.0, 0),
                _runs_text(s),
                _notes(setting, data),
            ]
        )
    seeds = ", ".join(str(seed) for seed in data["seeds"])
    failed = sum(s["summary"]["failed"] for s in data["settings"])
    lines = [
        _text_table(header, rows),
        f"mean ± std over seeds {seeds}; grids chosen on validation ACC (seed {data['seeds'][0]}); "
        f"vs {reference}: paired bootstrap over test examples and seeds",
    ]
    if failed:
        lines.append(f"{failed} run(s) failed: see comparison.md (Failed runs)")
    return "\n".join(lines)


# -- markdown -------------------------------------------------------------------------------------


def _setup_lines(data: dict[str, Any]) -> list[str]:
    queue, env = data["queue"], data["environment"]
    tasks = " → ".join(
        f"{t['name']} ({t['train_examples']} examples, {t['steps']} steps)" if t.get("steps") is not None else t["name"]
        for t in queue["tasks"]
    )
    hardware = f"{env.get('platform', '?')}, {env['cpu_cores']} CPU cores"
    if env.get("accelerator"):
        hardware += f", {env['accelerator']}"
    schedules = env.get("schedules") or [{**env, "attempts": None}]
    at_a_time = "; ".join(
        f"{s['jobs']} run(s) at a time ({s['launcher']}"
        + (f", {s['threads_per_job']} threads each" if s.get("threads_per_job") else "")
        + (f"; {s['attempts']} attempt(s)" if len(schedules) > 1 else "")
        + ")"
        for s in schedules
    )
    versions = ", ".join(f"{name} {version}" for name, version in env["versions"].items())
    return [
        f"- Base config: `{data['base_config']}`; grid: `{data['source']}`.",
        f"- Queue: {tasks}; max_length {queue['max_length']}, batch {queue['batch_size']}, "
        f"{queue['num_train_epochs']:g} epoch(s), validation fraction {queue['validation_fraction']:g} "
        "(held out of each task's training examples).",
        f"- Seeds: {', '.join(str(s) for s in data['seeds'])}. A setting with a grid ran every point on seed "
        f"{data['seeds'][0]} and the point with the best validation ACC on the others (never the test split).",
        f"- Hardware: {hardware}; {at_a_time}; {versions}.",
        f"- Time: {data['wall_seconds'] / 60:.1f} min of run wall time, {data['cpu_seconds'] / 60:.1f} min of CPU time "
        "(summed over every run, grid points included).",
    ]


def _accuracy_section(data: dict[str, Any]) -> list[str]:
    header = ["setting", "chosen", "runs", "ACC", "ACC, task labels", "BWT (pts)", "forgetting (pts)"]
    header += ["first task after last"]
    header += [f"{task}" for task in data["tasks"]]
    header += ["notes"]
    rows = []
    for setting in _ordered(data):
        s = setting["summary"]
        final = s["final_accuracy"]
        per_task = [format_mean_std({"mean": m, "std": sd}) for m, sd in zip(final["mean"], final["std"])] or [
            _NA
        ] * len(data["tasks"])
        rows.append(
            [
                _row_name(setting),
                _chosen_label(setting),
                _runs_text(s),
                format_mean_std(s["acc"]),
                format_mean_std(s.get("acc_task_labels"), runs=s["complete"]),  # absent from runs of older versions
                format_mean_std(s["bwt"], signed=True),
                format_mean_std(s["forgetting"]),
                format_mean_std(s["first_task_final"]),
                *per_task,
                _notes(setting, data),
            ]
        )
    return [
        "## Accuracy (%, test split)",
        "",
        "Mean ± sample standard deviation over the complete seeds; the task columns are each task's accuracy after "
        "the last task. BWT and forgetting in percentage points (see any run's report.md for the definitions). "
        "*ACC, task labels*: the same predictions with the argmax over each task's own labels (the task known at test "
        "time); it differs from ACC when a task uses fewer labels than the head has. Reference rows: `joint` "
        "(one run on the union of every task's training data: the upper bound) and `single_task` (each task trained "
        "alone from the pretrained model: its final accuracy is that model's, the task's own ceiling); they do not "
        f"compete. *did not learn T*: the mean accuracy on T right after training on it stayed at or below T's "
        f"majority-class accuracy + {100 * LEARNED_MARGIN:.0f} points, so what it keeps of T says nothing about "
        "stability.",
        "",
        markdown_table(header, rows, align=["---", "---", "---:"] + ["---:"] * (len(header) - 4) + ["---"]),
        "",
    ]


def _references_section(data: dict[str, Any]) -> list[str]:
    """Per setting: the gap to ``joint``, each task's share of its ``single_task`` accuracy, and the paired
    difference to the reference setting with its interval."""
    noise = data.get("noise") or {}
    reference = noise.get("reference", "?")
    names = data.get("reference_settings") or {}
    header = ["setting", "ACC", "gap to joint (pts)"]
    header += [f"{task}: share of single-task" for task in data["tasks"]]
    header += [f"ACC − {reference} (pts) [{100 * noise.get('confidence', 0.95):.0f}% CI]", "seeds", "notes"]
    rows = []
    for setting in _ordered(data):
        refs = setting.get("references") or {}
        gap = refs.get("gap_to_joint")
        share = refs.get("share_of_single_task") or [None] * len(data["tasks"])
        versus = setting.get("versus_reference") or {}
        rows.append(
            [
                _row_name(setting),
                format_mean_std(setting["summary"]["acc"]),
                _pts(gap),
                *[_pct(v) + ("%" if v is not None else "") for v in share],
                format_difference(setting),
                ", ".join(str(seed) for seed in versus.get("seeds", [])) or versus.get("note", "-"),
                _notes(setting, data),
            ]
        )
    joint = names.get("joint") or "none in this comparison"
    single = names.get("single_task") or "none in this comparison"
    return [
        "## References and noise",
        "",
        f"Gap to joint: ACC minus the joint reference's ACC ({joint}), in points. Share of single-task: each task's "
        f"mean final accuracy over its mean accuracy when trained alone ({single}). ACC − {reference}: the paired "
        f"difference to the reference setting `{reference}` on the same seeds and the same test examples, and its "
        f"{100 * noise.get('confidence', 0.95):.0f}% interval from a paired bootstrap over examples and seeds: "
        f"{noise.get('method', '')}; {noise.get('resamples', '?')} resamples, seed {noise.get('seed', '?')}. "
        "*within noise*: the interval holds 0. The interval reflects the test sample and the seeds run; it does not "
        "cover seeds not run.",
        "",
        markdown_table(header, rows, align=["---"] + ["---:"] * (len(header) - 3) + ["---", "---"]),
        "",
    ]


def _cost_section(data: dict[str, Any]) -> list[str]:
    header = [
        "setting",
        "trainable parameters",
        "total parameters",
        "extra memory (MiB)",
        "bytes / trainable parameter",
        "optimizer state (MiB)",
        "method state (MiB)",
        "wall / run (s)",
        "CPU / run (s)",
        "training %",
    ]
    rows = []
    for setting in _ordered(data):
        s = setting["summary"]
        rows.append(
            [
                _row_name(setting),
                _count(s["trainable_parameters"]),
                _count(s["total_parameters"]),
                format_mean_std(s["extra_memory_bytes"], 1 / _MIB, 2),
                format_mean_std(s["bytes_per_trainable_parameter"], 1.0, 2),
                format_mean_std(s["optimizer_state_bytes"], 1 / _MIB, 2),
                format_mean_std(s["method_state_bytes"], 1 / _MIB, 2),
                format_mean_std(s["wall_seconds"], 1.0, 0),
                format_mean_std(s["cpu_seconds"], 1.0, 0),
                format_mean_std(s.get("training_share"), 100.0, 0),
            ]
        )
    return [
        "## Cost",
        "",
        "Trainable parameters: on the last task; total: the model after the last task (per-task adapters add "
        "theirs). Extra memory: what the optimizer and the continual method keep after the last task (optimizer "
        "state + method state), beyond the model. Wall and CPU time per run (user + system, the run's process); "
        "training %: the share of a run's wall time spent in `Trainer.train` (the rest: start-up, tokenization, "
        "evaluation, checkpoints, report; `python benchmarks/run_breakdown.py CONFIG` prints one run's breakdown).",
        "",
        markdown_table(header, rows),
        "",
    ]


def _updates_section(data: dict[str, Any]) -> list[str]:
    """CLASSP's update diagnostics per setting (runs with ``diagnostics: true``); nothing when none has them."""
    keys = ("update_fraction", "task_update_fraction", "overlap_with_earlier")
    rows = [
        [
            setting["name"],
            *(format_mean_std(setting["summary"].get(key), runs=setting["summary"]["complete"]) for key in keys),
        ]
        for setting in data["settings"]
        if (setting["summary"].get("update_fraction") or {}).get("mean") is not None
    ]
    if not rows:
        return []
    header = ["setting", "updated per step (%)", "updated in a task (%)", "overlap with earlier tasks (%)"]
    return [
        "## Which weights moved (CLASSP's update diagnostics)",
        "",
        "Share of all trainable elements updated per step (averaged over the steps and the tasks), share a task "
        "updated at least once (mean over tasks), and of those the share that earlier tasks had already updated "
        "(mean over tasks 2 to T). A threshold aims at fewer, less overlapping updates; see each run's report.md "
        "for every task.",
        "",
        markdown_table(header, rows),
        "",
    ]


def _seeds_section(data: dict[str, Any]) -> list[str]:
    header = ["setting", "seed", "status", "ACC", "BWT (pts)", "forgetting (pts)", "first task after last"]
    header += ["validation ACC", "wall (s)"]
    rows = []
    for setting in data["settings"]:
        for run in setting["runs"]:
            m = run["metrics"]
            rows.append(
                [
                    setting["name"],
                    run["seed"],
                    run["status"],
                    _pct(m.get("acc")),
                    _pts(m.get("bwt")),
                    _pct(m.get("forgetting")),
                    _pct(m.get("first_task_final")),
                    _pct(m.get("validation_acc")),
                    _NA if run["wall_seconds"] is None else f"{run['wall_seconds']:.0f}",
                ]
            )
    return ["## Each seed (chosen point)", "", markdown_table(header, rows, align=["---"] * 3 + ["---:"] * 6), ""]


def _grid_section(data: dict[str, Any]) -> list[str]:
    rows = []
    for setting in data["settings"]:
        if len(setting["points"]) < 2:
            continue
        for point in setting["points"]:
            m = point["run"]["metrics"]
            status = point["run"]["status"]
            rows.append(
                [
                    setting["name"],
                    point["label"],
                    status,
                    _pct(m.get("validation_acc")),
                    _pct(m.get("acc")),
                    _pct(m.get("newest_task_final")),
                    _pct(m.get("first_task_final")),
                    "**chosen**" if point["name"] == setting["chosen"] else "",
                ]
            )
    if not rows:
        return []
    header = ["setting", "grid point", "status", "validation ACC", "test ACC", "newest task", "first task", ""]
    return [
        f"## Grids (seed {data['seeds'][0]})",
        "",
        "Chosen on validation ACC alone; the test columns are shown for information and played no part in the choice.",
        "",
        markdown_table(header, rows, align=["---"] * 3 + ["---:"] * 4 + ["---"]),
        "",
    ]


def _failures_section(data: dict[str, Any]) -> list[str]:
    lines = []
    for setting in data["settings"]:
        seen = set()
        for run in [point["run"] for point in setting["points"]] + setting["runs"]:
            key = (run["point"], run["seed"])
            if run["status"] == "failed" and key not in seen:
                seen.add(key)
                log = run["run_dir"].replace("runs/", "logs/", 1) + ".log"
                lines.append(f"- {setting['name']} `{run['point']}` seed {run['seed']}: {run['error']} (`{log}`)")
    if not lines:
        return []
    return ["## Failed runs", "", "Not averaged into any number above.", "", *lines, ""]


def render_markdown(data: dict[str, Any]) -> str:
    """Renders ``comparison.md``: set-up, accuracy and cost tables, each seed, the grids, failures and figures."""
    title = data["description"] or data["source"]
    out = [f"# Comparison: {title}", "", *_setup_lines(data), ""]
    out += _accuracy_section(data) + _references_section(data) + _cost_section(data) + _updates_section(data)
    out += _seeds_section(data)
    out += _grid_section(data)
    out += _failures_section(data)
    out += [
        "## Figures",
        "",
        f"![Accuracy matrices](figures/{FIGURES['matrices']})",
        "",
        f"![First task across the queue](figures/{FIGURES['first_task']})",
        "",
        f"![ACC against extra memory](figures/{FIGURES['memory']})",
        "",
        "Stability against plasticity: the first task's accuracy after the last task (x) against the accuracy on "
        "the last task (y); one point per grid point on the first seed, filled markers for the chosen points "
        '(mean ± std over seeds). The paper\'s "controlled plasticity" protocol (train until a target accuracy) '
        "is not reproduced; this plot takes its place.",
        "",
        f"![Stability and plasticity](figures/{FIGURES['stability']})",
        "",
    ]
    return "\n".join(out)


# -- figures --------------------------------------------------------------------------------------


def _with_results(data: dict[str, Any], references: bool = True) -> list[dict[str, Any]]:
    """The settings with a complete run (without the reference rows when ``references`` is false)."""
    return [s for s in data["settings"] if s["summary"]["complete"] and (references or not _is_reference(s))]


def plot_accuracy_matrices(data: dict[str, Any], path: str | os.PathLike) -> Path | None:
    """Each setting's mean accuracy matrix (over its complete seeds), side by side (PNG); `None` if none. The
    reference rows are left out (a joint run has one row)."""
    import numpy as np

    settings = _with_results(data, references=False)
    if not settings:
        return None
    tasks = data["tasks"]
    cols = min(4, len(settings))
    rows = math.ceil(len(settings) / cols)
    cell = 0.55 * len(tasks) + 1.6
    fig = new_figure(cols * cell + 1.0, rows * (cell + 0.6) + 0.6)
    fig.set_layout_engine("constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    image = None
    short = [task if len(task) <= 14 else task[:13] + "…" for task in tasks]
    for index, (ax, setting) in enumerate(zip(axes.flat, settings)):
        matrix = np.asarray(setting["summary"]["accuracy_matrix"], dtype=float) * 100.0
        image = ax.imshow(matrix, cmap="viridis", vmin=0.0, vmax=100.0)
        for i, j in np.ndindex(matrix.shape):
            color = "black" if matrix[i, j] >= 45 else "white"
            ax.text(j, i, f"{matrix[i, j]:.0f}", ha="center", va="center", color=color, fontsize=7)
        ax.set_title(f"{setting['name']} (n={setting['summary']['complete']})", fontsize=9)
        ax.set_xticks(range(len(tasks)), labels=short, rotation=45, ha="right", fontsize=7)
        first_column = index % cols == 0
        ax.set_yticks(range(len(tasks)), labels=[f"after {t}" for t in short] if first_column else [], fontsize=7)
    for ax in list(axes.flat)[len(settings) :]:
        ax.set_visible(False)
    fig.colorbar(image, ax=axes, shrink=0.8, label="accuracy (%)")
    fig.suptitle("Accuracy after each task (row) on each task (column), mean over seeds")
    return save_png(fig, path)


def plot_first_task(data: dict[str, Any], path: str | os.PathLike) -> Path | None:
    """The first task's accuracy after each task, one line per setting (mean, band ± std) (PNG); no references."""
    import numpy as np

    settings = _with_results(data, references=False)
    if not settings:
        return None
    tasks = data["tasks"]
    fig = new_figure(max(6.0, 1.3 * len(tasks) + 3.5), 4.5)
    ax = fig.add_subplot()
    x = np.arange(len(tasks))
    for setting, color in zip(settings, figure_colors(len(settings))):
        curve = setting["summary"]["first_task_curve"]
        mean = np.asarray(curve["mean"], dtype=float) * 100.0
        std = np.asarray([0.0 if s is None else s for s in curve["std"]], dtype=float) * 100.0
        ax.plot(x, mean, marker="o", color=color, label=setting["name"], linewidth=2)
        ax.fill_between(x, mean - std, mean + std, color=color, alpha=0.15)
    ax.set_xticks(x, labels=[f"after {t}" for t in tasks], rotation=20 if len(tasks) > 2 else 0, ha="right")
    ax.set_ylabel(f"accuracy on {tasks[0]} (%)")
    ax.set_title("The first task across the queue (mean ± std over seeds)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False, fontsize=8)
    return save_png(fig, path)


def plot_acc_vs_memory(data: dict[str, Any], path: str | os.PathLike) -> Path | None:
    """ACC (mean ± std) against extra memory (optimizer + method state, MiB; symmetric log scale) (PNG)."""
    settings = [s for s in _with_results(data) if s["summary"]["extra_memory_bytes"]["mean"] is not None]
    if not settings:
        return None
    fig = new_figure(7.5, 4.8)
    ax = fig.add_subplot()
    for setting, color in zip(settings, figure_colors(len(settings))):
        s = setting["summary"]
        x = s["extra_memory_bytes"]["mean"] / _MIB
        y = 100.0 * s["acc"]["mean"]
        err = None if s["acc"]["std"] is None else 100.0 * s["acc"]["std"]
        ax.errorbar(
            [x], [y], yerr=None if err is None else [err], fmt="o", color=color, capsize=3, label=setting["name"]
        )
        ax.annotate(setting["name"], (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    from matplotlib.ticker import FuncFormatter, SymmetricalLogLocator

    ax.set_xscale("symlog", linthresh=1.0)
    ax.xaxis.set_major_locator(SymmetricalLogLocator(linthresh=1.0, base=10, subs=[1, 2, 5]))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    ax.set_xlabel("extra memory after the last task: optimizer + method state (MiB)")
    ax.set_ylabel("ACC (%)")
    ax.set_title("Accuracy against memory")
    ax.grid(alpha=0.3)
    return save_png(fig, path)


def plot_stability_plasticity(data: dict[str, Any], path: str | os.PathLike) -> Path | None:
    """Accuracy on the newest task (y) against the first task's after the last (x) (PNG).

    Hollow markers: every grid point's first-seed run; filled: the chosen point's mean ± std over seeds.
    """
    settings = data["settings"]
    if not any(p["run"]["status"] == "complete" for s in settings for p in s["points"]):
        return None
    fig = new_figure(7.5, 5.2)
    ax = fig.add_subplot()
    for setting, color in zip(settings, figure_colors(len(settings))):
        for point in setting["points"]:
            m = point["run"]["metrics"]
            if m:
                ax.plot(100 * m["first_task_final"], 100 * m["newest_task_final"], "o", mfc="none", color=color, ms=7)
        s = setting["summary"]
        if s["complete"]:
            x, y = s["first_task_final"], s["newest_task_final"]
            ax.errorbar(
                [100 * x["mean"]],
                [100 * y["mean"]],
                xerr=None if x["std"] is None else [100 * x["std"]],
                yerr=None if y["std"] is None else [100 * y["std"]],
                fmt="o",
                color=color,
                ms=8,
                capsize=3,
                label=setting["name"],
            )
    tasks = data["tasks"]
    ax.set_xlabel(f"stability: {tasks[0]} after the last task (%)")
    ax.set_ylabel(f"plasticity: {tasks[-1]} after training on it (%)")
    ax.set_title("Stability against plasticity (hollow: grid points, first seed)")
    ax.grid(alpha=0.3)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False, fontsize=8)
    return save_png(fig, path)


_PLOTS: dict[str, Callable[[dict[str, Any], Path], Path | None]] = {
    "matrices": plot_accuracy_matrices,
    "first_task": plot_first_task,
    "memory": plot_acc_vs_memory,
    "stability": plot_stability_plasticity,
}


def write_comparison(data: dict[str, Any], output_dir: str | os.PathLike) -> list[Path]:
    """Validates ``data`` and writes ``comparison.json``, the figures and ``comparison.md``, each atomically.

    Returns:
        The paths written (figures without data to draw are left out).

    Raises:
        ValueError: ``data`` fails the schema (one line naming the path).
    """
    validate_comparison(data)
    output_dir = Path(output_dir)
    written = [write_json_atomic(output_dir / "comparison.json", data)]
    for key, plot in _PLOTS.items():
        path = plot(data, output_dir / "figures" / FIGURES[key])
        if path is not None:
            written.append(path)
    written.append(write_text_atomic(output_dir / "comparison.md", render_markdown(data)))
    return written
