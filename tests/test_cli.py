"""The command line: overrides anywhere after the config, ``tasks.*`` and ``~KEY``, a quiet console by default."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
import transformers
import yaml

from classp_hf.cli import main as cli_main
from classp_hf.continual.config import ConfigError, config_from_dict, parse_override_args
from classp_hf.continual.console import TrainingBar, library_output, set_console_callbacks

from .helpers.runs import tiny_bert_config

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "recipes" / "data" / "quickstart"
TASKS = ("financial_phrasebank", "airline_tweets", "amazon_reviews")


@pytest.fixture(scope="module")
def headless_model_dir(tmp_path_factory, minilm_path):
    """A tiny random BERT saved without a classification head (so loading it reports the missing head)."""
    from transformers import AutoTokenizer, BertModel

    folder = tmp_path_factory.mktemp("tiny-bert-headless")
    torch.manual_seed(0)
    BertModel(tiny_bert_config()).save_pretrained(folder)
    AutoTokenizer.from_pretrained(minilm_path).save_pretrained(folder)
    return str(folder)


def write_config(folder: Path, model_dir: str, **top) -> Path:
    tasks = []
    for name in TASKS:
        files = {split: str(SAMPLE / name / f"{split}.csv") for split in ("train", "test")}
        task = {"name": name, "data_files": files, "max_train_samples": 16, "max_eval_samples": 16}
        if name == "amazon_reviews":
            task["label_map"] = {"negative": "negative", "positive": "positive"}
        tasks.append(task)
    config = {
        "model": model_dir,
        "labels": ["negative", "neutral", "positive"],
        "max_length": 32,
        "training": {
            "optim": "classp",
            "optim_args": "power=1,eps=1e-8",
            "learning_rate": 1e-3,
            "num_train_epochs": 1,
            "per_device_train_batch_size": 8,
            "logging_steps": 1,
        },
        "tasks": tasks,
        **top,
    }
    path = folder / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


# -- overrides -------------------------------------------------------------------------------------


def test_run_reads_overrides_after_the_options(tmp_path, capsys):
    config = write_config(tmp_path, "unused")
    output = tmp_path / "out"
    code = cli_main(["run", str(config), "--output-dir", str(output), "--overwrite", "training.learning_rate=abc"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "config.training.learning_rate: expected a finite number, got 'abc'" in err[0]  # read as an override
    assert not output.exists()


def test_recipe_reads_overrides_anywhere(tmp_path, capsys):
    sys.path.insert(0, str(REPO / "recipes"))
    try:
        import continual_sentiment
    finally:
        sys.path.remove(str(REPO / "recipes"))
    config = write_config(tmp_path, "unused")
    argv = ["--config", str(config), "seed=1", "--output-dir", str(tmp_path / "out"), "tasks.*.max_train_samples=x"]
    assert continual_sentiment.main(argv) == 2
    err = capsys.readouterr().err
    assert "tasks[0] (financial_phrasebank).max_train_samples: expected an integer or null, got 'x'" in err


def test_probe_reads_overrides_anywhere(tmp_path, capsys):
    config = write_config(tmp_path, "unused")
    assert cli_main(["probe", str(config), "--batches", "1", "max_length=-3"]) == 2
    assert "config.max_length" in capsys.readouterr().err


def test_compare_reads_overrides_and_clears_keys_anywhere(tmp_path, monkeypatch):
    compare_module = importlib.import_module("classp_hf.continual.compare")  # the package exports compare()
    seen = {}

    def fake_compare(grid, output_dir, **kwargs):
        seen.update(kwargs, grid=grid)
        raise ValueError("stop")

    monkeypatch.setattr(compare_module, "compare", fake_compare)
    argv = ["compare", "grid.yaml", "--output-dir", "o", "seed=2", "--jobs", "2", "~training.optim_args"]
    assert cli_main(argv) == 2
    assert seen["grid"] == "grid.yaml" and seen["jobs"] == 2
    assert seen["overrides"] == {"seed": 2, "training.optim_args": None}


def test_tasks_star_sets_the_key_of_every_task(tmp_path):
    raw = yaml.safe_load(write_config(tmp_path, str(tmp_path)).read_text())
    overrides = parse_override_args(["tasks.*.max_train_samples=8", "tasks.airline_tweets.max_eval_samples=4"])
    config = config_from_dict(raw, overrides=overrides)
    assert [task.max_train_samples for task in config.tasks] == [8, 8, 8]
    assert [task.max_eval_samples for task in config.tasks] == [16, 4, 16]
    config = config_from_dict(raw, overrides={"tasks.*.training.learning_rate": 2e-3})
    assert [task.training for task in config.tasks] == [{"learning_rate": 2e-3}] * 3
    config.tasks[0].training["learning_rate"] = 1.0
    assert config.tasks[1].training["learning_rate"] == 2e-3  # each task its own copy
    with pytest.raises(ConfigError, match=r"^override tasks\.\*: name a key of every task"):
        config_from_dict(raw, overrides={"tasks.*": {}})


def test_tilde_clears_a_key_as_null_does_in_yaml(tmp_path):
    assert parse_override_args(["~training.optim_args", "~tasks.*.max_train_samples"]) == {
        "training.optim_args": None,
        "tasks.*.max_train_samples": None,
    }
    raw = yaml.safe_load(write_config(tmp_path, str(tmp_path)).read_text())
    cleared = config_from_dict(raw, overrides=parse_override_args(["~training.optim_args"]))
    as_yaml = dict(raw, training={**raw["training"], "optim_args": None})
    assert cleared.training.get("optim_args") is None and cleared.to_dict() == config_from_dict(as_yaml).to_dict()
    config = config_from_dict(raw, overrides=parse_override_args(["~tasks.*.max_train_samples"]))
    assert [task.max_train_samples for task in config.tasks] == [None] * 3
    # a text key's "null" stays the text; ~ is the one spelling that clears it
    assert parse_override_args(["training.optim_args=null"]) == {"training.optim_args": "null"}
    for bad in ("~training.optim_args=x", "~", "~a..b"):
        with pytest.raises(ConfigError, match="^override "):
            parse_override_args([bad])


# -- the console -----------------------------------------------------------------------------------


def test_library_output_is_held_back_and_restored():
    hf = transformers.utils.logging
    hf.set_verbosity_warning()
    hf.enable_progress_bar()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with library_output(verbose=False):
            assert hf.get_verbosity() == hf.ERROR and not hf.is_progress_bar_enabled()
            warnings.warn("held back", FutureWarning, stacklevel=1)
        assert hf.get_verbosity() == hf.WARNING and hf.is_progress_bar_enabled()
        with library_output(verbose=True):
            assert hf.get_verbosity() == hf.WARNING and hf.is_progress_bar_enabled()
            warnings.warn("shown", FutureWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ["shown"]


def test_console_callbacks(tmp_path, tiny_model):
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    def kinds(verbose, terminal, disable_tqdm=False):
        args = transformers.TrainingArguments(
            output_dir=str(tmp_path), disable_tqdm=disable_tqdm, report_to=[], use_cpu=True
        )
        trainer = transformers.Trainer(model=tiny_model, args=args)
        set_console_callbacks(trainer, verbose, terminal=terminal)
        shown = {ProgressCallback, PrinterCallback, TrainingBar}
        return {type(callback) for callback in trainer.callback_handler.callbacks} & shown

    assert kinds(verbose=False, terminal=True) == {TrainingBar}  # the training bar on a terminal
    assert kinds(verbose=False, terminal=False) == set()
    assert kinds(verbose=False, terminal=True, disable_tqdm=True) == set()
    assert kinds(verbose=True, terminal=False) == {ProgressCallback}  # transformers' own
    assert kinds(verbose=True, terminal=False, disable_tqdm=True) == {PrinterCallback}


def test_a_quiet_run_keeps_the_training_bar_setting(tmp_path, headless_model_dir):
    """transformers turns ``disable_tqdm`` on for arguments built while it logs errors only: the runner builds them
    before holding the libraries' output back, so the bar stays on a terminal."""
    from classp_hf.continual.runner import ContinualRunner

    config = config_from_dict(yaml.safe_load(write_config(tmp_path, headless_model_dir).read_text()))
    runner = ContinualRunner(config, tmp_path / "out", log=False, verbose=False)
    assert [args.disable_tqdm for args in runner.task_args] == [False] * 3


def _run_cli(tmp_path: Path, model_dir: str, name: str, *extra: str) -> subprocess.CompletedProcess:
    config = write_config(tmp_path, model_dir)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    command = [sys.executable, "-m", "classp_hf.cli", "run", str(config), "--output-dir", str(tmp_path / name)]
    return subprocess.run([*command, *extra], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)


def test_a_plain_run_prints_one_line_per_task_event_and_the_table(tmp_path, headless_model_dir):
    quiet = _run_cli(tmp_path, headless_model_dir, "quiet", "training.num_train_epochs=1")
    assert quiet.returncode == 0, quiet.stderr[-2000:]
    lines = (quiet.stdout + quiet.stderr).splitlines()
    assert len(lines) <= 15, "\n".join(lines)
    starts = [line for line in lines if ": start (" in line]
    assert len(starts) == 3 and len([line for line in lines if ": done in " in line]) == 3
    assert "16 train, 16 test examples" in starts[0]
    assert any(line.startswith("ACC ") for line in lines)
    assert quiet.stderr == ""  # no bars (not a terminal), no warnings, no load report

    verbose = _run_cli(tmp_path, headless_model_dir, "verbose", "--verbose")
    assert verbose.returncode == 0, verbose.stderr[-2000:]
    shown = verbose.stdout + verbose.stderr
    assert "LOAD REPORT" in shown and "Writing model shards" in shown and "{'loss':" in shown
    assert "evaluating the untrained model" in shown and len(shown.splitlines()) > 3 * len(lines)
    # the files are the same either way
    for name in ("results.json", "report.md", "config.yaml"):
        assert (tmp_path / "quiet" / name).is_file() and (tmp_path / "verbose" / name).is_file()
    quiet_config = yaml.safe_load((tmp_path / "quiet" / "config.yaml").read_text())
    assert quiet_config == yaml.safe_load((tmp_path / "verbose" / "config.yaml").read_text())


def test_an_in_process_comparison_keeps_the_libraries_off_its_console(tmp_path, headless_model_dir, capfd):
    """transformers' logger writes to the stderr it started with, past the run's redirected log file: the runs of
    ``compare --in-process`` hold the libraries' output back, so the console has the comparison's lines only."""
    write_config(tmp_path, headless_model_dir)
    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml.safe_dump({"base": "run.yaml", "seeds": [0], "settings": [{"name": "classp"}]}))
    argv = ["compare", str(grid), "--output-dir", str(tmp_path / "out"), "--in-process", "tasks.*.max_train_samples=8"]
    assert cli_main(argv) == 0
    captured = capfd.readouterr()
    shown = captured.out + captured.err
    assert "[compare] 1/1 classp seed 0: done" in shown and "LOAD REPORT" not in shown and "MISSING" not in shown
    log = (tmp_path / "out" / "logs" / "classp" / "default" / "seed0.log").read_text()
    assert "task 3/3 amazon_reviews: done" in log
