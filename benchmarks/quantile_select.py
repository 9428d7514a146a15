"""Times CLASSP's quantile cut-off selection on the CPU: ``torch.kthvalue`` against ``_kth_smallest``.

For every parameter tensor of MiniLM (or a randomly initialised bert-base), the quantile mode needs the
k-th smallest ``|g|`` (k = 90% of the elements for ``threshold=0.1``), here of the real gradients of one
batch (``real_gradients.py``). This script times numpy's introselect (``_kth_smallest``, over all
elements as it was before CLASSP learnt to select among the non-zeros only) against ``torch.kthvalue``
side by side in one process, alternating, and checks that both pick the same value on every tensor.

Usage::

    python benchmarks/quantile_select.py                  # MiniLM gradients, one thread, 3 rounds
    python benchmarks/quantile_select.py --set bert-base --threads 2
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import real_gradients  # noqa: E402  (a module beside this script)


def time_selection(tensors: Sequence[torch.Tensor], fraction: float, select: Callable[..., torch.Tensor]) -> float:
    """Seconds to select every tensor's cut-off once."""
    started = time.perf_counter()
    for values in tensors:
        select(values, _k(values, fraction))
    return time.perf_counter() - started


def _k(values: torch.Tensor, fraction: float) -> int:
    return max(1, values.numel() - max(1, int(fraction * values.numel())))


def main(argv: Sequence[str] | None = None) -> int:
    """Prints per-round times and the speed-up; exits 1 if the two selections ever disagree."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", default="minilm", choices=sorted(real_gradients.MODELS))
    parser.add_argument("--fraction", type=float, default=0.1, help="quantile threshold (default 0.1)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    classp_module = importlib.import_module("classp_hf.optim._functional")  # the functional update
    recorded = real_gradients.record_gradients(
        real_gradients.load_model(args.set), real_gradients.text_batch(), name=args.set, repeats=1
    )
    tensors = [grad.abs().reshape(-1) for grad in recorded.grads]

    def baseline(values: torch.Tensor, k: int) -> torch.Tensor:
        return torch.kthvalue(values, k).values

    mismatches = sum(
        not torch.equal(baseline(v, _k(v, args.fraction)), classp_module._kth_smallest(v, _k(v, args.fraction)))
        for v in tensors
    )
    totals = {"torch.kthvalue": 0.0, "_kth_smallest": 0.0}
    for round_index in range(args.rounds):
        for name, select in (("torch.kthvalue", baseline), ("_kth_smallest", classp_module._kth_smallest)):
            seconds = time_selection(tensors, args.fraction, select)
            totals[name] += seconds
            print(f"round {round_index + 1} {name:15s} {1000 * seconds:8.1f} ms")
    ratio = totals["torch.kthvalue"] / totals["_kth_smallest"]
    print(
        f"{args.set}: {len(tensors)} tensors, {sum(v.numel() for v in tensors):,} elements; "
        f"_kth_smallest is {ratio:.2f}x as fast as torch.kthvalue; same value on "
        f"{len(tensors) - mismatches}/{len(tensors)} tensors"
    )
    return 1 if mismatches else 0


if __name__ == "__main__":
    sys.exit(main())
