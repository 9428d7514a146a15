"""LoRA vs full fine-tuning on the 4-task sentiment queue (MiniLM), with CLASSP and AdamW.

Builds five run configs from ``recipes/configs/sentiment_queue_lora.yaml`` and
``recipes/configs/sentiment_queue.yaml``, sub-sampled to fit a CPU budget, runs them one after
another with ``classp-hf run --quiet`` and writes a summary JSON and a markdown table.

Settings (same queue, seed, samples, max_length, batch size and epochs; only the lines below differ):

- ``lora_classp_shared``: LoRA (r 8) + CLASSP, one shared adapter, lr 3e-3;
- ``lora_classp_per_task``: LoRA + CLASSP, one adapter per task initialised from the previous one, lr 3e-3;
- ``lora_adamw_shared``: LoRA + AdamW (no ``optim_args``), one shared adapter, lr 1e-3;
- ``lora_adamw_per_task``: LoRA + AdamW, one adapter per task (init previous), lr 1e-3;
- ``full_classp``: full fine-tuning + CLASSP (``sentiment_queue.yaml``), lr 1e-3.

Extras, run only when named in ``--settings``: ``lora_classp_shared_lr1e-3`` and
``lora_classp_per_task_lr1e-3`` (LoRA + CLASSP at lr 1e-3 instead of 3e-3).

The run is resumable: a setting whose ``results.json`` says ``complete`` and whose ``config.yaml``
matches the config generated now is skipped; anything else is (re)run with ``--overwrite``. After
the first setting that actually runs, the total wall time of the set is extrapolated and compared
with ``--budget-minutes``; ``--stop-over-budget`` stops there (exit 3) instead of carrying on, with
the ``--train-samples`` that would fit.

For per-task adapters the summary also gives the final row of ``accuracy_matrix_own_adapter``
(each task evaluated with its own adapter, i.e. task identity known at test time) and the ACC,
BWT and forgetting of that matrix.

Usage::

    HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 CLASSP_HF_DATA=/work/shared/data/sentiment \\
        python benchmarks/lora_queue.py --output-dir runs/lora_queue
    python benchmarks/lora_queue.py --settings lora_classp_shared --train-samples 80 --eval-samples 40  # smoke test
    python benchmarks/lora_queue.py --dry-run   # write the configs only

Outputs under ``--output-dir``: ``configs/<setting>.yaml``, ``<setting>/`` (the run's folder),
``logs/<setting>.log`` (the run's stdout/stderr), ``<setting>.wall.json`` (wall time of the run),
``summary.json`` and ``summary.md``.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
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


SETTINGS: tuple[Setting, ...] = (
    Setting("lora_classp_shared", "LoRA + CLASSP, shared", LORA_RECIPE, "classp", 3e-3, "power=1,eps=1e-8", "shared"),
    Setting(
        "lora_classp_per_task",
        "LoRA + CLASSP, per-task (init previous)",
        LORA_RECIPE,
        "classp",
        3e-3,
        "power=1,eps=1e-8",
        "per_task",
    ),
    Setting("lora_adamw_shared", "LoRA + AdamW, shared", LORA_RECIPE, "adamw", 1e-3, None, "shared"),
    Setting(
        "lora_adamw_per_task", "LoRA + AdamW, per-task (init previous)", LORA_RECIPE, "adamw", 1e-3, None, "per_task"
    ),
    Setting("full_classp", "Full fine-tuning + CLASSP", FULL_RECIPE, "classp", 1e-3, "power=1,eps=1e-8", None),
)
#: Follow-ups, run only when named in ``--settings``: LoRA + CLASSP at the full fine-tuning lr
#: (lr 3e-3 collapses CLASSP fine-tuning of MiniLM to a constant prediction, docs/hyperparameters.md).
EXTRA_SETTINGS: tuple[Setting, ...] = (
    Setting(
        "lora_classp_shared_lr1e-3",
        "LoRA + CLASSP, shared, lr 1e-3 (extra)",
        LORA_RECIPE,
        "classp",
        1e-3,
        "power=1,eps=1e-8",
        "shared",
    ),
    Setting(
        "lora_classp_per_task_lr1e-3",
        "LoRA + CLASSP, per-task, lr 1e-3 (extra)",
        LORA_RECIPE,
        "classp",
        1e-3,
        "power=1,eps=1e-8",
        "per_task",
    ),
)


@dataclass
class RunRecord:
    """What the benchmark knows about one setting after (or without) running it."""

    setting: Setting
    output_dir: Path
    config_path: Path
    ran: bool = False
    skipped: bool = False
    return_code: int | None = None
    wall_seconds: float | None = None
    code: dict[str, Any] | None = None
    results: dict[str, Any] | None = field(default=None, repr=False)


def build_config(setting: Setting, train_samples: int, eval_samples: int, max_length: int, seed: int) -> dict[str, Any]:
    """The run config of ``setting``: its recipe with the setting's optimizer/adapters and the sub-sampling.

    Data paths keep their ``${CLASSP_HF_DATA}`` so the config is portable.
    """
    raw = yaml.safe_load(setting.recipe.read_text(encoding="utf-8"))
    config = copy.deepcopy(raw)
    config["seed"] = seed
    config["max_length"] = max_length
    training = config.setdefault("training", {})
    training["optim"] = setting.optim
    training["learning_rate"] = setting.learning_rate
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
    with log_path.open("w", encoding="utf-8") as log:
        log.write("$ " + " ".join(command) + "\n")
        log.flush()
        completed = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO, check=False)
    record.wall_seconds = time.perf_counter() - started
    record.return_code = completed.returncode
    record.ran = True


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def matrix_metrics(matrix: Sequence[Sequence[float]]) -> dict[str, float | None]:
    """ACC, BWT and forgetting of a (square, complete) accuracy matrix."""
    from classp_hf.metrics.continual import continual_metrics

    metrics = continual_metrics(matrix)
    return {key: metrics[key] for key in ("acc", "bwt", "forgetting")}


def summarise(record: RunRecord) -> dict[str, Any]:
    """The summary entry of one setting (results, costs, wall time)."""
    setting = record.setting
    entry: dict[str, Any] = {
        "name": setting.name,
        "label": setting.label,
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


def format_markdown(summary: dict[str, Any]) -> str:
    """The summary as markdown: the main table, the final rows and every accuracy matrix."""
    entries = summary["settings"]
    meta = summary["meta"]
    lines = [
        "# LoRA vs full fine-tuning on the 4-task queue (MiniLM)",
        "",
        f"At most {meta['train_samples']} train / {meta['eval_samples']} test examples per task (seeded subsample), "
        f"max_length {meta['max_length']}, seed {meta['seed']}, 1 epoch, batch 16. "
        f"Total wall time {_minutes(meta['total_wall_seconds'])} min on {meta['machine']}.",
        "",
        "Accuracies in %, BWT and forgetting in points. Params: trainable parameters per task (per-task adapters: the "
        "current adapter and its head copy). State: optimizer state after the last task (MiB).",
        "",
        "| setting | lr | ACC | BWT | forgetting | ACC own | BWT own | trainable params | state MiB | wall min |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for entry in entries:
        metrics = entry.get("metrics") or {}
        own = entry.get("metrics_own_adapter") or {}
        params = entry.get("trainable_parameters") or [None]
        state = entry.get("optimizer_state_bytes") or [None]
        lines.append(
            f"| {entry['label']} | {entry['learning_rate']:g} | {_pct(metrics.get('acc'))} | "
            f"{_pts(metrics.get('bwt'))} | {_pts(metrics.get('forgetting'))} | "
            f"{_pct(own.get('acc')) if own else '-'} | {_pts(own.get('bwt')) if own else '-'} | "
            f"{_count(params[-1])} | {_mib(state[-1])} | {_minutes(entry.get('wall_seconds'))} |"
        )
    tasks = next((e["tasks"] for e in entries if e.get("tasks")), None)
    if tasks:
        lines += [
            "",
            "Final row (after the last task; own = each task with its own adapter):",
            "",
            "| setting | " + " | ".join(_short(t) for t in tasks) + " |",
            "|" + "---|" * (len(tasks) + 1),
        ]
        for entry in entries:
            if entry.get("final_row"):
                lines.append(f"| {entry['label']} | " + " | ".join(_pct(v) for v in entry["final_row"]) + " |")
            if entry.get("final_row_own_adapter"):
                lines.append(
                    f"| {entry['label']}, own | " + " | ".join(_pct(v) for v in entry["final_row_own_adapter"]) + " |"
                )
        first = next(e for e in entries if e.get("tasks"))
        lines += [
            "",
            "| | " + " | ".join(_short(t) for t in tasks) + " |",
            "|" + "---|" * (len(tasks) + 1),
            "| untrained | " + " | ".join(_pct(v) for v in first["initial_accuracy"]) + " |",
            "| majority class | " + " | ".join(_pct(v) for v in first["majority_accuracy"]) + " |",
            "",
        ]
        for entry in entries:
            if entry.get("accuracy_matrix"):
                lines += format_matrix(entry["label"], tasks, entry["accuracy_matrix"])
            if entry.get("accuracy_matrix_own_adapter"):
                lines += format_matrix(f"{entry['label']}, own adapter", tasks, entry["accuracy_matrix_own_adapter"])
    return "\n".join(lines) + "\n"


def make_parser() -> argparse.ArgumentParser:
    """The benchmark's argument parser."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--output-dir", type=Path, default=REPO / "runs" / "lora_queue", help="(default runs/lora_queue)"
    )
    parser.add_argument("--train-samples", type=int, default=400, help="max_train_samples per task (default 400)")
    parser.add_argument("--eval-samples", type=int, default=200, help="max_eval_samples per task (default 200)")
    parser.add_argument("--max-length", type=int, default=64, help="tokenizer truncation (default 64)")
    parser.add_argument("--seed", type=int, default=0, help="the runs' seed (default 0)")
    parser.add_argument(
        "--settings",
        nargs="+",
        choices=[s.name for s in SETTINGS + EXTRA_SETTINGS],
        default=[s.name for s in SETTINGS],
        help="which settings to run, in this order (default: the five main ones, not the extras)",
    )
    parser.add_argument("--budget-minutes", type=float, default=45.0, help="wall budget of the whole set (default 45)")
    parser.add_argument(
        "--stop-over-budget",
        action="store_true",
        help="stop after the first run if the extrapolated total exceeds the budget (exit 3)",
    )
    parser.add_argument("--rerun", action="store_true", help="rerun settings even if complete")
    parser.add_argument("--dry-run", action="store_true", help="write the configs and print the commands only")
    parser.add_argument("--json", type=Path, default=None, help="summary JSON (default OUTPUT_DIR/summary.json)")
    parser.add_argument("--markdown", type=Path, default=None, help="summary markdown (default OUTPUT_DIR/summary.md)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the selected settings (resumably) and writes the summary; returns the exit code."""
    args = make_parser().parse_args(argv)
    for name in ("train_samples", "eval_samples", "max_length"):
        if getattr(args, name) <= 0:
            print(f"lora_queue: --{name.replace('_', '-')} must be positive", file=sys.stderr)
            return 2
    env = dict(os.environ)
    for key, value in DEFAULT_ENV.items():
        env.setdefault(key, value)
    os.environ.update({key: env[key] for key in DEFAULT_ENV})  # is_complete() resolves ${CLASSP_HF_DATA} too
    if not Path(env["CLASSP_HF_DATA"]).is_dir():
        print(f"lora_queue: CLASSP_HF_DATA={env['CLASSP_HF_DATA']} is not a folder", file=sys.stderr)
        return 2
    out: Path = args.output_dir.resolve()
    by_name = {s.name: s for s in SETTINGS + EXTRA_SETTINGS}
    records: list[RunRecord] = []
    for name in args.settings:
        setting = by_name[name]
        config_path = out / "configs" / f"{name}.yaml"
        config = build_config(setting, args.train_samples, args.eval_samples, args.max_length, args.seed)
        write_config(config, config_path, setting)
        records.append(RunRecord(setting, out / name, config_path))
    if args.dry_run:
        for record in records:
            print(
                " ".join([*classp_hf_command(), "run", str(record.config_path), "--output-dir", str(record.output_dir)])
                + " --overwrite --quiet"
            )
        return 0

    set_started = time.perf_counter()
    first_run_seconds: float | None = None
    projection: dict[str, Any] | None = None
    failures = 0
    for index, record in enumerate(records):
        wall_file = out / f"{record.setting.name}.wall.json"
        if not args.rerun and is_complete(record.output_dir, record.config_path):
            record.skipped = True
            stored = _read_json(wall_file) or {}
            record.wall_seconds, record.code = stored.get("wall_seconds"), stored.get("code")
            print(f"[lora_queue] {record.setting.name}: complete, skipped", flush=True)
        else:
            print(f"[lora_queue] {record.setting.name}: running ({record.setting.label})", flush=True)
            run_setting(record, out / "logs" / f"{record.setting.name}.log", env)
            ok = record.return_code == 0
            failures += not ok
            wall_file.write_text(
                json.dumps(
                    {
                        "wall_seconds": round(record.wall_seconds or 0.0, 1),
                        "return_code": record.return_code,
                        "code": record.code,
                    }
                ),
                encoding="utf-8",
            )
            print(
                f"[lora_queue] {record.setting.name}: {'done' if ok else f'FAILED (exit {record.return_code})'} "
                f"in {_minutes(record.wall_seconds)} min (log: {out / 'logs' / (record.setting.name + '.log')})",
                flush=True,
            )
            if first_run_seconds is None and ok:
                first_run_seconds = record.wall_seconds or 0.0
                remaining = sum(
                    1 for r in records[index + 1 :] if args.rerun or not is_complete(r.output_dir, r.config_path)
                )
                projected = first_run_seconds * (1 + remaining)
                budget = args.budget_minutes * 60
                projection = {
                    "first_run": record.setting.name,
                    "first_run_seconds": round(first_run_seconds, 1),
                    "runs_left": remaining,
                    "projected_seconds": round(projected, 1),
                    "budget_seconds": budget,
                }
                fits = projected <= budget
                print(
                    f"[lora_queue] extrapolated: {1 + remaining} runs x {_minutes(first_run_seconds)} min = "
                    f"{_minutes(projected)} min (budget {args.budget_minutes:g} min): {'fits' if fits else 'OVER'}",
                    flush=True,
                )
                if not fits:
                    # Training cost is roughly linear in the training examples; keep a 10% margin.
                    scale = 0.9 * budget / projected
                    suggestion = max(16, int(math.floor(args.train_samples * scale / 16) * 16))
                    print(f"[lora_queue] to fit, try --train-samples {suggestion} (eval samples too)", flush=True)
                    projection["suggested_train_samples"] = suggestion
                    if args.stop_over_budget:
                        record.results = _read_json(record.output_dir / "results.json")
                        write_summary(records, args, out, time.perf_counter() - set_started, projection)
                        return EXIT_OVER_BUDGET
        record.results = _read_json(record.output_dir / "results.json")
    summary = write_summary(records, args, out, time.perf_counter() - set_started, projection)
    print(format_markdown(summary))
    return 1 if failures else 0


def write_summary(
    records: Sequence[RunRecord],
    args: argparse.Namespace,
    out: Path,
    elapsed: float,
    projection: dict[str, Any] | None,
) -> dict[str, Any]:
    """Writes ``summary.json`` and ``summary.md`` and returns the summary."""
    walls = [r.wall_seconds for r in records if r.wall_seconds is not None]
    summary = {
        "meta": {
            "train_samples": args.train_samples,
            "eval_samples": args.eval_samples,
            "max_length": args.max_length,
            "seed": args.seed,
            "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv else None,
            "this_invocation_seconds": round(elapsed, 1),
            "total_wall_seconds": round(sum(walls), 1) if walls else None,
            "projection": projection,
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs (shared)",
            "python": platform.python_version(),
        },
        "settings": [summarise(record) for record in records],
    }
    json_path = args.json or out / "summary.json"
    md_path = args.markdown or out / "summary.md"
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    md_path.parent.mkdir(parents=True, exist_ok=True)
    md_path.write_text(format_markdown(summary), encoding="utf-8")
    return summary


if __name__ == "__main__":
    sys.exit(main())
