"""Learning-rate sweep for LoRA adapters (and full fine-tuning) on the first tasks of the queue.

Picks the learning rate of each optimizer for ``benchmarks/lora_queue.py`` by *validation*
accuracy: every run holds out ``--validation-fraction`` of each task's training examples, and the
sweep ranks the runs by the mean validation accuracy after the last task (ACC on the validation
matrix). Test accuracy is reported beside it, not used to choose.

A grid entry is ``KIND:OPTIM:LR[,LR...]`` with KIND ``lora`` (shared adapter,
``recipes/configs/sentiment_queue_lora.yaml``) or ``full`` (``recipes/configs/sentiment_queue.yaml``).
CLASSP runs use the optimizer's defaults (eps 1e-4, power 1, threshold 0) unless ``--classp-args``
says otherwise; other optimizers get no ``optim_args``.

Usage::

    HF_HUB_OFFLINE=1 CLASSP_HF_DATA=/work/shared/data/sentiment \\
        python benchmarks/lora_lr_sweep.py --output-dir runs/lora_lr_sweep \\
        --grid lora:adamw:1e-3,3e-3,1e-2 lora:classp:3e-3,1e-2,3e-2 full:classp:1e-3

Resumable: a run whose ``results.json`` is complete for the same config is skipped. Writes
``summary.json`` and ``summary.md`` under ``--output-dir``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from lora_queue import (  # noqa: E402  (a script beside this one)
    FULL_RECIPE,
    LORA_RECIPE,
    RunRecord,
    Setting,
    _read_json,
    build_config,
    is_complete,
    run_environment,
    run_setting,
    write_config,
)

DEFAULT_GRID = ("lora:adamw:1e-3,3e-3,1e-2", "lora:classp:3e-3,1e-2,3e-2", "full:classp:1e-3")


def parse_grid(entries: Sequence[str], classp_args: str | None) -> list[Setting]:
    """The settings of ``KIND:OPTIM:LR[,LR...]`` grid entries.

    Raises:
        ValueError: an entry that does not parse, naming it.
    """
    settings = []
    for entry in entries:
        parts = entry.split(":")
        if len(parts) != 3 or parts[0] not in ("lora", "full"):
            raise ValueError(f"--grid {entry!r}: expected KIND:OPTIM:LR[,LR...] with KIND lora or full")
        kind, optim, rates = parts
        for text in rates.split(","):
            try:
                lr = float(text)
            except ValueError:
                raise ValueError(f"--grid {entry!r}: {text!r} is not a learning rate") from None
            if lr <= 0:
                raise ValueError(f"--grid {entry!r}: learning rate {text} must be positive")
            name = f"{kind}_{optim}_lr{text}"
            settings.append(
                Setting(
                    name,
                    f"{'LoRA' if kind == 'lora' else 'Full FT'} + {optim}, lr {text}",
                    LORA_RECIPE if kind == "lora" else FULL_RECIPE,
                    optim,
                    lr,
                    classp_args if optim == "classp" else None,
                    "shared" if kind == "lora" else None,
                )
            )
    return settings


def sweep_config(setting: Setting, args: argparse.Namespace) -> dict[str, Any]:
    """The run config of one grid point: the queue's first ``--tasks`` tasks with a validation split."""
    config = build_config(setting, args.train_samples, args.eval_samples, args.max_length, args.seed)
    config["tasks"] = config["tasks"][: args.tasks]
    config["training"]["num_train_epochs"] = args.epochs
    config["validation_fraction"] = args.validation_fraction
    return config


def summarise(record: RunRecord) -> dict[str, Any]:
    """Validation and test ACC, final training loss and steps of one grid point."""
    results = record.results or {}
    validation = results.get("validation") or {}
    per_task = results.get("per_task") or []
    return {
        "name": record.setting.name,
        "label": record.setting.label,
        "optim": record.setting.optim,
        "learning_rate": record.setting.learning_rate,
        "status": results.get("status", "missing"),
        "validation_acc": (validation.get("metrics") or {}).get("acc"),
        "validation_final_row": (validation.get("accuracy_matrix") or [None])[-1],
        "test_acc": (results.get("metrics") or {}).get("acc"),
        "test_final_row": (results.get("accuracy_matrix") or [None])[-1],
        "majority_accuracy": results.get("majority_accuracy"),
        "train_loss": [task.get("train_loss") for task in per_task],
        "steps": [task.get("steps") for task in per_task],
        "wall_seconds": None if record.wall_seconds is None else round(record.wall_seconds, 1),
    }


def format_markdown(entries: Sequence[dict[str, Any]], meta: dict[str, Any]) -> str:
    """The sweep as a markdown table, best validation ACC per optimizer and kind in bold."""

    def pct(value: float | None) -> str:
        return "n/a" if value is None else f"{100 * value:.1f}"

    best: dict[str, float] = {}
    for entry in entries:
        key = entry["label"].rsplit(",", 1)[0]
        if entry["validation_acc"] is not None:
            best[key] = max(best.get(key, -1.0), entry["validation_acc"])
    lines = [
        f"Tasks: {', '.join(meta['tasks'])}; {meta['train_samples']} training examples per task "
        f"({meta['validation_fraction']:.0%} held out for validation), {meta['epochs']} epochs, seed {meta['seed']}.",
        "",
        "| setting | validation ACC | test ACC | test final row | train loss per task | steps per task | wall s |",
        "|---|---|---|---|---|---|---|",
    ]
    for entry in entries:
        key = entry["label"].rsplit(",", 1)[0]
        val = pct(entry["validation_acc"])
        if entry["validation_acc"] is not None and entry["validation_acc"] == best.get(key):
            val = f"**{val}**"
        row = " / ".join(pct(v) for v in entry["test_final_row"] or [])
        losses = " / ".join("n/a" if v is None else f"{v:.3f}" for v in entry["train_loss"])
        steps = " / ".join(str(v) for v in entry["steps"])
        lines.append(
            f"| {entry['label']} | {val} | {pct(entry['test_acc'])} | {row} | {losses} | {steps} | "
            f"{entry['wall_seconds']} |"
        )
    majority = next((e["majority_accuracy"] for e in entries if e.get("majority_accuracy")), None)
    if majority:
        lines += ["", "Majority-class test accuracy: " + " / ".join(pct(v) for v in majority)]
    return "\n".join(lines) + "\n"


def make_parser() -> argparse.ArgumentParser:
    """The sweep's argument parser."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", type=Path, default=Path("runs/lora_lr_sweep"))
    parser.add_argument("--grid", nargs="+", default=list(DEFAULT_GRID), help="KIND:OPTIM:LR[,LR...] entries")
    parser.add_argument("--classp-args", default=None, help="optim_args for CLASSP runs (default: none, the defaults)")
    parser.add_argument("--tasks", type=int, default=1, help="the first N tasks of the queue (default 1)")
    parser.add_argument("--train-samples", type=int, default=640, help="max_train_samples per task (default 640)")
    parser.add_argument("--eval-samples", type=int, default=200, help="max_eval_samples per task (default 200)")
    parser.add_argument("--validation-fraction", type=float, default=0.2, help="(default 0.2)")
    parser.add_argument("--epochs", type=float, default=2.0, help="num_train_epochs per task (default 2)")
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the grid (resumably), prints and writes the summary; returns the exit code."""
    args = make_parser().parse_args(argv)
    try:
        settings = parse_grid(args.grid, args.classp_args)
        env = run_environment()
    except ValueError as error:
        print(f"lora_lr_sweep: {error}", file=sys.stderr)
        return 2
    out = args.output_dir.resolve()
    records, failures = [], 0
    for setting in settings:
        config_path = out / "configs" / f"{setting.name}.yaml"
        config = sweep_config(setting, args)
        write_config(config, config_path, setting)
        record = RunRecord(setting, out / setting.name, config_path)
        wall_file = out / f"{setting.name}.wall.json"
        if is_complete(record.output_dir, config_path):
            record.skipped = True
            record.wall_seconds = (_read_json(wall_file) or {}).get("wall_seconds")
            print(f"[lora_lr_sweep] {setting.name}: complete, skipped", flush=True)
        else:
            started = time.strftime("%H:%M:%S")
            print(f"[lora_lr_sweep] {setting.name}: running (started {started})", flush=True)
            run_setting(record, out / "logs" / f"{setting.name}.log", env)
            failures += record.return_code != 0
            wall_file.write_text(json.dumps({"wall_seconds": round(record.wall_seconds or 0.0, 1)}), encoding="utf-8")
        record.results = _read_json(record.output_dir / "results.json")
        records.append(record)
    entries = [summarise(record) for record in records]
    tasks = next((e for e in (r.results for r in records) if e), {}).get("tasks", [])
    meta = {
        "tasks": tasks,
        "train_samples": args.train_samples,
        "eval_samples": args.eval_samples,
        "validation_fraction": args.validation_fraction,
        "epochs": args.epochs,
        "seed": args.seed,
        "classp_args": args.classp_args,
        "command": " ".join(["benchmarks/lora_lr_sweep.py", *(argv if argv is not None else sys.argv[1:])]),
    }
    (out / "summary.json").write_text(json.dumps({"meta": meta, "runs": entries}, indent=2) + "\n", encoding="utf-8")
    markdown = format_markdown(entries, meta)
    (out / "summary.md").write_text(markdown, encoding="utf-8")
    print(markdown)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
