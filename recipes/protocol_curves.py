"""Single-task learning curves on validation: the sizes at which every task of the queue is learned (docs/protocol.md).

    python recipes/protocol_curves.py run --output runs/protocol/curves.jsonl \\
        --tasks financial_phrasebank imdb airline_tweets amazon_reviews --optimizers classp adamw \\
        --max-length 128 --max-train-samples 1000 --epochs 2 --eval-every 25 --schedule linear
    python recipes/protocol_curves.py table runs/protocol/curves.jsonl
    python recipes/protocol_curves.py plot runs/protocol/curves.jsonl --output docs/figures/protocol_curves.png

``run`` trains each task of the base config alone from the pretrained model, as a ``classp-hf run`` of that one
task would (the run's seeded sample and validation split, its head, its ``TrainingArguments``, a
``classp_hf.Trainer``), and evaluates the validation accuracy (argmax over the shared labels, as ``results.json``)
before training and every ``--eval-every`` steps. Each finished run is appended to the JSON Lines file as one
record, so a kill loses at most the run in progress; runs already in the file are skipped. ``table`` prints the
final accuracy against each task's majority class; ``plot`` draws the curves, one panel per task.

Under a linear schedule the accuracy at step k of an N-step run is not that of a k-step run (the learning rate has
not decayed yet); under ``--schedule constant`` it is.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = REPO / "recipes" / "configs" / "sentiment_queue.yaml"
#: The optimizers compared, at their chosen points (docs/results.md): CLASSP lr 1e-3 threshold 0, AdamW lr 5e-5.
OPTIMIZERS: Mapping[str, Mapping[str, Any]] = {
    "classp": {"training.optim": "classp", "training.learning_rate": 1.0e-3, "training.optim_args": "threshold=0"},
    "adamw": {"training.optim": "adamw_torch", "training.learning_rate": 5.0e-5, "training.optim_args": None},
}
#: A record's fields that identify its run (a run whose key is already in the file is skipped).
KEY_FIELDS = (
    "config",
    "task",
    "optimizer",
    "learning_rate",
    "max_length",
    "max_train_samples",
    "epochs",
    "schedule",
    "seed",
)
#: How far above its majority class a task must end to count as learned (issue 18: majority + 15 points).
LEARNED_MARGIN = 0.15


def run_key(record: Mapping[str, Any]) -> tuple[Any, ...]:
    """The fields that identify a run (its config, task, optimizer and sizes)."""
    return tuple(record.get(name) for name in KEY_FIELDS)


def read_records(path: Path) -> list[dict[str, Any]]:
    """The records of a JSON Lines file (none if it does not exist); a line cut short by a kill is dropped."""
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def majority_share(labels: Iterable[int]) -> tuple[int, float]:
    """The most common label and its share of ``labels`` (a constant classifier's accuracy)."""
    counts = Counter(int(label) for label in labels)
    label, count = counts.most_common(1)[0]
    return label, count / sum(counts.values())


def curve_from_history(log_history: Sequence[Mapping[str, Any]]) -> list[dict[str, float]]:
    """The ``(step, accuracy)`` points of a Trainer's ``state.log_history`` (its ``eval_accuracy`` entries)."""
    points: dict[int, float] = {}
    for entry in log_history:
        if "eval_accuracy" in entry:
            points[int(entry["step"])] = float(entry["eval_accuracy"])
    return [{"step": step, "accuracy": points[step]} for step in sorted(points)]


def learning_rates(pairs: Sequence[str]) -> dict[str, float]:
    """``--learning-rate adamw=1e-4 ...``: each optimizer's learning rate, :data:`OPTIMIZERS`' where not given."""
    rates = {name: float(point["training.learning_rate"]) for name, point in OPTIMIZERS.items()}
    for pair in pairs:
        name, _, value = pair.partition("=")
        if name not in OPTIMIZERS:
            raise SystemExit(
                f"--learning-rate: unknown optimizer {name!r} in {pair!r} (known: {', '.join(OPTIMIZERS)})"
            )
        try:
            rates[name] = float(value)
        except ValueError:
            raise SystemExit(f"--learning-rate: {pair!r} is not NAME=NUMBER") from None
        if not rates[name] > 0:
            raise SystemExit(f"--learning-rate: {pair!r} must be positive")
    return rates


def overrides_for(task: str, optimizer: str, args: argparse.Namespace) -> dict[str, Any]:
    """The dotted-key overrides of one run: the optimizer's point and the sizes on the command line."""
    if optimizer not in OPTIMIZERS:
        raise SystemExit(f"--optimizers: unknown optimizer {optimizer!r} (known: {', '.join(OPTIMIZERS)})")
    return {
        **OPTIMIZERS[optimizer],
        "training.learning_rate": learning_rates(args.learning_rate)[optimizer],
        "max_length": args.max_length,
        "seed": args.seed,
        "validation_fraction": args.validation_fraction,
        f"tasks.{task}.max_train_samples": args.max_train_samples,
        "training.num_train_epochs": args.epochs,
        "training.per_device_train_batch_size": args.batch_size,
        "training.per_device_eval_batch_size": 64,
        "training.lr_scheduler_type": args.schedule,
        "training.eval_strategy": "steps",
        "training.eval_steps": args.eval_every,
        "training.logging_steps": args.eval_every,
        "training.disable_tqdm": True,
    }


def train_one(config_path: Path, task: str, optimizer: str, args: argparse.Namespace) -> dict[str, Any]:
    """Trains ``task`` alone with ``optimizer`` and returns its record (the validation curve and the sizes).

    Args:
        config_path: the base run config (its model, labels and tasks).
        task: the name of one of its tasks.
        optimizer: a key of :data:`OPTIMIZERS`.
        args: the parsed command line (sizes, schedule, evaluation interval).

    Returns:
        The run's record (JSON-serialisable).
    """
    from transformers import DataCollatorWithPadding

    from classp_hf import Trainer
    from classp_hf.continual.config import load_config, parse_yaml
    from classp_hf.continual.runner import ContinualRunner
    from classp_hf.metrics import load_metric

    raw = parse_yaml(config_path.read_text(encoding="utf-8"))
    names = [item["name"] for item in raw["tasks"]]
    if task not in names:
        raise SystemExit(f"--tasks: {config_path} has no task {task!r} (tasks: {', '.join(names)})")
    config = load_config(config_path, overrides_for(task, optimizer, args))
    config = dataclasses.replace(config, tasks=[t for t in config.tasks if t.name == task])
    accuracy = load_metric("accuracy")

    def compute_metrics(prediction: Any) -> dict[str, float]:
        logits = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
        return accuracy.compute(predictions=logits.argmax(-1), references=prediction.label_ids)

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="protocol_curves_") as folder:
        runner = ContinualRunner(config, Path(folder), log=False)
        runner.setup()  # the tokenizer, the task's seeded sample and validation split, the model under the run's seed
        data = runner.tasks[0]
        if data.validation is None:
            raise SystemExit("--validation-fraction: must be > 0 (the curves are measured on validation)")
        trainer = Trainer(
            model=runner.model,
            args=runner.task_args[0],
            train_dataset=data.train,
            eval_dataset=data.validation,
            data_collator=DataCollatorWithPadding(runner.tokenizer),
            processing_class=runner.tokenizer,
            compute_metrics=compute_metrics,
        )
        untrained = trainer.evaluate()  # step 0 (train() starts a new log history)
        output = trainer.train()
        if trainer.state.global_step % args.eval_every:
            trainer.evaluate()  # the last step, when the interval does not end on it
        curve = curve_from_history([{**untrained, "step": 0}, *trainer.state.log_history])
    majority_label, majority = majority_share(data.validation["labels"])
    return {
        "config": config_path.name,
        "task": task,
        "optimizer": optimizer,
        "optim": config.training["optim"],
        "learning_rate": config.training["learning_rate"],
        "optim_args": config.training.get("optim_args"),
        "max_length": args.max_length,
        "max_train_samples": args.max_train_samples,
        "train_examples": len(data.train),
        "validation_examples": len(data.validation),
        "batch_size": args.batch_size,
        "epochs": args.epochs,
        "steps": trainer.state.global_step,
        "schedule": args.schedule,
        "seed": args.seed,
        "eval_every": args.eval_every,
        "majority_label": config.labels[majority_label],
        "majority": majority,
        "curve": curve,
        "final_accuracy": curve[-1]["accuracy"],
        "best_accuracy": max(point["accuracy"] for point in curve),
        "train_seconds": float(output.metrics["train_runtime"]),
        "wall_seconds": time.perf_counter() - started,
    }


def summary_rows(records: Sequence[Mapping[str, Any]], margin: float = LEARNED_MARGIN) -> list[dict[str, Any]]:
    """One row per record: final validation accuracy against the task's majority class, and whether it is learned.

    Args:
        records: run records (``run``'s JSON Lines).
        margin: how far above the majority share the final accuracy must be to count as learned.

    Returns:
        Rows sorted by task, tokens, training examples, schedule and optimizer; ``learned`` is ``final >=
        majority + margin``.
    """
    rows = []
    for record in records:
        final, majority = record["final_accuracy"], record["majority"]
        rows.append(
            {
                "task": record["task"],
                "optimizer": record["optimizer"],
                "learning_rate": record["learning_rate"],
                "max_length": record["max_length"],
                "train_examples": record["train_examples"],
                "steps": record["steps"],
                "schedule": record["schedule"],
                "majority": majority,
                "final": final,
                "best": record["best_accuracy"],
                "margin": final - majority,
                "learned": final >= majority + margin - 1e-9,
                "minutes": record["wall_seconds"] / 60,
            }
        )
    order = ("task", "max_length", "train_examples", "steps", "schedule", "optimizer", "learning_rate")
    return sorted(rows, key=lambda row: tuple(row[name] for name in order))


def markdown_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """The summary rows as a Markdown table (accuracies in %)."""
    lines = [
        "| task | optimizer | lr | tokens | train ex. | steps | schedule | majority | final val. acc | best | "
        "final - majority | learned (+15) | min |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['task']} | {row['optimizer']} | {row['learning_rate']:g} | {row['max_length']} "
            f"| {row['train_examples']} | {row['steps']} "
            f"| {row['schedule']} | {100 * row['majority']:.1f} | {100 * row['final']:.1f} | {100 * row['best']:.1f} "
            f"| {100 * row['margin']:+.1f} | {'yes' if row['learned'] else 'no'} | {row['minutes']:.1f} |"
        )
    return "\n".join(lines)


def plot_curves(records: Sequence[Mapping[str, Any]], output: Path, margin: float = LEARNED_MARGIN) -> None:
    """One panel per task: validation accuracy over steps per run, the majority share and majority + margin."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(dict.fromkeys(record["task"] for record in records))
    columns = min(2, len(tasks))
    rows = (len(tasks) + columns - 1) // columns
    figure, axes = plt.subplots(rows, columns, figsize=(6 * columns, 3.8 * rows), squeeze=False)
    colours = {"classp": "tab:red", "adamw": "tab:blue"}
    other_lr = {"classp": "tab:orange", "adamw": "tab:cyan"}  # a learning rate other than OPTIMIZERS'
    styles = {64: ":", 128: "-", 256: "--"}
    markers = {1.0: "v", 2.0: "o", 4.0: "^"}  # by epochs (squares: a constant schedule)
    for axis, task in zip(axes.flat, tasks):
        runs = [record for record in records if record["task"] == task]
        for record in runs:
            steps = [point["step"] for point in record["curve"]]
            values = [100 * point["accuracy"] for point in record["curve"]]
            constant = record["schedule"] == "constant"
            default_lr = OPTIMIZERS.get(record["optimizer"], {}).get("training.learning_rate")
            palette = colours if record["learning_rate"] == default_lr else other_lr
            axis.plot(
                steps,
                values,
                linestyle=styles.get(record["max_length"], "-."),
                marker="s" if constant else markers.get(float(record["epochs"]), "D"),
                markersize=3,
                linewidth=1.8 if constant else 1.0,
                alpha=1.0 if constant else 0.45,
                color=palette.get(record["optimizer"], "tab:gray"),
                label=f"{record['optimizer']} lr {record['learning_rate']:g}, {record['train_examples']} train, "
                f"{record['max_length']} tok, {record['schedule']}, {record['steps']} steps",
            )
        # the majority lines of the newest run at a constant schedule (the protocol's) where there is one
        reference = next((record for record in reversed(runs) if record["schedule"] == "constant"), runs[0])
        majority = 100 * reference["majority"]
        axis.axhline(majority, color="black", linewidth=0.8, label=f"majority ({majority:.1f}%)")
        axis.axhline(majority + 100 * margin, color="black", linestyle="--", linewidth=0.8, label="majority + 15")
        axis.set_title(f"{task} ({reference['train_examples']} train, {reference['validation_examples']} validation)")
        axis.set_xlabel("step (batch 16)")
        axis.set_ylabel("validation accuracy (%)")
        axis.set_ylim(0, 100)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=6, loc="lower right")
    for axis in list(axes.flat)[len(tasks) :]:
        axis.set_visible(False)
    figure.suptitle(
        "Each task trained alone: MiniLM, CLASSP (red; orange: lr other than 1e-3) vs AdamW (blue; cyan: lr other "
        "than 5e-5), seed 0\nbold squares: a constant learning rate (the protocol); faint: linear (circles 2 epochs, "
        "triangles 4)",
        fontsize=9,
    )
    figure.tight_layout()
    output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(output, dpi=110)
    plt.close(figure)


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="train tasks alone and append their validation curves to --output")
    run.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="base run config (model, labels, tasks)")
    run.add_argument("--output", type=Path, required=True, help="JSON Lines file the records are appended to")
    run.add_argument("--tasks", nargs="+", required=True, help="task names of the config, each trained alone")
    run.add_argument("--optimizers", nargs="+", default=list(OPTIMIZERS), help=f"of {', '.join(OPTIMIZERS)}")
    run.add_argument(
        "--learning-rate", nargs="+", default=[], metavar="NAME=LR", help="e.g. adamw=1e-4 (default: OPTIMIZERS')"
    )
    run.add_argument("--max-length", type=int, default=128)
    run.add_argument("--max-train-samples", type=int, default=1000, help="before the validation split is held out")
    run.add_argument("--validation-fraction", type=float, default=0.2)
    run.add_argument("--epochs", type=float, default=2.0)
    run.add_argument("--batch-size", type=int, default=16)
    run.add_argument("--schedule", choices=("linear", "constant"), default="linear")
    run.add_argument("--eval-every", type=int, default=25, help="steps between validation evaluations")
    run.add_argument("--seed", type=int, default=0)
    table = commands.add_parser("table", help="print the final accuracies against the majority class (Markdown)")
    table.add_argument("records", type=Path)
    plot = commands.add_parser("plot", help="draw the curves, one panel per task")
    plot.add_argument("records", type=Path)
    plot.add_argument("--output", type=Path, required=True, help="the PNG to write")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    if args.command == "run":
        for optimizer in args.optimizers:  # checked before anything runs
            overrides_for(args.tasks[0], optimizer, args)
        for task in args.tasks:
            for optimizer in args.optimizers:
                planned = {
                    "config": args.config.name,
                    "task": task,
                    "optimizer": optimizer,
                    "learning_rate": learning_rates(args.learning_rate)[optimizer],
                    "max_length": args.max_length,
                    "max_train_samples": args.max_train_samples,
                    "epochs": args.epochs,
                    "schedule": args.schedule,
                    "seed": args.seed,
                }
                if run_key(planned) in {run_key(record) for record in read_records(args.output)}:
                    print(f"[protocol] {task} / {optimizer}: already in {args.output}, skipped", flush=True)
                    continue
                record = train_one(args.config, task, optimizer, args)
                args.output.parent.mkdir(parents=True, exist_ok=True)
                with args.output.open("a", encoding="utf-8") as handle:
                    handle.write(json.dumps(record) + "\n")
                points = " ".join(f"{p['step']}:{100 * p['accuracy']:.1f}" for p in record["curve"])
                print(
                    f"[protocol] {task} / {optimizer} lr {record['learning_rate']:g} / {args.max_length} tok / "
                    f"{args.schedule}: "
                    f"majority {100 * record['majority']:.1f}%, curve {points} ({record['wall_seconds']:.0f} s)",
                    flush=True,
                )
        return 0
    records = read_records(args.records)
    if not records:
        raise SystemExit(f"{args.records}: no records")
    if args.command == "table":
        print(markdown_table(summary_rows(records)))
    else:
        plot_curves(records, args.output)
        print(f"[protocol] wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
