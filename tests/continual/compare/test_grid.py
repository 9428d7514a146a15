"""``classp-hf compare``'s grid files and presets: settings, wildcards, seeds, the shipped experiments, and bad
grids refused in one line naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from classp_hf.cli import main as cli_main
from classp_hf.continual.compare.grid import GridPoint, grid_from_presets, load_grid, load_presets, merge_overrides
from classp_hf.continual.config import ConfigError

from ...helpers.compare import write_grid

EXPERIMENTS = Path(__file__).resolve().parents[3] / "recipes" / "experiments"


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
            else:  # docs/protocol.md's sizes by default; the earlier ones (64 tokens, one epoch, linear) as `smoke`
                assert sizes == ((128, 4) if profile is None else (64, 1))
                schedule = config.training["lr_scheduler_type"]
                assert schedule == ("constant" if profile is None else "linear")
                by_task = {task.name: task.max_train_samples for task in config.tasks}
                assert set(by_task.values()) <= {800, 1000} | ({500} if profile is None else set())
                if "imdb" in by_task and profile is None:
                    assert by_task["imdb"] == 500  # 400 train: 100 steps, the same four epochs
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


def _chosen_keys(grid, setting, point):
    config = grid.run_config(setting, point, 0)
    training = config.training
    return (training["optim"], training["learning_rate"], training.get("optim_args"), config.method, config.method_args)


def test_experiment_2_chooses_among_points_experiment_1_offers():
    """Experiment 2 chooses each setting's point on its own queue, among points experiment 1's grid offers too."""
    fpb_imdb = load_grid(EXPERIMENTS / "fpb_imdb.yaml")
    queue = load_grid(EXPERIMENTS / "sentiment_queue.yaml")
    offered = {s.name: [_chosen_keys(fpb_imdb, s, point) for point in s.points] for s in fpb_imdb.settings}
    assert queue.seeds == [0, 1, 2]
    names = {setting.name for setting in queue.settings}
    assert names >= {"adamw", "classp", "classp_decay", "ewc", "replay", "joint", "single_task"}
    for setting in queue.settings:
        points = [_chosen_keys(queue, setting, point) for point in setting.points]
        assert all(points.count(point) == 1 for point in points) and (
            len(points) > 1 or setting.name.endswith("replay")
        ), setting.name
        assert all(point in offered[setting.name] for point in points), setting.name


@pytest.mark.parametrize(
    "change,message",
    [
        ({"settigs": []}, "grid.yaml.settigs: unknown key (did you mean 'settings'? accepted: base, description,"),
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
