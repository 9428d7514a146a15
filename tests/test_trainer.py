"""classp_hf.Trainer: the optimizer by name, diagnostics in the logs, checkpoints that resume exactly."""

from __future__ import annotations

import csv
import math

import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForSequenceClassification, BertForSequenceClassification

from classp_hf import TrainingArguments
from classp_hf.methods import ContinualMethod
from classp_hf.optim import CLASSP
from classp_hf.trainer import Trainer, masked_label_loss, set_learning_rate

from .helpers.runs import tiny_bert_config

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
        def penalty(self, model, inputs, outputs):
            return {"constant": torch.tensor(100.0)}

    plain = Trainer(model=tiny_model(), args=make_args(tmp_path, max_steps=1), train_dataset=fpb)
    plain.train()
    penalised = Trainer(
        model=tiny_model(), args=make_args(tmp_path, max_steps=1), train_dataset=fpb, continual_method=Constant()
    )
    penalised.train()
    loss = [h["loss"] for h in plain.state.log_history if "loss" in h][0]
    penalised_log = [h for h in penalised.state.log_history if "loss" in h][0]
    assert penalised_log["loss"] == pytest.approx(loss + 100.0, rel=1e-4)
    assert penalised_log["method/constant"] == pytest.approx(100.0)


class Recorder(ContinualMethod):
    """Adds a ``tag`` column, wraps the collator, and returns per-call terms (1, 2, 3, ...)."""

    def __init__(self):
        self.calls, self.seen_tags, self.forward_keys = 0, [], []

    def train_dataset(self, ctx):
        return ctx.train_dataset.add_column("tag", list(range(len(ctx.train_dataset))))

    def extra_columns(self):
        return ["tag"]

    def collate(self, collator):
        def wrapped(features):
            batch = collator(features)
            batch["wrapped"] = torch.ones(len(features), dtype=torch.long)
            return batch

        return wrapped

    def penalty(self, model, inputs, outputs):
        self.calls += 1
        self.seen_tags.append(inputs["tag"].tolist())
        assert outputs.logits.shape == (len(inputs["tag"]), 3)
        return {"calls": torch.tensor(float(self.calls)), "zero": torch.tensor(0.0)}


def test_method_columns_collator_and_logged_terms(tmp_path, fpb):
    method = Recorder()
    data = method.train_dataset(type("Ctx", (), {"train_dataset": fpb})())

    class WrappedBertForSequenceClassification(BertForSequenceClassification):
        def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, labels=None, wrapped=None):
            # Sees the collator's key (training batches only), never the method's column.
            assert (wrapped is not None) == self.training
            return super().forward(input_ids, attention_mask, token_type_ids, labels=labels)

    torch.manual_seed(0)
    args = make_args(tmp_path, max_steps=4, logging_steps=2, per_device_train_batch_size=4)
    model = WrappedBertForSequenceClassification(tiny_bert_config())
    trainer = Trainer(model=model, args=args, train_dataset=data, continual_method=method)
    trainer.train()
    assert method.calls == 4
    assert all(len(tags) == 4 for tags in method.seen_tags)
    assert len({t for tags in method.seen_tags for t in tags}) == 16  # each step new examples of the epoch
    logged = [h for h in trainer.state.log_history if "loss" in h]
    assert [h["method/calls"] for h in logged] == [1.5, 3.5]  # the mean over each logging window
    assert [h["method/zero"] for h in logged] == [0.0, 0.0]
    trainer.evaluate(data.select(range(8)))
    predictions = trainer.predict(data.select(range(4)).remove_columns("label"))  # the forward path without labels
    assert predictions.predictions.shape == (4, 3)
    assert method.calls == 4  # no penalty in evaluation


def test_masked_label_loss_against_a_literal_computation():
    logits = torch.tensor([[2.0, 1.0, -1.0], [0.5, 3.0, 0.0]])
    labels = torch.tensor([0, 2])
    loss = masked_label_loss(logits, labels, torch.tensor([0, 2]))
    literal = [
        -(2.0 - math.log(math.exp(2.0) + math.exp(-1.0))),  # label 1 left out of the softmax
        -(0.0 - math.log(math.exp(0.5) + math.exp(0.0))),
    ]
    assert float(loss) == pytest.approx(sum(literal) / 2, rel=1e-6)
    # A label in the batch keeps its logit even if it was not among the task's labels (replay).
    assert float(masked_label_loss(logits, torch.tensor([1, 1]), torch.tensor([0]))) == pytest.approx(
        float(torch.nn.functional.cross_entropy(logits[:, :2], torch.tensor([1, 1]))), rel=1e-6
    )
    full = masked_label_loss(logits, labels, torch.tensor([0, 1, 2]))
    assert float(full) == pytest.approx(float(torch.nn.functional.cross_entropy(logits, labels)), rel=1e-6)


def test_mask_absent_labels_leaves_the_absent_label_untouched(tmp_path, fpb):
    two_labels = fpb.filter(lambda example: example["label"] != 1)
    args = make_args(tmp_path, optim="sgd", max_steps=2, mask_absent_labels=True, weight_decay=0.0)
    torch.manual_seed(0)
    model = BertForSequenceClassification(tiny_bert_config(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0))
    trainer = Trainer(model=model, args=args, train_dataset=two_labels)
    before = trainer.model.classifier.bias.detach().clone()
    trainer.train()
    assert trainer._present_labels.tolist() == [0, 2]
    after = trainer.model.classifier.bias.detach()
    assert after[1] == before[1] and after[0] != before[0] and after[2] != before[2]
    unmasked = Trainer(model=tiny_model(), args=make_args(tmp_path, optim="sgd", max_steps=2), train_dataset=two_labels)
    unmasked.train()
    assert unmasked.model.classifier.bias[1] != before[1]  # without the mask label 1 is pushed down
    batch = unmasked.data_collator([two_labels[i] for i in range(4)])
    trainer.model.train()
    with torch.no_grad():
        masked = trainer.compute_loss(trainer.model, dict(batch))
        logits = trainer.model(**{k: v for k, v in batch.items() if k != "labels"}).logits
    expected = torch.nn.functional.cross_entropy(logits[:, [0, 2]], batch["labels"] // 2)
    assert float(masked) == pytest.approx(float(expected), rel=1e-5)
    trainer.model.eval()
    with torch.no_grad():
        evaluation_loss = trainer.compute_loss(trainer.model, dict(batch))
    assert float(evaluation_loss) == pytest.approx(
        float(torch.nn.functional.cross_entropy(logits, batch["labels"])), rel=1e-5
    )  # evaluation loss: all labels


@pytest.mark.parametrize("optim", ["classp", "adamw_torch", "sgd"])
def test_optim_groups_land_on_the_matching_parameters(tmp_path, fpb, optim):
    options = {"threshold": 0.25, "threshold_mode": "quantile"} if optim == "classp" else {"weight_decay": 0.5}
    groups = [{"params": r"^classifier\.", "lr_scale": 0.1, **options}, {"params": r"layer\.1\.", "lr_scale": 2}]
    args = make_args(tmp_path, optim=optim, optim_groups=groups, weight_decay=0.01, max_steps=1)
    trainer = Trainer(model=tiny_model(), args=args, train_dataset=fpb)
    trainer.create_optimizer()
    names = {id(p): n for n, p in trainer.model.named_parameters()}
    by_name = {names[id(p)]: group for group in trainer.optimizer.param_groups for p in group["params"]}
    assert len(by_name) == sum(1 for p in trainer.model.parameters() if p.requires_grad)
    head_w, head_b = by_name["classifier.weight"], by_name["classifier.bias"]
    assert head_w["lr"] == head_b["lr"] == pytest.approx(1e-4) and head_w["lr_scale"] == 0.1
    for key, value in options.items():
        assert head_w[key] == value
        if key != "weight_decay":
            assert head_b[key] == value
    assert head_b["weight_decay"] == 0.0  # a bias keeps no decay
    if "weight_decay" not in options:
        assert head_w["weight_decay"] == 0.01
    layer1 = by_name["bert.encoder.layer.1.output.dense.weight"]
    assert layer1["lr"] == pytest.approx(2e-3) and layer1["lr_scale"] == 2.0
    other = by_name["bert.encoder.layer.0.output.dense.weight"]
    assert other["lr"] == 1e-3 and other["lr_scale"] == 1.0 and other["weight_decay"] == 0.01
    if optim == "classp":
        assert other["threshold"] == 0.0 and other["threshold_mode"] == "absolute"
    set_learning_rate(trainer.optimizer, 5e-3)
    assert head_w["lr"] == pytest.approx(5e-4) and head_w["initial_lr"] == pytest.approx(5e-4)
    trainer.train()  # the groups train


def test_optim_groups_errors_before_training(tmp_path, fpb):
    args = make_args(tmp_path, optim_groups=[{"params": "classifer", "lr_scale": 0.1}])
    with pytest.raises(ValueError, match=r"optim_groups\[0\]\.params: 'classifer' matches no trainable parameter"):
        Trainer(model=tiny_model(), args=args, train_dataset=fpb).create_optimizer()
    # Options are checked against the built optimizer too (set after the arguments' own check).
    args = make_args(tmp_path, optim="adamw_torch")
    args.optim_groups = [{"params": "classifier", "threshold": 0.1}]
    with pytest.raises(ValueError, match=r"optim_groups\[0\]\.threshold: unknown key for AdamW \(accepted: amsgrad,"):
        Trainer(model=tiny_model(), args=args, train_dataset=fpb).create_optimizer()
    args.optim_groups = [{"params": "classifier", "amsgrad": 1}]
    with pytest.raises(ValueError, match=r"optim_groups\[0\]\.amsgrad: expected true or false, got 1$"):
        Trainer(model=tiny_model(), args=args, train_dataset=fpb).create_optimizer()


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
