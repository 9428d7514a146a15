"""Times one optimizer step of CLASSP against torch.optim's Adagrad, SGD and AdamW.

Each optimizer steps on fresh float32 parameters with the shapes of a real model and synthetic
gradients ``randn * 2e-5`` (about the per-element gradient size of a fine-tuned MiniLM), so
``threshold=1e-10`` (``|g| > 1e-5``) masks out roughly 38% of the elements. The reported time is
the median of ``--repeats`` single steps after warm-up, measured with :func:`time.perf_counter`
(and :func:`torch.cuda.synchronize` on CUDA), all in the same run so the ratios are comparable.

Usage::

    python benchmarks/optimizer_step.py                      # MiniLM and bert-base shapes
    python benchmarks/optimizer_step.py --quick              # MiniLM shapes only, few repeats
    python benchmarks/optimizer_step.py --device cuda --json results.json

The targets (CLASSP foreach within 1.2x of Adagrad foreach at threshold 0, within 1.5x with a
threshold) are printed for information; the exit code does not depend on them.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
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

#: Learning rate given to every optimizer (the value does not change the cost of a step).
LR = 1e-3
#: Scale of the synthetic gradients: about the per-element |g| of MiniLM fine-tuned at batch 16.
GRAD_SCALE = 2e-5
#: Threshold on g**2 for the masked CLASSP rows: with GRAD_SCALE it keeps |z| > 0.5, ~62% of elements.
DEFAULT_THRESHOLD = 1e-10
#: Target ratios of CLASSP foreach to Adagrad foreach (informational).
TARGET_RATIO_NO_THRESHOLD = 1.2
TARGET_RATIO_THRESHOLD = 1.5
#: Name of the baseline row the ratios are taken against.
BASELINE = "adagrad_foreach"


@dataclass(frozen=True)
class BertShape:
    """The sizes that fix the parameter shapes of a ``BertForSequenceClassification``."""

    vocab_size: int = 30522
    hidden_size: int = 384
    num_hidden_layers: int = 6
    intermediate_size: int = 1536
    num_attention_heads: int = 12
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    num_labels: int = 3


#: Parameter sets: sentence-transformers/all-MiniLM-L6-v2 and bert-base-uncased, each with a
#: 3-label classifier head.
PARAMETER_SETS: dict[str, BertShape] = {
    "minilm": BertShape(),
    "bert-base": BertShape(hidden_size=768, num_hidden_layers=12, intermediate_size=3072),
}


def bert_parameter_shapes(shape: BertShape) -> list[tuple[str, tuple[int, ...]]]:
    """Returns ``(name, shape)`` for every parameter of ``BertForSequenceClassification``.

    The names and order are those of ``model.named_parameters()`` in transformers (checked
    against a meta-device model by ``tests/test_benchmark.py``); nothing is downloaded.

    Args:
        shape (`BertShape`): the model sizes.

    Returns:
        A list of ``(name, shape)`` pairs.
    """
    h, i = shape.hidden_size, shape.intermediate_size
    out: list[tuple[str, tuple[int, ...]]] = [
        ("bert.embeddings.word_embeddings.weight", (shape.vocab_size, h)),
        ("bert.embeddings.position_embeddings.weight", (shape.max_position_embeddings, h)),
        ("bert.embeddings.token_type_embeddings.weight", (shape.type_vocab_size, h)),
        ("bert.embeddings.LayerNorm.weight", (h,)),
        ("bert.embeddings.LayerNorm.bias", (h,)),
    ]
    for layer in range(shape.num_hidden_layers):
        prefix = f"bert.encoder.layer.{layer}"
        for name in ("query", "key", "value"):
            out += [(f"{prefix}.attention.self.{name}.weight", (h, h)), (f"{prefix}.attention.self.{name}.bias", (h,))]
        out += [
            (f"{prefix}.attention.output.dense.weight", (h, h)),
            (f"{prefix}.attention.output.dense.bias", (h,)),
            (f"{prefix}.attention.output.LayerNorm.weight", (h,)),
            (f"{prefix}.attention.output.LayerNorm.bias", (h,)),
            (f"{prefix}.intermediate.dense.weight", (i, h)),
            (f"{prefix}.intermediate.dense.bias", (i,)),
            (f"{prefix}.output.dense.weight", (h, i)),
            (f"{prefix}.output.dense.bias", (h,)),
            (f"{prefix}.output.LayerNorm.weight", (h,)),
            (f"{prefix}.output.LayerNorm.bias", (h,)),
        ]
    out += [
        ("bert.pooler.dense.weight", (h, h)),
        ("bert.pooler.dense.bias", (h,)),
        ("classifier.weight", (shape.num_labels, h)),
        ("classifier.bias", (shape.num_labels,)),
    ]
    return out


@dataclass(frozen=True)
class OptimizerSpec:
    """One row of the benchmark: a name, a label and a factory taking the parameter list."""

    name: str
    label: str
    factory: Callable[[list[Tensor]], torch.optim.Optimizer]
    threshold: float | None = None


def optimizer_specs(threshold: float = DEFAULT_THRESHOLD) -> list[OptimizerSpec]:
    """Returns the optimizers to time, CLASSP first and the torch.optim baselines after.

    Args:
        threshold (`float`): the threshold of the masked CLASSP rows.
    """

    def classp(foreach: bool, tau: float, mode: str = "absolute") -> Callable[[list[Tensor]], torch.optim.Optimizer]:
        return lambda params: CLASSP(params, lr=LR, threshold=tau, threshold_mode=mode, foreach=foreach)

    return [
        OptimizerSpec("classp_single", "CLASSP single-tensor, threshold 0", classp(False, 0.0), 0.0),
        OptimizerSpec(
            "classp_single_threshold",
            f"CLASSP single-tensor, threshold {threshold:g}",
            classp(False, threshold),
            threshold,
        ),
        OptimizerSpec("classp_foreach", "CLASSP foreach, threshold 0", classp(True, 0.0), 0.0),
        OptimizerSpec(
            "classp_foreach_threshold", f"CLASSP foreach, threshold {threshold:g}", classp(True, threshold), threshold
        ),
        OptimizerSpec("classp_foreach_relative", "CLASSP foreach, relative 1.0", classp(True, 1.0, "relative"), 1.0),
        OptimizerSpec("classp_foreach_quantile", "CLASSP foreach, quantile 0.1", classp(True, 0.1, "quantile"), 0.1),
        OptimizerSpec(BASELINE, "Adagrad foreach", lambda params: torch.optim.Adagrad(params, lr=LR, foreach=True)),
        OptimizerSpec("sgd_foreach", "SGD foreach", lambda params: torch.optim.SGD(params, lr=LR, foreach=True)),
        OptimizerSpec("adamw_foreach", "AdamW foreach", lambda params: torch.optim.AdamW(params, lr=LR, foreach=True)),
    ]


def state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Returns the bytes held by the tensors in ``optimizer.state`` (``None`` entries count 0)."""
    total = 0
    for state in optimizer.state.values():
        for value in state.values():
            if isinstance(value, Tensor):
                total += value.numel() * value.element_size()
    return total


def _load_per_core() -> float | None:
    """Returns the 1-minute load average per CPU core, or `None` where the OS does not report it."""
    try:
        return os.getloadavg()[0] / (os.cpu_count() or 1)
    except (AttributeError, OSError):
        return None


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_step(optimizer: torch.optim.Optimizer, device: torch.device) -> float:
    """Returns the seconds one ``optimizer.step()`` takes, synchronising CUDA before and after."""
    _synchronize(device)
    start = time.perf_counter()
    optimizer.step()
    _synchronize(device)
    return time.perf_counter() - start


def make_tensors(shapes: Sequence[tuple[int, ...]], device: torch.device, seed: int, scale: float) -> list[Tensor]:
    """Returns float32 ``randn * scale`` tensors with the given shapes, reproducibly."""
    generator = torch.Generator().manual_seed(seed)
    return [(torch.randn(shape, generator=generator) * scale).to(device) for shape in shapes]


def benchmark_parameter_set(
    set_name: str,
    shape: BertShape,
    specs: Sequence[OptimizerSpec],
    device: torch.device,
    *,
    warmup: int,
    repeats: int,
    log: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """Times every optimizer on one parameter set and returns one result row per optimizer.

    Each optimizer gets its own copy of the same initial parameters; the gradients are shared (no
    optimizer here writes to ``p.grad``). After ``warmup`` untimed rounds, the optimizers are timed
    round-robin, one step each per round with the order rotated every round, so a burst of
    background load or a clock change falls on all of them alike rather than on one.
    """
    shapes = [s for _, s in bert_parameter_shapes(shape)]
    num_params = sum(math.prod(s) for s in shapes)
    log(f"[{set_name}] {len(shapes)} tensors, {num_params / 1e6:.2f}M parameters, device {device}")
    initial = make_tensors(shapes, torch.device("cpu"), seed=0, scale=0.02)
    grads = make_tensors(shapes, device, seed=1, scale=GRAD_SCALE)
    optimizers = []
    for spec in specs:
        params = [p.to(device, copy=True).requires_grad_(True) for p in initial]
        for p, g in zip(params, grads, strict=True):
            p.grad = g
        optimizers.append(spec.factory(params))
    del initial
    for _ in range(warmup):
        for optimizer in optimizers:
            optimizer.step()
    _synchronize(device)
    times: list[list[float]] = [[] for _ in specs]
    for round_index in range(repeats):
        shift = round_index % len(specs)
        for index in list(range(len(specs)))[shift:] + list(range(len(specs)))[:shift]:
            times[index].append(time_step(optimizers[index], device))
    rows: list[dict[str, Any]] = []
    for spec, optimizer, seconds in zip(specs, optimizers, times, strict=True):
        update_fraction = optimizer.diagnostics()[0]["update_fraction"] if isinstance(optimizer, CLASSP) else None
        nbytes = state_bytes(optimizer)
        rows.append(
            dict(
                parameter_set=set_name,
                optimizer=spec.name,
                label=spec.label,
                threshold=spec.threshold,
                num_params=num_params,
                num_tensors=len(shapes),
                ms_per_step=1e3 * statistics.median(seconds),
                ms_min=1e3 * min(seconds),
                ms_all=[1e3 * t for t in seconds],
                state_bytes=nbytes,
                state_bytes_per_param=nbytes / num_params,
                update_fraction=update_fraction,
            )
        )
        log(f"[{set_name}] {spec.label}: {rows[-1]['ms_per_step']:.2f} ms")
    del optimizers
    gc.collect()
    baseline = next((r["ms_per_step"] for r in rows if r["optimizer"] == BASELINE), None)
    for row in rows:
        row["ratio_to_adagrad"] = None if baseline is None else row["ms_per_step"] / baseline
    return rows


@dataclass(frozen=True)
class TargetCheck:
    """Whether one CLASSP foreach row is within its target ratio of Adagrad foreach."""

    parameter_set: str
    optimizer: str
    ratio: float
    target: float
    met: bool


def check_targets(rows: Sequence[dict[str, Any]]) -> list[TargetCheck]:
    """Compares the CLASSP foreach rows with their targets (1.2x at threshold 0, 1.5x with one)."""
    targets = {"classp_foreach": TARGET_RATIO_NO_THRESHOLD, "classp_foreach_threshold": TARGET_RATIO_THRESHOLD}
    checks = []
    for row in rows:
        target = targets.get(row["optimizer"])
        if target is None or row["ratio_to_adagrad"] is None:
            continue
        ratio = row["ratio_to_adagrad"]
        checks.append(TargetCheck(row["parameter_set"], row["optimizer"], ratio, target, ratio <= target))
    return checks


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """Returns the results as a plain-text table, one block per parameter set."""
    header = (
        f"{'parameter set':<14} {'optimizer':<40} {'ms/step':>10} {'vs Adagrad':>10} {'state B/param':>14} "
        f"{'updated':>8}"
    )
    lines = [header, "-" * len(header)]
    for row in rows:
        ratio = "-" if row["ratio_to_adagrad"] is None else f"{row['ratio_to_adagrad']:.2f}x"
        updated = "" if row["update_fraction"] is None else f"{row['update_fraction']:.1%}"
        lines.append(
            f"{row['parameter_set']:<14} {row['label']:<40} {row['ms_per_step']:>10.2f} {ratio:>10} "
            f"{row['state_bytes_per_param']:>14.4f} {updated:>8}".rstrip()
        )
    return "\n".join(lines)


def format_targets(checks: Sequence[TargetCheck]) -> str:
    """Returns one line per target check."""
    lines = ["Targets (informational): CLASSP foreach vs Adagrad foreach"]
    for check in checks:
        status = "met" if check.met else f"MISSED by {check.ratio / check.target - 1:.0%}"
        ratio = f"{check.ratio:.2f}x (target <= {check.target:.1f}x)"
        lines.append(f"  {check.parameter_set:<10} {check.optimizer:<26} {ratio}: {status}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    """Returns the command-line parser."""
    parser = argparse.ArgumentParser(
        description="Times one optimizer step of CLASSP against torch.optim's Adagrad, SGD and AdamW."
    )
    parser.add_argument("--quick", action="store_true", help="MiniLM shapes only, few repeats (< 60 s on 2 CPU cores)")
    parser.add_argument("--device", default="cpu", help="device to run on: cpu (default) or cuda[:N]")
    parser.add_argument(
        "--repeats", type=int, default=None, help="timed steps per optimizer (default 10, 3 with --quick)"
    )
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 2, 1 with --quick)")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch.set_num_threads before timing (default: torch's own choice)"
    )
    parser.add_argument(
        "--threshold", type=float, default=DEFAULT_THRESHOLD, help="threshold of the masked CLASSP rows"
    )
    parser.add_argument(
        "--sets",
        nargs="+",
        choices=sorted(PARAMETER_SETS),
        default=None,
        help="parameter sets to time (default: all, or minilm with --quick)",
    )
    parser.add_argument("--json", type=Path, default=None, metavar="PATH", help="write the results as JSON to PATH")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the benchmark, prints the table and the targets, and optionally writes JSON.

    Args:
        argv (`Sequence[str]`, *optional*): command-line arguments; ``sys.argv[1:]`` if `None`.

    Returns:
        The exit code: 0, or 2 when CUDA is asked for but not available (bad arguments exit
        through argparse, also with 2).
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    repeats = args.repeats if args.repeats is not None else (3 if args.quick else 10)
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 2)
    if repeats < 1 or warmup < 0:
        parser.error("--repeats must be >= 1 and --warmup >= 0")
    if args.threads is not None and args.threads < 1:
        parser.error("--threads must be >= 1")
    if not args.threshold > 0.0:
        parser.error("--threshold must be > 0 (threshold 0 is always timed)")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("CUDA was asked for but is not available", file=sys.stderr)
        return 2
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    set_names = args.sets or (["minilm"] if args.quick else list(PARAMETER_SETS))
    specs = optimizer_specs(args.threshold)

    load = _load_per_core()
    if load is not None and load > 0.25:
        print(
            f"Note: load average {load:.2f} per core before the run; other processes make the times noisy "
            "(the optimizers are interleaved so the ratios suffer less than the absolute times)."
        )
    start = time.perf_counter()
    rows: list[dict[str, Any]] = []
    for set_name in set_names:
        rows += benchmark_parameter_set(
            set_name, PARAMETER_SETS[set_name], specs, device, warmup=warmup, repeats=repeats
        )
    elapsed = time.perf_counter() - start
    checks = check_targets(rows)

    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    print()
    print(
        f"One optimizer step, float32, median of {repeats} after {warmup} warm-up rounds; "
        f"device {device} ({device_name}), torch {torch.__version__}, {torch.get_num_threads()} threads; "
        f"grads randn * {GRAD_SCALE:g}"
    )
    print(format_table(rows))
    print()
    print(format_targets(checks))
    print(f"\nTotal benchmark time: {elapsed:.1f} s")

    if args.json is not None:
        result = dict(
            device=str(device),
            device_name=device_name,
            torch_version=torch.__version__,
            num_threads=torch.get_num_threads(),
            repeats=repeats,
            warmup=warmup,
            threshold=args.threshold,
            grad_scale=GRAD_SCALE,
            quick=args.quick,
            elapsed_s=elapsed,
            load_per_core_before=load,
            rows=rows,
            targets=[asdict(check) for check in checks],
        )
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        print(f"Wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
