"""``classp-hf compare`` runs the grid: selection on validation only, aggregation, a failed seed, the output
folder, ``--report-only`` and resuming.

Most tests run a :class:`FakeLauncher` that writes finished run folders with crafted results (so the numbers are
known and nothing trains); the resume tests train a tiny random BERT in process, and one test runs real
subprocesses two at a time.
"""

from __future__ import annotations

import json
import math
import shutil

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
from classp_hf.continual.compare.grid import GridPoint
from classp_hf.continual.compare.report import render_markdown
from classp_hf.continual.config import ConfigError
from classp_hf.continual.ownership import LOCK_FILENAME, MARKER_FILENAME, FolderBusyError, FolderLock

from ...helpers.compare import FakeLauncher, comparison_config, crafted_results, write_grid


def learning_rate(job) -> float:
    return job.config.training["learning_rate"]


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


def test_overwrite_waits_for_no_run_and_removes_nothing_while_one_writes(tmp_path, base_config):
    """``--overwrite`` takes every run folder's lock before it removes anything: a run still writing into one
    (here: its lock held) stops it with the pid, and every file stays; once free, the folders go whole."""
    grid = write_grid(tmp_path, [{"name": "plain"}, "classp"])
    output = tmp_path / "out"
    compare(grid, output, launcher=FakeLauncher(lambda job: (0.5, 0.5)), log=False)
    before = sorted(p.relative_to(output).as_posix() for p in output.rglob("*"))
    busy = output / "runs" / "plain" / "default" / "seed0"
    assert (busy / "results.json").is_file()
    with FolderLock(busy, what="run folder"), pytest.raises(FolderBusyError, match=rf"run folder {busy} is in use"):
        compare(grid, output, launcher=FakeLauncher(lambda job: (0.6, 0.6)), overwrite=True, log=False)
    assert sorted(p.relative_to(output).as_posix() for p in output.rglob("*")) == before
    again = FakeLauncher(lambda job: (0.6, 0.6))
    compare(grid, output, launcher=again, overwrite=True, log=False)
    assert len(again.launched) == 3 and not list(output.rglob(LOCK_FILENAME))  # plain, classp's two lrs
    assert json.loads((busy / "results.json").read_text())["metrics"]["acc"] == 0.6


def test_overwrite_locks_run_folders_of_an_earlier_version_too(tmp_path, base_config):
    """A run folder an earlier classp_hf wrote (``run_state.json``, no marker) is locked like the others: a process
    holding it stops ``--overwrite`` before anything is removed."""
    grid = write_grid(tmp_path, [{"name": "plain"}])
    output = tmp_path / "out"
    compare(grid, output, launcher=FakeLauncher(lambda job: (0.5, 0.5)), log=False)
    busy = output / "runs" / "plain" / "default" / "seed0"
    (busy / MARKER_FILENAME).unlink()
    (busy / "run_state.json").write_text(json.dumps({"tasks": [], "done": []}))  # what marks an earlier version's run
    before = sorted(p.relative_to(output).as_posix() for p in output.rglob("*"))
    with FolderLock(busy, what="run folder"), pytest.raises(FolderBusyError, match=rf"run folder {busy} is in use"):
        compare(grid, output, launcher=FakeLauncher(lambda job: (0.6, 0.6)), overwrite=True, log=False)
    assert sorted(p.relative_to(output).as_posix() for p in output.rglob("*")) == before
