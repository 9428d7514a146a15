"""The ``classp-hf`` command line: ``classp-hf run CONFIG --output-dir DIR`` and ``classp-hf probe CONFIG``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

__all__ = ["main", "make_parser"]


def make_parser() -> argparse.ArgumentParser:
    """The ``classp-hf`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="classp-hf", description="Continual fine-tuning of Hugging Face transformers with CLASSP."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="fine-tune over a queue of tasks described by a YAML config")
    add_run_arguments(run)
    probe = commands.add_parser(
        "probe", help="measure per-element g^2 on a few batches of the first task and suggest a CLASSP threshold"
    )
    probe.add_argument("config", help="the run's YAML config")
    probe.add_argument("--batches", type=int, default=8, help="batches of the first task to probe (default 8)")
    probe.add_argument("--mode", default="absolute", help="threshold mode: absolute, relative or quantile")
    probe.add_argument(
        "--target-fraction", type=float, default=0.1, help="share of elements a step should update (default 0.1)"
    )
    probe.add_argument("--json", default=None, help="also write the numbers to this JSON file (atomically)")
    return parser


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the ``run`` options (shared with ``recipes/continual_sentiment.py``)."""
    parser.add_argument("config", help="the run's YAML config (see recipes/configs/)")
    parser.add_argument("--output-dir", required=True, help="where results, report, plots and the model go")
    start = parser.add_mutually_exclusive_group()
    start.add_argument("--overwrite", action="store_true", help="write into a non-empty output directory")
    start.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --output-dir after its last finished task (same config)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress lines (the Trainer's bars stay)")


def run_command(
    config_path: str, output_dir: str, overwrite: bool = False, quiet: bool = False, resume: bool = False
) -> int:
    """Loads and validates the config, then runs (or resumes) it.

    Bad input (a config error, an unusable output folder, a run that cannot be resumed) exits 2 with
    one line naming the culprit.
    """
    from classp_hf.continual.config import load_config
    from classp_hf.continual.runner import run_continual

    try:
        config = load_config(config_path)
        run_continual(config, output_dir, overwrite=overwrite, log=not quiet, resume=resume)
    except ValueError as error:  # ConfigError, OutputDirError, ResumeError, invalid hyperparameters
        print(f"classp-hf: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            f"classp-hf: interrupted; continue with: classp-hf run {config_path} --output-dir {output_dir} --resume",
            file=sys.stderr,
        )
        return 130
    return 0


def probe_command(config_path: str, batches: int, mode: str, target_fraction: float, json_path: str | None) -> int:
    """Runs the gradient probe and prints its table.

    Bad input (the config, the model, ``--json`` naming a folder) exits 2 with one line naming the
    culprit, before the probe runs and before anything is written.
    """
    from classp_hf.continual.config import load_config
    from classp_hf.continual.io import write_json_atomic
    from classp_hf.continual.probe import check_json_target, format_probe, probe_gradients

    try:
        if json_path:
            check_json_target(json_path)
        config = load_config(config_path)
        result = probe_gradients(config, batches=batches, mode=mode, target_fraction=target_fraction)
    except ValueError as error:
        print(f"classp-hf: error: {error}", file=sys.stderr)
        return 2
    print(format_probe(result))
    if json_path:
        write_json_atomic(json_path, result)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``classp-hf`` command."""
    args = make_parser().parse_args(argv)
    if args.command == "run":
        return run_command(args.config, args.output_dir, args.overwrite, args.quiet, args.resume)
    if args.command == "probe":
        return probe_command(args.config, args.batches, args.mode, args.target_fraction, args.json)
    return 2


if __name__ == "__main__":
    sys.exit(main())
