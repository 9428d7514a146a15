"""The gradient probe: module groups, g^2 statistics, threshold suggestion, command line."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from classp_hf.cli import main as cli_main
from classp_hf.continual.config import config_from_dict
from classp_hf.continual.probe import module_group, probe_gradients
from classp_hf.optim import CLASSP

from ..helpers.runs import raw_config


@pytest.mark.parametrize(
    "name,group",
    [
        ("bert.encoder.layer.3.attention.self.query.weight", "bert.encoder.layer.3"),
        ("bert.embeddings.word_embeddings.weight", "bert.embeddings"),
        ("classifier.weight", "classifier"),
        ("base_model.model.model.layers.11.mlp.up_proj.lora_A.default.weight", "base_model.model.model.layers.11"),
        ("bias", "bias"),
    ],
)
def test_module_group(name, group):
    assert module_group(name) == group


@pytest.mark.parametrize("mode", ["absolute", "relative", "quantile"])
def test_probe_reports_and_suggests(tiny_model_dir, mode):
    config = config_from_dict(raw_config(tiny_model_dir))
    result = probe_gradients(config, batches=3, mode=mode, target_fraction=0.02)
    groups = {g["group"]: g for g in result["groups"]}
    assert {"bert.embeddings", "bert.encoder.layer.0", "bert.encoder.layer.1", "classifier"} <= set(groups)
    assert groups["bert.embeddings"]["zero_fraction"] > 0.9  # word-embedding rows not in the batch
    for row in [*result["groups"], result["overall"]]:
        fractions = row["update_fraction"]
        assert all(a >= b for a, b in zip(fractions, fractions[1:])) if mode != "quantile" else True
        assert all(0 <= f <= 1 for f in fractions)
    if mode == "quantile":
        assert result["suggested_threshold"] == 0.02
    else:
        assert result["suggested_threshold"] > 0


def test_suggested_absolute_threshold_hits_the_target_fraction(tiny_model_dir):
    from transformers import AutoModelForSequenceClassification

    config = config_from_dict(raw_config(tiny_model_dir))
    no_dropout = dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)  # same gradients in both runs
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, **no_dropout)
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    # The tiny model's word embeddings (98% of its elements) get zero gradient outside the batch's
    # tokens, so about 2.4% of elements have a gradient at all: aim at 1%.
    result = probe_gradients(config, batches=1, mode="absolute", target_fraction=0.01, model=model)
    assert result["suggested_threshold"] > 0
    assert all(torch.equal(p, start[n]) for n, p in model.named_parameters())  # no weight update
    # One step of CLASSP at the suggested threshold on the same batch updates about 1% of elements.
    model2 = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, **no_dropout)
    from classp_hf.continual.probe import _batches

    torch.manual_seed(config.seed)
    model2.train()
    batch = _batches(config, __import__("transformers").AutoTokenizer.from_pretrained(tiny_model_dir), 1)[0]
    model2(**batch).loss.backward()
    optimizer = CLASSP(model2.parameters(), threshold=result["suggested_threshold"])
    optimizer.step()
    fraction = optimizer.diagnostics()[0]["update_fraction"]
    assert abs(fraction - 0.01) < 0.001


def test_probe_command_line(tmp_path, tiny_model_dir, capsys):
    config_path = tmp_path / "run.yaml"
    config_path.write_text(yaml.safe_dump(raw_config(tiny_model_dir)))
    out = tmp_path / "probe.json"
    code = cli_main(["probe", str(config_path), "--batches", "2", "--mode", "relative", "--json", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "suggested: threshold_mode=relative" in printed and "bert.encoder.layer.1" in printed
    assert json.loads(out.read_text())["mode"] == "relative"
    assert cli_main(["probe", str(config_path), "--mode", "median"]) == 2
    assert "--mode: unknown threshold mode 'median'" in capsys.readouterr().err


def write_config(tmp_path, model_dir, **overrides):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(raw_config(model_dir, **overrides)))
    return str(path)


def only_error_line(capsys):
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    return lines[0]


def test_probe_with_a_missing_model_folder(tmp_path, capsys):
    out = tmp_path / "probe.json"
    config_path = write_config(tmp_path, str(tmp_path / "no-such-model"))
    assert cli_main(["probe", config_path, "--json", str(out)]) == 2
    assert only_error_line(capsys) == f"classp-hf: error: config.model: folder not found: {tmp_path / 'no-such-model'}"
    assert not out.exists()


def test_probe_json_target_checked_before_probing(tmp_path, tiny_model_dir, capsys, monkeypatch):
    import classp_hf.continual.probe as probe_module

    def never(*args, **kwargs):
        raise AssertionError("the probe ran although --json cannot be written")

    monkeypatch.setattr(probe_module, "probe_gradients", never)
    config_path = write_config(tmp_path, tiny_model_dir)
    folder = tmp_path / "a-folder"
    folder.mkdir()
    assert cli_main(["probe", config_path, "--json", str(folder)]) == 2
    assert only_error_line(capsys) == f"classp-hf: error: --json: {folder} is a directory; give a file path"
    assert list(folder.iterdir()) == []
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert cli_main(["probe", config_path, "--json", str(blocker / "probe.json")]) == 2
    assert (
        only_error_line(capsys)
        == f"classp-hf: error: --json: {blocker} is a file, so {blocker / 'probe.json'} cannot be written"
    )


def test_probe_refuses_max_length_beyond_the_model(tmp_path, tiny_model_dir, capsys):
    config_path = write_config(tmp_path, tiny_model_dir, max_length=512)
    assert cli_main(["probe", config_path]) == 2
    assert only_error_line(capsys).startswith(
        "classp-hf: error: config.max_length: 512 is more than the model takes (128"
    )
