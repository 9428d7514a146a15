"""``recipes/headline_table.py``: the README's table holds the comparison's own numbers, the chosen points, the
paired difference to the reference and the "did not learn" marks, and refuses a setting it does not hold."""

from __future__ import annotations

import json

import pytest

from classp_hf.continual.compare import compare

from ...helpers.compare import FakeLauncher, write_grid
from ...helpers.recipes import load_recipe


@pytest.fixture
def comparison(tmp_path, base_config):
    grid = write_grid(tmp_path, ["classp", "adamw"], seeds=[0, 1])
    output = tmp_path / "out"
    # adamw's grid: validation ACC decides (lr 5e-5 best); test ACC 0.6/0.7 by seed, classp 0.8 on both

    def results(job):
        if job.setting == "classp":
            return (0.8, 0.5)
        return (0.6 + job.seed / 10, 0.7 if job.point.label == "lr=5e-5" else 0.4)

    compare(grid, output, launcher=FakeLauncher(results), log=False)
    return output


def test_rows_are_the_comparisons_numbers(comparison, capsys):
    script = load_recipe("headline_table")
    assert script.main([str(comparison), "--settings", "adamw,classp"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("| setting (chosen point) | ACC % | financial_phrasebank after the last task % |")
    adamw, classp = (line.split(" | ") for line in lines[2:])
    assert adamw[0] == "| adamw (lr=5e-5)"  # the point validation chose, then seeds 0.6 and 0.7
    assert adamw[1] == "65.0 ± 7.1" and adamw[2] == "65.0 ± 7.1"
    assert adamw[3] == "5.0 ± 7.1"  # forgetting 0.7 - first task's final accuracy
    assert classp[1] == "80.0 ± 0.0" and classp[5] == "reference"  # the first setting is the default reference


def test_difference_interval_and_marks(comparison):
    script = load_recipe("headline_table")
    data = json.loads((comparison / "comparison.json").read_text())
    adamw = next(s for s in data["settings"] if s["name"] == "adamw")
    adamw["versus_reference"] = {"mean": -0.15, "low": -0.2, "high": 0.01, "within_noise": True}
    adamw["did_not_learn"] = ["amazon_reviews"]
    row = next(r for r in script.headline_rows(data) if r[0].startswith("adamw"))
    assert row[5] == "-15.0 [-20.0, +1.0], *within noise*" and row[6] == "did not learn amazon_reviews"
    adamw["versus_reference"]["within_noise"] = False
    row = next(r for r in script.headline_rows(data) if r[0].startswith("adamw"))
    assert row[5] == "-15.0 [-20.0, +1.0]"
    adamw["mode"] = "joint"  # a reference row: listed last, no forgetting, its paired difference kept
    rows = script.headline_rows(data)
    assert rows[-1][0].startswith("reference: adamw") and rows[-1][3] == "n/a"
    assert rows[-1][5] == "-15.0 [-20.0, +1.0]"


def test_unknown_setting_and_missing_comparison(comparison, tmp_path):
    script = load_recipe("headline_table")
    with pytest.raises(SystemExit, match=r"--settings: sgd not in the comparison \(it holds classp, adamw\)"):
        script.main([str(comparison), "--settings", "classp,sgd"])
    with pytest.raises(SystemExit, match=r"comparison.json: not found"):
        script.main([str(tmp_path / "nowhere")])
