"""Continual fine-tuning over a queue of sentiment datasets.

    accelerate launch recipes/continual_sentiment.py --config recipes/configs/quickstart.yaml --output-dir runs/qs
    accelerate launch recipes/continual_sentiment.py --config CONFIG --output-dir DIR training.learning_rate=1e-2

A thin script over ``classp_hf``: the config names the model, the tasks and the optimizer.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from classp_hf.cli import IntermixedArgumentParser, add_run_arguments, run_from_args


def make_parser() -> argparse.ArgumentParser:
    parser = IntermixedArgumentParser(description=__doc__.splitlines()[0])
    add_run_arguments(parser, config_option=True)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return run_from_args(make_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
