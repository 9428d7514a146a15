"""LwF: recorded logits, the index column, the distillation term against a literal computation."""

from __future__ import annotations

import math

import pytest
import torch

from classp_hf.methods import LwF, TaskContext
from classp_hf.methods.lwf import INDEX_COLUMN, distillation_loss

from ..helpers.methods import BagOfWords, pad_collator, toy_dataset


def context(model, data, index):
    return TaskContext(index, f"t{index}", data, model, pad_collator, batch_size=3, seed=0, num_labels=3)


def literal_kl(new, old, temperature):
    """T^2 * mean over rows of sum_c p_c (log p_c - log q_c), p = softmax(old / T), q = softmax(new / T)."""
    total = 0.0
    for new_row, old_row in zip(new.tolist(), old.tolist()):
        p = [math.exp(v / temperature) for v in old_row]
        q = [math.exp(v / temperature) for v in new_row]
        p = [v / sum(p) for v in p]
        q = [v / sum(q) for v in q]
        total += sum(pc * (math.log(pc) - math.log(qc)) for pc, qc in zip(p, q))
    return temperature**2 * total / len(new)


def test_distillation_loss_matches_a_literal_kl():
    new = torch.tensor([[1.0, -2.0, 0.5], [0.0, 3.0, -1.0]])
    old = torch.tensor([[0.2, 0.1, 2.0], [-1.0, 1.5, 0.0]])
    assert float(distillation_loss(new, old, 2.0)) == pytest.approx(literal_kl(new, old, 2.0), rel=1e-6)
    assert float(distillation_loss(old, old, 2.0)) == pytest.approx(0.0, abs=1e-7)


def test_nothing_on_the_first_task():
    method, model, data = LwF(), BagOfWords(), toy_dataset(6)
    assert method.train_dataset(context(model, data, 0)) is data
    assert method.penalty(model, {"labels": torch.zeros(2)}, {"logits": torch.zeros(2, 3)}) is None
    assert method.state_bytes() == 0


def test_later_task_records_the_previous_model_and_distils_towards_it():
    method, model, data = LwF(alpha=0.5, temperature=3.0), BagOfWords(), toy_dataset(7)
    model.train()
    dataset = method.train_dataset(context(model, data, 1))
    assert model.training
    assert dataset[INDEX_COLUMN] == list(range(7)) and INDEX_COLUMN not in data.column_names
    assert method.extra_columns() == [INDEX_COLUMN]
    with torch.no_grad():
        recorded = torch.cat(
            [model(**pad_collator([{k: e[k] for k in ("input_ids", "attention_mask")}]))["logits"] for e in data]
        )
    torch.testing.assert_close(method.old_logits, recorded)
    assert method.state_bytes() == 7 * 3 * 4

    with torch.no_grad():
        model.head.weight.mul_(-1.0)  # the model moves on
    rows = [5, 0, 2]
    batch = pad_collator([dataset[i] for i in rows])
    outputs = model(batch["input_ids"], batch["attention_mask"])
    term = method.penalty(model, batch, outputs)["lwf"]
    expected = 0.5 * literal_kl(outputs["logits"].detach(), recorded[rows], 3.0)
    assert float(term.detach()) == pytest.approx(expected, rel=1e-5)
    term.backward()
    assert model.head.weight.grad.abs().sum() > 0


def test_examples_without_recorded_logits_are_left_out():
    method, model, data = LwF(), BagOfWords(), toy_dataset(4)
    method.train_dataset(context(model, data, 1))
    logits = torch.randn(3, 3)
    both = method.penalty(model, {INDEX_COLUMN: torch.tensor([1, -1, 3])}, {"logits": logits})["lwf"]
    kept = method.penalty(model, {INDEX_COLUMN: torch.tensor([1, 3])}, {"logits": logits[[0, 2]]})["lwf"]
    assert float(both) == pytest.approx(float(kept))
    none = method.penalty(model, {INDEX_COLUMN: torch.tensor([-1])}, {"logits": logits[:1]})["lwf"]
    assert float(none) == 0.0


def test_state_is_empty_between_tasks():
    method = LwF()
    method.train_dataset(context(BagOfWords(), toy_dataset(4), 1))
    assert method.state_dict() == {}
    LwF().load_state_dict({})
