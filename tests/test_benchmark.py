"""Tests for ``benchmarks/optimizer_step.py``: the results' shape and state sizes, not the timings."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "optimizer_step.py"

EXPECTED_OPTIMIZERS = {
    "classp_single",
    "classp_single_threshold",
    "classp_foreach",
    "classp_foreach_threshold",
    "classp_foreach_relative",
    "classp_foreach_quantile",
    "adagrad_foreach",
    "sgd_foreach",
    "adamw_foreach",
}
CLASSP_ROWS = {name for name in EXPECTED_OPTIMIZERS if name.startswith("classp")}


def _load_script() -> ModuleType:
    """Imports the benchmark script from its path (``benchmarks`` is not a package)."""
    spec = importlib.util.spec_from_file_location("optimizer_step_benchmark", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return _load_script()


@pytest.fixture(scope="module")
def quick_result(bench: ModuleType, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Runs ``--quick`` once for the module and returns the JSON it wrote."""
    path = tmp_path_factory.mktemp("benchmark") / "out" / "result.json"
    assert bench.main(["--quick", "--json", str(path)]) == 0
    return json.loads(path.read_text())


def _rows_by_name(result: dict[str, Any], parameter_set: str) -> dict[str, dict[str, Any]]:
    return {row["optimizer"]: row for row in result["rows"] if row["parameter_set"] == parameter_set}


def test_quick_has_every_optimizer_and_parameter_set(quick_result: dict[str, Any]) -> None:
    assert quick_result["quick"] is True
    assert quick_result["device"] == "cpu"
    sets = {row["parameter_set"] for row in quick_result["rows"]}
    assert sets == {"minilm"}
    for parameter_set in sets:
        rows = [row for row in quick_result["rows"] if row["parameter_set"] == parameter_set]
        assert len(rows) == len(EXPECTED_OPTIMIZERS)
        assert {row["optimizer"] for row in rows} == EXPECTED_OPTIMIZERS


def test_quick_times_and_ratios(quick_result: dict[str, Any]) -> None:
    rows = _rows_by_name(quick_result, "minilm")
    for row in rows.values():
        assert math.isfinite(row["ms_per_step"]) and row["ms_per_step"] > 0
        assert len(row["ms_all"]) == quick_result["repeats"]
        assert all(math.isfinite(t) and t > 0 for t in row["ms_all"])
        assert row["ms_min"] <= row["ms_per_step"]
        assert math.isfinite(row["ratio_to_adagrad"]) and row["ratio_to_adagrad"] > 0
        expected_ratio = row["ms_per_step"] / rows["adagrad_foreach"]["ms_per_step"]
        assert row["ratio_to_adagrad"] == pytest.approx(expected_ratio)
    assert rows["adagrad_foreach"]["ratio_to_adagrad"] == 1.0


def test_quick_state_bytes_per_parameter(quick_result: dict[str, Any]) -> None:
    rows = _rows_by_name(quick_result, "minilm")
    num_params = rows["sgd_foreach"]["num_params"]
    num_tensors = rows["sgd_foreach"]["num_tensors"]
    assert num_params == 22_714_371  # all-MiniLM-L6-v2 with a 3-label head
    for name in CLASSP_ROWS:
        assert rows[name]["state_bytes_per_param"] == 4.0  # one float32 grad_sum per parameter
    # Adagrad: a float32 sum per parameter plus a 0-dim float32 step tensor per parameter tensor.
    assert rows["adagrad_foreach"]["state_bytes_per_param"] == pytest.approx(4.0 + 4 * num_tensors / num_params)
    assert 4.0 < rows["adagrad_foreach"]["state_bytes_per_param"] < 4.001
    # AdamW: exp_avg and exp_avg_sq, plus the step tensors.
    assert 8.0 < rows["adamw_foreach"]["state_bytes_per_param"] < 8.001
    assert rows["sgd_foreach"]["state_bytes_per_param"] == 0.0
    for row in rows.values():
        assert row["state_bytes"] == pytest.approx(row["state_bytes_per_param"] * num_params)


def test_quick_update_fractions(quick_result: dict[str, Any]) -> None:
    rows = _rows_by_name(quick_result, "minilm")
    # Gradients are randn * 2e-5: threshold 0 updates every non-zero element (randn gives a couple of
    # exact zeros in 22.7M draws), 1e-10 keeps |z| > 0.5.
    assert rows["classp_single"]["update_fraction"] == pytest.approx(1.0, abs=1e-6)
    assert rows["classp_foreach"]["update_fraction"] == rows["classp_single"]["update_fraction"]
    assert rows["classp_foreach_threshold"]["update_fraction"] == rows["classp_single_threshold"]["update_fraction"]
    expected = math.erfc(0.5 / math.sqrt(2.0))  # P(|z| > 0.5) ~ 0.617
    for name in ("classp_single_threshold", "classp_foreach_threshold"):
        assert rows[name]["threshold"] == pytest.approx(1e-10)
        assert rows[name]["update_fraction"] == pytest.approx(expected, abs=0.01)
    for name in EXPECTED_OPTIMIZERS - CLASSP_ROWS:
        assert rows[name]["update_fraction"] is None
    # relative 1.0: g^2 > mean(g^2) per tensor, P(|z| > 1) ~ 0.317 for Gaussian gradients;
    # quantile 0.1: at most 10% of each tensor's elements.
    assert rows["classp_foreach_relative"]["update_fraction"] == pytest.approx(math.erfc(1 / math.sqrt(2.0)), abs=0.01)
    assert 0.099 < rows["classp_foreach_quantile"]["update_fraction"] <= 0.1 + 1e-4  # ceil() per tensor


def test_quick_targets(quick_result: dict[str, Any]) -> None:
    targets = {(t["parameter_set"], t["optimizer"]): t for t in quick_result["targets"]}
    assert set(targets) == {("minilm", "classp_foreach"), ("minilm", "classp_foreach_threshold")}
    assert targets[("minilm", "classp_foreach")]["target"] == 1.2
    assert targets[("minilm", "classp_foreach_threshold")]["target"] == 1.5
    for target in targets.values():
        assert target["met"] == (target["ratio"] <= target["target"])


def test_format_table_and_targets(bench: ModuleType, capsys: pytest.CaptureFixture[str]) -> None:
    rows = [
        dict(
            parameter_set="minilm",
            optimizer=name,
            label=name,
            ms_per_step=ms,
            ratio_to_adagrad=ms / 10.0,
            state_bytes_per_param=4.0,
            update_fraction=None,
        )
        for name, ms in (("adagrad_foreach", 10.0), ("classp_foreach", 13.0), ("classp_foreach_threshold", 14.0))
    ]
    checks = bench.check_targets(rows)
    assert [(c.optimizer, c.met) for c in checks] == [("classp_foreach", False), ("classp_foreach_threshold", True)]
    text = bench.format_targets(checks)
    assert "1.30x (target <= 1.2x): MISSED by 8%" in text
    assert "1.40x (target <= 1.5x): met" in text
    table = bench.format_table(rows)
    assert "ms/step" in table and "1.00x" in table and "1.30x" in table


@pytest.mark.parametrize("parameter_set", ["minilm", "bert-base"])
def test_parameter_shapes_match_transformers(bench: ModuleType, parameter_set: str) -> None:
    """The hand-written shape list equals BertForSequenceClassification's, built on the meta device."""
    transformers = pytest.importorskip("transformers")
    shape = bench.PARAMETER_SETS[parameter_set]
    config = transformers.BertConfig(
        vocab_size=shape.vocab_size,
        hidden_size=shape.hidden_size,
        num_hidden_layers=shape.num_hidden_layers,
        intermediate_size=shape.intermediate_size,
        num_attention_heads=shape.num_attention_heads,
        max_position_embeddings=shape.max_position_embeddings,
        type_vocab_size=shape.type_vocab_size,
        num_labels=shape.num_labels,
    )
    with torch.device("meta"):
        model = transformers.BertForSequenceClassification(config)
    expected = [(name, tuple(p.shape)) for name, p in model.named_parameters()]
    assert bench.bert_parameter_shapes(shape) == expected
    if parameter_set == "bert-base":
        assert 105e6 < sum(p.numel() for p in model.parameters()) < 115e6


def test_bad_arguments(bench: ModuleType) -> None:
    with pytest.raises(SystemExit):
        bench.main(["--repeats", "0"])
    with pytest.raises(SystemExit):
        bench.main(["--threshold", "0"])
    with pytest.raises(SystemExit):
        bench.main(["--threads", "0"])
    if not torch.cuda.is_available():
        assert bench.main(["--device", "cuda"]) == 2
