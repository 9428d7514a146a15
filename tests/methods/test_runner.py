"""Every continual method through the runner: it runs, records its state bytes, resumes bit for bit, and bad method
settings are one line before anything is written."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from classp_hf.cli import main as cli_main
from classp_hf.continual.config import config_from_dict
from classp_hf.continual.runner import ContinualRunner

from ..helpers.resume import LORA, kill_resume_and_compare, three_task_config
from ..helpers.runs import SAMPLE, raw_config

ADAMW_LORA = {"optim": "adamw_torch", "learning_rate": 5e-3}
#: method, its arguments, and the setting it runs with: CLASSP full fine-tuning or AdamW + LoRA, alternately.
METHODS = {
    "ewc": ({"lambda_": 1e4, "fisher_samples": 16}, "classp_full"),
    "ewc_online": ({"lambda_": 1e4, "fisher_samples": 16, "mode": "online", "gamma": 0.5}, "adamw_lora"),
    "replay": ({"buffer_size": 16, "replay_ratio": 0.25}, "classp_full"),
    "lwf": ({"alpha": 1.0, "temperature": 2.0}, "adamw_lora"),
    "olora": ({"lambda_orth": 0.5, "lambda_l2": 0.01}, "adamw_lora_per_task"),
    "replay+ewc": ({"replay": {"buffer_size": 16}, "ewc": {"lambda_": 1e4, "fisher_samples": 16}}, "classp_full"),
}


def method_config(model_dir, key, three_tasks=False):
    args, setting = METHODS[key]
    raw = three_task_config(model_dir) if three_tasks else raw_config(model_dir)
    raw["method"] = {"ewc_online": "ewc", "replay+ewc": ["replay", "ewc"]}.get(key, key)
    raw["method_args"] = args
    if setting != "classp_full":
        raw["training"].update(ADAMW_LORA)
        raw["training"].pop("optim_args")
        per_task = setting.endswith("per_task")
        raw["peft"] = {
            **LORA,
            "adapters": "per_task" if per_task else "shared",
            "init": "fresh" if per_task else "previous",
        }
    raw["diagnostics"] = False
    return raw


@pytest.mark.parametrize("key", list(METHODS))
def test_each_method_runs_in_the_runner(tmp_path, tiny_model_dir, key):
    runner = ContinualRunner(config_from_dict(method_config(tiny_model_dir, key)), tmp_path / "out", log=False)
    results = runner.run().to_dict()
    assert results["status"] == "complete"
    assert results["method"] == runner.config.method
    first, second = results["per_task"]
    if key in ("ewc", "ewc_online", "replay", "replay+ewc"):
        assert first["method_state_bytes"] > 0  # after task 1 the method keeps something for task 2
    if key == "lwf":  # LwF keeps only the previous model's logits on the task being trained
        assert first["method_state_bytes"] == 0 < second["method_state_bytes"]
    assert "Method state" in (tmp_path / "out" / "report.md").read_text()
    if key == "replay":  # the buffer holds tokenized examples, at most buffer_size of them
        assert runner.method.state_bytes() <= 16 * 32 * 8 * 3


def test_o_lora_keeps_earlier_adapters_active_and_merges_them_all(tmp_path, tiny_model_dir):
    runner = ContinualRunner(config_from_dict(method_config(tiny_model_dir, "olora")), tmp_path / "out", log=False)
    runner.run()
    model = runner.model
    trainable = {name for name, p in model.named_parameters() if p.requires_grad and "lora_" in name}
    names = list(model.peft_config)
    assert len(names) == 2 and trainable and all(names[1] in name for name in trainable)
    # The final model is every task's adapter merged: it predicts as the PeftModel with all adapters active.
    from transformers import AutoModelForSequenceClassification

    final = AutoModelForSequenceClassification.from_pretrained(tmp_path / "out" / "model").eval()
    model.eval()
    inputs = runner.tokenizer(["profits rose sharply", "the flight was late"], return_tensors="pt", padding=True)
    with torch.no_grad():
        torch.testing.assert_close(final(**inputs).logits, model(**inputs).logits, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("key", ["ewc", "ewc_online", "replay", "lwf", "olora"])
def test_resume_after_a_kill_between_tasks_continues_every_stateful_method(tmp_path, tiny_model_dir, key):
    raw = method_config(tiny_model_dir, key, three_tasks=True)
    resumed, results, reference_results = kill_resume_and_compare(raw, tmp_path)
    assert [t["method_state_bytes"] for t in results["per_task"]] == [
        t["method_state_bytes"] for t in reference_results["per_task"]
    ]


@pytest.mark.parametrize(
    "change,message",
    [
        (dict(method="ewcc"), "config.method: unknown"),
        (dict(method="ewc", method_args={"lambda_": 1.0, "lamda": 2}), "config.method_args.lamda"),
        (dict(method="ewc", method_args={"lambda_": "big"}), "config.method_args.lambda_"),
        (dict(method="ewc", method_args={"lambda_": -1.0}), "config.method_args.lambda_"),
        (dict(method="replay", method_args={"buffer_size": 0}), "config.method_args.buffer_size"),
        (dict(method=["replay", "replay"], method_args={"replay": {"buffer_size": 4}}), "config.method"),
        (dict(method="ewc", method_args={"lambda_": 1.0}, peft={**LORA, "adapters": "per_task"}), "config."),
        (dict(method="olora", peft={**LORA, "adapters": "shared"}), "config.method"),
        (
            dict(training_extra={"optim_groups": [{"params": "classifier", "thresold": 0.1}]}),
            "config.training.optim_groups[0].thresold: unknown key for 'classp' (did you mean 'threshold'?",
        ),
        (
            dict(training_extra={"optim_groups": [{"params": "no_such_module", "lr_scale": 0.1}]}),
            "config.training.optim_groups[0].params: 'no_such_module' matches no trainable parameter",
        ),
    ],
    ids=[
        "unknown",
        "unknown-arg",
        "ill-typed",
        "negative-lambda",
        "empty-buffer",
        "twice",
        "ewc-per-task",
        "olora-shared",
        "group-key",
        "group-pattern",
    ],
)
def test_bad_method_settings_are_one_line_and_write_nothing(tmp_path, tiny_model_dir, capsys, change, message):
    raw = raw_config(tiny_model_dir)
    change = dict(change)
    raw["training"].update(change.pop("training_extra", {}))
    raw.update(change)
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(raw))
    output = tmp_path / "out"
    assert cli_main(["run", str(path), "--output-dir", str(output)]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(errors) == 1 and message in errors[0], errors
    assert not output.exists()


def test_method_terms_are_logged(tmp_path, tiny_model_dir):
    raw = method_config(tiny_model_dir, "ewc")
    runner = ContinualRunner(config_from_dict(raw), tmp_path / "out", log=False)
    seen = []
    original = runner._trainer

    def trainer_with_history(index, context=None):
        trainer = original(index, context)
        seen.append(trainer)
        return trainer

    runner._trainer = trainer_with_history
    runner.run()
    logged = [entry for entry in seen[1].state.log_history if "method/ewc" in entry]
    assert logged and all(entry["method/ewc"] >= 0 for entry in logged)
    assert json.loads((tmp_path / "out" / "results.json").read_text())["per_task"][1]["method_state_bytes"] > 0


@pytest.mark.slow
def test_replay_keeps_more_of_the_first_task_than_none_on_minilm(tmp_path, minilm_path):
    """MiniLM, the quick-start sample, FPB then Amazon reviews (no `neutral`): replay keeps FPB (~+39 points here)."""

    def config(method, method_args):
        tasks = [
            {"name": name, "data_files": {s: str(SAMPLE / name / f"{s}.csv") for s in ("train", "test")}}
            for name in ("financial_phrasebank", "amazon_reviews")
        ]
        for task in tasks:
            task["max_train_samples"] = 160
        tasks[1]["label_map"] = {"negative": "negative", "positive": "positive"}
        raw = {
            "model": minilm_path,
            "labels": ["negative", "neutral", "positive"],
            "max_length": 64,
            "seed": 0,
            "training": {
                "optim": "classp",
                "learning_rate": 1e-3,
                "num_train_epochs": 1,
                "per_device_train_batch_size": 16,
                "per_device_eval_batch_size": 64,
                "disable_tqdm": True,
            },
            "tasks": tasks,
            "method": method,
            "method_args": method_args,
        }
        return config_from_dict(raw)

    plain = ContinualRunner(config("none", {}), tmp_path / "none", log=False).run()
    replay = ContinualRunner(config("replay", {"buffer_size": 100}), tmp_path / "replay", log=False).run()
    assert plain.accuracy_matrix[0][0] == replay.accuracy_matrix[0][0]  # the same first task, the same seed
    kept_plain, kept_replay = plain.accuracy_matrix[1][0], replay.accuracy_matrix[1][0]
    assert kept_replay >= kept_plain + 0.05, (kept_plain, kept_replay)
