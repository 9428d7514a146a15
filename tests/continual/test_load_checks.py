"""Checks made when a config is loaded, before anything is written (issue 19).

Settings that would be accepted and not applied (``optim_args`` transformers ignores, a run of 0 steps, Hub
pushes), inputs that failed late (an unwritable output folder, ``fused`` without a compiler, a seed out of range,
``optim_groups`` and ``peft.target_modules`` that match nothing, labels outside the sample) and YAML that was read
silently wrong (duplicate keys, alias bombs, bytes that are not UTF-8). Each refusal is one line naming the key,
exit 2, nothing written. docs/reliability.md lists every case with its message.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import datasets
import pytest
import yaml

from classp_hf.cli import main as cli_main
from classp_hf.continual import io as io_module
from classp_hf.continual.compare.grid import load_grid
from classp_hf.continual.config import ConfigError, config_from_dict, load_config

from ..helpers.bad_input import Case, assert_refused, peft, task, top, training
from ..helpers.runs import raw_config

REPO = Path(__file__).resolve().parents[2]


def label_outside_the_sample(raw, tmp):
    """A train file whose one 'mixed' row is not among the sampled rows: still refused (the whole split counts)."""
    rows = ["text,label"] + [f"row {i},{'positive' if i % 2 else 'negative'}" for i in range(60)] + ["odd,mixed"]
    path = tmp / "train.csv"
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    sampled = datasets.Dataset.from_dict({"i": list(range(61))}).shuffle(seed=0).select(range(8))["i"]
    assert 60 not in sampled  # the seed's sample leaves the 'mixed' row out
    raw["tasks"][1]["data_files"]["train"] = str(path)


GROUPS_SHADOWED = [{"params": "encoder", "lr_scale": 0.5}, {"params": r"encoder\.layer\.0", "lr_scale": 2.0}]

CASES = {
    # nothing accepted that is not applied
    "adamw_torch eps": Case(
        training(optim="adamw_torch", optim_args="eps=-1"),
        r"config\.training\.optim_args\.eps: transformers ignores this key for optimizer 'adamw_torch'; "
        r"set training\.adam_epsilon",
    ),
    "adamw_torch foo": Case(
        training(optim="adamw_torch", optim_args="foo=1"),
        r"config\.training\.optim_args\.foo: transformers ignores this key for optimizer 'adamw_torch'",
    ),
    "rmsprop foo": Case(
        training(optim="rmsprop", optim_args="alpha=0.9,foo=1"),
        r"config\.training\.optim_args\.foo: transformers ignores this key for optimizer 'rmsprop'",
    ),
    "sgd momentum -1": Case(
        training(optim="sgd", optim_args="momentum=-1"),
        r"config\.training\.optim_args: Invalid momentum value: -1\.0",
    ),
    "epochs 0": Case(
        training(num_train_epochs=0), r"config\.training\.num_train_epochs: 0 trains no step; give a positive number"
    ),
    "max_steps 0": Case(training(max_steps=0), r"config\.training\.max_steps: 0 trains no step"),
    "task max_steps 0": Case(
        task(1, training={"max_steps": 0}), r"tasks\[1\] \(amazon_reviews\)\.training\.max_steps: 0 trains no step"
    ),
    "push_to_hub": Case(
        training(push_to_hub=True),
        r"config\.training\.push_to_hub: a run does not push to the Hugging Face Hub; push the finished run's folder "
        r"instead \(huggingface-cli upload",
    ),
    "hub_model_id": Case(training(hub_model_id="me/model"), r"config\.training\.hub_model_id: a run does not push"),
    # optim_args keys
    "LR in optim_args": Case(training(optim_args="LR=0.1"), r"config\.training\.optim_args\.LR: not accepted here"),
    "optim_args typo": Case(
        training(optim_args="thresold=0.1"),
        r"config\.training\.optim_args\.thresold: unknown key for optimizer 'classp' \(did you mean 'threshold'\? "
        r"accepted: apply_decay, eps, foreach, fused, grad_sum_decay, maximize, power, ",
    ),
    # checked at load instead of failing late
    "seed out of range": Case(
        top(seed=2**32), r"config\.seed: expected an integer in \[0, 2\*\*32 - 1\], got 4294967296"
    ),
    "optim_groups shadowed": Case(
        training(optim_groups=GROUPS_SHADOWED),
        r"config\.training\.optim_groups\[1\]\.params: 'encoder\\\\.layer\\\\.0' matches only parameters that "
        r"optim_groups\[0\] takes first",
    ),
    "target_modules": Case(
        peft(target_modules=["query", "qkv_proj"]),
        r"config\.peft\.target_modules: 'qkv_proj' matches no module of the model \(the model's linear layers: "
        r".*key, .*query, value",
    ),
    "label outside the sample": Case(
        label_outside_the_sample, r"tasks \(amazon_reviews\)\.label_map: dataset label 'mixed' has no mapping"
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_refused_at_load_with_one_line_and_nothing_written(tmp_path, tiny_model_dir, capsys, name):
    assert_refused(tmp_path, tiny_model_dir, CASES[name], capsys)


def test_optim_args_lists_no_refused_key():
    raw = raw_config("/unused", training={"optim": "classp", "optim_args": "thresold=1"})
    with pytest.raises(ConfigError) as caught:
        config_from_dict(raw)
    accepted = str(caught.value).split("accepted: ")[1]
    assert "lr" not in re.split(r"[,)\s]+", accepted)


def test_transformers_optim_args_are_applied_and_recorded_as_built(tmp_path, tiny_model_dir):
    """optim_args transformers reads reach the optimizer, and results.json records what it was built with."""
    raw = raw_config(tiny_model_dir)
    raw["training"].update(optim="sgd", optim_args="momentum=0.5,nesterov=true", weight_decay=0.01, max_steps=1)
    raw["tasks"] = raw["tasks"][:1]
    raw["tasks"][0].update(max_train_samples=8, max_eval_samples=8)
    config_path = tmp_path / "run.yaml"
    config_path.write_text(yaml.safe_dump(raw))
    assert cli_main(["run", str(config_path), "--output-dir", str(tmp_path / "out"), "--quiet"]) == 0
    optimizer = json.loads((tmp_path / "out" / "results.json").read_text())["optimizer"]
    assert optimizer["optim_args"] == "momentum=0.5,nesterov=true"
    built = optimizer["hyperparameters"]
    assert built["class"] == "SGD"
    assert built["defaults"]["momentum"] == 0.5 and built["defaults"]["nesterov"] is True
    # the decay group's weight decay differs from SGD's default (0); the no-decay group keeps the default
    assert [group.get("weight_decay") for group in built["groups"]] == [0.01, None]


# -- output folders -----------------------------------------------------------------------------------------


def write_config(tmp_path, model_dir, **training_values) -> Path:
    raw = raw_config(model_dir, validation_fraction=0.25)  # compare's grids choose on a validation split
    raw["training"].update(training_values)
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def one_error(capsys) -> str:
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith("classp-hf: error: ")
    return lines[0].removeprefix("classp-hf: error: ")


def test_output_folder_below_a_file(tmp_path, tiny_model_dir, capsys):
    config = write_config(tmp_path, tiny_model_dir)
    blocker = tmp_path / "file"
    blocker.write_text("mine")
    target = blocker / "sub" / "out"
    assert cli_main(["run", str(config), "--output-dir", str(target), "--quiet"]) == 2
    assert one_error(capsys) == f"--output-dir: {target} is below a file ({blocker} is a file, not a folder)"
    assert blocker.read_text() == "mine"


@pytest.fixture
def read_only(monkeypatch):
    """Makes the folders passed in read-only as ``os.access`` sees them (tests run as root, whom chmod binds not)."""
    folders: list[Path] = []
    real_access = os.access

    def access(path, mode, *args, **kwargs):
        if mode & os.W_OK and Path(path) in folders:
            return False
        return real_access(path, mode, *args, **kwargs)

    monkeypatch.setattr(io_module.os, "access", access)
    return folders


def test_read_only_output_folder_for_run_resume_compare_and_probe(tmp_path, tiny_model_dir, capsys, read_only):
    config = write_config(tmp_path, tiny_model_dir)
    disk = tmp_path / "ro"
    disk.mkdir()
    read_only.append(disk)
    out = disk / "out"
    assert cli_main(["run", str(config), "--output-dir", str(out), "--quiet"]) == 2
    assert one_error(capsys) == (
        f"--output-dir: {out} is not writable ({disk} is not); a read-only disk or folder? choose another folder"
    )
    out.mkdir()
    (out / "config.yaml").write_text(config.read_text())
    read_only.append(out)
    assert cli_main(["run", "--output-dir", str(out), "--resume", "--quiet"]) == 2
    assert one_error(capsys).startswith(f"--output-dir: {out} is not writable; a read-only disk")
    assert cli_main(["compare", "--config", str(config), "--presets", "classp", "--output-dir", str(out)]) == 2
    assert one_error(capsys).startswith(f"--output-dir: {out} is not writable")
    assert cli_main(["probe", str(config), "--json", str(disk / "probe.json")]) == 2
    assert one_error(capsys).startswith(f"--json: {disk} is not writable")
    assert sorted(p.name for p in disk.rglob("*")) == ["config.yaml", "out"]


# -- fused needs a compiler ---------------------------------------------------------------------------------


def test_fused_without_a_compiler_is_refused_at_load(tmp_path, tiny_model_dir):
    config = write_config(tmp_path, tiny_model_dir, optim_args="fused=true")
    env = {
        **os.environ,
        "CXX": str(tmp_path / "no-such-compiler"),
        "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor"),  # no kernel compiled earlier to fall back on
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-m", "classp_hf.cli", "run", str(config), "--output-dir", str(out), "--quiet"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    lines = [line for line in result.stderr.splitlines() if line.strip() and not line.startswith("W")]
    assert result.returncode == 2, result.stderr[-2000:]
    assert len(lines) == 1, lines
    assert lines[0].startswith("classp-hf: error: config.training.optim_args: fused=true needs torch.compile, ")
    assert "install a C++ compiler (apt-get install g++, or conda install gxx) or remove fused" in lines[0]
    assert not out.exists()


# -- YAML -----------------------------------------------------------------------------------------------------


def test_duplicate_keys_are_refused_with_file_key_and_lines(tmp_path, tiny_model_dir):
    path = tmp_path / "dup.yaml"
    text = yaml.safe_dump(raw_config(tiny_model_dir), sort_keys=False)
    path.write_text("seed: 0\n" + text.replace("seed: 0\n", "seed: 7\n"))
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    line = text.splitlines().index("seed: 0") + 2
    assert str(caught.value) == (
        f"config.seed: given twice in {path} (lines 1 and {line}; YAML would keep the last silently): remove one"
    )
    nested = tmp_path / "nested.yaml"
    nested.write_text(text.replace("- name: financial_phrasebank\n", "- name: a\n  name: financial_phrasebank\n"))
    with pytest.raises(ConfigError, match=r"^config\.tasks\[0\]\.name: given twice in .*nested\.yaml \(lines"):
        load_config(nested)


def test_duplicate_key_in_a_grid_file(tmp_path):
    path = tmp_path / "grid.yaml"
    path.write_text("base: b.yaml\nseeds: [0]\nseeds: [1]\nsettings: [classp]\n")
    with pytest.raises(ConfigError, match=r"^grid\.seeds: given twice in .*grid\.yaml \(lines 2 and 3"):
        load_grid(path)


def billion_laughs(levels: int) -> str:
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for level in range(1, levels):
        lines.append(f"a{level}: &a{level} [" + ", ".join([f"*a{level - 1}"] * 9) + "]")
    return "\n".join(lines) + f"\nmodel: *a{levels - 1}\n"


def test_alias_bombs_are_refused_fast(tmp_path):
    path = tmp_path / "laughs.yaml"
    path.write_text(billion_laughs(12))  # 9**12 strings once expanded
    started = time.perf_counter()
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert time.perf_counter() - started < 5
    assert re.fullmatch(
        rf"{re.escape(str(path))}: line \d+, column \d+: malformed YAML: its aliases expand to more than 100x the "
        r"file's size \(nested anchors\?\); write the values out",
        str(caught.value),
    )
    recursive = tmp_path / "recursive.yaml"
    recursive.write_text("a: &a [1, *a]\n")
    with pytest.raises(ConfigError, match="recursive anchor"):
        load_config(recursive)


def test_a_reused_anchor_still_loads(tmp_path, tiny_model_dir):
    raw = raw_config(tiny_model_dir)
    files = raw["tasks"][0]["data_files"]
    text = yaml.safe_dump(raw, sort_keys=False)
    text = text.replace("    train: " + files["train"], "    train: &t " + files["train"])
    path = tmp_path / "anchors.yaml"
    path.write_text(text.replace("    test: " + files["test"], "    test: *t", 1))
    assert load_config(path).tasks[0].data_files["test"] == files["train"]


def test_a_config_that_is_not_utf8_names_the_file(tmp_path, capsys):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("model: x\nlabels: [caf\u00e9, b]\n".encode("latin-1"))
    assert cli_main(["run", str(path), "--output-dir", str(tmp_path / "out")]) == 2
    assert one_error(capsys) == (
        f"config: {path} is not UTF-8 text (byte 21, line 2: invalid continuation byte); save it as UTF-8"
    )


# -- compare ------------------------------------------------------------------------------------------------


@pytest.fixture
def base_config(tmp_path, tiny_model_dir):
    """The tiny run config as a YAML file, the second task's own learning rate kept (overrides the one in
    tests/continual/conftest.py)."""
    raw = raw_config(tiny_model_dir, validation_fraction=0.25)
    path = tmp_path / "configs" / "base.yaml"
    path.parent.mkdir()
    path.write_text(yaml.safe_dump(raw))
    return path


def test_compare_seed_out_of_range_is_named_before_any_run(tmp_path, base_config, capsys):
    out = tmp_path / "out"
    args = ["compare", "--config", str(base_config), "--presets", "classp", "--output-dir", str(out)]
    assert cli_main([*args, "--seeds", "99999999999999999999"]) == 2
    assert one_error(capsys) == (
        "--seeds: seed 99999999999999999999 is out of range (a seed is an integer in [0, 2**32 - 1])"
    )
    assert not out.exists()


@pytest.mark.parametrize("name", ["..", ".", ""])
def test_setting_names_that_are_not_folder_names(tmp_path, base_config, name):
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump({"base": "configs/base.yaml", "settings": [{"name": name, "preset": "classp"}]}))
    with pytest.raises(ConfigError, match=rf"settings\[0\]\.name: {re.escape(repr(name))}: use letters, digits"):
        load_grid(path)


def test_compare_positional_without_equals_is_a_malformed_override(tmp_path, base_config, capsys):
    out = tmp_path / "out"
    args = ["compare", "--config", str(base_config), "--presets", "classp", "--seeds", "0", "training.learning_rate"]
    assert cli_main([*args, "--output-dir", str(out)]) == 2
    assert one_error(capsys) == (
        "override 'training.learning_rate': expected key=value (e.g. training.learning_rate=1e-3)"
        " or ~key to clear a key"
    )
    assert not out.exists()


def test_probe_json_below_a_file(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert cli_main(["probe", "unused.yaml", "--json", str(blocker / "p.json")]) == 2
    assert one_error(capsys) == f"--json: {blocker} is a file, so {blocker / 'p.json'} cannot be written"
