"""``classp-hf compare``'s report: the CLASSP diagnostics averaged over tasks, report.md, comparison.json against
its schema, and the figures."""

from __future__ import annotations

import json

import jsonschema
import pytest

from classp_hf.continual.compare.execute import (
    RunRecord,
    compare,
    run_metrics,
    summarize,
)
from classp_hf.continual.compare.report import FIGURES, format_mean_std, load_comparison_schema, render_markdown

from ...helpers.compare import TASKS, FakeLauncher, comparison_config, crafted_results, write_grid


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


@pytest.mark.parametrize(
    ("stat", "options", "expected"),
    [
        ({"mean": 0.6123, "std": 0.0214, "n": 3}, {}, "61.2 ± 2.1"),
        ({"mean": 0.6123, "std": None, "n": 1}, {}, "61.2"),  # one seed: no std
        ({"mean": 0.006, "std": 0.004, "n": 3}, {"signed": True}, "+0.6 ± 0.4"),
        ({"mean": 0.6123, "std": 0.0214, "n": 2}, {"runs": 3}, "61.2 ± 2.1 (n=2)"),  # a seed is missing
        ({"mean": 0.6123, "std": 0.0214, "n": 3}, {"runs": 3}, "61.2 ± 2.1"),
        ({"mean": 3 * 2**20, "std": 0.0, "n": 3}, {"scale": 1 / 2**20, "digits": 2}, "3.00 ± 0.00"),
        ({"mean": None, "std": None, "n": 0}, {}, "n/a"),
        (None, {}, "n/a"),
    ],
)
def test_format_mean_std_prints_a_summary_entry_as_comparison_md_does(stat, options, expected):
    assert format_mean_std(stat, **options) == expected
