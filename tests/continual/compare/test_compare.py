"""``classp-hf compare``: grid files and presets, selection on validation only, aggregation, resuming, outputs.

Most tests run a :class:`FakeLauncher` that writes finished run folders with crafted results (so the numbers are
known and nothing trains); the resume test trains a tiny random BERT in process, and one test runs real
subprocesses two at a time.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import jsonschema
import pytest
import yaml

from classp_hf.cli import main as cli_main
from classp_hf.continual.compare.execute import (
    InProcessLauncher,
    RunRecord,
    compare,
    run_metrics,
    select_point,
    summarize,
)
from classp_hf.continual.compare.grid import GridPoint, grid_from_presets, load_grid, load_presets, merge_overrides
from classp_hf.continual.compare.report import FIGURES, load_comparison_schema, render_markdown
from classp_hf.continual.config import ConfigError

from ...helpers.compare import TASKS, FakeLauncher, crafted_results, write_grid

EXPERIMENTS = Path(__file__).resolve().parents[3] / "recipes" / "experiments"


# -- a launcher that writes crafted results ------------------------------------------------------


def comparison_config(folder: Path):
    """The run config of the setting ``plain`` in ``folder``'s grid."""
    grid = load_grid(folder / "grid.yaml")
    setting = grid.settings[0]
    return grid.run_config(setting, setting.points[0], 0)


def learning_rate(job) -> float:
    return job.config.training["learning_rate"]


# -- grid files and presets -----------------------------------------------------------------------


def test_grid_file_settings_presets_wildcards_and_seeds(tmp_path, base_config):
    grid_path = write_grid(
        tmp_path,
        [
            "classp",
            {"preset": "ewc", "grid": {"method_args.lambda_": [10.0, 20.0]}, "overrides": {"method_args.gamma": 1.0}},
            {
                "name": "mine",
                "overrides": {"training.learning_rate": 3e-4, "tasks.amazon_reviews.max_train_samples": 16},
            },
        ],
        overrides={"tasks.*.max_train_samples": 24},
        seeds=[3, 1],
    )
    grid = load_grid(grid_path, overrides={"max_length": 16})
    assert grid.seeds == [3, 1] and grid.base_config.resolve() == base_config.resolve()
    classp, ewc, mine = grid.settings
    assert [p.label for p in classp.points] == ["lr=3e-4", "lr=1e-3"]
    assert [p.name for p in classp.points] == ["lr-3e-4", "lr-1e-3"]
    config = grid.run_config(classp, classp.points[1], 3)
    assert config.seed == 3 and config.training["learning_rate"] == 1e-3 and config.max_length == 16
    assert config.training["optim"] == "classp" and config.training["optim_args"] == "threshold=0"
    assert [task.max_train_samples for task in config.tasks] == [24, 24]  # tasks.* set every task
    ewc_config = grid.run_config(ewc, ewc.points[0], 3)
    assert ewc_config.method == "ewc" and ewc_config.training["optim"] == "adamw_torch"  # method presets: AdamW
    assert ewc_config.method_args == {"lambda_": 10.0, "gamma": 1.0}  # the preset's lambda_ replaced by the grid's
    assert mine.points == [GridPoint("default")]
    mine_config = grid.run_config(mine, mine.points[0], 1)
    assert [task.max_train_samples for task in mine_config.tasks] == [24, 16]  # the setting's key wins over tasks.*
    assert mine_config.training["optim"] == "classp"  # a setting of its own keeps the base optimizer


def test_merge_overrides_later_layers_win_whole_keys():
    merged = merge_overrides({"method_args.lambda_": 1.0, "seed": 1}, {"method_args": {"buffer_size": 5}})
    assert merged == {"seed": 1, "method_args": {"buffer_size": 5}}
    merged = merge_overrides({"method_args": {"lambda_": 1.0}}, {"method_args.lambda_": 2.0})
    assert list(merged.items()) == [("method_args", {"lambda_": 1.0}), ("method_args.lambda_", 2.0)]


def test_every_shipped_preset_builds_a_valid_config(base_config):
    presets = load_presets()
    expected = {"sgd", "adamw", "adagrad", "classp", "classp_sparse", "classp_threshold_only", "classp_p2", "ewc"}
    expected |= {"ewc_online", "replay", "lwf", "classp+replay", "classp+ewc", "classp_head", "lora_classp"}
    expected |= {"classp_decay"}
    expected |= {"lora_adamw", "lora_per_task", "olora", "lora_replay"}
    assert expected <= set(presets)
    grid = grid_from_presets(base_config, ",".join(presets))  # builds and validates every grid point's config
    by_name = {setting.name: setting for setting in grid.settings}
    assert all(1 <= len(setting.points) <= 3 for setting in grid.settings)
    olora = grid.run_config(by_name["olora"], by_name["olora"].points[0], 0)
    assert olora.peft["adapters"] == "per_task" and olora.peft["init"] == "fresh"
    assert grid.run_config(by_name["adagrad"], by_name["adagrad"].points[0], 0).training["optim"] == "adagrad"
    assert [point.name for point in by_name["ewc"].points] == ["lambda_-1e4", "lambda_-1e5", "lambda_-1e6"]
    only = by_name["classp_threshold_only"]
    assert "apply_decay=false" in grid.run_config(only, only.points[0], 0).training["optim_args"]
    decay = by_name["classp_decay"]
    assert [grid.run_config(decay, point, 0).training["optim_args"] for point in decay.points] == [
        f"threshold=0,grad_sum_decay={gamma}" for gamma in ("0.1", "0.5", "1")
    ]


@pytest.mark.parametrize("name", sorted(path.name for path in EXPERIMENTS.glob("*.yaml")))
def test_shipped_grid_files_load_with_their_profiles(name):
    path = EXPERIMENTS / name
    profiles = [None, *(yaml.safe_load(path.read_text()).get("profiles") or {})]
    for profile in profiles:
        grid = load_grid(path, profile=profile)  # every grid point's config built and validated
        setting = grid.settings[0]
        config = grid.run_config(setting, setting.points[0], grid.seeds[0])
        if name not in ("quickstart.yaml", "ewc_lambda.yaml"):  # the two checks on the embedded sample
            assert len(grid.seeds) >= 1 and config.validation_fraction == 0.2
            assert config.training["per_device_train_batch_size"] == 16
            samples = {task.max_train_samples for task in config.tasks}
            sizes = (config.max_length, config.training["num_train_epochs"])
            if profile == "gpu":
                assert samples == {None} and sizes == (256, 1)
            else:  # docs/protocol.md's sizes by default; the earlier ones (64 tokens, one epoch) as `smoke`
                assert samples <= {800, 1000} and sizes == ((128, 2) if profile is None else (64, 1))
                assert {task.max_eval_samples for task in config.tasks} <= {400, 500}


def test_experiment_files_cover_the_issue(tmp_path):
    names = {setting.name for setting in load_grid(EXPERIMENTS / "fpb_imdb.yaml").settings}
    assert names == {name for name, preset in load_presets().items() if not name.startswith(("lora", "olora"))}
    assert load_grid(EXPERIMENTS / "fpb_imdb.yaml").seeds == [0, 1, 2]
    lora = {setting.name for setting in load_grid(EXPERIMENTS / "lora.yaml").settings}
    assert lora >= {"lora_classp", "lora_adamw", "lora_per_task", "olora", "lora_replay", "full_classp"}
    full = next(s for s in load_grid(EXPERIMENTS / "lora.yaml").settings if s.name == "full_classp")
    assert load_grid(EXPERIMENTS / "lora.yaml").run_config(full, full.points[0], 0).peft is None
    quickstart = load_grid(EXPERIMENTS / "quickstart.yaml")
    assert [s.name for s in quickstart.settings] == ["classp", "adamw"] and quickstart.seeds == [0]
    assert all(len(s.points) == 1 for s in quickstart.settings)


def test_experiment_2_reuses_a_grid_point_of_experiment_1():
    """Experiment 2 runs one point per setting, one that experiment 1's grid offered for the same setting."""

    def chosen_keys(grid, setting, point):
        config = grid.run_config(setting, point, 0)
        training = config.training
        return (
            training["optim"],
            training["learning_rate"],
            training.get("optim_args"),
            config.method,
            config.method_args,
        )

    fpb_imdb = load_grid(EXPERIMENTS / "fpb_imdb.yaml")
    queue = load_grid(EXPERIMENTS / "sentiment_queue.yaml")
    offered = {s.name: [chosen_keys(fpb_imdb, s, point) for point in s.points] for s in fpb_imdb.settings}
    assert len(queue.settings) == 12 and queue.seeds == [0, 1, 2]  # 10 settings and the two references
    for setting in queue.settings:
        assert len(setting.points) == 1, setting.name
        assert chosen_keys(queue, setting, setting.points[0]) in offered[setting.name], setting.name


def test_experiment_2_rechosen_offers_experiment_2s_point_among_its_grid():
    """The re-chosen check differs from experiment 2 only in choosing again: its grid holds experiment 2's run."""
    queue = load_grid(EXPERIMENTS / "sentiment_queue.yaml")
    again = load_grid(EXPERIMENTS / "sentiment_queue_rechosen.yaml")
    assert again.seeds == queue.seeds
    assert {s.name for s in again.settings} == {"adamw", "ewc", "classp", "classp_decay"}  # + CLASSP's gamma grid
    for setting in again.settings:
        assert len(setting.points) > 1, setting.name
        if setting.name == "classp_decay":
            continue
        fixed = next(s for s in queue.settings if s.name == setting.name)
        offered = [again.run_config(setting, point, 0).to_dict() for point in setting.points]
        assert queue.run_config(fixed, fixed.points[0], 0).to_dict() in offered, setting.name


@pytest.mark.parametrize(
    "change,message",
    [
        ({"settigs": []}, "grid.yaml.settigs: unknown key (did you mean 'settings'?)"),
        ({"settings": ["clasp"]}, "settings[0].preset: unknown preset 'clasp' (did you mean 'classp'?"),
        (
            {"settings": [{"name": "x", "overrides": {"training.learnin_rate": 1e-3}}]},
            "setting x: config.training.learnin_rate",
        ),
        (
            {"settings": [{"name": "x", "overrides": {"training.learning_rate": "fast"}}]},
            "setting x: config.training.learning_rate",
        ),
        ({"settings": [{"name": "x", "grid": {"seed": 3}}]}, "settings[0] (x).grid.seed: expected a non-empty list"),
        ({"settings": ["classp", "classp"]}, "the name 'classp' is used twice"),
        ({"settings": [{"name": "a/b"}]}, "settings[0].name: 'a/b': use letters"),
        ({"seeds": [0, 0]}, "seeds: a seed is listed twice"),
        ({"seeds": "x"}, "seeds: expected comma-separated integers"),
        ({"base": "configs/missing.yaml"}, "base: config file not found"),
        (
            {"settings": [{"preset": "classp", "overrides": {"validation_fraction": 0.0}}]},
            "set validation_fraction > 0",
        ),
    ],
)
def test_bad_grid_is_one_line_naming_the_key(tmp_path, base_config, change, message):
    raw = {"base": "configs/base.yaml", "seeds": [0], "settings": ["classp"], **change}
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError) as caught:
        load_grid(path)
    text = str(caught.value)
    assert message in text and "\n" not in text


def test_cli_bad_input_exits_2_and_writes_nothing(tmp_path, base_config, capsys):
    grid = write_grid(tmp_path, ["classp"])
    output = tmp_path / "out"
    args = ["compare", str(grid), "--output-dir", str(output)]
    assert cli_main(["compare", str(grid), "training.weight_decay=fast", "--output-dir", str(output)]) == 2
    assert cli_main([*args, "--presets", "classp"]) == 2
    assert (
        cli_main(["compare", "--config", str(base_config), "--presets", "classp,adamx", "--output-dir", str(output)])
        == 2
    )
    assert cli_main([*args, "--seeds", "0,x"]) == 2
    assert cli_main([*args, "--jobs", "0"]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 5 and all(line.startswith("classp-hf: error:") for line in errors)
    assert "config.training.weight_decay" in errors[0] and "did you mean 'adamw'" in errors[2]
    assert "--seeds" in errors[3] and "--jobs" in errors[4]
    assert not output.exists()


# -- selection and aggregation --------------------------------------------------------------------


def test_selection_uses_validation_accuracy_and_never_the_test_split(tmp_path, base_config):
    # lr 1e-3 is better on the test split, lr 3e-4 on validation: the choice must follow validation.
    def outcome(job):
        best_on_test = learning_rate(job) == 1e-3
        return (0.9, 0.5) if best_on_test else (0.4, 0.8)

    launcher = FakeLauncher(outcome)
    grid = write_grid(tmp_path, ["classp"], seeds=[0, 1, 2])
    comparison = compare(grid, tmp_path / "out", launcher=launcher, log=False)
    setting = comparison.setting("classp")
    assert setting.chosen == "lr-3e-4"
    assert [(p, s) for _, p, s, _ in launcher.launched] == [
        ("lr-3e-4", 0),
        ("lr-1e-3", 0),
        ("lr-3e-4", 1),
        ("lr-3e-4", 2),
    ]
    assert [run.point for run in setting.runs] == ["lr-3e-4"] * 3  # the grid's seed-0 run is reused
    assert setting.summary["acc"]["mean"] == pytest.approx(0.4)
    assert select_point([(GridPoint("a"), 0.5), (GridPoint("b"), None), (GridPoint("c"), 0.5)]).name == "a"  # ties
    assert select_point([(GridPoint("a"), None)]) is None


def test_aggregation_mean_std_and_a_failed_seed_reported_not_averaged(tmp_path, base_config, capsys):
    accuracies = {0: 0.6, 1: 0.7, 2: None}

    def outcome(job):
        acc = accuracies[job.seed]
        return "RuntimeError: out of memory" if acc is None else (acc, acc)

    grid = write_grid(tmp_path, [{"name": "plain"}], seeds=[0, 1, 2])
    comparison = compare(grid, tmp_path / "out", launcher=FakeLauncher(outcome), log=False)
    summary = comparison.setting("plain").summary
    assert summary["acc"] == {"mean": pytest.approx(0.65), "std": pytest.approx(math.sqrt(0.005)), "n": 2}
    assert (summary["complete"], summary["failed"], summary["pending"]) == (2, 1, 0)
    assert summary["final_accuracy"]["mean"] == pytest.approx([0.65, 0.65])
    assert summary["forgetting"]["mean"] == pytest.approx(0.7 - 0.65)
    assert summary["extra_memory_bytes"]["mean"] == 5000 and summary["bytes_per_trainable_parameter"]["mean"] == 5.0
    assert summary["total_parameters"]["mean"] == 6000
    assert summary["wall_seconds"] == {"mean": 2.0, "std": 0.0, "n": 2}
    assert summary["acc_task_labels"]["mean"] == pytest.approx(0.70) and summary["acc_task_labels"]["n"] == 2
    failed = comparison.failed_runs
    assert [(r.seed, r.error) for r in failed] == [(2, "RuntimeError: out of memory")]
    markdown = (tmp_path / "out" / "comparison.md").read_text()
    assert "## Failed runs" in markdown and "seed 2: RuntimeError: out of memory" in markdown
    assert "65.0 ± 7.1" in markdown and "2 (1 failed)" in markdown
    assert "70.0 ± 7.1" in markdown and "ACC, task labels" in markdown and "(n=" not in markdown
    data = json.loads((tmp_path / "out" / "comparison.json").read_text())
    data["settings"][0]["summary"]["acc_task_labels"]["n"] = 1  # one complete run predates the part
    assert "70.0 ± 7.1 (n=1)" in render_markdown(data)  # a mean over fewer runs than the others says so
    config = comparison_config(tmp_path)
    records = [RunRecord("s", "p", 0, "r", "complete", metrics=run_metrics(crafted_results(config, 0.5, 0.5)))]
    older = crafted_results(config, 0.7, 0.7)
    del older["task_labels"]  # a run made before the part existed
    records.append(RunRecord("s", "p", 3, "r", "complete", metrics=run_metrics(older)))
    records.append(RunRecord("s", "p", 1, "r", "failed", error="x"))
    records.append(RunRecord("s", "p", 2, "r", "pending"))
    partial = summarize(records)
    assert partial["acc"] == {"mean": pytest.approx(0.6), "std": pytest.approx(math.sqrt(0.02)), "n": 2}
    assert partial["acc_task_labels"] == {"mean": pytest.approx(0.55), "std": None, "n": 1}  # only the newer run
    assert (partial["complete"], partial["failed"], partial["pending"]) == (2, 1, 1)


def test_classp_update_diagnostics_are_averaged_over_tasks_and_reported(tmp_path, base_config):
    write_grid(tmp_path, [{"name": "plain"}])
    config = comparison_config(tmp_path)
    results = crafted_results(config, 0.6, 0.6)
    results["per_task"][0]["sparsity"] = {
        "mean_update_fraction": 0.4,
        "ever_updated_fraction": 0.5,
        "overlap_with_earlier": None,  # the first task has no earlier task
    }
    results["per_task"][1]["sparsity"] = {
        "mean_update_fraction": 0.2,
        "ever_updated_fraction": 0.3,
        "overlap_with_earlier": 0.8,
    }
    metrics = run_metrics(results)
    assert metrics["update_fraction"] == pytest.approx(0.3) and metrics["task_update_fraction"] == pytest.approx(0.4)
    assert metrics["overlap_with_earlier"] == pytest.approx(0.8)
    plain = run_metrics(crafted_results(config, 0.5, 0.5))  # no diagnostics recorded
    assert plain["update_fraction"] is plain["overlap_with_earlier"] is None

    records = [RunRecord("s", "p", seed, "r", "complete", metrics=m) for seed, m in enumerate([metrics, plain])]
    summary = summarize(records)
    assert summary["update_fraction"] == {"mean": pytest.approx(0.3), "std": None, "n": 1}

    comparison = compare(
        tmp_path / "grid.yaml", tmp_path / "out", launcher=FakeLauncher(lambda job: (0.6, 0.6)), log=False
    )
    data = comparison.to_dict()
    assert "Which weights moved" not in render_markdown(data)  # no run recorded diagnostics: no section
    data["settings"][0]["summary"] = {**data["settings"][0]["summary"], **summary, "complete": 2}
    markdown = render_markdown(data)
    assert "## Which weights moved" in markdown and "| plain | 30.0 (n=1) | 40.0 (n=1) | 80.0 (n=1) |" in markdown


def test_outputs_figures_and_schema(tmp_path, base_config):
    grid = write_grid(
        tmp_path,
        ["classp", {"preset": "adamw", "grid": None}],
        seeds=[0, 1],
        description="two settings",
    )
    output = tmp_path / "out"
    compare(grid, output, launcher=FakeLauncher(lambda job: (0.6 + job.seed / 10, 0.5)), log=False)
    data = json.loads((output / "comparison.json").read_text())
    jsonschema.Draft202012Validator(load_comparison_schema()).validate(data)
    assert data["tasks"] == TASKS and data["seeds"] == [0, 1]
    assert data["queue"]["tasks"][0] == {"name": TASKS[0], "train_examples": 24, "steps": 3}
    for name in FIGURES.values():
        assert (output / "figures" / name).stat().st_size > 1000
    markdown = (output / "comparison.md").read_text()
    for heading in ("# Comparison: two settings", "## Accuracy", "## Cost", "## Each seed", "## Grids (seed 0)"):
        assert heading in markdown
    assert "controlled plasticity" in markdown
    assert (output / "compare_plan.json").is_file()
    configs = sorted(p.relative_to(output).as_posix() for p in (output / "configs").rglob("*.yaml"))
    assert "configs/adamw/default/seed1.yaml" in configs


def test_output_dir_that_is_not_a_comparison_is_refused_and_overwrite_clears_only_ours(tmp_path, base_config):
    grid = write_grid(tmp_path, [{"name": "plain"}])
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep")
    for overwrite in (False, True):
        with pytest.raises(ValueError, match="not empty and holds no comparison"):
            compare(grid, foreign, launcher=FakeLauncher(lambda job: (0.5, 0.5)), overwrite=overwrite, log=False)
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]
    output = tmp_path / "out"
    launcher = FakeLauncher(lambda job: (0.5, 0.5))
    compare(grid, output, launcher=launcher, log=False)
    (output / "mine.txt").write_text("keep")
    compare(grid, output, launcher=launcher, log=False)
    assert len(launcher.launched) == 1  # the finished run was skipped
    compare(grid, output, launcher=launcher, overwrite=True, log=False)
    assert len(launcher.launched) == 2 and (output / "mine.txt").read_text() == "keep"


def test_report_only_runs_nothing_and_marks_pending(tmp_path, base_config):
    grid = write_grid(tmp_path, ["classp"], seeds=[0, 1])
    output = tmp_path / "out"
    compare(grid, output, launcher=FakeLauncher(lambda job: "boom" if learning_rate(job) == 1e-3 else (0.5, 0.5)),
            seeds=[0], log=False)  # fmt: skip
    with pytest.raises(ConfigError, match="--report-only reads the comparison"):
        compare(grid, tmp_path / "elsewhere", report_only=True, log=False)
    assert not (tmp_path / "elsewhere").exists()
    comparison = compare(grid, output, report_only=True, log=False)
    setting = comparison.setting("classp")
    assert setting.chosen == "lr-3e-4"  # lr 1e-3 failed on seed 0 and is left out of the choice
    assert [run.status for run in setting.runs] == ["complete", "pending"]
    assert [p.run.status for p in setting.points] == ["complete", "failed"]


# -- real runs --------------------------------------------------------------------------------------


class Recording(InProcessLauncher):
    def __init__(self):
        self.launched = []

    def launch(self, job):
        self.launched.append((job.seed, job.mode))
        return super().launch(job)


def test_an_unfinished_run_without_its_checkpoint_starts_again(tmp_path, base_config):
    grid = write_grid(tmp_path, [{"name": "plain"}])
    output = tmp_path / "out"
    compare(grid, output, launcher=FakeLauncher(lambda job: (0.6, 0.6)), log=False)
    run = output / "runs" / "plain" / "default" / "seed0"
    state = json.loads((run / "run_state.json").read_text())
    (run / "run_state.json").write_text(json.dumps({**state, "completed_tasks": 1}))  # killed after its first task
    shutil.rmtree(run / "checkpoints")  # ... and its checkpoint is gone: nothing to resume from
    shutil.rmtree(run / "model")
    again = FakeLauncher(lambda job: (0.6, 0.6))
    compare(grid, output, launcher=again, log=False)
    assert again.launched == [("plain", "default", 0, "overwrite")]


def test_resume_a_half_finished_comparison(tmp_path, base_config, monkeypatch):
    import classp_hf.continual.runner as runner_module

    grid = write_grid(tmp_path, [{"name": "plain"}], seeds=[0, 1])
    output = tmp_path / "out"
    save = runner_module.ContinualRunner._save_checkpoint

    def killed_after_first_task(self, index, trainer, tracking):  # seed 1 dies once its first task is saved
        save(self, index, trainer, tracking)
        if self.config.seed == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(runner_module.ContinualRunner, "_save_checkpoint", killed_after_first_task)
    with pytest.raises(KeyboardInterrupt):
        compare(grid, output, launcher="inprocess", log=False)
    monkeypatch.undo()
    seed0 = output / "runs" / "plain" / "default" / "seed0"
    seed1 = output / "runs" / "plain" / "default" / "seed1"
    assert json.loads((seed1 / "run_state.json").read_text())["completed_tasks"] == 1
    finished_at = (seed0 / "results.json").stat().st_mtime_ns
    assert not (seed0 / "checkpoints").exists()  # keep_last_checkpoint: false (compare's runs): removed once finished
    assert json.loads((seed0 / "run_state.json").read_text())["checkpoint"] is None

    launcher = Recording()
    comparison = compare(grid, output, launcher=launcher, log=False)
    assert launcher.launched == [(1, "resume")]  # seed 0 finished: skipped; seed 1 continues
    assert (seed0 / "results.json").stat().st_mtime_ns == finished_at
    assert json.loads((seed1 / "results.json").read_text())["resumed_after_tasks"] == [1]
    assert comparison.setting("plain").summary["complete"] == 2

    changed = write_grid(tmp_path, [{"name": "plain", "overrides": {"training.learning_rate": 5e-4}}], seeds=[0, 1])
    with pytest.raises(ConfigError) as caught:
        compare(changed, output, launcher=launcher, log=False)
    assert "run runs/plain/default/seed0" in str(caught.value) and "training.learning_rate" in str(caught.value)
    assert launcher.launched == [(1, "resume")]


def test_subprocess_runs_two_at_a_time_and_a_failure_is_recorded(tmp_path, base_config, capsys):
    grid = write_grid(
        tmp_path,
        [
            {"name": "good", "overrides": {"tasks.*.max_train_samples": 16}},
            {"name": "bad", "overrides": {"model": str(tmp_path / "nope")}},
        ],
    )
    output = tmp_path / "out"
    code = cli_main(["compare", str(grid), "--output-dir", str(output), "--jobs", "2"])
    out = capsys.readouterr().out
    assert code == 1  # a run failed: reported, exit status 1
    data = json.loads((output / "comparison.json").read_text())
    good, bad = data["settings"]
    assert good["runs"][0]["status"] == "complete" and good["runs"][0]["cpu_seconds"] > 0
    assert bad["runs"][0]["status"] == "failed" and "config.model" in bad["runs"][0]["error"]
    assert data["environment"]["jobs"] == 2 and data["environment"]["threads_per_job"] >= 1
    assert "good" in out and "1 run(s) failed" in out
    log = (output / "logs" / "bad" / "default" / "seed0.log").read_text()
    assert "classp-hf: error: config.model" in log

    # Reported again without --jobs: the header still says what the runs ran under, not this invocation's 1.
    cli_main(["compare", str(grid), "--output-dir", str(output), "--report-only", "--quiet"])
    environment = json.loads((output / "comparison.json").read_text())["environment"]
    assert environment["jobs"] == 2 and environment["launcher"] == "subprocess"
    assert [(s["jobs"], s["attempts"]) for s in environment["schedules"]] == [(2, 2)]
    assert "2 run(s) at a time (subprocess" in (output / "comparison.md").read_text()


def test_a_run_made_before_a_config_key_existed_is_reused_when_the_key_has_its_default(tmp_path, base_config):
    grid = write_grid(tmp_path, [{"name": "plain"}])
    output = tmp_path / "out"
    first = FakeLauncher(lambda job: (0.6, 0.5))
    compare(grid, output, launcher=first, log=False)
    stored_path = output / "runs" / "plain" / "default" / "seed0" / "config.yaml"
    stored = yaml.safe_load(stored_path.read_text())
    assert stored["model_dtype"] is None and stored["tasks"][0]["text_column"] == "text"
    del stored["model_dtype"], stored["diagnostics"]  # as an older classp_hf wrote it
    del stored["tasks"][0]["text_column"]
    stored_path.write_text(yaml.safe_dump(stored, sort_keys=False))

    again = FakeLauncher(lambda job: (0.6, 0.5))
    compare(grid, output, launcher=again, log=False)
    assert again.launched == []  # finished and the same config: skipped

    stored["diagnostics"] = True  # a stored value other than the default is still a difference
    stored_path.write_text(yaml.safe_dump(stored, sort_keys=False))
    with pytest.raises(ConfigError, match=r"run runs/plain/default/seed0 .*\(differs in diagnostics\)"):
        compare(grid, output, launcher=again, log=False)

    stored_path.write_text("{unclosed: [")  # an unreadable config.yaml is a mismatch that says why
    with pytest.raises(ConfigError, match=r"run runs/plain/default/seed0 .*differs in everything: cannot read"):
        compare(grid, output, launcher=again, log=False)
