"""Compares CLASSP's threshold modes (absolute, relative, quantile) on the 4-task sentiment queue with MiniLM.

Each setting is one ``optim_args`` string (``power=1, eps=1e-8`` or ``--eps``, lr 1e-3) run as a full continual job
(``classp-hf run ... --quiet``) on ``recipes/configs/sentiment_queue.yaml`` (financial_phrasebank, imdb,
airline_tweets, amazon_reviews), sub-sampled to ``--max-train-samples`` training and ``--max-eval-samples``
test examples per task, ``max_length`` 64, with 20% of each task's training examples held out as a
validation split and the per-task sparsity diagnostics on. Settings:

- ``zero``: threshold 0 (every element with a non-zero gradient moves; the baseline);
- ``abs-1e-9``, ``abs-1e-8``: absolute threshold on ``g^2``;
- ``rel-1``, ``rel-4``: ``g^2 > t * mean(g^2)`` per tensor;
- ``q-0.5``, ``q-0.1``: the top 50% / 10% of each tensor's elements by ``|g|``.

The sweep is resumable: a run whose ``results.json`` already says ``status: complete`` and whose recorded
config equals the one the sweep would write is skipped; any other is started again from scratch. Each run
gets ``OMP_NUM_THREADS=1`` by default (``--threads``). Models and checkpoints are deleted after each run
unless ``--keep-models``. Layout under ``--output-root``::

    temp/config/<setting>-seed<seed>.yaml   the generated configs
    runs/<setting>/seed<seed>/               each run's output (results.json, report.md, sweep_run.json)
    logs/<setting>-seed<seed>.log            each run's stdout and stderr
    summary.json, summary.md                 per-run numbers, per-setting aggregates and the table

Selection uses the validation split only: the best setting of each mode is the one with the highest mean
validation ACC over the seeds; test numbers are reported, never used to choose. Aggregates are the mean
and the half-range (``(max - min) / 2``) over the seeds; sparsity numbers are means over tasks 2..T.

Usage::

    export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 CLASSP_HF_DATA=/work/shared/data/sentiment
    python benchmarks/threshold_modes.py --settings zero --seeds 0      # time one run
    python benchmarks/threshold_modes.py                                # the full sweep (7 settings x 2 seeds)
    python benchmarks/threshold_modes.py --output-root runs/threshold_modes_small \
        --max-train-samples 200 --max-eval-samples 100                  # a ~2.5x cheaper sweep
    python benchmarks/threshold_modes.py --quick                        # a smoke run (1 seed, 2 settings, 2 tasks)
    python benchmarks/threshold_modes.py --summarize-only               # rebuild summary.* from finished runs
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
BASE_CONFIG = REPO_ROOT / "recipes" / "configs" / "sentiment_queue.yaml"
DEFAULT_OUTPUT_ROOT = Path("runs/threshold_modes")
QUICK_OUTPUT_ROOT = Path("runs/threshold_modes_quick")
#: Hyperparameters shared by every setting.
COMMON_POWER = 1
#: eps of the documented sweep; ``--eps`` changes it (CLASSP's default is 1e-4).
DEFAULT_EPS = 1e-8
LEARNING_RATE = 1e-3
DEFAULT_SEEDS = (0, 1)
#: Per-task sub-sample sizes (400 training + 100 validation examples, 25 steps per task). With one thread per
#: run a run takes ~190 s on an idle 2-core machine, the 14-run sweep ~45 min; under heavy sharing use
#: ``--max-train-samples 200 --max-eval-samples 100`` (about 2.5x cheaper; see docs/results.md).
DEFAULT_MAX_TRAIN = 500
DEFAULT_MAX_EVAL = 200
VALIDATION_FRACTION = 0.2
MAX_LENGTH = 64
LOGGING_STEPS = 50
QUICK_MAX_TRAIN = 64
QUICK_MAX_EVAL = 64
QUICK_TASKS = 2
QUICK_SETTINGS = ("zero", "q-0.1")
#: A setting's name in the summary for the threshold-0 baseline's mode.
BASELINE_MODE = "none"


@dataclass(frozen=True)
class Setting:
    """One threshold setting."""

    name: str
    mode: str
    threshold: float
    eps: float = DEFAULT_EPS

    @property
    def optim_args(self) -> str:
        """The ``training.optim_args`` string of this setting."""
        return f"threshold={self.threshold:g},threshold_mode={self.mode},power={COMMON_POWER},eps={_number(self.eps)}"

    @property
    def group(self) -> str:
        """The mode a setting is compared within (threshold 0 is the baseline, not an absolute value)."""
        return BASELINE_MODE if self.threshold == 0 else self.mode

    @property
    def label(self) -> str:
        """A short human-readable description for tables."""
        return "threshold 0" if self.threshold == 0 else f"{self.mode} {self.threshold:g}"


def _number(value: float) -> str:
    """``1e-08`` as ``1e-8``: the spelling the recipes and docs use."""
    return f"{value:g}".replace("e-0", "e-").replace("e+0", "e+")


SETTINGS: dict[str, Setting] = {
    s.name: s
    for s in (
        Setting("zero", "absolute", 0.0),
        Setting("abs-1e-9", "absolute", 1e-9),
        Setting("abs-1e-8", "absolute", 1e-8),
        Setting("rel-1", "relative", 1.0),
        Setting("rel-4", "relative", 4.0),
        Setting("q-0.5", "quantile", 0.5),
        Setting("q-0.1", "quantile", 0.1),
    )
}


# -- configs ------------------------------------------------------------------------------------
def build_config(
    base: dict[str, Any],
    setting: Setting,
    seed: int,
    *,
    max_train_samples: int,
    max_eval_samples: int,
    num_tasks: int | None = None,
) -> dict[str, Any]:
    """Returns a copy of the base config with this sweep's overrides.

    Args:
        base: the parsed ``sentiment_queue.yaml`` (environment variables not yet expanded).
        setting: the threshold setting (``training.optim_args``).
        seed: the run's seed.
        max_train_samples, max_eval_samples: per-task sub-sample sizes (every task).
        num_tasks: keep only the first ``num_tasks`` tasks (``None``: all).

    Returns:
        The config as plain data, ready for ``yaml.safe_dump``.
    """
    config = copy.deepcopy(base)
    config["seed"] = seed
    config["max_length"] = MAX_LENGTH
    config["diagnostics"] = True
    config["validation_fraction"] = VALIDATION_FRACTION
    training = dict(config.get("training") or {})
    training.update(
        optim="classp",
        optim_args=setting.optim_args,
        learning_rate=LEARNING_RATE,
        disable_tqdm=True,
        logging_steps=LOGGING_STEPS,
    )
    config["training"] = training
    tasks = config["tasks"][:num_tasks] if num_tasks else config["tasks"]
    for task in tasks:
        task["max_train_samples"] = max_train_samples
        task["max_eval_samples"] = max_eval_samples
    config["tasks"] = tasks
    return config


# -- running --------------------------------------------------------------------------------------
def classp_hf_command() -> list[str]:
    """The ``classp-hf`` executable of this interpreter's environment (or ``python -m classp_hf.cli``)."""
    beside = Path(sys.executable).with_name("classp-hf")
    if beside.is_file():
        return [str(beside)]
    found = shutil.which("classp-hf")
    return [found] if found else [sys.executable, "-m", "classp_hf.cli"]


def read_results(run_dir: Path) -> dict[str, Any] | None:
    """The run's ``results.json``, or ``None`` if it is missing or unreadable."""
    path = run_dir / "results.json"
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def is_complete(run_dir: Path, config: dict[str, Any] | None = None) -> bool:
    """Whether the run finished every task (and, given ``config``, was run from that config)."""
    results = read_results(run_dir)
    if results is None or results.get("status") != "complete":
        return False
    if config is None:
        return True
    try:
        return json.loads((run_dir / "sweep_run.json").read_text()).get("config") == config
    except (OSError, json.JSONDecodeError):
        return False


def run_one(
    config: dict[str, Any], config_path: Path, run_dir: Path, log_path: Path, keep_models: bool, threads: int | None
) -> float:
    """Writes ``config`` to ``config_path``, runs it with ``classp-hf run --quiet`` and returns the wall time (s).

    ``run_dir/sweep_run.json`` records the wall time, the thread count and the config, so a later sweep
    skips the run only if its config is unchanged. ``threads`` sets ``OMP_NUM_THREADS`` and ``MKL_NUM_THREADS``
    of the run (``None`` or 0: inherited).

    Raises:
        RuntimeError: the command failed or left an incomplete ``results.json``.
    """
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    command = [*classp_hf_command(), "run", str(config_path), "--output-dir", str(run_dir), "--overwrite", "--quiet"]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with log_path.open("w") as log:
        log.write("$ " + " ".join(command) + "\n")
        log.flush()
        env = dict(os.environ)
        if threads:
            env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
        code = subprocess.call(command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT, env=env)
    seconds = time.perf_counter() - started
    if code != 0 or not is_complete(run_dir):
        raise RuntimeError(f"{config_path.name}: classp-hf exited {code}; see {log_path}")
    record = {"wall_seconds": round(seconds, 1), "threads": threads, "config": config}
    (run_dir / "sweep_run.json").write_text(json.dumps(record, indent=2) + "\n")
    if not keep_models:  # the sweep needs results.json only; each model folder is ~90 MB
        for name in ("model", "checkpoints"):
            shutil.rmtree(run_dir / name, ignore_errors=True)
    return seconds


# -- summary ----------------------------------------------------------------------------------------
def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def run_record(setting: Setting, seed: int, run_dir: Path) -> dict[str, Any] | None:
    """The numbers of one finished run (``None`` if it is not complete)."""
    results = read_results(run_dir)
    if results is None or results.get("status") != "complete":
        return None
    later = results["per_task"][1:]
    sparsity = [task.get("sparsity") or {} for task in later]
    update = [s["mean_update_fraction"] for s in sparsity if s.get("mean_update_fraction") is not None]
    overlap = [s["overlap_with_earlier"] for s in sparsity if s.get("overlap_with_earlier") is not None]
    first = results["per_task"][0].get("sparsity") or {}
    timing_path = run_dir / "sweep_run.json"
    sweep_run = json.loads(timing_path.read_text()) if timing_path.is_file() else {}
    wall = sweep_run.get("wall_seconds")
    validation = results.get("validation") or {}
    return {
        "setting": setting.name,
        "seed": seed,
        "optim_args": results["optimizer"]["optim_args"],
        "val_acc": (validation.get("metrics") or {}).get("acc"),
        "val_bwt": (validation.get("metrics") or {}).get("bwt"),
        "test_acc": results["metrics"]["acc"],
        "test_bwt": results["metrics"]["bwt"],
        "test_forgetting": results["metrics"]["forgetting"],
        "test_fwt": results["metrics"]["fwt"],
        "update_fraction_first_task": first.get("mean_update_fraction"),
        "update_fraction_later_tasks": _mean(update),
        "overlap_later_tasks": _mean(overlap),
        "ever_updated_fraction_last_task": (results["per_task"][-1].get("sparsity") or {}).get("ever_updated_fraction"),
        "train_seconds": sum(task["seconds"] for task in results["per_task"]),
        "wall_seconds": wall,
        "threads": sweep_run.get("threads"),
        "accuracy_matrix": results["accuracy_matrix"],
        "validation_accuracy_matrix": validation.get("accuracy_matrix"),
        "tasks": results["tasks"],
    }


AGGREGATED = (
    "val_acc",
    "val_bwt",
    "test_acc",
    "test_bwt",
    "test_forgetting",
    "test_fwt",
    "update_fraction_first_task",
    "update_fraction_later_tasks",
    "overlap_later_tasks",
    "wall_seconds",
)


def aggregate(records: list[dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    """Mean and half-range over seeds of every number in ``AGGREGATED``."""
    out: dict[str, dict[str, float | None]] = {}
    for key in AGGREGATED:
        values = [r[key] for r in records if r.get(key) is not None]
        if values:
            out[key] = {"mean": sum(values) / len(values), "half_range": (max(values) - min(values)) / 2}
        else:
            out[key] = {"mean": None, "half_range": None}
    return out


def select(settings: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Best setting per mode and overall by mean validation ACC, and how it compares with threshold 0.

    Args:
        settings: ``{name: {"mode": ..., "aggregate": ...}}`` for the settings with at least one run.

    Returns:
        ``best_per_mode`` (mode -> setting name), ``best_overall`` and, when threshold 0 ran,
        ``vs_threshold_0``: per setting, the difference in mean validation ACC from threshold 0 and whether
        it exceeds the sum of the two half-ranges (a crude seed-noise band), and the same-seed differences
        (a seed fixes the sub-sample and the head's initialisation, so these are paired).
    """

    def val(name: str) -> float:
        value = settings[name]["aggregate"]["val_acc"]["mean"]
        return float("-inf") if value is None else value

    best_per_mode: dict[str, str] = {}
    for name, entry in settings.items():
        mode = entry["mode"]
        if mode not in best_per_mode or val(name) > val(best_per_mode[mode]):
            best_per_mode[mode] = name
    selection: dict[str, Any] = {"criterion": "mean validation ACC over seeds", "best_per_mode": best_per_mode}
    if settings:
        selection["best_overall"] = max(settings, key=val)
    if "zero" in settings:
        base = settings["zero"]["aggregate"]["val_acc"]
        selection["vs_threshold_0"] = {}
        for name, entry in settings.items():
            stat = entry["aggregate"]["val_acc"]
            if name == "zero" or stat["mean"] is None or base["mean"] is None:
                continue
            delta, band = stat["mean"] - base["mean"], stat["half_range"] + base["half_range"]
            paired = {
                seed: value - settings["zero"]["val_acc_per_seed"][seed]
                for seed, value in entry.get("val_acc_per_seed", {}).items()
                if value is not None and settings["zero"].get("val_acc_per_seed", {}).get(seed) is not None
            }
            selection["vs_threshold_0"][name] = {
                "val_acc_delta": delta,
                "noise_band": band,
                "beyond_noise": abs(delta) > band,
                "val_acc_delta_per_seed": paired,
            }
    return selection


def _pm(stat: dict[str, float | None], scale: float = 100.0, digits: int = 1) -> str:
    if stat["mean"] is None:
        return "-"
    return f"{stat['mean'] * scale:.{digits}f} ± {stat['half_range'] * scale:.{digits}f}"


def markdown_table(settings: dict[str, dict[str, Any]], selection: dict[str, Any]) -> str:
    """The per-setting table (percentages and points; mean ± half-range over seeds)."""
    lines = [
        "| setting | optim_args threshold | val ACC (%) | test ACC (%) | test BWT (pts) | test forgetting (pts) "
        "| update / step, tasks 2-4 (%) | overlap w/ earlier, tasks 2-4 (%) | wall (s) | seeds |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    best = set(selection.get("best_per_mode", {}).values())
    for name, entry in settings.items():
        agg = entry["aggregate"]
        marker = " **(best of mode)**" if name in best and entry["mode"] != BASELINE_MODE else ""
        wall = agg["wall_seconds"]
        wall_text = "-" if wall["mean"] is None else f"{wall['mean']:.0f}"
        lines.append(
            f"| `{name}`{marker} | {entry['label']} | {_pm(agg['val_acc'])} | {_pm(agg['test_acc'])} "
            f"| {_pm(agg['test_bwt'])} | {_pm(agg['test_forgetting'])} | {_pm(agg['update_fraction_later_tasks'])} "
            f"| {_pm(agg['overlap_later_tasks'])} | {wall_text} | {len(entry['seeds'])} |"
        )
    return "\n".join(lines)


def summarize(
    root: Path, settings: list[Setting], seeds: list[int], configs: dict[tuple[str, int], Any], meta: dict[str, Any]
) -> dict[str, Any]:
    """Collects the finished runs, writes ``summary.json`` and ``summary.md`` and returns the summary.

    Args:
        root: the output root.
        settings, seeds: the runs to collect.
        configs: ``{(setting name, seed): config}``; a run made from another config is left out.
        meta: sweep options recorded in the summary.
    """
    runs: list[dict[str, Any]] = []
    per_setting: dict[str, dict[str, Any]] = {}
    for setting in settings:
        records = [
            record
            for seed in seeds
            if is_complete(folder := run_dir(root, setting, seed), configs[setting.name, seed])
            and (record := run_record(setting, seed, folder))
        ]
        runs.extend(records)
        if records:
            per_setting[setting.name] = {
                "mode": setting.group,
                "threshold_mode": setting.mode,
                "threshold": setting.threshold,
                "label": setting.label,
                "optim_args": setting.optim_args,
                "seeds": [r["seed"] for r in records],
                "val_acc_per_seed": {str(r["seed"]): r["val_acc"] for r in records},
                "aggregate": aggregate(records),
            }
    selection = select(per_setting)
    walls = [r["wall_seconds"] for r in runs if r["wall_seconds"] is not None]
    summary = {
        **meta,
        "settings": per_setting,
        "selection": selection,
        "total_run_wall_seconds": sum(walls),
        "runs": runs,
    }
    table = markdown_table(per_setting, selection)
    (root / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (root / "summary.md").write_text(table + "\n")
    return summary


# -- command line -----------------------------------------------------------------------------------
def run_dir(root: Path, setting: Setting, seed: int) -> Path:
    """Output folder of one run."""
    return root / "runs" / setting.name / f"seed{seed}"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Parses the command line (``--quick`` fills in the defaults it changes)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output-root", type=Path, default=None, help=f"default {DEFAULT_OUTPUT_ROOT}")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="default 0 1")
    parser.add_argument(
        "--settings",
        nargs="+",
        default=None,
        choices=list(SETTINGS),
        metavar="NAME",
        help=f"subset of {list(SETTINGS)}",
    )
    parser.add_argument("--max-train-samples", type=int, default=None, help=f"per task (default {DEFAULT_MAX_TRAIN})")
    parser.add_argument("--max-eval-samples", type=int, default=None, help=f"per task (default {DEFAULT_MAX_EVAL})")
    parser.add_argument("--base-config", type=Path, default=BASE_CONFIG)
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"smoke run: 1 seed, settings {' '.join(QUICK_SETTINGS)}, {QUICK_MAX_TRAIN} train samples, "
        f"{QUICK_TASKS} tasks, output {QUICK_OUTPUT_ROOT}",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="OMP_NUM_THREADS of each run (default 1: on a shared 2-core machine one thread per process was "
        "about twice as fast as two; 0 inherits the environment). Changes speed and float rounding only, so a "
        "finished run is not redone for another value",
    )
    parser.add_argument(
        "--eps", type=float, default=DEFAULT_EPS, help=f"CLASSP eps of every setting (default {DEFAULT_EPS:g})"
    )
    parser.add_argument("--keep-models", action="store_true", help="keep each run's model/ and checkpoints/")
    parser.add_argument("--summarize-only", action="store_true", help="run nothing; rebuild summary.* from the runs")
    args = parser.parse_args(argv)
    if args.quick:
        args.output_root = args.output_root or QUICK_OUTPUT_ROOT
        args.seeds = args.seeds or list(DEFAULT_SEEDS[:1])
        args.settings = args.settings or list(QUICK_SETTINGS)
        args.max_train_samples = args.max_train_samples or QUICK_MAX_TRAIN
        args.max_eval_samples = args.max_eval_samples or QUICK_MAX_EVAL
    args.output_root = args.output_root or DEFAULT_OUTPUT_ROOT
    args.seeds = args.seeds if args.seeds is not None else list(DEFAULT_SEEDS)
    args.settings = args.settings or list(SETTINGS)
    args.max_train_samples = args.max_train_samples or DEFAULT_MAX_TRAIN
    args.max_eval_samples = args.max_eval_samples or DEFAULT_MAX_EVAL
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the missing runs one after another, then writes and prints the summary. Returns the exit code."""
    args = parse_args(argv)
    if "CLASSP_HF_DATA" not in os.environ:
        print("threshold_modes: set CLASSP_HF_DATA to the shared sentiment data folder", file=sys.stderr)
        return 2
    root: Path = args.output_root
    settings = [dataclasses.replace(SETTINGS[name], eps=args.eps) for name in args.settings]
    base = yaml.safe_load(args.base_config.read_text(encoding="utf-8"))
    num_tasks = QUICK_TASKS if args.quick else None
    meta = {
        "base_config": str(args.base_config),
        "seeds": args.seeds,
        "max_train_samples": args.max_train_samples,
        "max_eval_samples": args.max_eval_samples,
        "validation_fraction": VALIDATION_FRACTION,
        "max_length": MAX_LENGTH,
        "learning_rate": LEARNING_RATE,
        "eps": args.eps,
        "quick": args.quick,
    }
    jobs = [(setting, seed) for seed in args.seeds for setting in settings]
    configs = {
        (setting.name, seed): build_config(
            base,
            setting,
            seed,
            max_train_samples=args.max_train_samples,
            max_eval_samples=args.max_eval_samples,
            num_tasks=num_tasks,
        )
        for setting, seed in jobs
    }
    started = time.perf_counter()
    failures = 0
    if not args.summarize_only:
        config_dir = root / "temp" / "config"
        config_dir.mkdir(parents=True, exist_ok=True)
        for number, (setting, seed) in enumerate(jobs, 1):
            tag = f"{setting.name}-seed{seed}"
            target = run_dir(root, setting, seed)
            config = configs[setting.name, seed]
            if is_complete(target, config):
                print(f"[{number}/{len(jobs)}] {tag}: complete, skipped", flush=True)
                continue
            if is_complete(target):
                print(f"[{number}/{len(jobs)}] {tag}: complete but from another config, running again", flush=True)
            print(f"[{number}/{len(jobs)}] {tag}: {setting.optim_args} ...", flush=True)
            try:
                seconds = run_one(
                    config,
                    config_dir / f"{tag}.yaml",
                    target,
                    root / "logs" / f"{tag}.log",
                    args.keep_models,
                    args.threads,
                )
            except RuntimeError as error:
                failures += 1
                print(f"[{number}/{len(jobs)}] {tag}: FAILED: {error}", flush=True)
                continue
            record = run_record(setting, seed, target)
            assert record is not None
            print(
                f"[{number}/{len(jobs)}] {tag}: done in {seconds:.0f}s, val ACC {record['val_acc']:.3f}, "
                f"test ACC {record['test_acc']:.3f}",
                flush=True,
            )
    meta["sweep_invocation_seconds"] = round(time.perf_counter() - started, 1)
    summary = summarize(root, settings, args.seeds, configs, meta)
    print()
    print((root / "summary.md").read_text(), end="")
    selection = summary["selection"]
    print(f"\nbest per mode (mean validation ACC): {selection.get('best_per_mode')}")
    print(f"best overall: {selection.get('best_overall')}")
    for name, vs in selection.get("vs_threshold_0", {}).items():
        print(
            f"  {name}: {vs['val_acc_delta'] * 100:+.1f} pts val ACC vs threshold 0 "
            f"({'beyond' if vs['beyond_noise'] else 'within'} the seed band ±{vs['noise_band'] * 100:.1f}; "
            f"per seed {', '.join(f'{d * 100:+.1f}' for d in vs['val_acc_delta_per_seed'].values())})"
        )
    print(
        f"sum of run wall times {summary['total_run_wall_seconds']:.0f}s; "
        f"this invocation {meta['sweep_invocation_seconds']:.0f}s"
    )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
