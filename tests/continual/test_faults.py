"""Faults: --overwrite, kills at awkward moments, stray files, permissions, Ctrl-C, older run folders, launches
accelerate would not honour."""

from __future__ import annotations

import json
import os
import stat

import pytest
import torch
import yaml

import classp_hf.continual.runner as runner_module
from classp_hf.cli import main as cli_main
from classp_hf.continual.checkpoint import ResumeError
from classp_hf.continual.config import ConfigError, config_from_dict
from classp_hf.continual.io import OutputWriteError
from classp_hf.continual.launch import detect_backend
from classp_hf.continual.outputs import save_model_atomic
from classp_hf.continual.results import ResultsVersionError, RunResults
from classp_hf.continual.runner import ContinualRunner

from ..helpers.resume import Killed, KilledBeforeTask, assert_same_run, snapshot, three_task_config
from ..helpers.runs import raw_config


class KilledInFirstTask(KilledBeforeTask):
    kill_at = 0


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_model_dir):
    raw = raw_config(tiny_model_dir)
    runner = ContinualRunner(config_from_dict(raw), tmp_path_factory.mktemp("ref") / "out", log=False)
    return raw, runner, runner.run().to_dict()


def write_config(folder, raw):
    path = folder / "run.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_a_run_killed_in_its_first_task_resumes_from_the_start(tmp_path, reference):
    raw, reference_runner, reference_results = reference
    output = tmp_path / "out"
    with pytest.raises(Killed):
        KilledInFirstTask(config_from_dict(raw), output, log=False).run()
    state = json.loads((output / "run_state.json").read_text())
    assert state["completed_tasks"] == 0 and state["checkpoint"] is None
    resumed = ContinualRunner(config_from_dict(raw), output, log=False, resume=True)
    results = resumed.run().to_dict()
    assert_same_run(resumed, results, reference_runner, reference_results)


def test_overwrite_removes_only_what_a_run_writes_and_never_resumes_the_old_run(tmp_path, reference, capsys):
    raw, reference_runner, _ = reference
    output = tmp_path / "out"
    ContinualRunner(config_from_dict(raw), output, log=False).run()
    (output / "notes.txt").write_text("mine")
    (output / "data").mkdir()
    (output / "data" / "x.csv").write_text("a,b\n")
    other = {**raw, "seed": 3}
    with pytest.raises(Killed):  # the new run dies before finishing any task
        KilledInFirstTask(config_from_dict(other), output, log=False, overwrite=True).run()
    names = sorted(p.name for p in output.iterdir())
    assert names == ["classp-hf-owner.json", "config.yaml", "data", "notes.txt", "run_state.json"]
    assert (output / "notes.txt").read_text() == "mine" and (output / "data" / "x.csv").is_file()
    # --resume continues the new run (seed 3), not the old complete one
    assert cli_main(["run", str(write_config(tmp_path, raw)), "--output-dir", str(output), "--resume"]) == 2
    assert "differs from the run's" in capsys.readouterr().err
    results = ContinualRunner(config_from_dict(other), output, log=False, resume=True).run().to_dict()
    assert results["seed"] == 3 and results["status"] == "complete"


def test_a_kill_during_the_final_model_save_is_completed_on_resume(tmp_path, reference, capsys):
    raw, _, _ = reference
    output = tmp_path / "out"
    runner = ContinualRunner(config_from_dict(raw), output, log=False)
    runner.run()
    expected = {k: v.clone() for k, v in runner.model.state_dict().items()}
    # What a hard kill during the save leaves: no model/, a half-written temporary folder, a temp file.
    import shutil

    shutil.rmtree(output / "model")
    state = json.loads((output / "run_state.json").read_text())
    assert state["finished"] is True
    (output / "run_state.json").write_text(json.dumps({**state, "finished": False}))  # recorded after the save
    half = output / ".classp-tmp-model-abc123"
    half.mkdir()
    (half / "config.json").write_text("{")
    (output / ".results.json.xyz.tmp").write_text("{")
    (output / "checkpoints" / "task-00-financial_phrasebank").mkdir()  # a half-deleted older checkpoint
    (output / "checkpoints" / "mine").mkdir()  # a user's folder: not the run's to clean up
    (output / "checkpoints" / "mine" / "c.txt").write_text("keep")
    assert cli_main(["run", str(write_config(tmp_path, raw)), "--output-dir", str(output), "--resume"]) == 0
    assert "already complete" not in capsys.readouterr().out
    from transformers import AutoModelForSequenceClassification

    saved = AutoModelForSequenceClassification.from_pretrained(output / "model").state_dict()
    for name, tensor in expected.items():
        torch.testing.assert_close(saved[name], tensor, rtol=0, atol=0)
    assert not half.exists() and not (output / ".results.json.xyz.tmp").exists()
    assert sorted(p.name for p in (output / "checkpoints").iterdir()) == ["mine", "task-01-amazon_reviews"]
    assert (output / "checkpoints" / "mine" / "c.txt").read_text() == "keep"


def test_save_model_atomic_leaves_no_half_written_folder(tmp_path, tiny_model):
    class Dies:
        def __init__(self, error):
            self.error = error

        def save_pretrained(self, folder):
            (folder / "config.json").write_text("{}")
            raise self.error

    with pytest.raises(KeyboardInterrupt):  # Ctrl-C passes through as it is
        save_model_atomic(Dies(KeyboardInterrupt()), None, tmp_path / "model")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(OutputWriteError, match=r"cannot write the model .*model \(Killed: killed while saving\)"):
        save_model_atomic(Dies(Killed("killed while saving")), None, tmp_path / "model")  # a failed write: one line
    assert list(tmp_path.iterdir()) == []
    save_model_atomic(tiny_model, None, tmp_path / "model")
    assert (tmp_path / "model" / "config.json").is_file()


def test_output_files_get_ordinary_permissions(tmp_path, reference):
    raw, _, _ = reference
    old = os.umask(0o022)
    try:
        output = tmp_path / "out"
        ContinualRunner(config_from_dict(raw), output, log=False).run()
    finally:
        os.umask(old)
    for name in ("results.json", "report.md", "run_state.json", "config.yaml", "accuracy_matrix.png"):
        assert stat.S_IMODE((output / name).stat().st_mode) == 0o644, name
    assert stat.S_IMODE((output / "model").stat().st_mode) == 0o755


def test_ctrl_c_ends_with_one_line(tmp_path, reference, monkeypatch, capsys):
    raw, _, _ = reference

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(runner_module, "run_continual", interrupted)
    path = write_config(tmp_path, raw)
    assert cli_main(["run", str(path), "--output-dir", str(tmp_path / "out")]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "interrupted" in err[0] and "--resume" in err[0]


def test_a_full_disk_while_checkpointing_stops_in_one_line_and_the_run_resumes(
    tmp_path, reference, monkeypatch, capsys
):
    """torch reports a full disk as an opaque RuntimeError; the run says where and how much room is left."""
    import classp_hf.continual.checkpoint as checkpoint_module

    raw, reference_runner, reference_results = reference
    real_save = torch.save
    saves = []

    def save_until_the_disk_fills(obj, path, *args, **kwargs):
        saves.append(path)
        if "task-01" in str(path):  # the second task's checkpoint hits the full disk
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 13632 vs 13526")
        return real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(checkpoint_module.torch, "save", save_until_the_disk_fills)
    output = tmp_path / "out"
    path = write_config(tmp_path, raw)
    assert cli_main(["run", str(path), "--output-dir", str(output), "--quiet"]) == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line.lower()]  # not the bars
    assert len(errors) == 1, errors
    assert "cannot write the checkpoint" in errors[0] and "task-01-" in errors[0] and "unexpected pos" in errors[0]
    assert "MiB free on its disk" in errors[0] and "--resume" in errors[0]
    state = json.loads((output / "run_state.json").read_text())
    assert state["completed_tasks"] == 1 and state["checkpoint"].startswith("checkpoints/task-00-")
    assert [p.name for p in (output / "checkpoints").iterdir()] == [state["checkpoint"].split("/")[1]]  # no debris

    monkeypatch.setattr(checkpoint_module.torch, "save", real_save)  # room again
    resumed = ContinualRunner(config_from_dict(raw), output, log=False, resume=True)
    assert_same_run(resumed, resumed.run().to_dict(), reference_runner, reference_results)


def test_a_truncated_checkpoint_is_refused_in_one_line(tmp_path, tiny_model_dir, capsys):
    raw = three_task_config(tiny_model_dir)
    output = tmp_path / "out"
    with pytest.raises(Killed):
        KilledBeforeTask(config_from_dict(raw), output, log=False).run()
    checkpoint = output / json.loads((output / "run_state.json").read_text())["checkpoint"]
    weights = checkpoint / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    before = snapshot(output)
    capsys.readouterr()
    assert cli_main(["run", str(write_config(tmp_path, raw)), "--output-dir", str(output), "--resume"]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and "--resume: cannot load the model in" in errors[0], errors
    assert "invalid header length" in errors[0]
    assert snapshot(output) == before


def test_results_of_an_older_version_are_upgraded_or_refused(reference):
    _, _, results = reference
    old = {key: value for key, value in results.items() if key != "backend"}
    old["schema_version"] = 1
    upgraded = RunResults.from_dict(old)
    assert upgraded.schema_version == 2 and upgraded.accuracy_matrix == results["accuracy_matrix"]
    upgraded.validate()
    with pytest.raises(ResultsVersionError, match="schema_version 9"):
        RunResults.from_dict({**results, "schema_version": 9})


def test_an_optimizer_state_of_an_older_version_is_refused_on_resume(tmp_path, tiny_model_dir, capsys):
    raw = three_task_config(tiny_model_dir)
    output = tmp_path / "out"
    with pytest.raises(Killed):
        KilledBeforeTask(config_from_dict(raw), output, log=False).run()
    checkpoint = output / json.loads((output / "run_state.json").read_text())["checkpoint"]
    torch.save({"state": {}, "param_groups": []}, checkpoint / "optimizer.pt")  # classp_hf 0.1's layout
    assert cli_main(["run", str(write_config(tmp_path, raw)), "--output-dir", str(output), "--resume"]) == 2
    assert "written by an older classp_hf" in capsys.readouterr().err


@pytest.mark.parametrize("variable,name", [("ACCELERATE_USE_FSDP", "FSDP"), ("ACCELERATE_USE_DEEPSPEED", "DeepSpeed")])
def test_sharded_launches_accelerate_would_not_honour_are_refused(
    tmp_path, reference, monkeypatch, capsys, variable, name
):
    raw, _, _ = reference
    monkeypatch.setenv(variable, "true")
    output = tmp_path / "out"
    assert cli_main(["run", str(write_config(tmp_path, raw)), "--output-dir", str(output)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"asks for {name}" in err[0] and "cpu_processes.yaml" in err[0]
    assert not output.exists()


def test_sharded_backends_refuse_what_they_cannot_run_exactly(monkeypatch):
    import classp_hf.continual.launch as launch

    monkeypatch.setattr(launch, "accelerator_available", lambda: True)
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    assert detect_backend({"optim_args": "threshold=1e-9"}).distributed_type == "fsdp"
    assert detect_backend({"optim_args": "threshold=2,threshold_mode=relative"}).sharded
    with pytest.raises(ConfigError, match="threshold_mode=quantile needs whole tensors"):
        detect_backend({"optim_args": "threshold=0.1,threshold_mode=quantile"})
    with pytest.raises(ConfigError, match="per_task adapters are not supported under FSDP"):
        detect_backend({}, {"adapters": "per_task"})
    monkeypatch.delenv("ACCELERATE_USE_FSDP")
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    with pytest.raises(ConfigError, match="threshold_mode=relative needs whole tensors, which DeepSpeed ZeRO"):
        detect_backend({"optim_args": "threshold=2,threshold_mode=relative"})


def test_resume_refuses_a_folder_without_a_run(tmp_path, reference):
    raw, _, _ = reference
    with pytest.raises(ResumeError, match="no run_state.json"):
        ContinualRunner(config_from_dict(raw), tmp_path, log=False, resume=True)


def test_bf16_runs_on_the_cpu_with_autocast(tmp_path, tiny_model_dir):
    raw = raw_config(tiny_model_dir)
    raw["training"]["bf16"] = True
    runner = ContinualRunner(config_from_dict(raw), tmp_path / "out", log=False)
    assert runner.task_args[0].use_cpu and runner.task_args[0].bf16
    runner.setup()
    seen = set()
    runner.model.classifier.register_forward_hook(lambda module, args, out: seen.add(out.dtype))
    results = runner.run().to_dict()
    assert torch.bfloat16 in seen  # the forward ran under CPU autocast
    assert results["status"] == "complete" and results["backend"]["mixed_precision"] == "bf16"
    assert all(task["train_loss"] is not None for task in results["per_task"])
    assert next(runner.model.parameters()).dtype == torch.float32  # autocast: the weights stay float32


def test_model_dtype_bfloat16_with_stochastic_rounding(tmp_path, tiny_model_dir):
    raw = raw_config(tiny_model_dir)
    raw["model_dtype"] = "bfloat16"
    raw["training"]["optim_args"] = "power=1,eps=1e-8,stochastic_rounding=true,seed=3"
    runner = ContinualRunner(config_from_dict(raw), tmp_path / "out", log=False)
    results = runner.run().to_dict()
    assert results["status"] == "complete" and results["backend"]["model_dtype"] == "bfloat16"
    assert {p.dtype for p in runner.model.parameters()} == {torch.bfloat16}
    state = runner.optimizer_state
    assert all(v["grad_sum"].dtype == torch.float32 for v in state["state"].values())  # S stays float32
    assert "stochastic_rounding_rng" in state["extra"]  # the generator crosses tasks and checkpoints
