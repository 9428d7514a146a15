"""``--resume``: a run killed between tasks continues from its last checkpoint to the same results."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from classp_hf.cli import main as cli_main
from classp_hf.continual.adapters import adapter_name_for_task
from classp_hf.continual.config import config_from_dict
from classp_hf.continual.runner import ContinualRunner

from ..helpers.ownership import LockHolder
from ..helpers.resume import (
    LORA,
    Killed,
    KilledBeforeTask,
    assert_same_run,
    kill_resume_and_compare,
    snapshot,
    three_task_config,
)


class KilledWhileCheckpointing(ContinualRunner):
    """Dies while checkpointing task ``kill_at``: its results are written, its checkpoint is not."""

    kill_at = 1

    def _save_checkpoint(self, index, trainer, tracking):
        if index == self.kill_at:
            raise Killed(f"killed while checkpointing task {index}")
        super()._save_checkpoint(index, trainer, tracking)


@pytest.fixture(scope="module")
def reference_full(tmp_path_factory, tiny_model_dir):
    raw = three_task_config(tiny_model_dir)
    runner = ContinualRunner(config_from_dict(raw), tmp_path_factory.mktemp("ref") / "out", log=False)
    return raw, runner, runner.run().to_dict()


@pytest.mark.parametrize("killer", [KilledBeforeTask, KilledWhileCheckpointing])
def test_resumed_full_run_matches_the_uninterrupted_one(tmp_path, reference_full, killer):
    raw, reference, reference_results = reference_full
    output = tmp_path / "out"
    with pytest.raises(Killed):
        killer(config_from_dict(raw), output, log=False).run()
    state = json.loads((output / "run_state.json").read_text())
    assert state["completed_tasks"] == killer.kill_at
    if killer is KilledWhileCheckpointing:  # results.json is one task ahead of the checkpoint
        assert len(json.loads((output / "results.json").read_text())["accuracy_matrix"]) == killer.kill_at + 1
    resumed = ContinualRunner(config_from_dict(raw), output, log=False, resume=True)
    results = resumed.run().to_dict()
    assert results["resumed_after_tasks"] == [killer.kill_at]
    assert_same_run(resumed, results, reference, reference_results)
    assert results["timing"]["attempts"] == 2  # the resumed attempt's seconds added to the killed one's
    assert results["timing"]["total_seconds"] > results["timing"]["phases"]["training"] > 0
    # Sparsity diagnostics carry the union of updated elements across the interruption.
    for got, want in zip(results["per_task"], reference_results["per_task"]):
        assert got["sparsity"] == want["sparsity"]
    assert json.loads((output / "results.json").read_text()) == results
    # The final predictions (compare's paired bootstrap) are the uninterrupted run's, from the last task's model.
    predictions = json.loads((output / "predictions.json").read_text())
    assert predictions == json.loads((reference.output_dir / "predictions.json").read_text())
    assert {entry["stage"] for entry in predictions["tasks"]} == {2} and len(predictions["tasks"]) == 3
    assert sorted(p.name for p in (output / "checkpoints").iterdir()) == ["task-02-airline_tweets"]
    assert not list((output / "checkpoints").glob("*/tokenizer*"))  # a checkpoint holds what --resume reads
    assert (output / "model" / "config.json").is_file()


@pytest.mark.parametrize("adapters", ["shared", "per_task"])
def test_resumed_lora_run_matches_the_uninterrupted_one(tmp_path, tiny_model_dir, adapters):
    raw = three_task_config(tiny_model_dir, peft={**LORA, "adapters": adapters})
    raw["training"]["learning_rate"] = 5e-3
    resumed, results, reference_results = kill_resume_and_compare(raw, tmp_path)
    if adapters == "per_task":
        names = ["financial_phrasebank", "amazon_reviews", "airline_tweets"]
        assert list(resumed.model.peft_config) == [adapter_name_for_task(name) for name in names]
        trainable = {n for n, p in resumed.model.named_parameters() if p.requires_grad}
        assert trainable and all(f".{adapter_name_for_task('airline_tweets')}." in n for n in trainable)


@pytest.fixture()
def interrupted(tmp_path, tiny_model_dir):
    """A 3-task run killed before its third task, with its config file."""
    raw = three_task_config(tiny_model_dir)
    config_path = tmp_path / "run.yaml"
    config_path.write_text(yaml.safe_dump(raw))
    output = tmp_path / "out"
    with pytest.raises(Killed):
        KilledBeforeTask(config_from_dict(raw), output, log=False).run()
    return raw, config_path, output


class _Payload:
    """Unpickled without weights_only, this would create a file: what a malicious checkpoint file could do."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _checkpoint(output):
    return output / json.loads((output / "run_state.json").read_text())["checkpoint"]


@pytest.mark.parametrize(
    "damage,message",
    [
        (lambda raw, path, out: (out / "run_state.json").unlink(), "has no run_state.json"),
        (lambda raw, path, out: (out / "run_state.json").write_text("{"), "run_state.json is corrupt"),
        (lambda raw, path, out: (_checkpoint(out) / "optimizer.pt").write_bytes(b"junk"), "optimizer.pt is corrupt"),
        (lambda raw, path, out: (_checkpoint(out) / "method.pt").unlink(), "method.pt is missing"),
        (
            lambda raw, path, out: torch.save({"state": _Payload(out / "ran")}, _checkpoint(out) / "optimizer.pt"),
            "optimizer.pt refused: not a plain tensor file (it would load io.open; a run writes only tensors",
        ),
        (
            lambda raw, path, out: path.write_text(yaml.safe_dump({**raw, "seed": 7})),
            "the config differs from the run's",
        ),
    ],
    ids=[
        "no-run-state",
        "corrupt-run-state",
        "corrupt-optimizer",
        "missing-method",
        "malicious-optimizer",
        "other-config",
    ],
)
def test_resume_refuses_bad_state_with_one_line_and_keeps_everything(interrupted, capsys, damage, message):
    raw, config_path, output = interrupted
    damage(raw, config_path, output)
    before = snapshot(output)
    code = cli_main(["run", str(config_path), "--output-dir", str(output), "--resume"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("classp-hf: error: --resume:") and message in err[0], err
    assert snapshot(output) == before


def test_resume_of_a_run_live_in_another_process_is_refused(interrupted, capsys):

    _, config_path, output = interrupted
    holder = LockHolder(output)  # the run goes on in another process (it holds the folder's lock)
    try:
        before = snapshot(output)
        assert cli_main(["run", str(config_path), "--output-dir", str(output), "--resume"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"is in use by another classp-hf process (pid {holder.pid})" in err[0], err
        assert snapshot(output) == before
    finally:
        holder.kill()


def test_resume_and_overwrite_exclude_each_other(interrupted, capsys):
    _, config_path, output = interrupted
    before = snapshot(output)
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["run", str(config_path), "--output-dir", str(output), "--resume", "--overwrite"])
    assert exit_info.value.code == 2 and "not allowed with argument" in capsys.readouterr().err
    assert snapshot(output) == before


def test_resuming_a_complete_run_changes_nothing(tmp_path, reference_full, capsys):
    raw, reference, _ = reference_full
    config_path = tmp_path / "run.yaml"
    config_path.write_text(yaml.safe_dump(raw))
    before = snapshot(reference.output_dir)
    assert cli_main(["run", str(config_path), "--output-dir", str(reference.output_dir), "--resume"]) == 0
    assert "already complete" in capsys.readouterr().out
    assert snapshot(reference.output_dir) == before


def test_resume_counts_a_config_key_the_run_predates_as_its_default(tmp_path, tiny_model_dir):
    from classp_hf.continual.checkpoint import ResumeError, check_same_config

    config = config_from_dict(three_task_config(tiny_model_dir))
    stored = config.to_dict()
    del stored["model_dtype"], stored["validation_fraction"]  # keys an older classp_hf did not write
    del stored["tasks"][1]["splits"]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(stored))
    check_same_config(config, tmp_path)  # no error: the missing keys have their defaults

    stored["validation_fraction"] = 0.25
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(stored))
    with pytest.raises(ResumeError, match="differs from the run's .* in validation_fraction;"):
        check_same_config(config, tmp_path)

    stored["validation_fraction"] = 0.0
    stored["training"]["learning_rate"] = 0.5  # a nested key is named to the leaf, as `compare` names it
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(stored))
    with pytest.raises(ResumeError, match=r"differs from the run's .* in training\.learning_rate;"):
        check_same_config(config, tmp_path)
    (tmp_path / "config.yaml").write_text("- a list, not a config\n")
    with pytest.raises(ResumeError, match=r"--resume: .*config\.yaml is corrupt \(not a mapping\)"):
        check_same_config(config, tmp_path)
