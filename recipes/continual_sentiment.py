"""Continual fine-tuning over a queue of sentiment datasets.

    accelerate launch recipes/continual_sentiment.py --config recipes/configs/quickstart.yaml --output-dir runs/qs

A thin script over ``classp_hf``: the config names the model, the tasks and the optimizer.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from classp_hf.cli import run_command


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="the run's YAML config")
    parser.add_argument("--output-dir", required=True, help="where results, report, plots and the model go")
    start = parser.add_mutually_exclusive_group()
    start.add_argument("--overwrite", action="store_true", help="write into a non-empty output directory")
    start.add_argument("--resume", action="store_true", help="continue the run in --output-dir after its last task")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    return run_command(args.config, args.output_dir, args.overwrite, args.quiet, args.resume)


if __name__ == "__main__":
    sys.exit(main())
