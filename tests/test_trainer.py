"""classp_hf.Trainer: the optimizer by name, diagnostics in the logs, checkpoints that resume exactly."""

from __future__ import annotations

import csv

import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForSequenceClassification, BertForSequenceClassification

from classp_hf import TrainingArguments
from classp_hf.methods import ContinualMethod
from classp_hf.optim import CLASSP
from classp_hf.trainer import Trainer

from .conftest import tiny_bert_config

LABELS = {"negative": 0, "neutral": 1, "positive": 2}


def sentiment_dataset(tokenizer, path, n, max_length=48):
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))[:n]
    data = Dataset.from_dict({"text": [r["text"] for r in rows], "label": [LABELS[r["label"]] for r in rows]})
    return data.map(
        lambda b: tokenizer(b["text"], truncation=True, padding="max_length", max_length=max_length), batched=True
    ).remove_columns("text")


def make_args(tmp_path, **overrides):
    options = dict(
        output_dir=str(tmp_path / "out"),
        optim="classp",
        learning_rate=1e-3,
        per_device_train_batch_size=8,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
        use_cpu=True,
        seed=0,
    )
    options.update(overrides)
    return TrainingArguments(**options)


def tiny_model():
    torch.manual_seed(0)
    return BertForSequenceClassification(tiny_bert_config())


@pytest.fixture(scope="module")
def fpb(tokenizer, shared_data):
    return sentiment_dataset(tokenizer, shared_data / "financial_phrasebank" / "train.csv", 64)


@pytest.mark.parametrize("optim", ["classp", "adam", "adamw", "sgd", "adagrad"])
def test_optimizer_by_name(tmp_path, fpb, optim):
    args = make_args(tmp_path, optim=optim, max_steps=1, optim_args="threshold=1e-12" if optim == "classp" else None)
    trainer = Trainer(model=tiny_model(), args=args, train_dataset=fpb)
    trainer.create_optimizer()
    expected = {
        "classp": CLASSP,
        "adam": torch.optim.Adam,
        "adamw": torch.optim.AdamW,
        "sgd": torch.optim.SGD,
        "adagrad": torch.optim.Adagrad,
    }[optim]
    assert type(trainer.optimizer) is expected
    assert trainer.optimizer.param_groups[0]["lr"] == 1e-3
    if optim == "classp":
        assert trainer.optimizer.param_groups[0]["threshold"] == 1e-12


def test_diagnostics_are_logged(tmp_path, fpb):
    trainer = Trainer(model=tiny_model(), args=make_args(tmp_path, max_steps=2), train_dataset=fpb)
    trainer.train()
    logged = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logged) == 2
    assert all(0.0 < h["optim/update_fraction"] <= 1.0 for h in logged)
    assert logged[1]["optim/grad_sum_mean"] > logged[0]["optim/grad_sum_mean"] > 0


def test_continual_method_penalty_enters_the_loss(tmp_path, fpb):
    class Constant(ContinualMethod):
        def penalty(self, model):
            return torch.tensor(100.0)

    plain = Trainer(model=tiny_model(), args=make_args(tmp_path, max_steps=1), train_dataset=fpb)
    plain.train()
    penalised = Trainer(
        model=tiny_model(), args=make_args(tmp_path, max_steps=1), train_dataset=fpb, continual_method=Constant()
    )
    penalised.train()
    loss = [h["loss"] for h in plain.state.log_history if "loss" in h][0]
    penalised_loss = [h["loss"] for h in penalised.state.log_history if "loss" in h][0]
    assert penalised_loss == pytest.approx(loss + 100.0, rel=1e-4)


def test_resume_from_checkpoint_continues_as_if_never_stopped(tmp_path, fpb):
    full = Trainer(model=tiny_model(), args=make_args(tmp_path / "a", max_steps=6), train_dataset=fpb)
    full.train()

    interrupted_args = make_args(tmp_path / "b", max_steps=6, save_strategy="steps", save_steps=3)
    interrupted = Trainer(model=tiny_model(), args=interrupted_args, train_dataset=fpb)
    interrupted.train()
    checkpoint = tmp_path / "b" / "out" / "checkpoint-3"
    assert (checkpoint / "optimizer.pt").exists()

    resumed = Trainer(model=tiny_model(), args=interrupted_args, train_dataset=fpb)
    resumed.train(resume_from_checkpoint=str(checkpoint))
    for (name, p), (_, q) in zip(full.model.named_parameters(), resumed.model.named_parameters()):
        torch.testing.assert_close(p, q, msg=name)
    full_state = full.optimizer.optimizer.state if hasattr(full.optimizer, "optimizer") else full.optimizer.state
    resumed_opt = resumed.optimizer.optimizer if hasattr(resumed.optimizer, "optimizer") else resumed.optimizer
    sums = [full_state[p]["grad_sum"] for p in full.model.parameters()]
    resumed_sums = [resumed_opt.state[p]["grad_sum"] for p in resumed.model.parameters()]
    for s, r in zip(sums, resumed_sums):
        assert r.dtype == torch.float32
        torch.testing.assert_close(s, r)


@pytest.mark.slow
def test_real_minilm_loss_falls_and_checkpoint_round_trips(tmp_path, minilm_path, tokenizer, shared_data):
    data = sentiment_dataset(tokenizer, shared_data / "financial_phrasebank" / "train.csv", 96, max_length=64)
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(minilm_path, num_labels=3)
    args = make_args(tmp_path, max_steps=12, per_device_train_batch_size=16, save_strategy="steps", save_steps=12)
    trainer = Trainer(model=model, args=args, train_dataset=data)
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3

    checkpoint = tmp_path / "out" / "checkpoint-12"
    state = torch.load(checkpoint / "optimizer.pt", weights_only=True)
    optimizer = trainer.optimizer.optimizer if hasattr(trainer.optimizer, "optimizer") else trainer.optimizer
    reloaded = CLASSP([{"params": list(g["params"])} for g in optimizer.param_groups])
    reloaded.load_state_dict(state)
    for p in model.parameters():
        torch.testing.assert_close(reloaded.state[p]["grad_sum"], optimizer.state[p]["grad_sum"], rtol=0, atol=0)
    again = AutoModelForSequenceClassification.from_pretrained(checkpoint)
    for (name, p), (_, q) in zip(model.named_parameters(), again.named_parameters()):
        torch.testing.assert_close(p, q, msg=name)
