"""``recipes/protocol_curves.py`` on a tiny random BERT and the embedded sample: the curve records, the skipping of
finished runs, the majority-class verdict, the table and the figure."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import torch
import yaml

from classp_hf.continual.config import load_config
from classp_hf.continual.tasks import load_task

from .helpers.recipes import load_recipe
from .helpers.runs import tiny_bert_config

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "recipes" / "data" / "quickstart"


curves = load_recipe("protocol_curves")


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory, minilm_path) -> Path:
    from transformers import AutoTokenizer, BertForSequenceClassification

    folder = tmp_path_factory.mktemp("protocol")
    torch.manual_seed(0)
    BertForSequenceClassification(tiny_bert_config()).save_pretrained(folder / "model")
    AutoTokenizer.from_pretrained(minilm_path).save_pretrained(folder / "model")
    files = {split: str(SAMPLE / "financial_phrasebank" / f"{split}.csv") for split in ("train", "test")}
    config = {
        "model": str(folder / "model"),
        "labels": ["negative", "neutral", "positive"],
        "training": {"optim": "classp", "learning_rate": 1e-3, "per_device_train_batch_size": 16},
        "tasks": [{"name": "financial_phrasebank", "data_files": files, "max_eval_samples": 16}],
    }
    path = folder / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


ARGS = ["--max-length", "32", "--max-train-samples", "40", "--epochs", "2", "--eval-every", "3"]


def test_run_records_a_validation_curve_per_optimizer_and_skips_finished_runs(tiny_config, tmp_path, capsys):
    output = tmp_path / "curves.jsonl"
    command = ["run", "--config", str(tiny_config), "--output", str(output), "--tasks", "financial_phrasebank"]
    assert curves.main([*command, "--optimizers", "classp", "adamw", *ARGS]) == 0
    records = curves.read_records(output)
    assert [(r["optimizer"], r["optim"], r["learning_rate"]) for r in records] == [
        ("classp", "classp", 1e-3),
        ("adamw", "adamw_torch", 5e-5),
    ]
    config = load_config(tiny_config, {"tasks.financial_phrasebank.max_train_samples": 40, "validation_fraction": 0.2})
    from transformers import AutoTokenizer

    data = load_task(config.tasks[0], config.labels, AutoTokenizer.from_pretrained(config.model), 32, 0, 0.2)
    label, count = Counter(data.validation["labels"]).most_common(1)[0]
    for record in records:
        # 32 training examples at batch 16: 2 steps an epoch, 4 in all; evaluated at 0, 3 and the last step.
        assert (record["train_examples"], record["validation_examples"], record["steps"]) == (32, 8, 4)
        assert [point["step"] for point in record["curve"]] == [0, 3, 4]
        assert all(8 * point["accuracy"] == round(8 * point["accuracy"]) for point in record["curve"])
        assert record["final_accuracy"] == record["curve"][-1]["accuracy"]
        assert record["majority"] == count / 8 and record["majority_label"] == config.labels[label]
    assert records[0]["curve"][0] == records[1]["curve"][0]  # the same untrained model under the same seed

    capsys.readouterr()
    assert curves.main([*command, "--optimizers", "adamw", *ARGS]) == 0
    assert "already in" in capsys.readouterr().out and len(curves.read_records(output)) == 2
    assert curves.main([*command, "--optimizers", "adamw", *ARGS[:-1], "2"]) == 0  # another interval: same run
    assert len(curves.read_records(output)) == 2
    assert curves.main([*command, "--optimizers", "adamw", "--schedule", "constant", *ARGS]) == 0
    assert curves.main([*command, "--optimizers", "adamw", "--learning-rate", "adamw=1e-4", *ARGS]) == 0
    records = curves.read_records(output)
    assert [(r["schedule"], r["learning_rate"]) for r in records[2:]] == [("constant", 5e-5), ("linear", 1e-4)]

    capsys.readouterr()
    assert curves.main(["table", str(output)]) == 0
    table = capsys.readouterr().out.strip().splitlines()
    assert len(table) == 2 + 4 and all(line.count("|") == 14 for line in table)
    figure = tmp_path / "figures" / "curves.png"
    assert curves.main(["plot", str(output), "--output", str(figure)]) == 0
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_an_unknown_optimizer_or_task_is_refused_before_anything_runs(tiny_config, tmp_path):
    output = tmp_path / "curves.jsonl"
    base = ["run", "--config", str(tiny_config), "--output", str(output)]
    with pytest.raises(SystemExit, match="--optimizers: unknown optimizer 'adam'"):
        curves.main([*base, "--tasks", "financial_phrasebank", "--optimizers", "classp", "adam"])
    with pytest.raises(SystemExit, match="--learning-rate: 'adamw=fast' is not NAME=NUMBER"):
        curves.main([*base, "--tasks", "financial_phrasebank", "--learning-rate", "adamw=fast"])
    with pytest.raises(SystemExit, match="--tasks: .* has no task 'imdb'"):
        curves.main([*base, "--tasks", "imdb"])
    assert not output.exists()


def test_learned_means_final_accuracy_at_least_majority_plus_15_points():
    def record(final, majority, optimizer="classp"):
        return {
            "task": "t",
            "optimizer": optimizer,
            "learning_rate": 1e-3,
            "max_length": 128,
            "train_examples": 800,
            "steps": 100,
            "schedule": "linear",
            "majority": majority,
            "final_accuracy": final,
            "best_accuracy": max(final, 0.9),
            "wall_seconds": 60.0,
        }

    rows = curves.summary_rows([record(0.75, 0.6), record(0.74, 0.6, "adamw")])
    assert [(row["optimizer"], row["learned"]) for row in rows] == [("adamw", False), ("classp", True)]
    assert rows[1]["margin"] == pytest.approx(0.15)  # the final accuracy counts, not the best one


def test_majority_curve_and_a_line_cut_by_a_kill(tmp_path):
    assert curves.majority_share([2, 0, 2, 1, 2]) == (2, 0.6)
    history = [{"loss": 1.0, "step": 5}, {"eval_accuracy": 0.5, "step": 5}, {"eval_accuracy": 0.75, "step": 10}]
    assert curves.curve_from_history(history) == [{"step": 5, "accuracy": 0.5}, {"step": 10, "accuracy": 0.75}]
    path = tmp_path / "curves.jsonl"
    path.write_text(json.dumps({"task": "a"}) + "\n" + '{"task": "b", "cur')
    assert curves.read_records(path) == [{"task": "a"}]
