"""The ``classp-hf`` command line: ``classp-hf run CONFIG --output-dir DIR``."""

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
    return parser


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the ``run`` options (shared with ``recipes/continual_sentiment.py``)."""
    parser.add_argument("config", help="the run's YAML config (see recipes/configs/)")
    parser.add_argument("--output-dir", required=True, help="where results, report, plots and the model go")
    parser.add_argument("--overwrite", action="store_true", help="write into a non-empty output directory")
    parser.add_argument("--quiet", action="store_true", help="no progress lines (the Trainer's bars stay)")


def run_command(config_path: str, output_dir: str, overwrite: bool = False, quiet: bool = False) -> int:
    """Loads and validates the config, then runs it. Bad input exits 2 with one line naming the culprit."""
    from classp_hf.continual.config import load_config
    from classp_hf.continual.runner import run_continual

    try:
        config = load_config(config_path)
        run_continual(config, output_dir, overwrite=overwrite, log=not quiet)
    except ValueError as error:  # ConfigError, OutputDirError, invalid hyperparameters
        print(f"classp-hf: error: {error}", file=sys.stderr)
        return 2
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``classp-hf`` command."""
    args = make_parser().parse_args(argv)
    if args.command == "run":
        return run_command(args.config, args.output_dir, args.overwrite, args.quiet)
    return 2


if __name__ == "__main__":
    sys.exit(main())
