"""The references (``queue_mode: joint`` and ``single_task``), ``predictions.json``, and what ``compare`` makes of
them: reference rows, the gap to joint, the share of single-task accuracy, the paired bootstrap against a reference
setting and the "did not learn" mark."""

from __future__ import annotations

import csv
import json

import jsonschema
import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from classp_hf.cli import main as cli_main
from classp_hf.continual.compare import compare
from classp_hf.continual.compare.noise import paired_bootstrap, paired_difference
from classp_hf.continual.compare.report import format_table, load_comparison_schema, render_markdown
from classp_hf.continual.config import ConfigError, config_from_dict
from classp_hf.continual.outputs import clear_run_outputs
from classp_hf.continual.predictions import PREDICTIONS_FILENAME, read_predictions
from classp_hf.continual.results import validate_results
from classp_hf.continual.runner import ContinualRunner

from ..helpers.compare import TASKS, FakeLauncher, crafted_results, write_grid
from ..helpers.runs import SAMPLE, raw_config

LABELS = ["negative", "neutral", "positive"]


def reference_config(model_dir, mode):
    raw = raw_config(model_dir, queue_mode=mode)
    raw["tasks"][1].pop("training")
    return raw


# -- the runner -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "change, message",
    [
        (
            {"queue_mode": "joint", "method": "ewc", "method_args": {"lambda_": 1.0}},
            r"config\.method: queue_mode joint is a reference .*method: none",
        ),
        ({"queue_mode": "single_task", "peft": {"r": 4}}, r"config\.peft: queue_mode single_task trains the full"),
        ({"queue_mode": "parallel"}, r"config\.queue_mode: expected one of sequential, joint, single_task"),
    ],
)
def test_reference_modes_refuse_what_they_cannot_train(tiny_model_dir, change, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict({**raw_config(tiny_model_dir), **change})


def test_joint_refuses_per_task_training_options(tiny_model_dir):
    raw = raw_config(tiny_model_dir, queue_mode="joint")  # amazon_reviews has its own learning rate
    with pytest.raises(ConfigError, match=r"tasks\[1\] \(amazon_reviews\)\.training: queue_mode joint trains"):
        config_from_dict(raw)


def csv_labels(task: str, rows: list[int]) -> list[int]:
    with open(SAMPLE / task / "test.csv", encoding="utf-8") as handle:
        labels = [row["label"] for row in csv.DictReader(handle)]
    return [LABELS.index(labels[row]) for row in rows]


def test_joint_run_trains_one_stage_on_the_union_and_records_its_predictions(tmp_path, tiny_model_dir):
    output = tmp_path / "joint"
    results = ContinualRunner(config_from_dict(reference_config(tiny_model_dir, "joint")), output, log=False).run()
    data = json.loads((output / "results.json").read_text())
    validate_results(data)
    assert data == results.to_dict() and data["queue_mode"] == "joint" and data["status"] == "complete"
    assert [record["name"] for record in data["per_task"]] == ["joint"] and len(data["accuracy_matrix"]) == 1
    assert data["per_task"][0]["train_examples"] == 2 * 32  # every task's 32 training examples
    assert data["per_task"][0]["steps"] == 8  # 64 examples at batch 8, one epoch: the sequential run's total
    assert data["metrics"]["acc"] == pytest.approx(np.mean(data["accuracy_matrix"][0]))
    assert data["metrics"]["bwt"] is None and data["metrics"]["forgetting"] is None
    assert json.loads((output / "run_state.json").read_text())["tasks"] == ["joint"]
    assert "after joint training" in (output / "report.md").read_text()

    predictions = read_predictions(output)
    assert predictions["queue_mode"] == "joint" and [e["name"] for e in predictions["tasks"]] == TASKS
    for j, entry in enumerate(predictions["tasks"]):
        assert entry["stage"] == 0 and len(entry["labels"]) == 24  # max_eval_samples
        assert entry["labels"] == csv_labels(entry["name"], entry["example_index"])  # the rows of the test file
        correct = np.mean(np.asarray(entry["predictions"]) == np.asarray(entry["labels"]))
        assert correct == pytest.approx(data["accuracy_matrix"][0][j])  # the predictions behind the matrix

    removed = clear_run_outputs(output)  # --overwrite removes it with the rest of the run
    assert PREDICTIONS_FILENAME in removed and not (output / PREDICTIONS_FILENAME).exists()


class FirstWeights(ContinualRunner):
    """Records a weight of the model each stage starts from."""

    def _context(self, index):
        self.started = getattr(self, "started", []) + [self.model.bert.embeddings.word_embeddings.weight[:4].clone()]
        return super()._context(index)


def test_single_task_starts_each_task_from_the_pretrained_model(tmp_path, tiny_model_dir):
    output = tmp_path / "single"
    runner = FirstWeights(config_from_dict(reference_config(tiny_model_dir, "single_task")), output, log=False)
    data = runner.run().to_dict()
    pretrained = load_file(f"{tiny_model_dir}/model.safetensors")["bert.embeddings.word_embeddings.weight"][:4]
    assert len(runner.started) == 2
    for weights in runner.started:  # the second task starts from the pretrained weights, not the first's
        torch.testing.assert_close(weights, pretrained, rtol=0, atol=0)
    diagonal = [data["accuracy_matrix"][i][i] for i in range(2)]
    assert data["queue_mode"] == "single_task" and data["metrics"]["acc"] == pytest.approx(np.mean(diagonal))
    assert data["metrics"]["bwt"] is None
    predictions = read_predictions(output)
    assert [(e["name"], e["stage"]) for e in predictions["tasks"]] == [(TASKS[0], 0), (TASKS[1], 1)]
    for j, entry in enumerate(predictions["tasks"]):  # each task's predictions are those of the model trained on it
        correct = np.mean(np.asarray(entry["predictions"]) == np.asarray(entry["labels"]))
        assert correct == pytest.approx(diagonal[j])


# -- the bootstrap ------------------------------------------------------------------------------


def test_identical_predictions_differ_by_exactly_zero_within_noise():
    rng = np.random.default_rng(1)
    strata = {(seed, task): (c, c) for seed in (0, 1) for task in (0, 1) for c in [rng.random(200) < 0.7]}
    result = paired_bootstrap(strata, resamples=500)
    assert (result.mean, result.low, result.high) == (0.0, 0.0, 0.0)
    assert result.within_noise and result.seeds == [0, 1] and result.examples == 400


def test_a_clearly_better_setting_has_an_interval_above_zero_and_the_draws_are_seeded():
    rng = np.random.default_rng(2)
    strata = {}
    for seed in (0, 1, 2):
        for task in (0, 1):
            reference = rng.random(300) < 0.6
            better = reference | (rng.random(300) < 0.5)  # right wherever the reference is, and on half the rest
            strata[(seed, task)] = (better, reference)
    expected = np.mean([np.mean(a) - np.mean(b) for a, b in strata.values()])
    result = paired_bootstrap(strata)
    assert result.mean == pytest.approx(expected)
    assert 0.0 < result.low < result.mean < result.high and not result.within_noise
    assert paired_bootstrap(dict(reversed(strata.items()))) == result  # deterministic, whatever the order
    worse = paired_bootstrap({key: (b, a) for key, (a, b) in strata.items()})
    assert worse.mean == pytest.approx(-expected) and worse.high < 0.0


def test_a_small_difference_on_few_examples_is_within_noise():
    reference = np.array([True] * 30 + [False] * 20)
    mine = reference.copy()
    mine[30] = True  # one example more of 50
    result = paired_bootstrap({(0, 0): (mine, reference)})
    assert result.mean == pytest.approx(0.02) and result.low <= 0.0 < result.high and result.within_noise


def test_runs_on_other_test_examples_do_not_pair():
    entry = {"name": "a", "stage": 0, "example_index": [5, 9], "labels": [0, 1], "predictions": [0, 1]}
    mine = {0: {"queue_mode": "sequential", "tasks": [entry]}}
    other = {0: {"queue_mode": "sequential", "tasks": [{**entry, "example_index": [2, 3]}]}}
    assert paired_difference(mine, other, ["a"]) == (None, "seed 0: the test examples differ")
    relabelled = {0: {"queue_mode": "sequential", "tasks": [{**entry, "labels": [1, 1]}]}}
    assert paired_difference(mine, relabelled, ["a"]) == (None, "seed 0: the test examples differ")
    assert paired_difference(mine, {1: mine[0]}, ["a"]) == (None, "no seed finished by both")
    assert paired_difference(mine, {0: None}, ["a"])[1] == "seed 0: no final predictions.json"


def test_positions_recorded_from_a_cached_task_pair_with_rows_of_the_same_examples():
    """classp_hf 0.2.0 recorded positions 0..n-1 for a task read from the comparison's cache, rows otherwise: the
    same seeded sample, so the two pair up when every label matches (and only then)."""
    labels = [2, 0, 1, 1, 0, 2]
    rows = {"name": "a", "stage": 0, "example_index": [41, 7, 30, 2, 19, 11], "labels": labels, "predictions": labels}
    positions = {**rows, "example_index": list(range(6)), "predictions": [2, 0, 1, 0, 0, 0]}
    mine, cached = {0: {"tasks": [rows]}}, {0: {"tasks": [positions]}}
    difference, why = paired_difference(mine, cached, ["a"])
    assert why is None and difference.seeds == [0] and difference.mean == pytest.approx(2 / 6)
    assert paired_difference(cached, mine, ["a"])[0].mean == pytest.approx(-2 / 6)
    other_labels = {0: {"tasks": [{**positions, "labels": [0, 0, 1, 1, 0, 2]}]}}
    assert paired_difference(mine, other_labels, ["a"]) == (None, "seed 0: the test examples differ")


# -- compare ------------------------------------------------------------------------------------

# Test examples per task: 20; the reference setting ("base") gets 12 right on each task.
N = 20


def reference_results(config, accuracy: list[float], mode: str, own: list[float] | None = None) -> dict:
    """Crafted results.json of a run whose final accuracies are ``accuracy`` (and diagonal ``own``)."""
    results = crafted_results(config, 0.5, 0.5)
    own = own or accuracy
    if mode == "joint":
        results["accuracy_matrix"] = [accuracy]
        results["per_task"] = [{**results["per_task"][0], "name": "joint"}]
    elif mode == "single_task":
        results["accuracy_matrix"] = [[accuracy[0], 0.3], [0.3, accuracy[1]]]
    else:
        results["accuracy_matrix"] = [[own[0], 0.3], [accuracy[0], accuracy[1]]]
    results["queue_mode"] = mode
    results["majority_accuracy"] = [0.5, 0.5]
    results["metrics"]["acc"] = float(np.mean(accuracy))
    return results


class ReferenceLauncher(FakeLauncher):
    """Writes runs with crafted results and predictions: per setting, how many of the N examples each task gets
    right, and its own-task accuracy."""

    RIGHT = {"base": [12, 12], "same": [12, 12], "better": [19, 19], "joint": [20, 18], "single_task": [16, 20]}

    def __init__(self):
        super().__init__(lambda job: (0.5, 0.5))

    def launch(self, job):
        attempt = super().launch(job)
        right = self.RIGHT[job.setting]
        accuracy = [r / N for r in right]
        own = [0.54, 0.6] if job.setting == "same" else None  # "same" barely rose above the first task's majority
        results = reference_results(job.config, accuracy, job.config.queue_mode, own)
        (job.run_dir / "results.json").write_text(json.dumps(results))
        tasks = []
        for j, name in enumerate(TASKS):
            labels = [(i + j) % 2 for i in range(N)]
            predictions = [label if i < right[j] else 1 - label for i, label in enumerate(labels)]
            stage = {"joint": 0, "single_task": j}.get(job.config.queue_mode, 1)
            tasks.append(
                {"name": name, "stage": stage, "example_index": list(range(N)), "labels": labels,
                 "predictions": predictions}
            )  # fmt: skip
        prediction_file = {"format_version": 1, "queue_mode": job.config.queue_mode, "seed": job.seed, "tasks": tasks}
        (job.run_dir / PREDICTIONS_FILENAME).write_text(json.dumps(prediction_file))
        if job.config.queue_mode == "joint":
            state = json.loads((job.run_dir / "run_state.json").read_text())
            (job.run_dir / "run_state.json").write_text(json.dumps({**state, "completed_tasks": 1, "tasks": ["joint"]}))
        return attempt


def test_compare_reports_references_paired_intervals_and_did_not_learn(tmp_path, base_config):
    grid = write_grid(
        tmp_path,
        [
            {"name": "base", "preset": "adamw", "grid": None},
            {"preset": "joint", "grid": None},
            {"name": "same", "preset": "adamw", "grid": None},
            {"name": "better", "preset": "classp", "grid": None},
            {"preset": "single_task", "grid": None},
        ],
        seeds=[0, 1],
    )
    output = tmp_path / "out"
    compare(grid, output, launcher=ReferenceLauncher(), log=False)
    data = json.loads((output / "comparison.json").read_text())
    jsonschema.Draft202012Validator(load_comparison_schema()).validate(data)
    settings = {s["name"]: s for s in data["settings"]}
    assert data["reference_settings"] == {"joint": "joint", "single_task": "single_task"}
    assert data["noise"]["reference"] == "base" and data["noise"]["resamples"] == 2000
    modes = [settings[name]["mode"] for name in ("base", "joint", "single_task")]
    assert modes == ["sequential", "joint", "single_task"]

    base, better, same = settings["base"], settings["better"], settings["same"]
    assert base["versus_reference"] is None  # the reference itself
    assert base["references"]["gap_to_joint"] == pytest.approx(0.6 - 0.95)
    assert base["references"]["share_of_single_task"] == pytest.approx([0.6 / 0.8, 0.6 / 1.0])
    assert settings["joint"]["summary"]["final_accuracy"]["mean"] == pytest.approx([1.0, 0.9])
    assert settings["single_task"]["summary"]["final_accuracy"]["mean"] == pytest.approx([0.8, 1.0])  # its diagonal
    assert same["versus_reference"] == {
        "mean": 0.0, "low": 0.0, "high": 0.0, "within_noise": True, "seeds": [0, 1], "examples": 2 * N
    }  # fmt: skip
    assert better["versus_reference"]["mean"] == pytest.approx(0.35)
    assert 0 < better["versus_reference"]["low"] < 0.35 < better["versus_reference"]["high"]
    assert not better["versus_reference"]["within_noise"]
    # "same" reached 54% on financial_phrasebank right after training on it: majority 50% + 5 points not passed.
    assert same["did_not_learn"] == [TASKS[0]] and better["did_not_learn"] == []

    markdown = (output / "comparison.md").read_text()
    assert "## References and noise" in markdown and "paired bootstrap over examples and seeds" in markdown
    assert "2000 resamples, seed 0" in markdown
    assert "| joint (reference: joint) |" in markdown and "| single_task (reference: single_task) |" in markdown
    assert "within noise of base; did not learn financial_phrasebank" in markdown
    assert "| +35.0 [" in markdown and "| -35.0 |" in markdown  # better vs base; base's gap to joint
    assert markdown.index("| better |") < markdown.index("| joint (reference: joint) |")  # references come last
    assert render_markdown(data) == markdown


def test_reference_option_picks_the_setting_and_refuses_an_unknown_one(tmp_path, base_config, capsys):
    grid = write_grid(tmp_path, [{"name": "base", "preset": "adamw", "grid": None}, {"preset": "joint", "grid": None}])
    output = tmp_path / "out"
    code = cli_main(["compare", str(grid), "--output-dir", str(output), "--reference", "nope", "--quiet"])
    assert code == 2 and not output.exists()
    error = capsys.readouterr().err
    assert "classp-hf: error: --reference nope: no setting of that name (settings: base, joint)" in error
    comparison = compare(grid, output, reference="joint", launcher=ReferenceLauncher(), log=False)
    data = comparison.to_dict()
    assert data["noise"]["reference"] == "joint" and comparison.setting("joint").versus_reference is None
    assert comparison.setting("base").versus_reference["mean"] == pytest.approx(0.6 - 0.95)
    assert "vs joint pts [95% CI]" in format_table(data)


def test_shipped_experiments_hold_the_references():
    from classp_hf.continual.compare.grid import load_presets

    presets = load_presets()
    assert presets["joint"].overrides["queue_mode"] == "joint"
    assert presets["single_task"].overrides["queue_mode"] == "single_task"
    for name in ("fpb_imdb", "sentiment_queue"):
        raw = yaml.safe_load((SAMPLE.parents[1] / "experiments" / f"{name}.yaml").read_text())
        names = [s if isinstance(s, str) else s.get("name", s.get("preset")) for s in raw["settings"]]
        assert {"joint", "single_task"} <= set(names), name
