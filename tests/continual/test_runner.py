"""The continual runner end to end on a tiny random BERT and real (embedded) data."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers
import yaml

from classp_hf.cli import main as cli_main
from classp_hf.continual.config import config_from_dict
from classp_hf.continual.ownership import MARKER_FILENAME, Owner
from classp_hf.continual.results import validate_results
from classp_hf.continual.runner import ContinualRunner

from ..helpers.runs import RecordStart, raw_config


class Recorder(ContinualRunner):
    """Records CLASSP's S and the param groups' learning rates when each later task starts training."""

    def _trainer(self, index, context=None):
        trainer = super()._trainer(index, context)
        if index > 0:
            trainer.add_callback(RecordStart(self))
        return trainer


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_model_dir):
    output = tmp_path_factory.mktemp("run") / "out"
    runner = Recorder(config_from_dict(raw_config(tiny_model_dir)), output, log=False)
    results = runner.run().to_dict()
    return runner, results, output


def test_results_are_complete_and_valid(finished_run):
    runner, results, output = finished_run
    on_disk = json.loads((output / "results.json").read_text())
    assert on_disk == results
    validate_results(on_disk)
    assert results["status"] == "complete"
    assert results["tasks"] == ["financial_phrasebank", "amazon_reviews"]
    assert len(results["accuracy_matrix"]) == 2 and all(len(row) == 2 for row in results["accuracy_matrix"])
    assert len(results["initial_accuracy"]) == 2
    assert set(results["metrics"]) == {"acc", "bwt", "fwt", "forgetting"}
    matrix = results["accuracy_matrix"]
    assert results["metrics"]["acc"] == pytest.approx((matrix[1][0] + matrix[1][1]) / 2)
    assert results["metrics"]["bwt"] == pytest.approx(matrix[1][0] - matrix[0][0])
    task = results["per_task"][0]
    assert task["steps"] == 4 and task["train_examples"] == 32 and task["seconds"] > 0
    assert 0 < task["optimizer_diagnostics"]["update_fraction"] <= 1
    assert task["optimizer_diagnostics_scope"] == "global"
    assert results["versions"]["torch"] == torch.__version__


def test_task_label_accuracy_is_the_argmax_over_the_tasks_own_labels(finished_run):
    runner, results, _ = finished_run
    from transformers import DataCollatorWithPadding

    part = results["task_labels"]
    assert len(part["initial_accuracy"]) == 2 and len(part["accuracy_matrix"]) == 2
    amazon = runner.tasks[1]
    assert amazon.label_ids == [0, 2]  # negative, positive: the head's neutral is not amazon's
    assert runner.tasks[0].label_ids == [0, 1, 2]
    # recompute the last row's amazon cell from the final model: neutral's logit never wins
    batch = DataCollatorWithPadding(runner.tokenizer)(
        [{k: amazon.test[i][k] for k in ("input_ids", "attention_mask", "labels")} for i in range(len(amazon.test))]
    )
    runner.model.eval()
    with torch.no_grad():
        logits = runner.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    labels = batch["labels"]
    full = (logits.argmax(-1) == labels).float().mean().item()
    own = (logits[:, [0, 2]].argmax(-1).mul(2) == labels).float().mean().item()
    assert results["accuracy_matrix"][1][1] == pytest.approx(full, abs=1e-6)
    assert part["accuracy_matrix"][1][1] == pytest.approx(own, abs=1e-6)
    # financial_phrasebank uses every label: the two matrices agree on it
    assert [row[0] for row in part["accuracy_matrix"]] == [row[0] for row in results["accuracy_matrix"]]
    assert part["metrics"]["acc"] == pytest.approx(sum(part["accuracy_matrix"][1]) / 2)


def test_outputs_written(finished_run):
    _, _, output = finished_run
    for name in ("config.yaml", "results.json", "report.md", "accuracy_matrix.png", "accuracy_curves.png"):
        assert (output / name).stat().st_size > 0, name
    assert yaml.safe_load((output / "config.yaml").read_text())["tasks"][1]["training"] == {"learning_rate": 5e-4}
    assert "financial_phrasebank" in (output / "report.md").read_text()
    assert not list(output.glob(".*.tmp"))
    state = json.loads((output / "run_state.json").read_text())
    assert state["completed_tasks"] == 2 and (output / state["checkpoint"] / "optimizer.pt").is_file()
    assert len(list((output / "checkpoints").iterdir())) == 1  # only the latest task's checkpoint is kept


def test_final_model_loads_on_its_own_with_label_names(finished_run):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    runner, _, output = finished_run
    model = AutoModelForSequenceClassification.from_pretrained(output / "model")
    tokenizer = AutoTokenizer.from_pretrained(output / "model")
    assert model.config.id2label == {0: "negative", 1: "neutral", 2: "positive"}
    inputs = tokenizer(["profits rose"], return_tensors="pt")
    model.eval()
    runner.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs).logits, runner.model(**inputs).logits)


def test_optimizer_state_carries_over_and_task_learning_rate_applies(finished_run):
    runner, _, _ = finished_run
    # S at the start of task 2 is S at the end of task 1: non-zero, and it only grows after.
    assert sum(float(s.sum()) for s in runner.sums_before) > 0
    after = [runner.optimizer.state[p]["grad_sum"] for p in runner.model.parameters()]
    assert all(torch.all(a >= b) for a, b in zip(after, runner.sums_before))
    assert all(lr == 5e-4 for lr in runner.seen_lrs[0])  # task 2's learning rate, not task 1's
    assert runner.results.per_task[1]["learning_rate"] == 5e-4
    assert runner.optimizer.param_groups[0]["initial_lr"] == 5e-4


def test_non_empty_output_dir_is_refused_and_kept(tmp_path, tiny_model_dir, capsys):
    config_path = tmp_path / "run.yaml"
    config_path.write_text(yaml.safe_dump(raw_config(tiny_model_dir)))
    output = tmp_path / "out"
    output.mkdir()
    (output / "results.json").write_text("precious")
    assert cli_main(["run", str(config_path), "--output-dir", str(output)]) == 2
    err = capsys.readouterr().err
    assert "is not empty and holds no classp-hf run" in err and "--overwrite" not in err  # not a run's: not ours
    assert (output / "results.json").read_text() == "precious"


@pytest.mark.parametrize(
    "mutate,message",
    [
        (lambda c: c["tasks"][0].update(text_column="body"), "column 'body' not in the train split"),
        (lambda c: c["tasks"][1].pop("label_map"), "dataset label 'negative'"),
        (lambda c: c["training"].update(optim="adamw_tourch"), "Unknown optimizer 'adamw_tourch'"),
        (lambda c: c["tasks"][0]["data_files"].update(train="/nope/train.csv"), "file not found: /nope/train.csv"),
    ],
)
def test_bad_input_exits_2_with_one_line_and_writes_nothing(tmp_path, tiny_model_dir, capsys, mutate, message):
    config = raw_config(tiny_model_dir)
    if message.startswith("dataset label"):
        config["tasks"][1]["label_map"] = {"positive": "positive"}
        message = "dataset label 'negative' has no mapping"
    else:
        mutate(config)
    config_path = tmp_path / "run.yaml"
    config_path.write_text(yaml.safe_dump(config))
    output = tmp_path / "out"
    Owner.create(output, "run")  # a run's folder (--overwrite is allowed there) holding a user's file
    (output / "keep.txt").write_text("keep")
    code = cli_main(["run", str(config_path), "--output-dir", str(output), "--overwrite"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and message in err[0] and err[0].startswith("classp-hf: error:")
    assert sorted(p.name for p in output.iterdir()) == [MARKER_FILENAME, "keep.txt"]


def test_malformed_yaml_from_the_command_line(tmp_path):
    config_path = tmp_path / "bad.yaml"
    config_path.write_text("tasks: [\n")
    result = subprocess.run(
        [sys.executable, "-m", "classp_hf.cli", "run", str(config_path), "--output-dir", str(tmp_path / "o")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert result.stderr.strip().startswith("classp-hf: error:") and "malformed YAML" in result.stderr
    assert not (tmp_path / "o").exists()


def test_sparsity_diagnostics_and_validation_split(tmp_path, tiny_model_dir):
    raw = raw_config(tiny_model_dir, diagnostics=True, validation_fraction=0.25)
    raw["training"]["optim_args"] = "threshold=0.5,threshold_mode=quantile"
    runner = ContinualRunner(config_from_dict(raw), tmp_path / "out", log=False)
    results = runner.run().to_dict()
    validate_results(results)
    first, second = (task["sparsity"] for task in results["per_task"])
    # quantile 0.5: at most half of each tensor's elements per step
    assert 0 < first["mean_update_fraction"] <= 0.5
    assert first["mean_update_fraction"] <= first["ever_updated_fraction"] <= 1
    assert first["overlap_with_earlier"] is None and 0 <= second["overlap_with_earlier"] <= 1
    assert results["per_task"][0]["train_examples"] == 24  # 8 of the 32 held out for validation
    validation = results["validation"]
    assert len(validation["initial_accuracy"]) == 2 and len(validation["accuracy_matrix"]) == 2
    assert set(validation["metrics"]) == {"acc", "bwt", "fwt", "forgetting"}
    assert (tmp_path / "out" / "sparsity.png").stat().st_size > 0
    report = (tmp_path / "out" / "report.md").read_text()
    assert "Sparsity of the updates" in report and "Validation accuracy matrix" in report


def test_pin_memory_off_without_accelerator_unless_asked(tmp_path, tiny_model_dir, monkeypatch):
    import classp_hf.continual.config.sections as sections_module  # builds the arguments the runner trains with
    import classp_hf.continual.launch as launch_module

    def accelerator(available):
        monkeypatch.setattr(sections_module, "accelerator_available", lambda: available)
        monkeypatch.setattr(launch_module, "accelerator_available", lambda: available)

    accelerator(False)
    runner = ContinualRunner(config_from_dict(raw_config(tiny_model_dir)), tmp_path / "a", log=False)
    assert runner.task_args[0].dataloader_pin_memory is False
    raw = raw_config(tiny_model_dir)
    raw["training"]["dataloader_pin_memory"] = True
    runner = ContinualRunner(config_from_dict(raw), tmp_path / "b", log=False)
    assert runner.task_args[0].dataloader_pin_memory is True  # the user's choice wins
    accelerator(True)
    runner = ContinualRunner(config_from_dict(raw_config(tiny_model_dir)), tmp_path / "c", log=False)
    assert runner.task_args[0].dataloader_pin_memory is True  # transformers' default on GPUs


def test_training_arguments_are_built_once(tmp_path, tiny_model_dir, monkeypatch):
    """The config check builds each task's arguments; the runner trains with copies of them (its folder set),
    building none itself unless the config changed since."""
    from classp_hf.training_args import TrainingArguments

    built = []
    post_init = TrainingArguments.__post_init__
    monkeypatch.setattr(TrainingArguments, "__post_init__", lambda self: (built.append(self), post_init(self)))
    config = config_from_dict(raw_config(tiny_model_dir))
    assert len(built) == 2  # the top-level arguments (the first task's) and the second task's own
    runner = ContinualRunner(config, tmp_path / "out", log=False)
    assert len(built) == 2
    assert [args.output_dir for args in runner.task_args] == [
        str(tmp_path / "out" / "trainer" / task.name) for task in config.tasks
    ]
    assert [args.learning_rate for args in runner.task_args] == [1e-3, 5e-4]
    assert not any(args is checked for args in runner.task_args for checked in built)  # copies
    config.training["learning_rate"] = 2e-3  # changed after the check: built again, the same way
    runner = ContinualRunner(config, tmp_path / "out2", log=False)
    assert len(built) == 4 and [args.learning_rate for args in runner.task_args] == [2e-3, 5e-4]


def test_python_run_with_overrides_returns_the_results(tmp_path, tiny_model_dir):
    from classp_hf.continual import RunResults, run

    config_path = tmp_path / "run.yaml"
    config_path.write_text(yaml.safe_dump(raw_config(tiny_model_dir)))
    results = run(
        config_path,
        tmp_path / "out",
        overrides={"training.learning_rate": 2e-3, "tasks.amazon_reviews.max_train_samples": 16},
        log=False,
    )
    assert isinstance(results, RunResults) and results.status == "complete"
    assert results.optimizer["learning_rate"] == 2e-3 and results.per_task[0]["learning_rate"] == 2e-3
    assert results.per_task[1]["learning_rate"] == 5e-4  # the task's own learning rate still applies
    assert results.per_task[1]["train_examples"] == 16
    assert results.to_dict() == json.loads((tmp_path / "out" / "results.json").read_text())
    stored = yaml.safe_load((tmp_path / "out" / "config.yaml").read_text())
    assert stored["training"]["learning_rate"] == 2e-3 and stored["tasks"][1]["max_train_samples"] == 16
    # --resume reads the resolved config from the run folder: nothing to repeat
    assert cli_main(["run", "--output-dir", str(tmp_path / "out"), "--resume", "--quiet"]) == 0


def test_tensorboard_folder_is_set_on_the_callback_not_in_the_environment(tmp_path, tiny_model, monkeypatch):
    from transformers.integrations import TensorBoardCallback

    from classp_hf.continual.runner import _set_tensorboard_folder

    monkeypatch.delenv("TENSORBOARD_LOGGING_DIR", raising=False)
    callback = TensorBoardCallback.__new__(TensorBoardCallback)  # tensorboard need not be installed
    callback.logging_dir = None
    args = transformers.TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True)
    trainer = transformers.Trainer(model=tiny_model, args=args, callbacks=[callback])
    _set_tensorboard_folder(trainer, tmp_path / "logs" / "imdb")
    assert callback.logging_dir == str(tmp_path / "logs" / "imdb")
    assert "TENSORBOARD_LOGGING_DIR" not in os.environ
    import classp_hf.continual.runner as runner_module

    assert "os.environ" not in Path(runner_module.__file__).read_text()  # no process-wide writes
