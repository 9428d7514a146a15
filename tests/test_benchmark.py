"""Tests for ``benchmarks/optimizer_step.py`` on real gradients: the results' shape, state sizes and update
fractions, not the timings."""

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

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
MODES = ("", "_absolute", "_relative", "_quantile")
CLASSP_ROWS = {f"classp_{path}{mode}" for path in ("single", "foreach") for mode in MODES} | {
    "classp_foreach_dense",
    "classp_foreach_bfloat16",
    "classp_foreach_8bit",
}
FLOAT32_STATE_ROWS = CLASSP_ROWS - {"classp_foreach_bfloat16", "classp_foreach_8bit"}
BASELINE_ROWS = {"adagrad_foreach", "adamw_foreach", "sgd_foreach"}


def _load(name: str) -> ModuleType:
    """Imports a benchmark script from its path (``benchmarks`` is not a package)."""
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(f"{name}_benchmark", BENCHMARKS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return _load("optimizer_step")


@pytest.fixture(scope="module")
def quick_result(bench: ModuleType, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Runs ``--quick --no-compile`` once for the module (MiniLM's real gradients) and returns its JSON.

    One thread: on a shared machine two threads wait for each other at every kernel.
    """
    path = tmp_path_factory.mktemp("benchmark") / "out" / "result.json"
    threads = torch.get_num_threads()
    assert bench.main(["--quick", "--no-compile", "--threads", "1", "--json", str(path)]) == 0
    assert torch.get_num_threads() == threads  # restored
    result = json.loads(path.read_text())
    assert result["num_threads"] == 1
    return result


def _rows(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {row["optimizer"]: row for row in result["rows"] if row["parameter_set"] == "minilm"}


def test_quick_has_every_row_on_minilm(quick_result: dict[str, Any]) -> None:
    assert quick_result["quick"] is True and quick_result["device"] == "cpu"
    assert quick_result["batch_shape"] == [16, 64]
    assert {row["parameter_set"] for row in quick_result["rows"]} == {"minilm"}
    names = set(_rows(quick_result))
    assert len(names) == len(quick_result["rows"])  # one row per optimizer: later groups' baselines are dropped
    assert CLASSP_ROWS | BASELINE_ROWS <= names
    assert names - CLASSP_ROWS - BASELINE_ROWS <= {"adagrad_fused", "adamw_fused"}


def test_quick_times_ratios_and_shares(quick_result: dict[str, Any]) -> None:
    rows = _rows(quick_result)
    forward_backward = quick_result["forward_backward_ms"]["minilm"]
    assert math.isfinite(forward_backward) and forward_backward > 0
    adamw = rows["adamw_foreach"]["ratio_to_adagrad"]
    for row in rows.values():
        assert len(row["ms_all"]) == quick_result["repeats"]
        assert all(math.isfinite(t) and t > 0 for t in row["ms_all"])
        assert row["ms_min"] <= row["ms_per_step"]
        assert row["ratio_to_adagrad"] == pytest.approx(row["ms_per_step"] / rows["adagrad_foreach"]["ms_per_step"])
        assert row["ratio_to_adamw"] == pytest.approx(row["ratio_to_adagrad"] / adamw)  # one group: any anchor
        if "adagrad_fused" in rows:
            expected = row["ms_per_step"] / rows["adagrad_fused"]["ms_per_step"]
            assert row["ratio_to_adagrad_fused"] == pytest.approx(expected)
        assert row["group"] == 0 and row["group_baseline_ms"] == rows["adagrad_foreach"]["ms_per_step"]
        expected_share = row["ms_per_step"] / (forward_backward + row["ms_per_step"])
        assert row["share_of_training_step"] == pytest.approx(expected_share)
        assert row["peak_step_bytes"] >= 0
    assert rows["adagrad_foreach"]["ratio_to_adagrad"] == 1.0 and rows["adamw_foreach"]["ratio_to_adamw"] == 1.0


def test_quick_state_bytes_per_parameter(quick_result: dict[str, Any]) -> None:
    rows = _rows(quick_result)
    num_params, num_tensors = rows["sgd_foreach"]["num_params"], rows["sgd_foreach"]["num_tensors"]
    assert num_params == 22_714_371  # all-MiniLM-L6-v2 with a 3-label head
    for name in FLOAT32_STATE_ROWS:
        assert rows[name]["state_bytes_per_param"] == 4.0  # one float32 grad_sum per parameter
    assert rows["classp_foreach_bfloat16"]["state_bytes_per_param"] == 2.0
    # 8 bits: one code per element (MiniLM's rows of 384 and 1536 elements need no padding; its vectors pad at most
    # one element per block) plus a float32 scale per block of at most 256.
    assert 1.0 < rows["classp_foreach_8bit"]["state_bytes_per_param"] < 1.0 + 4 / 180
    # Adagrad: a float32 sum per parameter plus a 0-dim float32 step tensor per parameter tensor.
    assert rows["adagrad_foreach"]["state_bytes_per_param"] == pytest.approx(4.0 + 4 * num_tensors / num_params)
    assert 8.0 < rows["adamw_foreach"]["state_bytes_per_param"] < 8.001
    assert rows["sgd_foreach"]["state_bytes_per_param"] == 0.0
    for row in rows.values():
        assert row["state_bytes"] == pytest.approx(row["state_bytes_per_param"] * num_params)


def test_quick_update_fractions_on_real_gradients(quick_result: dict[str, Any]) -> None:
    rows = _rows(quick_result)
    zero_fraction = rows["classp_single"]["gradient_zero_fraction"]
    assert 0.3 < zero_fraction < 0.7  # the embedding rows of the tokens absent from the batch
    # Threshold 0 updates exactly the non-zero gradient elements, on every path, with or without skipping rows.
    assert rows["classp_single"]["update_fraction"] == pytest.approx(1.0 - zero_fraction, abs=1e-12)
    for mode in MODES:
        assert rows[f"classp_foreach{mode}"]["update_fraction"] == rows[f"classp_single{mode}"]["update_fraction"]
    for name in ("classp_foreach_dense", "classp_foreach_bfloat16", "classp_foreach_8bit"):
        assert rows[name]["update_fraction"] == rows["classp_foreach"]["update_fraction"]
    assert 0.0 < rows["classp_single_absolute"]["update_fraction"] < rows["classp_single"]["update_fraction"]
    assert 0.0 < rows["classp_single_relative"]["update_fraction"] < rows["classp_single"]["update_fraction"]
    assert 0.0 < rows["classp_single_quantile"]["update_fraction"] <= 0.1 + 1e-4  # ceil() per tensor
    for name in BASELINE_ROWS:
        assert rows[name]["update_fraction"] is None


def test_skipping_rows_needs_less_memory_than_the_dense_step(quick_result: dict[str, Any]) -> None:
    rows = _rows(quick_result)
    assert rows["classp_foreach"]["peak_step_bytes"] < rows["classp_foreach_dense"]["peak_step_bytes"]


def test_quick_targets(quick_result: dict[str, Any], bench: ModuleType) -> None:
    targets = {t["optimizer"]: t for t in quick_result["targets"]}
    assert set(targets) == set(bench.TARGETS)
    assert {name: t["target"] for name, t in targets.items()} == bench.TARGETS
    for target in targets.values():
        assert target["met"] == (target["ratio"] <= target["target"])


def test_format_table_and_targets(bench: ModuleType) -> None:
    rows = [
        dict(
            parameter_set="minilm",
            optimizer=name,
            label=name,
            ms_per_step=ms,
            ratio_to_adagrad=ms / 10.0,
            ratio_to_adamw=ms / 12.0,
            share_of_training_step=ms / (100.0 + ms),
            ratio_to_adagrad_fused=None,
            state_bytes_per_param=4.0,
            peak_step_bytes=2**20,
            update_fraction=None,
            dense_bandwidth_gb_s=1.0,
        )
        for name, ms in (("adagrad_foreach", 10.0), ("classp_foreach", 7.0), ("classp_foreach_absolute", 7.5))
    ]
    checks = bench.check_targets(rows)
    assert [(c.optimizer, c.met) for c in checks] == [("classp_foreach", False), ("classp_foreach_absolute", True)]
    text = bench.format_targets(checks)
    assert "0.70x (target <= 0.6x): MISSED by 17%" in text
    assert "0.75x (target <= 0.8x): met" in text
    table = bench.format_table(rows)
    assert "ms/step" in table and "1.00x" in table and "0.70x" in table and "6.5%" in table
    assert "GB/s" not in table and "GB/s" in bench.format_table(rows, bandwidth=True)


def test_memory_groups_keep_the_anchors_in_every_group(bench: ModuleType) -> None:
    specs = bench.optimizer_specs(torch.device("cpu"), compile_paths=False)
    anchors = [s.name for s in specs if s.name in (bench.BASELINE, bench.FUSED_BASELINE)]
    assert anchors[0] == bench.BASELINE
    num_params = 1_000_000
    budget = 8e6 + 12e6 + 1  # the anchors and three 4-byte states
    groups = bench.memory_groups(specs, num_params, budget_bytes=budget)
    assert len(groups) > 3
    assert all([spec.name for spec in group[: len(anchors)]] == anchors for group in groups)
    timed = [spec.name for group in groups for spec in group[len(anchors) :]]
    assert timed == [s.name for s in specs if s.name not in anchors]
    for group in groups:
        used = sum(spec.state_bytes_per_param for spec in group) * num_params
        assert used <= budget or len(group) == len(anchors) + 1
    assert len(bench.memory_groups(specs, num_params, budget_bytes=1e12)) == 1


def test_peak_step_bytes_is_the_most_held_at_once(bench: ModuleType) -> None:
    class Allocates(torch.optim.Optimizer):
        """A step holding two 4 MiB tensors at once, three times over."""

        def __init__(self) -> None:
            super().__init__([torch.nn.Parameter(torch.zeros(1))], {})

        def step(self, closure=None):
            for _ in range(3):
                first = torch.ones(1 << 20)
                second = first + 1
                del first, second

    peak = bench.peak_step_bytes(Allocates(), torch.device("cpu"))
    assert peak == pytest.approx(8 * 2**20, rel=0.01)


def test_every_path_and_mode_is_listed(bench: ModuleType) -> None:
    specs = {spec.name: spec for spec in bench.optimizer_specs(torch.device("cpu"))}
    fused = {f"classp_fused{mode}" for mode in MODES} | {"classp_fused_bfloat16", "classp_fused_8bit"}
    assert CLASSP_ROWS | BASELINE_ROWS | fused <= set(specs)
    assert {name for name, spec in specs.items() if spec.compiles} == fused
    optimizer = specs["classp_fused_relative"].factory([torch.nn.Parameter(torch.zeros(2))])
    assert optimizer.param_groups[0]["fused"] is True and optimizer.param_groups[0]["threshold_mode"] == "relative"


def test_real_batch_comes_from_the_embedded_sample() -> None:
    real_gradients = _load("real_gradients")
    texts, labels = real_gradients.sample_texts(6)
    assert len(texts) == 6 and all(isinstance(text, str) and text for text in texts)
    assert set(labels) <= {0, 1, 2}
    assert texts[:3] == [real_gradients.sample_texts(3)[0][i] for i in range(3)]  # deterministic, tasks in turn
    batch = real_gradients.text_batch(4, 32)
    assert batch.shape == (4, 32) and batch.labels.shape == (4,)
    with pytest.raises(ValueError, match="Unknown model"):
        real_gradients.load_model("gpt")


def test_bad_arguments(bench: ModuleType) -> None:
    for argv in (["--repeats", "0"], ["--threshold", "0"], ["--threads", "0"], ["--memory-budget-gb", "0"]):
        with pytest.raises(SystemExit):
            bench.main(argv)
    if not torch.cuda.is_available():
        assert bench.main(["--device", "cuda"]) == 2
