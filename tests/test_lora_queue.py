"""Tests for ``benchmarks/lora_queue.py`` and ``benchmarks/lora_lr_sweep.py``: configs, aggregation, errors."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest
import yaml

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
DATA = Path(__file__).resolve().parents[1] / "recipes" / "data" / "quickstart"


def _load(name: str) -> ModuleType:
    """Imports a benchmark script from its path (``benchmarks`` is not a package)."""
    sys.path.insert(0, str(BENCHMARKS))  # the sweep imports lora_queue as a sibling
    try:
        spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up while the class is built
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(BENCHMARKS))


@pytest.fixture(scope="module")
def queue() -> ModuleType:
    return _load("lora_queue")


@pytest.fixture(scope="module")
def sweep(queue: ModuleType) -> ModuleType:
    return _load("lora_lr_sweep")


def test_configs_validate_and_differ_only_where_intended(queue, monkeypatch, tmp_path):
    from classp_hf.continual.config import load_config

    monkeypatch.setenv("CLASSP_HF_DATA", str(tmp_path))
    configs = {}
    for setting in queue.SETTINGS:
        raw = queue.build_config(setting, 96, 40, 32, seed=3, epochs=2.5)
        path = tmp_path / f"{setting.name}.yaml"
        queue.write_config(raw, path, setting)
        configs[setting.name] = load_config(path)  # the runner's own validation accepts it
    for config in configs.values():
        assert config.seed == 3 and config.max_length == 32
        assert config.training["num_train_epochs"] == 2.5 and config.training["disable_tqdm"] is True
        assert "optim_args" not in config.training  # CLASSP at its defaults, AdamW at torch's
        assert all(t.max_train_samples == 96 and t.max_eval_samples == 40 for t in config.tasks)
        assert [t.name for t in config.tasks] == [t.name for t in configs["full_classp"].tasks]
    assert configs["full_classp"].peft is None
    assert configs["lora_classp_shared"].peft["adapters"] == "shared"
    assert configs["lora_adamw_per_task"].peft["adapters"] == "per_task"
    assert configs["lora_adamw_per_task"].training["optim"] == "adamw"
    assert configs["lora_classp_per_task"].training["learning_rate"] == queue.LORA_CLASSP_LR


def test_aggregate_means_over_seeds_and_refuses_partial_means(queue, tmp_path):
    def run(name, seed, acc, matrix, own=None, status="complete"):
        entry = {
            "name": name,
            "label": name,
            "seed": seed,
            "learning_rate": 1e-3,
            "status": status,
            "metrics": {"acc": acc, "bwt": -0.1, "forgetting": 0.1},
            "accuracy_matrix": matrix,
            "trainable_parameters": [10, 10],
            "optimizer_state_bytes": [40, 40],
            "total_parameters": 100,
            "train_loss": [1.0, 0.5],
            "wall_seconds": 60.0,
        }
        if own:
            entry["accuracy_matrix_own_adapter"] = own
            entry["metrics_own_adapter"] = queue.matrix_metrics(own)
        return entry

    m0 = [[0.5, 0.2], [0.4, 0.8]]
    m1 = [[0.7, 0.2], [0.6, 0.6]]
    entries = [
        run("a", 0, 0.6, m0, own=m0),
        run("a", 1, 0.6, m1, own=m1),
        run("b", 0, 0.5, m0),
        {"name": "b", "label": "b", "seed": 1, "learning_rate": 1e-3, "status": "missing", "wall_seconds": None},
    ]
    a, b = queue.aggregate(entries)
    assert a["seeds"] == [0, 1] and a["acc"] == {"mean": 0.6, "per_seed": [0.6, 0.6]}
    for row, expected in zip(a["accuracy_matrix"], [[0.6, 0.2], [0.5, 0.7]], strict=True):
        assert row == pytest.approx(expected)
    assert a["forgetting_own"]["per_seed"] == pytest.approx([0.1, 0.1])
    assert a["wall_seconds"] == 120.0 and a["optimizer_state_bytes"] == 40
    assert a["mean_train_loss"] == [1.0, 0.5]
    # A seed without results: no mean (it would silently be a one-seed number), matrices of the complete seed.
    assert b["acc"] == {"mean": None, "per_seed": [0.5, None]} and b["complete_seeds"] == [0]
    assert b["accuracy_matrix"] == m0 and b["wall_seconds"] is None and "acc_own" not in b
    summary = {
        "meta": {
            "train_samples": 1,
            "eval_samples": 1,
            "max_length": 8,
            "epochs": 1,
            "seeds": [0, 1],
            "total_wall_seconds": 1.0,
            "machine": "m",
        },
        "by_setting": [a, b],
        "runs": [],
    }
    markdown = queue.format_markdown(summary)
    png = queue.plot_summary(summary, tmp_path / "fig" / "summary.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and not list(png.parent.glob(".*.tmp"))
    assert "| a | 0.001 | 60.0 (60.0, 60.0) |" in markdown and "| b | 0.001 | n/a (50.0, n/a) |" in markdown


def test_bad_arguments_name_the_culprit(queue, sweep, capsys):
    assert queue.parse_lr_overrides(["full_classp=3e-4"]) == {"full_classp": 3e-4}
    for pair, expected in (("nope=1e-3", "'nope=1e-3'"), ("full_classp=fast", "'fast'"), ("full_classp=0", "positive")):
        with pytest.raises(ValueError, match=expected):
            queue.parse_lr_overrides([pair])
    assert queue.main(["--lr", "full_classp", "--dry-run"]) == 2
    assert "--lr 'full_classp'" in capsys.readouterr().err
    settings = sweep.parse_grid(["lora:adamw:1e-3,3e-3", "full:classp:1e-3"], "eps=1e-8")
    assert [(s.optim, s.learning_rate, s.adapters, s.optim_args) for s in settings] == [
        ("adamw", 1e-3, "shared", None),
        ("adamw", 3e-3, "shared", None),
        ("classp", 1e-3, None, "eps=1e-8"),
    ]
    for entry in ("lora:adamw", "peft:adamw:1e-3", "lora:adamw:x", "lora:adamw:-1"):
        with pytest.raises(ValueError, match=entry.split(":")[0]):
            sweep.parse_grid([entry], None)


def test_dry_run_writes_one_config_per_setting_and_seed(queue, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("CLASSP_HF_DATA", str(DATA))
    out = tmp_path / "set"
    code = queue.main(
        ["--output-dir", str(out), "--seeds", "0", "4", "--settings", "full_classp", "lora_adamw_shared", "--dry-run"]
    )
    assert code == 0
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.yaml"))
    assert written == [
        "configs/seed0/full_classp.yaml",
        "configs/seed0/lora_adamw_shared.yaml",
        "configs/seed4/full_classp.yaml",
        "configs/seed4/lora_adamw_shared.yaml",
    ]
    assert yaml.safe_load((out / "configs/seed4/full_classp.yaml").read_text())["seed"] == 4
    assert f"--output-dir {out / 'seed4' / 'lora_adamw_shared'}" in capsys.readouterr().out
