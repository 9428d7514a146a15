"""The ``classp-hf`` command line: ``classp-hf run CONFIG --output-dir DIR``, ``classp-hf compare GRID --output-dir
DIR`` and ``classp-hf probe CONFIG``.

After the config (or grid), options and ``key=value`` / ``~key`` overrides may come in any order.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["IntermixedArgumentParser", "main", "make_parser", "run_from_args"]

_OVERRIDES_HELP = (
    "dotted-key overrides of the config, anywhere after it, e.g. training.learning_rate=1e-2 "
    "tasks.imdb.max_train_samples=200 tasks.*.max_eval_samples=100 (every task); ~KEY clears a key as null does in "
    "YAML, e.g. ~training.optim_args"
)


class IntermixedArgumentParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` that reads positionals between options (``parse_intermixed_args``), also as a
    sub-command's parser: ``classp-hf run CONFIG --output-dir DIR key=value`` reads ``key=value`` as an override."""

    _intermixing = False

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        if self._intermixing:  # the two passes of parse_known_intermixed_args
            return super().parse_known_args(args, namespace)
        self._intermixing = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._intermixing = False


def make_parser() -> argparse.ArgumentParser:
    """The ``classp-hf`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="classp-hf", description="Continual fine-tuning of Hugging Face transformers with CLASSP."
    )
    commands = parser.add_subparsers(dest="command", required=True, parser_class=IntermixedArgumentParser)
    run = commands.add_parser("run", help="fine-tune over a queue of tasks described by a YAML config")
    add_run_arguments(run)
    compare = commands.add_parser(
        "compare",
        help="run settings side by side over seeds (grids chosen on validation accuracy) and compare them",
    )
    add_compare_arguments(compare)
    probe = commands.add_parser(
        "probe", help="measure per-element g^2 on a few batches of the first task and suggest a CLASSP threshold"
    )
    probe.add_argument("config", help="the run's YAML config")
    probe.add_argument("overrides", nargs="*", metavar="key=value", help=_OVERRIDES_HELP)
    probe.add_argument("--batches", type=int, default=8, help="batches of the first task to probe (default 8)")
    probe.add_argument("--mode", default="absolute", help="threshold mode: absolute, relative or quantile")
    probe.add_argument(
        "--target-fraction", type=float, default=0.1, help="share of elements a step should update (default 0.1)"
    )
    probe.add_argument("--json", default=None, help="also write the numbers to this JSON file (atomically)")
    probe.add_argument("--verbose", action="store_true", help=_VERBOSE_HELP)
    return parser


_VERBOSE_HELP = (
    "also print what transformers and datasets log (the weights' load report), their progress bars (evaluation, "
    "saving), the Trainer's log dicts and Python warnings"
)


def add_run_arguments(parser: argparse.ArgumentParser, config_option: bool = False) -> None:
    """Adds the ``run`` options (shared with ``recipes/continual_sentiment.py``, which takes ``--config``)."""
    if config_option:
        parser.add_argument("--config", default=None, help="the run's YAML config (see recipes/configs/)")
    else:
        parser.add_argument(
            "config",
            nargs="?",
            default=None,
            help="the run's YAML config (see recipes/configs/); optional with --resume",
        )
    parser.add_argument("overrides", nargs="*", metavar="key=value", help=_OVERRIDES_HELP)
    parser.add_argument("--output-dir", required=True, help="where results, report, plots and the model go")
    start = parser.add_mutually_exclusive_group()
    start.add_argument("--overwrite", action="store_true", help="start afresh in a folder an earlier run wrote into")
    start.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --output-dir after its last finished task (its config.yaml is used if no config "
        "is given)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress lines (the training bar stays)")
    parser.add_argument(
        "--cache-dir",
        default=None,
        help="a folder shared by runs (classp-hf compare gives its own): tokenized tasks and the untrained model's "
        "scores, keyed by everything that makes them, are read from it instead of computed again",
    )
    parser.add_argument("--verbose", action="store_true", help=_VERBOSE_HELP)


def add_compare_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the ``compare`` options."""
    parser.add_argument("grid", nargs="?", default=None, help="a grid file (see recipes/experiments/)")
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="dotted-key overrides for every setting, anywhere after the grid, e.g. validation_fraction=0.2 "
        "tasks.*.max_train_samples=200; ~KEY clears a key as null does in YAML",
    )
    parser.add_argument(
        "--output-dir", required=True, help="the comparison folder (runs, comparison.json/.md, figures)"
    )
    parser.add_argument("--config", default=None, help="instead of a grid file: a run config, with --presets")
    parser.add_argument(
        "--presets", default=None, help="comma-separated presets (classp_hf/presets.yaml), e.g. classp,adamw"
    )
    parser.add_argument("--seeds", default=None, help="comma-separated seeds, e.g. 0,1,2 (grids run on the first)")
    parser.add_argument("--jobs", type=int, default=1, help="runs at once, as subprocesses (default 1)")
    parser.add_argument("--profile", default=None, help="a profiles: entry of the grid file (e.g. gpu)")
    parser.add_argument(
        "--reference",
        default=None,
        help="the setting the others are compared with (paired bootstrap over seeds and test examples; default: the "
        "first setting)",
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--overwrite", action="store_true", help="start afresh: remove what an earlier comparison wrote")
    mode.add_argument("--report-only", action="store_true", help="run nothing; report what the folder holds")
    parser.add_argument("--in-process", action="store_true", help="run in this process, one run at a time")
    parser.add_argument("--quiet", action="store_true", help="no progress lines and no table")


def _split_config_and_overrides(config: str | None, overrides: Sequence[str]) -> tuple[str | None, list[str]]:
    """``classp-hf run key=value --resume``: a first positional with ``=`` that is not a file is an override."""
    if config is not None and "=" in config and not Path(config).is_file():
        return None, [config, *overrides]
    return config, list(overrides)


def run_command(
    config_path: str | None,
    output_dir: str,
    overwrite: bool = False,
    quiet: bool = False,
    resume: bool = False,
    overrides: Sequence[str] = (),
    verbose: bool = False,
    cache_dir: str | None = None,
) -> int:
    """Loads and validates the config (with its overrides), then runs (or resumes) it.

    With ``resume`` and no config, the run folder's resolved ``config.yaml`` is used. Bad input (a config
    error, an unusable output folder, a run that cannot be resumed) exits 2 with one line naming the culprit;
    Ctrl-C exits 130 with one line saying how to resume. ``verbose`` lets the libraries print as they do
    (see :mod:`classp_hf.continual.console`).
    """
    from classp_hf.continual.config import ConfigError, load_config, parse_override_args
    from classp_hf.continual.io import OutputWriteError
    from classp_hf.continual.runner import run_continual

    config_path, overrides = _split_config_and_overrides(config_path, overrides)
    try:
        if config_path is None:
            if not resume:
                raise ConfigError("a config file is required (or --resume, to continue the run in --output-dir)")
            config_path = str(Path(output_dir) / "config.yaml")
            if not Path(config_path).is_file():
                raise ConfigError(f"--resume: {config_path} not found; there is no run to resume there")
        config = load_config(config_path, overrides=parse_override_args(overrides))
        run_continual(
            config,
            output_dir,
            overwrite=overwrite,
            log=not quiet,
            resume=resume,
            cache_dir=cache_dir,
            verbose=verbose,
        )
    except ValueError as error:  # ConfigError, OutputDirError, ResumeError, invalid hyperparameters
        print(f"classp-hf: error: {error}", file=sys.stderr)
        return 2
    except OutputWriteError as error:  # a full disk: the last checkpoint stays, the run can be resumed
        print(
            f"classp-hf: error: {error}; make room, then: classp-hf run --output-dir {output_dir} --resume",
            file=sys.stderr,
        )
        return 1
    except KeyboardInterrupt:
        print(
            f"classp-hf: interrupted; continue with: classp-hf run --output-dir {output_dir} --resume", file=sys.stderr
        )
        return 130
    return 0


def compare_command(args: argparse.Namespace) -> int:
    """Runs (or continues) a comparison and prints its table.

    Exit status: 0 when every run finished, 1 when some failed (they are reported in comparison.md, never
    averaged), 2 on bad input (one line naming the culprit, before anything runs), 130 on Ctrl-C.
    """
    from classp_hf.continual.compare import compare
    from classp_hf.continual.config import parse_override_args

    grid, overrides = args.grid, list(args.overrides)
    if grid is not None and not Path(grid).is_file() and ("=" in grid or args.config is not None):
        grid, overrides = None, [grid, *overrides]  # with --config, a positional is an override (checked as one)
    try:
        comparison = compare(
            grid,
            args.output_dir,
            config=args.config,
            presets=args.presets,
            seeds=args.seeds,
            overrides=parse_override_args(overrides),
            profile=args.profile,
            reference=args.reference,
            jobs=args.jobs,
            launcher="inprocess" if args.in_process else "subprocess",
            overwrite=args.overwrite,
            report_only=args.report_only,
            log=not args.quiet,
        )
    except ValueError as error:
        print(f"classp-hf: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "classp-hf: interrupted; run the same command again (without --overwrite) to continue: finished runs are "
            "kept and unfinished ones resume",
            file=sys.stderr,
        )
        return 130
    return 1 if comparison.failed_runs else 0


def probe_command(
    config_path: str,
    batches: int,
    mode: str,
    target_fraction: float,
    json_path: str | None,
    overrides: Sequence[str] = (),
    verbose: bool = False,
) -> int:
    """Runs the gradient probe and prints its table.

    Bad input (the config, the model, ``--json`` naming a folder) exits 2 with one line naming the
    culprit, before the probe runs and before anything is written.
    """
    from classp_hf.continual.config import load_config, parse_override_args
    from classp_hf.continual.console import library_output
    from classp_hf.continual.io import write_json_atomic
    from classp_hf.continual.probe import check_json_target, format_probe, probe_gradients

    try:
        if json_path:
            check_json_target(json_path)
        config = load_config(config_path, overrides=parse_override_args(overrides))
        with library_output(verbose):
            result = probe_gradients(config, batches=batches, mode=mode, target_fraction=target_fraction)
    except ValueError as error:
        print(f"classp-hf: error: {error}", file=sys.stderr)
        return 2
    print(format_probe(result))
    if json_path:
        write_json_atomic(json_path, result)
    return 0


def run_from_args(args: argparse.Namespace) -> int:
    """Runs :func:`run_command` on the arguments :func:`add_run_arguments` declared (``classp-hf run``, the recipe).

    Args:
        args: the parsed arguments.

    Returns:
        The exit status.
    """
    return run_command(
        args.config,
        args.output_dir,
        args.overwrite,
        args.quiet,
        args.resume,
        args.overrides,
        verbose=args.verbose,
        cache_dir=args.cache_dir,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``classp-hf`` command."""
    args = make_parser().parse_args(argv)
    if args.command == "run":
        return run_from_args(args)
    if args.command == "compare":
        return compare_command(args)
    if args.command == "probe":
        return probe_command(
            args.config, args.batches, args.mode, args.target_fraction, args.json, args.overrides, args.verbose
        )
    return 2


if __name__ == "__main__":
    sys.exit(main())
