"""Times one optimizer step of CLASSP against torch.optim's Adagrad, AdamW and SGD, on real gradients.

The gradients are those of one real batch (16 x 64 tokens of the embedded quick-start sample) through
all-MiniLM-L6-v2 with a fresh 3-label head and through a randomly initialised bert-base (labelled as
such: no bert-base weights are available offline), recorded once (``benchmarks/real_gradients.py``).
On MiniLM about half of the gradient elements are exactly zero (the embedding rows of absent tokens),
which CLASSP skips. Every optimizer steps on the same parameters with the same gradients (each has its
own state); they are timed round-robin, one step each per round with the order rotated, so a burst of
background load falls on all alike. Reported per optimizer: the median step time, its ratio to Adagrad
foreach and to AdamW foreach, its share of a full training step (the forward and backward pass of the
same batch is timed in the same run), the state bytes per parameter, the peak memory a step allocates
on top of the state (``torch.profiler`` on the CPU, ``torch.cuda.max_memory_allocated`` on CUDA) and
CLASSP's share of updated elements.

Usage::

    python benchmarks/optimizer_step.py --threads 1          # MiniLM and bert-base
    python benchmarks/optimizer_step.py --quick              # MiniLM only, few repeats
    python benchmarks/optimizer_step.py --device cuda --json results.json

The CPU targets (ratios to Adagrad foreach: threshold 0 at most 0.6x, absolute at most 0.8x, relative
at most 1.0x, quantile at most 1.5x) are printed for information; the exit code does not depend on them.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent))
try:
    from classp_hf.optim import CLASSP
except ImportError:  # run from a checkout without installing the package
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from classp_hf.optim import CLASSP

import real_gradients  # noqa: E402  (a module beside this script)

#: Learning rate given to every optimizer (the value does not change the cost of a step).
LR = 1e-3
#: Threshold on g**2 of the absolute-mode rows: |g| > 1e-5, about the median encoder |g| of MiniLM at batch 16.
DEFAULT_THRESHOLD = 1e-10
#: Threshold of the relative-mode rows (g^2 > mean g^2) and fraction of the quantile-mode rows.
RELATIVE_THRESHOLD = 1.0
QUANTILE_FRACTION = 0.1
RELATIVE, QUANTILE = "relative", "quantile"
#: Name of the row the ratios are taken against, of the steadier second anchor (a fused step allocates
#: nothing, so its time does not swing with page faults as the foreach step's does), and of AdamW.
BASELINE = "adagrad_foreach"
FUSED_BASELINE = "adagrad_fused"
ADAMW = "adamw_foreach"
#: Informational targets: CLASSP foreach row -> at most this ratio to Adagrad foreach (CPU).
TARGETS = {
    "classp_foreach": 0.6,
    "classp_foreach_absolute": 0.8,
    "classp_foreach_relative": 1.0,
    "classp_foreach_quantile": 1.5,
}
#: Bytes a step of a dense fp32 update must move per parameter (read g, w, S; write w, S).
DENSE_BYTES_PER_PARAM = 20


@dataclass(frozen=True)
class OptimizerSpec:
    """One row of the benchmark.

    Args:
        name (`str`): a stable identifier (``classp_foreach_relative``).
        label (`str`): what the table prints.
        factory (`Callable`): builds the optimizer from a parameter list.
        threshold (`float`, *optional*): CLASSP's threshold (`None` for the baselines).
        state_bytes_per_param (`float`): about how much state it keeps (to fit a group in memory).
        compiles (`bool`): uses ``torch.compile`` (left out with ``--no-compile``).
    """

    name: str
    label: str
    factory: Callable[[list[Tensor]], torch.optim.Optimizer]
    threshold: float | None = None
    state_bytes_per_param: float = 4.0
    compiles: bool = False


class _DenseCLASSP(CLASSP):
    """CLASSP with row skipping turned off, to show what skipping saves (benchmark only)."""

    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        module = importlib.import_module("classp_hf.optim.classp")
        previous, module._SKIP_ROWS = module._SKIP_ROWS, False
        try:
            return super().step(closure)
        finally:
            module._SKIP_ROWS = previous


def _classp_factory(cls: type[CLASSP] = CLASSP, **kwargs: Any) -> Callable[[list[Tensor]], torch.optim.Optimizer]:
    return lambda params: cls(params, lr=LR, **kwargs)


def classp_specs(threshold: float = DEFAULT_THRESHOLD) -> list[OptimizerSpec]:
    """CLASSP's rows: every path (single-tensor, foreach, fused: compiled at its first, untimed step) in every
    threshold mode, the foreach and fused paths with S in bfloat16 and 8 bits, and the dense (no row
    skipping) foreach step at threshold 0."""
    modes = [
        ("", "threshold 0", dict(threshold=0.0)),
        ("_absolute", f"absolute {threshold:g}", dict(threshold=threshold)),
        (
            "_relative",
            f"relative {RELATIVE_THRESHOLD:g}",
            dict(threshold=RELATIVE_THRESHOLD, threshold_mode="relative"),
        ),
        ("_quantile", f"quantile {QUANTILE_FRACTION:g}", dict(threshold=QUANTILE_FRACTION, threshold_mode="quantile")),
    ]
    paths = [
        ("single", "single-tensor", dict(foreach=False)),
        ("foreach", "foreach", dict(foreach=True)),
        ("fused", "fused", dict(fused=True)),
    ]
    specs = [
        OptimizerSpec(
            f"classp_{path}{suffix}",
            f"CLASSP {path_label}, {mode_label}",
            _classp_factory(**path_kwargs, **mode_kwargs),
            mode_kwargs["threshold"],
            compiles=path == "fused",
        )
        for path, path_label, path_kwargs in paths
        for suffix, mode_label, mode_kwargs in modes
    ]
    for path, path_kwargs, compiles in (("foreach", dict(foreach=True), False), ("fused", dict(fused=True), True)):
        for state_dtype, nbytes in (("bfloat16", 2.0), ("8bit", 1.02)):
            specs.append(
                OptimizerSpec(
                    f"classp_{path}_{state_dtype}",
                    f"CLASSP {path}, threshold 0, {state_dtype} S",
                    _classp_factory(**path_kwargs, threshold=0.0, state_dtype=state_dtype),
                    0.0,
                    nbytes,
                    compiles,
                )
            )
    specs.append(
        OptimizerSpec(
            "classp_foreach_dense",
            "CLASSP foreach, threshold 0, no row skipping",
            _classp_factory(_DenseCLASSP, foreach=True, threshold=0.0),
            0.0,
        )
    )
    return specs


def _torch_fused_supported(cls: type[torch.optim.Optimizer], device: torch.device) -> bool:
    """Whether ``cls(fused=True)`` steps on ``device`` in this torch."""
    param = torch.nn.Parameter(torch.zeros(2, device=device))
    param.grad = torch.ones_like(param)
    try:
        cls([param], lr=LR, fused=True).step()
    except (RuntimeError, ValueError, TypeError):
        return False
    return True


def baseline_specs(device: torch.device) -> list[OptimizerSpec]:
    """The torch.optim rows: Adagrad and AdamW foreach (and fused where torch has it), SGD foreach."""
    adagrad, adamw, sgd = torch.optim.Adagrad, torch.optim.AdamW, torch.optim.SGD
    specs = [
        OptimizerSpec(BASELINE, "Adagrad foreach", lambda p: adagrad(p, lr=LR, foreach=True)),
        OptimizerSpec(ADAMW, "AdamW foreach", lambda p: adamw(p, lr=LR, foreach=True), None, 8.0),
    ]
    if _torch_fused_supported(adagrad, device):
        specs.append(OptimizerSpec("adagrad_fused", "Adagrad fused", lambda p: adagrad(p, lr=LR, fused=True)))
    if _torch_fused_supported(adamw, device):
        specs.append(OptimizerSpec("adamw_fused", "AdamW fused", lambda p: adamw(p, lr=LR, fused=True), None, 8.0))
    specs.append(OptimizerSpec("sgd_foreach", "SGD foreach", lambda p: sgd(p, lr=LR, foreach=True), None, 0.0))
    return specs


def optimizer_specs(
    device: torch.device, threshold: float = DEFAULT_THRESHOLD, compile_paths: bool = True
) -> list[OptimizerSpec]:
    """Every row, CLASSP first; ``compile_paths=False`` leaves out the rows that use ``torch.compile``."""
    specs = classp_specs(threshold) + baseline_specs(device)
    return [spec for spec in specs if compile_paths or not spec.compiles]


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


@contextmanager
def _silenced_stderr() -> Iterator[None]:
    """Sends the C++ side's stderr (the profiler's banner at every start and stop) to /dev/null."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def peak_step_bytes(optimizer: torch.optim.Optimizer, device: torch.device) -> int | None:
    """The most memory one step holds at once on top of what existed before it (temporaries, new state).

    On CUDA from ``torch.cuda.max_memory_allocated``; on the CPU from the allocation and free records of
    ``torch.profiler`` in time order (`None` where this torch does not expose them).
    """
    if device.type == "cuda":
        _synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        optimizer.step()
        _synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    from torch.profiler import ProfilerActivity, profile

    with _silenced_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        optimizer.step()
    try:
        records = [event for event in prof.profiler.kineto_results.events() if event.name() == "[memory]"]
    except AttributeError:
        return None
    live = peak = 0
    for record in sorted(records, key=lambda event: event.start_ns()):
        live += record.nbytes()
        peak = max(peak, live)
    return peak


def memory_groups(specs: Sequence[OptimizerSpec], num_params: int, budget_bytes: float) -> list[list[OptimizerSpec]]:
    """Splits the rows into groups whose states fit in ``budget_bytes``, the anchors (Adagrad foreach, and
    Adagrad fused where torch has it) first in each group.

    Every group is timed round-robin on its own, and its rows' ratios are taken to its own anchors.
    """
    anchors = [spec for spec in specs if spec.name in (BASELINE, FUSED_BASELINE)]
    others = [spec for spec in specs if spec.name not in (BASELINE, FUSED_BASELINE)]
    anchor_bytes = sum(spec.state_bytes_per_param for spec in anchors) * num_params
    groups: list[list[OptimizerSpec]] = []
    current, used = list(anchors), anchor_bytes
    for spec in others:
        need = spec.state_bytes_per_param * num_params
        if len(current) > len(anchors) and used + need > budget_bytes:
            groups.append(current)
            current, used = list(anchors), anchor_bytes
        current.append(spec)
        used += need
    groups.append(current)
    return groups


def _time_group(
    specs: Sequence[OptimizerSpec], params: list[Tensor], device: torch.device, *, warmup: int, repeats: int
) -> list[dict[str, Any]]:
    """Times one group round-robin and returns a partial row per optimizer (ratios not yet set)."""
    optimizers = [spec.factory(params) for spec in specs]
    for _ in range(max(warmup, 1)):  # at least one untimed step: state is made and paths compile there
        for optimizer in optimizers:
            optimizer.step()
    _synchronize(device)
    times: list[list[float]] = [[] for _ in specs]
    order = list(range(len(specs)))
    for round_index in range(repeats):
        shift = round_index % len(specs)
        for index in order[shift:] + order[:shift]:
            times[index].append(time_step(optimizers[index], device))
    rows = []
    for spec, optimizer, seconds in zip(specs, optimizers, times, strict=True):
        update_fraction = None
        if isinstance(optimizer, CLASSP):
            diagnostics = optimizer.diagnostics()
            updated = sum(d["update_fraction"] * d["numel"] for d in diagnostics)
            update_fraction = updated / max(sum(d["numel"] for d in diagnostics), 1)
        rows.append(
            dict(
                optimizer=spec.name,
                label=spec.label,
                threshold=spec.threshold,
                ms_per_step=1e3 * statistics.median(seconds),
                ms_min=1e3 * min(seconds),
                ms_all=[1e3 * t for t in seconds],
                state_bytes=state_bytes(optimizer),
                peak_step_bytes=peak_step_bytes(optimizer, device),
                update_fraction=update_fraction,
            )
        )
    return rows


def benchmark_model(
    recorded: real_gradients.RecordedGradients,
    specs: Sequence[OptimizerSpec],
    device: torch.device,
    *,
    warmup: int,
    repeats: int,
    memory_budget_bytes: float,
    log: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """Times every optimizer on one model's recorded gradients and returns one result row per optimizer."""
    num_params, zero_fraction = recorded.num_params, recorded.zero_fraction
    params = [p.to(device, copy=True).requires_grad_(True) for p in recorded.params]
    for param, grad in zip(params, recorded.grads, strict=True):
        param.grad = grad.to(device)
    log(
        f"[{recorded.model}] {recorded.label}: {len(params)} tensors, {num_params / 1e6:.2f}M parameters, "
        f"{zero_fraction:.1%} of the gradient exactly zero; forward+backward "
        f"{recorded.forward_backward_ms:.1f} ms"
    )
    rows: list[dict[str, Any]] = []
    for group_index, group in enumerate(memory_groups(specs, num_params, memory_budget_bytes)):
        group_rows = _time_group(group, params, device, warmup=warmup, repeats=repeats)
        gc.collect()  # the group's optimizers and their state
        anchors = {row["optimizer"]: row["ms_per_step"] for row in group_rows}
        for row in group_rows:
            row.update(
                group=group_index,
                group_baseline_ms=anchors[BASELINE],
                ratio_to_adagrad=row["ms_per_step"] / anchors[BASELINE],
                ratio_to_adagrad_fused=(
                    row["ms_per_step"] / anchors[FUSED_BASELINE] if FUSED_BASELINE in anchors else None
                ),
            )
            if group_index and row["optimizer"] in (BASELINE, FUSED_BASELINE):
                continue  # a later group's anchors: they only anchor that group's ratios
            rows.append(row)
            log(f"[{recorded.model}] {row['label']}: {row['ms_per_step']:.2f} ms ({row['ratio_to_adagrad']:.2f}x)")
    adamw = next((r for r in rows if r["optimizer"] == ADAMW), None)
    anchor = "ratio_to_adagrad_fused" if adamw is not None and adamw["ratio_to_adagrad_fused"] else "ratio_to_adagrad"
    for row in rows:
        row.update(
            parameter_set=recorded.model,
            model_label=recorded.label,
            num_params=num_params,
            num_tensors=len(params),
            state_bytes_per_param=row["state_bytes"] / num_params,
            ratio_to_adamw=None if adamw is None else row[anchor] / adamw[anchor],
            forward_backward_ms=recorded.forward_backward_ms,
            gradient_zero_fraction=zero_fraction,
            share_of_training_step=row["ms_per_step"] / (recorded.forward_backward_ms + row["ms_per_step"]),
            dense_bandwidth_gb_s=DENSE_BYTES_PER_PARAM * num_params / (row["ms_per_step"] * 1e6),
        )
    return rows


@dataclass(frozen=True)
class TargetCheck:
    """Whether one CLASSP row is within its target ratio of Adagrad foreach."""

    parameter_set: str
    optimizer: str
    ratio: float
    target: float
    met: bool


def check_targets(rows: Sequence[dict[str, Any]]) -> list[TargetCheck]:
    """Compares the CLASSP foreach rows with their targets (see :data:`TARGETS`)."""
    checks = []
    for row in rows:
        target = TARGETS.get(row["optimizer"])
        if target is None or row["ratio_to_adagrad"] is None:
            continue
        ratio = row["ratio_to_adagrad"]
        checks.append(TargetCheck(row["parameter_set"], row["optimizer"], ratio, target, ratio <= target))
    return checks


def format_table(rows: Sequence[dict[str, Any]], bandwidth: bool = False) -> str:
    """Returns the results as a plain-text table, one block per model."""
    header = (
        f"{'model':<10} {'optimizer':<46} {'ms/step':>9} {'vs Adagrad':>10} {'vs fused':>9} {'vs AdamW':>9} "
        f"{'of step':>8} {'state B/p':>9} {'peak MB':>8} {'updated':>8}"
    )
    if bandwidth:
        header += f" {'GB/s@20B':>9}"
    lines = [header, "-" * len(header)]
    for row in rows:
        adamw = "-" if row.get("ratio_to_adamw") is None else f"{row['ratio_to_adamw']:.2f}x"
        fused = "-" if row.get("ratio_to_adagrad_fused") is None else f"{row['ratio_to_adagrad_fused']:.2f}x"
        peak = "-" if row.get("peak_step_bytes") is None else f"{row['peak_step_bytes'] / 2**20:.1f}"
        updated = "" if row.get("update_fraction") is None else f"{row['update_fraction']:.1%}"
        line = (
            f"{row['parameter_set']:<10} {row['label']:<46} {row['ms_per_step']:>9.2f} "
            f"{row['ratio_to_adagrad']:>9.2f}x {fused:>9} {adamw:>9} {row['share_of_training_step']:>8.1%} "
            f"{row['state_bytes_per_param']:>9.3f} {peak:>8} {updated:>8}"
        )
        if bandwidth:
            line += f" {row['dense_bandwidth_gb_s']:>9.1f}"
        lines.append(line.rstrip())
    return "\n".join(lines)


def format_targets(checks: Sequence[TargetCheck]) -> str:
    """Returns one line per target check."""
    lines = ["Targets (informational): CLASSP foreach vs Adagrad foreach"]
    for check in checks:
        status = "met" if check.met else f"MISSED by {check.ratio / check.target - 1:.0%}"
        ratio = f"{check.ratio:.2f}x (target <= {check.target:.1f}x)"
        lines.append(f"  {check.parameter_set:<10} {check.optimizer:<26} {ratio}: {status}")
    return "\n".join(lines)


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def build_parser() -> argparse.ArgumentParser:
    """Returns the command-line parser."""
    parser = argparse.ArgumentParser(
        description="Times one optimizer step of CLASSP against torch.optim's Adagrad, AdamW and SGD on real gradients."
    )
    parser.add_argument("--quick", action="store_true", help="MiniLM only, few repeats (for the tests)")
    parser.add_argument("--device", default="cpu", help="device to run on: cpu (default) or cuda[:N]")
    parser.add_argument(
        "--repeats", type=int, default=None, help="timed steps per optimizer (default 10, 2 with --quick)"
    )
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 2, 1 with --quick)")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch.set_num_threads before timing (default: torch's own choice)"
    )
    parser.add_argument(
        "--threshold", type=float, default=DEFAULT_THRESHOLD, help="threshold of the absolute-mode CLASSP rows"
    )
    parser.add_argument(
        "--models",
        nargs="+",
        choices=sorted(real_gradients.MODELS),
        default=None,
        help="models whose gradients to use (default: all, or minilm with --quick)",
    )
    parser.add_argument("--batch-size", type=int, default=16, help="texts in the batch (default 16)")
    parser.add_argument("--seq-len", type=int, default=64, help="tokens per text (default 64)")
    parser.add_argument(
        "--memory-budget-gb",
        type=float,
        default=3.0,
        help="optimizer state timed side by side at once; more rows are split into groups (default 3)",
    )
    parser.add_argument("--no-compile", action="store_true", help="leave out the rows that use torch.compile")
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
    repeats = args.repeats if args.repeats is not None else (2 if args.quick else 10)
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 2)
    if repeats < 1 or warmup < 0:
        parser.error("--repeats must be >= 1 and --warmup >= 0")
    if args.threads is not None and args.threads < 1:
        parser.error("--threads must be >= 1")
    if not args.threshold > 0.0:
        parser.error("--threshold must be > 0 (threshold 0 is always timed)")
    if args.batch_size < 1 or args.seq_len < 2 or not args.memory_budget_gb > 0:
        parser.error("--batch-size must be >= 1, --seq-len >= 2 and --memory-budget-gb > 0")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("CUDA was asked for but is not available", file=sys.stderr)
        return 2
    threads_before = torch.get_num_threads()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    try:
        return _run(args, device, repeats, warmup)
    finally:
        torch.set_num_threads(threads_before)


def _run(args: argparse.Namespace, device: torch.device, repeats: int, warmup: int) -> int:
    """Records the gradients, times every optimizer, prints the results and writes the JSON."""
    model_names = args.models or (["minilm"] if args.quick else list(real_gradients.MODELS))
    specs = optimizer_specs(device, args.threshold, compile_paths=not args.no_compile)

    load = _load_per_core()
    if load is not None and load > 0.25:
        print(
            f"Note: load average {load:.2f} per core before the run; other processes make the times noisy "
            "(the optimizers are interleaved so the ratios suffer less than the absolute times)."
        )
    start = time.perf_counter()
    batch = real_gradients.text_batch(args.batch_size, args.seq_len)
    rows: list[dict[str, Any]] = []
    forward_backward: dict[str, float] = {}
    for name in model_names:
        model = real_gradients.load_model(name).to(device)
        recorded = real_gradients.record_gradients(
            model,
            _batch_on(batch, device),
            name=name,
            repeats=1 if args.quick else repeats,
            synchronize=lambda: _synchronize(device),
        )
        del model
        gc.collect()
        forward_backward[name] = recorded.forward_backward_ms
        rows += benchmark_model(
            recorded,
            specs,
            device,
            warmup=warmup,
            repeats=repeats,
            memory_budget_bytes=args.memory_budget_gb * 2**30,
        )
        del recorded
        gc.collect()
    elapsed = time.perf_counter() - start
    checks = check_targets(rows)

    device_name = _device_name(device)
    print()
    print(
        f"One optimizer step on real gradients (batch {batch.shape[0]} x {batch.shape[1]} tokens), float32, median "
        f"of {repeats} after {warmup} warm-up rounds; device {device} ({device_name}), torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads. 'of step': share of a training step (forward+backward "
        + ", ".join(f"{name} {ms:.0f} ms" for name, ms in forward_backward.items())
        + "); 'peak MB': most memory a step holds at once on top of the state before it; 'vs fused': ratio to "
        "Adagrad fused (steadier on a shared machine). Rows timed in separate groups (to fit in memory) are "
        "compared with their own group's Adagrad steps."
    )
    print(format_table(rows, bandwidth=device.type == "cuda"))
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
            batch_shape=list(batch.shape),
            quick=args.quick,
            elapsed_s=elapsed,
            load_per_core_before=load,
            forward_backward_ms=forward_backward,
            rows=rows,
            targets=[asdict(check) for check in checks],
        )
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        print(f"Wrote {args.json}")
    return 0


def _batch_on(batch: real_gradients.TextBatch, device: torch.device) -> real_gradients.TextBatch:
    return real_gradients.TextBatch(
        inputs={key: value.to(device) for key, value in batch.inputs.items()},
        labels=batch.labels.to(device),
        texts=batch.texts,
    )


if __name__ == "__main__":
    sys.exit(main())
