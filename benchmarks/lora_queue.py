"""LoRA vs full fine-tuning on the 4-task sentiment queue (MiniLM), with CLASSP and AdamW.

Builds five run configs per seed from ``recipes/configs/sentiment_queue_lora.yaml`` and
``recipes/configs/sentiment_queue.yaml``, sub-sampled to fit a CPU budget, runs them one after
another with ``classp-hf run --quiet`` and writes a summary JSON and a markdown table (mean over
the seeds, and each seed).

Settings (same queue, seed, samples, max_length, batch size and epochs; only the lines below differ):

- ``lora_classp_shared``: LoRA (r 8) + CLASSP, one shared adapter;
- ``lora_classp_per_task``: LoRA + CLASSP, one adapter per task initialised from the previous one;
- ``lora_adamw_shared``: LoRA + AdamW, one shared adapter;
- ``lora_adamw_per_task``: LoRA + AdamW, one adapter per task (init previous);
- ``full_classp``: full fine-tuning + CLASSP (``sentiment_queue.yaml``'s model and queue).

Every CLASSP run uses the optimizer's defaults (threshold 0, power 1, eps 1e-4) and AdamW torch's
defaults, so only the parametrisation and the learning rate differ. The learning rates are the
best by validation accuracy in ``benchmarks/lora_lr_sweep.py`` (docs/results_lora.md); override one
with ``--lr SETTING=LR``.

The run is resumable: a run whose ``results.json`` says ``complete`` and whose ``config.yaml``
matches the config generated now is skipped; anything else is (re)run with ``--overwrite``. After
the first run that actually runs, the total wall time of the set is extrapolated and compared
with ``--budget-minutes``; ``--stop-over-budget`` stops there (exit 3) instead of carrying on, with
the ``--train-samples`` that would fit.

For per-task adapters the summary also gives the final row of ``accuracy_matrix_own_adapter``
(each task evaluated with its own adapter, i.e. task identity known at test time) and the ACC,
BWT and forgetting of that matrix.

Usage::

    HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 CLASSP_HF_DATA=/work/shared/data/sentiment \\
        python benchmarks/lora_queue.py --output-dir runs/lora_queue
    python benchmarks/lora_queue.py --settings lora_classp_shared --seeds 0 --train-samples 80 --eval-samples 40
    python benchmarks/lora_queue.py --dry-run   # write the configs only

Outputs under ``--output-dir``: ``configs/seed<S>/<setting>.yaml``, ``seed<S>/<setting>/`` (the run's
folder), ``logs/seed<S>/<setting>.log`` (the run's stdout/stderr), ``seed<S>/<setting>.wall.json``
(wall time and code version of the run), ``summary.json`` and ``summary.md``.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO / "recipes" / "configs"
LORA_RECIPE = CONFIG_DIR / "sentiment_queue_lora.yaml"
FULL_RECIPE = CONFIG_DIR / "sentiment_queue.yaml"
#: Environment the runs get unless already set (offline Hub, the shared data).
DEFAULT_ENV = {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "CLASSP_HF_DATA": str((REPO.parent / "shared" / "data" / "sentiment").resolve()),
}
#: Exit code when ``--stop-over-budget`` stops the set.
EXIT_OVER_BUDGET = 3


@dataclass(frozen=True)
class Setting:
    """One configuration of the comparison.

    Args:
        name: folder and key name.
        label: human-readable name for tables.
        recipe: the YAML recipe it starts from.
        optim: the optimizer name.
        learning_rate: the (top-level) learning rate.
        optim_args: ``optim_args`` string, or `None` to drop the recipe's.
        adapters: ``shared`` or ``per_task`` for LoRA settings, `None` for full fine-tuning.
        init: ``previous`` or ``fresh`` (per_task adapters only).
    """

    name: str
    label: str
    recipe: Path
    optim: str
    learning_rate: float
    optim_args: str | None = None
    adapters: str | None = None
    init: str = "previous"


#: Learning rates chosen by validation accuracy in benchmarks/lora_lr_sweep.py (docs/results_lora.md).
LORA_CLASSP_LR = 1e-2
LORA_ADAMW_LR = 3e-3
FULL_CLASSP_LR = 1e-3

SETTINGS: tuple[Setting, ...] = (
    Setting("lora_classp_shared", "LoRA + CLASSP, shared", LORA_RECIPE, "classp", LORA_CLASSP_LR, None, "shared"),
    Setting("lora_classp_per_task", "LoRA + CLASSP, per-task", LORA_RECIPE, "classp", LORA_CLASSP_LR, None, "per_task"),
    Setting("lora_adamw_shared", "LoRA + AdamW, shared", LORA_RECIPE, "adamw", LORA_ADAMW_LR, None, "shared"),
    Setting("lora_adamw_per_task", "LoRA + AdamW, per-task", LORA_RECIPE, "adamw", LORA_ADAMW_LR, None, "per_task"),
    Setting("full_classp", "Full fine-tuning + CLASSP", FULL_RECIPE, "classp", FULL_CLASSP_LR, None, None),
)


@dataclass
class RunRecord:
    """What the benchmark knows about one run (a setting and a seed) after (or without) running it."""

    setting: Setting
    output_dir: Path
    config_path: Path
    seed: int = 0
    ran: bool = False
    skipped: bool = False
    return_code: int | None = None
    wall_seconds: float | None = None
    cpu_seconds: float | None = None
    code: dict[str, Any] | None = None
    results: dict[str, Any] | None = field(default=None, repr=False)


def build_config(
    setting: Setting,
    train_samples: int,
    eval_samples: int,
    max_length: int,
    seed: int,
    epochs: float | None = None,
) -> dict[str, Any]:
    """The run config of ``setting``: its recipe with the setting's optimizer/adapters and the sub-sampling.

    Args:
        setting: the setting.
        train_samples: ``max_train_samples`` of every task.
        eval_samples: ``max_eval_samples`` of every task.
        max_length: tokenizer truncation.
        seed: the run's seed (also seeds the sub-sampling).
        epochs: ``num_train_epochs`` per task, or `None` for the recipe's.

    Returns:
        The config as a dict; data paths keep their ``${CLASSP_HF_DATA}`` so it is portable.
    """
    raw = yaml.safe_load(setting.recipe.read_text(encoding="utf-8"))
    config = copy.deepcopy(raw)
    config["seed"] = seed
    config["max_length"] = max_length
    training = config.setdefault("training", {})
    training["optim"] = setting.optim
    training["learning_rate"] = setting.learning_rate
    if epochs is not None:
        training["num_train_epochs"] = epochs
    if setting.optim_args is None:
        training.pop("optim_args", None)
    else:
        training["optim_args"] = setting.optim_args
    training["disable_tqdm"] = True
    if setting.adapters is None:
        config.pop("peft", None)
    else:
        if "peft" not in config:
            raise ValueError(f"{setting.recipe}: a LoRA setting needs a recipe with a peft: section")
        config["peft"]["adapters"] = setting.adapters
        config["peft"]["init"] = setting.init
        config["peft"]["merge"] = False
    for task in config["tasks"]:
        task["max_train_samples"] = train_samples
        task["max_eval_samples"] = eval_samples
    return config


def run_environment() -> dict[str, str]:
    """The runs' environment: this process's, with :data:`DEFAULT_ENV` filled in where unset.

    Also sets those keys in ``os.environ``: :func:`is_complete` resolves ``${CLASSP_HF_DATA}`` here.

    Raises:
        ValueError: ``CLASSP_HF_DATA`` is not a folder.
    """
    env = dict(os.environ)
    for key, value in DEFAULT_ENV.items():
        env.setdefault(key, value)
    os.environ.update({key: env[key] for key in DEFAULT_ENV})
    if not Path(env["CLASSP_HF_DATA"]).is_dir():
        raise ValueError(f"CLASSP_HF_DATA={env['CLASSP_HF_DATA']} is not a folder")
    return env


def write_config(config: dict[str, Any], path: Path, setting: Setting) -> None:
    """Writes a generated config with a header saying where it came from."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = (
        f"# Generated by benchmarks/lora_queue.py from {setting.recipe.relative_to(REPO)}: {setting.label}.\n"
        "# Edit the script, not this file.\n"
    )
    path.write_text(header + yaml.safe_dump(config, sort_keys=False), encoding="utf-8")


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def is_complete(output_dir: Path, config_path: Path) -> bool:
    """Whether ``output_dir`` holds a complete run of exactly the config at ``config_path``.

    Compares the run's resolved ``config.yaml`` with the resolution of ``config_path`` (the same
    validation the runner does), so changed sample sizes or hyperparameters force a rerun.
    """
    results = _read_json(output_dir / "results.json")
    if not results or results.get("status") != "complete":
        return False
    stored = output_dir / "config.yaml"
    if not stored.is_file():
        return False
    from classp_hf.continual.config import load_config

    wanted = load_config(config_path).to_dict()
    return yaml.safe_load(stored.read_text(encoding="utf-8")) == wanted


def classp_hf_command() -> list[str]:
    """The ``classp-hf`` executable of this interpreter's environment (or ``python -m classp_hf.cli``)."""
    candidate = Path(sys.executable).with_name("classp-hf")
    if candidate.is_file():
        return [str(candidate)]
    found = shutil.which("classp-hf")
    if found:
        return [found]
    return [sys.executable, "-m", "classp_hf.cli"]


def code_version() -> dict[str, Any]:
    """The checkout's commit and the uncommitted changes under ``classp_hf/`` (the code a run imports)."""

    def git(*arguments: str) -> str | None:
        try:
            done = subprocess.run(["git", *arguments], cwd=REPO, capture_output=True, text=True, check=True)
        except (OSError, subprocess.CalledProcessError):
            return None
        return done.stdout.strip()

    dirty = git("status", "--porcelain", "--", "classp_hf")
    return {"commit": git("rev-parse", "HEAD"), "dirty_classp_hf": dirty.splitlines() if dirty else []}


def run_setting(record: RunRecord, log_path: Path, env: dict[str, str]) -> None:
    """Runs one setting with ``classp-hf run --quiet --overwrite``; output goes to ``log_path``."""
    command = [
        *classp_hf_command(),
        "run",
        str(record.config_path),
        "--output-dir",
        str(record.output_dir),
        "--overwrite",
        "--quiet",
    ]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    record.code = code_version()
    started = time.perf_counter()
    children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with log_path.open("w", encoding="utf-8") as log:
        log.write("$ " + " ".join(command) + "\n")
        log.flush()
        completed = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO, check=False)
    record.wall_seconds = time.perf_counter() - started
    children_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    record.cpu_seconds = (children_after.ru_utime - children_before.ru_utime) + (
        children_after.ru_stime - children_before.ru_stime
    )
    record.return_code = completed.returncode
    record.ran = True


def matrix_metrics(matrix: Sequence[Sequence[float]]) -> dict[str, float | None]:
    """ACC, BWT and forgetting of a (square, complete) accuracy matrix."""
    from classp_hf.metrics.continual import continual_metrics

    metrics = continual_metrics(matrix)
    return {key: metrics[key] for key in ("acc", "bwt", "forgetting")}


def summarise(record: RunRecord) -> dict[str, Any]:
    """The summary entry of one run (results, costs, wall time)."""
    setting = record.setting
    entry: dict[str, Any] = {
        "name": setting.name,
        "label": setting.label,
        "seed": record.seed,
        "recipe": str(setting.recipe.relative_to(REPO)),
        "optim": setting.optim,
        "optim_args": setting.optim_args,
        "learning_rate": setting.learning_rate,
        "adapters": setting.adapters or "none (full fine-tuning)",
        "init": setting.init if setting.adapters == "per_task" else None,
        "config": str(record.config_path),
        "output_dir": str(record.output_dir),
        "skipped_as_complete": record.skipped,
        "return_code": record.return_code,
        "wall_seconds": None if record.wall_seconds is None else round(record.wall_seconds, 1),
        "cpu_seconds": None if record.cpu_seconds is None else round(record.cpu_seconds, 1),
        "code": record.code,
    }
    results = record.results
    if not results:
        entry["status"] = "missing"
        return entry
    entry["status"] = results.get("status")
    per_task = results.get("per_task", [])
    entry.update(
        {
            "tasks": results.get("tasks"),
            "initial_accuracy": results.get("initial_accuracy"),
            "majority_accuracy": results.get("majority_accuracy"),
            "accuracy_matrix": results.get("accuracy_matrix"),
            "final_row": (results.get("accuracy_matrix") or [None])[-1],
            "metrics": results.get("metrics"),
            "total_parameters": results.get("total_parameters"),
            "trainable_parameters": [task.get("trainable_parameters") for task in per_task],
            "optimizer_state_bytes": [task.get("optimizer_state_bytes") for task in per_task],
            "train_loss": [task.get("train_loss") for task in per_task],
            "train_seconds": [task.get("seconds") for task in per_task],
            "train_examples": [task.get("train_examples") for task in per_task],
            "steps": [task.get("steps") for task in per_task],
        }
    )
    own = results.get("accuracy_matrix_own_adapter")
    if own:
        entry["accuracy_matrix_own_adapter"] = own
        entry["final_row_own_adapter"] = own[-1]
        complete = len(own) == len(own[-1])
        entry["metrics_own_adapter"] = matrix_metrics(own) if complete else None
    return entry


def _mean_or_none(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present and len(present) == len(values) else None


def _mean_matrix(matrices: Sequence[Sequence[Sequence[float]] | None]) -> list[list[float]] | None:
    if not matrices or any(not m for m in matrices) or len({(len(m), len(m[-1])) for m in matrices}) != 1:
        return None
    rows = zip(*matrices)
    return [[sum(cells) / len(cells) for cells in zip(*row)] for row in rows]


def aggregate(entries: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Groups the per-run entries by setting: the mean over seeds and each seed's value.

    Args:
        entries: :func:`summarise` entries, in run order.

    Returns:
        One dict per setting (first-seen order) with ``seeds``, ``acc``/``bwt``/``forgetting`` (and
        ``*_own`` for per-task adapters) as ``{"mean": ..., "per_seed": [...]}``, the mean accuracy
        matrices, the last task's trainable parameters and optimizer state, and the summed wall time.
        A mean is `None` unless every seed has the value.
    """
    groups: dict[str, list[dict[str, Any]]] = {}
    for entry in entries:
        groups.setdefault(entry["name"], []).append(entry)
    out = []
    for name, runs in groups.items():
        done = [r for r in runs if r.get("status") == "complete"]
        item: dict[str, Any] = {
            "name": name,
            "label": runs[0]["label"],
            "learning_rate": runs[0]["learning_rate"],
            "seeds": [r["seed"] for r in runs],
            "complete_seeds": [r["seed"] for r in done],
        }
        for key in ("acc", "bwt", "forgetting"):
            values = [(r.get("metrics") or {}).get(key) for r in runs]
            item[key] = {"mean": _mean_or_none(values), "per_seed": values}
            if any(r.get("accuracy_matrix_own_adapter") for r in runs):
                own = [(r.get("metrics_own_adapter") or {}).get(key) for r in runs]
                item[f"{key}_own"] = {"mean": _mean_or_none(own), "per_seed": own}
        item["accuracy_matrix"] = _mean_matrix([r.get("accuracy_matrix") for r in done]) if done else None
        own_matrices = [r.get("accuracy_matrix_own_adapter") for r in done]
        item["accuracy_matrix_own_adapter"] = _mean_matrix(own_matrices) if any(own_matrices) else None
        last = done[-1] if done else {}
        item["trainable_parameters"] = (last.get("trainable_parameters") or [None])[-1]
        item["total_parameters"] = last.get("total_parameters")
        item["optimizer_state_bytes"] = (last.get("optimizer_state_bytes") or [None])[-1]
        for key in ("wall_seconds", "cpu_seconds"):
            values = [r.get(key) for r in runs]
            item[key] = sum(values) if all(v is not None for v in values) else None
        losses = [r.get("train_loss") for r in done]
        item["mean_train_loss"] = [_mean_or_none(task) for task in zip(*losses)] if losses and all(losses) else None
        out.append(item)
    return out


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}"


def _pts(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:+.1f}"


def _count(value: int | None) -> str:
    return "n/a" if value is None else f"{value:,}"


def _mib(value: int | None) -> str:
    return "n/a" if value is None else f"{value / 2**20:.2f}"


def _minutes(seconds: float | None) -> str:
    return "n/a" if seconds is None else f"{seconds / 60:.1f}"


def _short(task: str) -> str:
    return {"financial_phrasebank": "fpb", "airline_tweets": "airline", "amazon_reviews": "amazon"}.get(task, task)


def format_matrix(title: str, tasks: Sequence[str], matrix: Sequence[Sequence[float]]) -> list[str]:
    """A compact markdown accuracy matrix (rows: after task i; columns: test on task j; %)."""
    header = "| after \\ test | " + " | ".join(_short(t) for t in tasks) + " |"
    lines = [f"**{title}**", "", header, "|" + "---|" * (len(tasks) + 1)]
    for task, row in zip(tasks, matrix):
        lines.append(f"| {_short(task)} | " + " | ".join(f"{100 * v:.1f}" for v in row) + " |")
    return lines + [""]


def _with_seeds(stat: dict[str, Any] | None, formatter: Any) -> str:
    if not stat:
        return "-"
    seeds = ", ".join(formatter(v) for v in stat["per_seed"])
    return f"{formatter(stat['mean'])} ({seeds})" if len(stat["per_seed"]) > 1 else formatter(stat["mean"])


def format_markdown(summary: dict[str, Any]) -> str:
    """The summary as markdown: the main table (mean and per seed), reference rows and mean matrices."""
    meta = summary["meta"]
    settings = summary["by_setting"]
    lines = [
        "# LoRA vs full fine-tuning on the 4-task queue (MiniLM)",
        "",
        f"At most {meta['train_samples']} train / {meta['eval_samples']} test examples per task (seeded subsample), "
        f"max_length {meta['max_length']}, {meta['epochs']} epochs per task, batch 16, seeds "
        f"{', '.join(str(s) for s in meta['seeds'])}. "
        f"Total wall time {_minutes(meta['total_wall_seconds'])} min, CPU time (user + system of the runs) "
        f"{_minutes(meta.get('total_cpu_seconds'))} min, on {meta['machine']}.",
        "",
        "Accuracies in %, BWT and forgetting in points: mean over seeds (each seed in brackets). Own: per-task "
        "adapters, each task evaluated with its own adapter. Params: trainable parameters on the last task. "
        "State: optimizer state after the last task (MiB). Wall: all seeds.",
        "",
        "| setting | lr | ACC | BWT | forgetting | ACC own | forgetting own | trainable params | state MiB "
        "| wall min |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for item in settings:
        lines.append(
            f"| {item['label']} | {item['learning_rate']:g} | {_with_seeds(item['acc'], _pct)} | "
            f"{_with_seeds(item['bwt'], _pts)} | {_with_seeds(item['forgetting'], _pts)} | "
            f"{_with_seeds(item.get('acc_own'), _pct)} | {_with_seeds(item.get('forgetting_own'), _pts)} | "
            f"{_count(item['trainable_parameters'])} | {_mib(item['optimizer_state_bytes'])} | "
            f"{_minutes(item['wall_seconds'])} |"
        )
    runs = [e for e in summary["runs"] if e.get("tasks")]
    if runs:
        tasks = runs[0]["tasks"]
        lines += ["", "Reference rows (constant predictions on each seed's test subsample):", ""]
        lines.append("| reference | seed | " + " | ".join(_short(t) for t in tasks) + " |")
        lines.append("|" + "---|" * (len(tasks) + 2))
        seen = set()
        for entry in runs:
            if entry["seed"] in seen:
                continue
            seen.add(entry["seed"])
            for label, key in (("untrained", "initial_accuracy"), ("majority class", "majority_accuracy")):
                cells = " | ".join(_pct(v) for v in entry[key])
                lines.append(f"| {label} | {entry['seed']} | {cells} |")
        lines += ["", "Mean accuracy matrices over the seeds (row: after task i; column: test task j):", ""]
        for item in settings:
            if item.get("accuracy_matrix"):
                lines += format_matrix(item["label"], tasks, item["accuracy_matrix"])
            if item.get("accuracy_matrix_own_adapter"):
                lines += format_matrix(f"{item['label']}, own adapter", tasks, item["accuracy_matrix_own_adapter"])
    return "\n".join(lines) + "\n"


def make_parser() -> argparse.ArgumentParser:
    """The benchmark's argument parser."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--output-dir", type=Path, default=REPO / "runs" / "lora_queue", help="(default runs/lora_queue)"
    )
    parser.add_argument("--train-samples", type=int, default=512, help="max_train_samples per task (default 512)")
    parser.add_argument("--eval-samples", type=int, default=200, help="max_eval_samples per task (default 200)")
    parser.add_argument("--epochs", type=float, default=2.0, help="num_train_epochs per task (default 2)")
    parser.add_argument("--max-length", type=int, default=64, help="tokenizer truncation (default 64)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="the runs' seeds (default 0 1)")
    parser.add_argument(
        "--settings",
        nargs="+",
        choices=[s.name for s in SETTINGS],
        default=[s.name for s in SETTINGS],
        help="which settings to run, in this order (default: all five)",
    )
    parser.add_argument("--lr", nargs="+", default=[], metavar="SETTING=LR", help="override a setting's learning rate")
    parser.add_argument("--budget-minutes", type=float, default=50.0, help="wall budget of the whole set (default 50)")
    parser.add_argument(
        "--stop-over-budget",
        action="store_true",
        help="stop after the first run if the extrapolated total exceeds the budget (exit 3)",
    )
    parser.add_argument("--rerun", action="store_true", help="rerun settings even if complete")
    parser.add_argument("--dry-run", action="store_true", help="write the configs and print the commands only")
    parser.add_argument("--json", type=Path, default=None, help="summary JSON (default OUTPUT_DIR/summary.json)")
    parser.add_argument("--markdown", type=Path, default=None, help="summary markdown (default OUTPUT_DIR/summary.md)")
    parser.add_argument("--plot", type=Path, default=None, help="summary figure (default OUTPUT_DIR/summary.png)")
    parser.add_argument(
        "--summarise-only", action="store_true", help="rebuild the summary from finished runs; run nothing"
    )
    parser.add_argument(
        "--include",
        nargs="+",
        type=Path,
        default=None,
        metavar="SUMMARY_JSON",
        help="also show the settings of other sets' summary.json (labelled with their lr) in the tables and figure",
    )
    return parser


def parse_lr_overrides(pairs: Sequence[str]) -> dict[str, float]:
    """``SETTING=LR`` pairs as a dict.

    Raises:
        ValueError: a malformed pair, an unknown setting or a non-positive rate, naming the pair.
    """
    names = {s.name for s in SETTINGS}
    overrides = {}
    for pair in pairs:
        name, sep, text = pair.partition("=")
        if not sep or name not in names:
            raise ValueError(f"--lr {pair!r}: expected SETTING=LR with SETTING one of {', '.join(sorted(names))}")
        try:
            value = float(text)
        except ValueError:
            raise ValueError(f"--lr {pair!r}: {text!r} is not a number") from None
        if not value > 0:
            raise ValueError(f"--lr {pair!r}: the learning rate must be positive")
        overrides[name] = value
    return overrides


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the selected settings for every seed (resumably) and writes the summary; returns the exit code."""
    args = make_parser().parse_args(argv)
    for name in ("train_samples", "eval_samples", "max_length", "epochs"):
        if getattr(args, name) <= 0:
            print(f"lora_queue: --{name.replace('_', '-')} must be positive", file=sys.stderr)
            return 2
    try:
        overrides = parse_lr_overrides(args.lr)
        env = run_environment()
    except ValueError as error:
        print(f"lora_queue: {error}", file=sys.stderr)
        return 2
    out: Path = args.output_dir.resolve()
    by_name = {s.name: s for s in SETTINGS}
    records: list[RunRecord] = []
    for seed in args.seeds:
        for name in args.settings:
            setting = by_name[name]
            if name in overrides:
                setting = dataclasses.replace(setting, learning_rate=overrides[name])
            config_path = out / "configs" / f"seed{seed}" / f"{name}.yaml"
            config = build_config(setting, args.train_samples, args.eval_samples, args.max_length, seed, args.epochs)
            write_config(config, config_path, setting)
            records.append(RunRecord(setting, out / f"seed{seed}" / name, config_path, seed))
    if args.dry_run:
        for record in records:
            print(
                " ".join([*classp_hf_command(), "run", str(record.config_path), "--output-dir", str(record.output_dir)])
                + " --overwrite --quiet"
            )
        return 0
    if args.summarise_only:
        for record in records:
            stored = _read_json(record.output_dir.with_name(f"{record.setting.name}.wall.json")) or {}
            record.wall_seconds, record.code = stored.get("wall_seconds"), stored.get("code")
            record.cpu_seconds = stored.get("cpu_seconds")
            record.skipped = is_complete(record.output_dir, record.config_path)
            record.results = _read_json(record.output_dir / "results.json") if record.skipped else None
        print(format_markdown(write_summary(records, args, out, 0.0, None)))
        return 0

    set_started = time.perf_counter()
    projection: dict[str, Any] | None = None
    failures = 0
    for index, record in enumerate(records):
        tag = f"seed {record.seed} {record.setting.name}"
        wall_file = record.output_dir.with_name(f"{record.setting.name}.wall.json")
        log_path = out / "logs" / f"seed{record.seed}" / f"{record.setting.name}.log"
        if not args.rerun and is_complete(record.output_dir, record.config_path):
            record.skipped = True
            stored = _read_json(wall_file) or {}
            record.wall_seconds, record.code = stored.get("wall_seconds"), stored.get("code")
            record.cpu_seconds = stored.get("cpu_seconds")
            print(f"[lora_queue] {tag}: complete, skipped", flush=True)
        else:
            print(f"[lora_queue] {tag}: running ({record.setting.label}, started {time.strftime('%H:%M:%S')})")
            sys.stdout.flush()
            run_setting(record, log_path, env)
            ok = record.return_code == 0
            failures += not ok
            wall_file.parent.mkdir(parents=True, exist_ok=True)
            wall_file.write_text(
                json.dumps(
                    {
                        "wall_seconds": round(record.wall_seconds or 0.0, 1),
                        "cpu_seconds": round(record.cpu_seconds or 0.0, 1),
                        "return_code": record.return_code,
                        "code": record.code,
                    }
                ),
                encoding="utf-8",
            )
            print(
                f"[lora_queue] {tag}: {'done' if ok else f'FAILED (exit {record.return_code})'} "
                f"in {_minutes(record.wall_seconds)} min (log: {log_path})",
                flush=True,
            )
            if projection is None and ok:
                projection = project(records, index, record.wall_seconds or 0.0, args)
                if projection.get("suggested_train_samples") and args.stop_over_budget:
                    record.results = _read_json(record.output_dir / "results.json")
                    write_summary(records, args, out, time.perf_counter() - set_started, projection)
                    return EXIT_OVER_BUDGET
        record.results = _read_json(record.output_dir / "results.json")
    summary = write_summary(records, args, out, time.perf_counter() - set_started, projection)
    print(format_markdown(summary))
    return 1 if failures else 0


def project(records: Sequence[RunRecord], index: int, seconds: float, args: argparse.Namespace) -> dict[str, Any]:
    """Extrapolates the set's wall time from its first run and prints whether it fits the budget."""
    remaining = sum(1 for r in records[index + 1 :] if args.rerun or not is_complete(r.output_dir, r.config_path))
    projected = seconds * (1 + remaining)
    budget = args.budget_minutes * 60
    projection: dict[str, Any] = {
        "first_run": records[index].setting.name,
        "first_run_seconds": round(seconds, 1),
        "runs_left": remaining,
        "projected_seconds": round(projected, 1),
        "budget_seconds": budget,
    }
    fits = projected <= budget
    print(
        f"[lora_queue] extrapolated: {1 + remaining} runs x {_minutes(seconds)} min = "
        f"{_minutes(projected)} min (budget {args.budget_minutes:g} min): {'fits' if fits else 'OVER'}",
        flush=True,
    )
    if not fits:
        # Training cost is roughly linear in the training examples; keep a 10% margin.
        scale = 0.9 * budget / projected
        suggestion = max(16, int(math.floor(args.train_samples * scale / 16) * 16))
        print(f"[lora_queue] to fit, try --train-samples {suggestion} (eval samples too)", flush=True)
        projection["suggested_train_samples"] = suggestion
    return projection


def write_summary(
    records: Sequence[RunRecord],
    args: argparse.Namespace,
    out: Path,
    elapsed: float,
    projection: dict[str, Any] | None,
) -> dict[str, Any]:
    """Writes ``summary.json`` and ``summary.md`` and returns the summary."""
    walls = [r.wall_seconds for r in records if r.wall_seconds is not None]
    cpus = [r.cpu_seconds for r in records if r.cpu_seconds is not None]
    runs = [summarise(record) for record in records]
    summary = {
        "meta": {
            "train_samples": args.train_samples,
            "eval_samples": args.eval_samples,
            "epochs": args.epochs,
            "max_length": args.max_length,
            "seeds": list(args.seeds),
            "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv else None,
            "this_invocation_seconds": round(elapsed, 1),
            "total_wall_seconds": round(sum(walls), 1) if walls else None,
            "total_cpu_seconds": round(sum(cpus), 1) if cpus else None,
            "projection": projection,
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs (shared)",
            "python": platform.python_version(),
        },
        "by_setting": aggregate(runs),
        "runs": runs,
    }
    for path in args.include or []:  # other sets (e.g. another learning rate) shown beside this one
        other = json.loads(Path(path).read_text(encoding="utf-8"))
        for item in other["by_setting"]:
            summary["by_setting"].append({**item, "label": f"{item['label']}, lr {item['learning_rate']:g}"})
        summary["meta"].setdefault("included", []).append({"summary": str(path), "meta": other["meta"]})
    json_path = args.json or out / "summary.json"
    md_path = args.markdown or out / "summary.md"
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    md_path.parent.mkdir(parents=True, exist_ok=True)
    md_path.write_text(format_markdown(summary), encoding="utf-8")
    if any(v is not None for item in summary["by_setting"] for v in item["acc"]["per_seed"]):
        plot_summary(summary, args.plot or out / "summary.png")
    return summary


def plot_summary(summary: dict[str, Any], path: Path) -> Path:
    """Draws ACC, forgetting (bars: mean over seeds; dots: each seed) and optimizer state per setting.

    Args:
        summary: what :func:`write_summary` builds.
        path: the PNG to write.

    Returns:
        ``path``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    items = summary["by_setting"]
    labels = [
        item["label"].split(", lr ")[0].replace("Full fine-tuning", "full FT").replace(" + ", "\n").replace(", ", "\n")
        + f"\nlr {item['learning_rate']:g}"
        for item in items
    ]
    fig = Figure(figsize=(13, 4.2), dpi=120)
    FigureCanvasAgg(fig)
    panels = fig.subplots(1, 3)
    for ax, key, title, own_key in (
        (panels[0], "acc", "ACC after the last task (%)", "acc_own"),
        (panels[1], "forgetting", "forgetting (points)", "forgetting_own"),
    ):
        for i, item in enumerate(items):
            values = [v for v in item[key]["per_seed"] if v is not None]
            if not values:
                continue
            ax.bar(i, 100 * sum(values) / len(values), color="#4c72b0" if "LoRA" in item["label"] else "#dd8452")
            ax.scatter([i] * len(values), [100 * v for v in values], color="black", s=12, zorder=3)
            own = [v for v in (item.get(own_key) or {}).get("per_seed", []) if v is not None]
            if own:
                ax.scatter([i + 0.25] * len(own), [100 * v for v in own], marker="^", color="#55a868", s=22, zorder=3)
        ax.set_xticks(range(len(items)), labels, fontsize=7)
        ax.set_title(title, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    by_seed = {e["seed"]: e["majority_accuracy"] for e in summary["runs"] if e.get("majority_accuracy")}
    if by_seed:  # the mean over tasks of always predicting each task's majority class, averaged over seeds
        majority = 100 * sum(sum(row) / len(row) for row in by_seed.values()) / len(by_seed)
        panels[0].axhline(majority, color="gray", linestyle="--", linewidth=1)
        panels[0].text(len(items) - 0.5, majority, "majority class", fontsize=7, ha="right", va="bottom")
    states = [(item["optimizer_state_bytes"] or 0) / 2**20 for item in items]
    panels[2].bar(range(len(items)), states, color=["#4c72b0" if "LoRA" in i["label"] else "#dd8452" for i in items])
    panels[2].set_yscale("log")
    panels[2].set_xticks(range(len(items)), labels, fontsize=7)
    panels[2].set_title("optimizer state after the last task (MiB, log)", fontsize=10)
    for i, value in enumerate(states):
        panels[2].text(i, value, f"{value:.2f}", ha="center", va="bottom", fontsize=7)
    fig.suptitle(
        "LoRA vs full fine-tuning on the 4-task queue (dots: seeds; triangles: per-task adapters, own adapter)",
        fontsize=10,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, format="png", bbox_inches="tight")
    os.replace(tmp, path)
    return path


if __name__ == "__main__":
    sys.exit(main())
