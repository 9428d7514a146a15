"""Where one run's wall time goes: runs ``classp-hf run CONFIG`` once and prints its phases and training share.

    python benchmarks/run_breakdown.py recipes/configs/fpb_imdb.yaml [key=value ...] [--output-dir DIR] [--json FILE]
        [--cache-dir DIR]

The run is a subprocess (``python -m classp_hf.cli run``), timed from outside: ``process start-up`` is the wall time
before the runner started (interpreter and imports), the other phases come from ``results.json``'s ``timing``
record (classp_hf/continual/timing.py). Other processes on the machine inflate the absolute seconds; the shares are
what to compare. Without ``--output-dir`` the run goes to a temporary folder, removed afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def breakdown(results: dict[str, Any], process_seconds: float | None = None) -> list[tuple[str, float, float]]:
    """``(phase, seconds, share)`` rows of a run's ``timing`` record, ``process start-up`` first when known.

    Args:
        results: a run's results.json.
        process_seconds: the subprocess's wall time measured from outside (`None`: the record's total only).

    Returns:
        One row per phase, ``other`` and ``total``; shares of the total.
    """
    timing = results["timing"]
    total = float(timing["total_seconds"])
    rows = []
    if process_seconds is not None and process_seconds > total:
        rows.append(("process start-up", process_seconds - total))
        total = process_seconds
    rows += [(name, float(seconds)) for name, seconds in timing["phases"].items()]
    rows.append(("other", float(timing["other_seconds"])))
    rows.append(("total", total))
    return [(name, seconds, seconds / total if total else 0.0) for name, seconds in rows]


def format_breakdown(rows: list[tuple[str, float, float]]) -> str:
    """A plain-text table of :func:`breakdown`'s rows."""
    lines = [f"{'phase':<18} {'seconds':>9} {'share':>7}"]
    lines += [f"{name:<18} {seconds:9.1f} {100 * share:6.1f}%" for name, seconds, share in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", help="a run config (recipes/configs/...)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="dotted-key overrides of the config")
    parser.add_argument("--output-dir", default=None, help="keep the run here (default: a temporary folder)")
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    parser.add_argument(
        "--cache-dir",
        default=None,
        help="the cache a comparison gives its runs (tokenized tasks, untrained-model scores); run twice with the "
        "same folder to time a comparison's later runs",
    )
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="run-breakdown-") as scratch:
        output = Path(args.output_dir or Path(scratch) / "run")
        command = [sys.executable, "-m", "classp_hf.cli", "run", args.config, *args.overrides]
        command += ["--output-dir", str(output), "--overwrite", "--quiet"]
        if args.cache_dir:
            command += ["--cache-dir", args.cache_dir]
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
        env.setdefault("TQDM_DISABLE", "1")
        started = time.perf_counter()
        completed = subprocess.run(command, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - started
        if completed.returncode != 0:
            print(completed.stderr.strip().splitlines()[-1] if completed.stderr.strip() else "the run failed")
            return completed.returncode
        results = json.loads((output / "results.json").read_text(encoding="utf-8"))
    rows = breakdown(results, wall)
    print(f"{' '.join(command[3:])}")
    print(format_breakdown(rows))
    training = next(share for name, _, share in rows if name == "training")
    in_run = results["timing"]["training_share"]
    print(f"training share of the process's wall time: {100 * training:.1f}% (in the runner: {in_run:.1%})")
    if args.json:
        Path(args.json).write_text(
            json.dumps([dict(zip(("phase", "seconds", "share"), row)) for row in rows], indent=1)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
