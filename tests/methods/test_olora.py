"""O-LoRA on a tiny BERT with two adapters: both in the forward, only the current one trains; the penalty."""

from __future__ import annotations

import math

import peft
import pytest
import torch
from transformers import BertForSequenceClassification

from classp_hf.methods import OLoRA, TaskContext
from classp_hf.methods.olora import adapter_names

from ..helpers.methods import pad_collator, toy_dataset
from ..helpers.runs import tiny_bert_config


def lora_config():
    return peft.LoraConfig(task_type="SEQ_CLS", r=2, lora_alpha=4, target_modules=["query", "value"])


@pytest.fixture
def two_adapters():
    """A PEFT BERT with adapters task_a (earlier, given random B) and task_b (current), as the runner makes them."""
    torch.manual_seed(0)
    model = peft.get_peft_model(
        BertForSequenceClassification(tiny_bert_config(vocab_size=100, num_hidden_layers=1)),
        lora_config(),
        adapter_name="task_a",
    )
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_()
    model.add_adapter("task_b", lora_config())
    model.set_adapter("task_b")
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B.task_b" in name:
                param.normal_()
    return model


def start(model):
    method = OLoRA(lambda_orth=0.5, lambda_l2=0.1)
    method.before_task(TaskContext(1, "b", toy_dataset(2), model, pad_collator, 2, 0, 3))
    return method


def test_both_adapters_in_the_forward_only_the_current_trains(two_adapters):
    model = two_adapters
    start(model)
    assert adapter_names(model) == (["task_a"], "task_b")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".task_b." in n for n in trainable)
    assert any("modules_to_save.task_b" in n for n in trainable) and any("lora_A.task_b" in n for n in trainable)
    layer = model.base_model.model.bert.encoder.layer[0].attention.self.query
    x = torch.randn(3, 32)
    scale = 4 / 2
    expected = layer.base_layer(x) + sum(
        scale * x @ layer.lora_A[name].weight.T @ layer.lora_B[name].weight.T for name in ("task_a", "task_b")
    )
    torch.testing.assert_close(layer(x), expected)
    model.eval()
    ids = torch.tensor([[1, 5, 7, 2]])
    before = model(input_ids=ids).logits
    with torch.no_grad():
        layer.lora_B["task_a"].weight.add_(1.0)
    assert not torch.allclose(model(input_ids=ids).logits, before)  # the earlier adapter counts


def literal_terms(model):
    """sum over layers of sum_ij |sum_k A_a[i][k] A_b[j][k]|, and sum of Frobenius norms of task_b's A and B."""
    orth, l2 = 0.0, 0.0
    for module in model.modules():
        if hasattr(module, "lora_A") and isinstance(module.lora_A, torch.nn.ModuleDict):
            a_old, a_new = module.lora_A["task_a"].weight.tolist(), module.lora_A["task_b"].weight.tolist()
            orth += sum(abs(sum(x * y for x, y in zip(row_old, row_new))) for row_old in a_old for row_new in a_new)
            for matrix in (module.lora_A["task_b"].weight, module.lora_B["task_b"].weight):
                l2 += math.sqrt(sum(v * v for row in matrix.tolist() for v in row))
    return orth, l2


def test_penalty_against_a_literal_computation(two_adapters):
    model = two_adapters
    method = start(model)
    terms = method.penalty(model, {}, None)
    orth, l2 = literal_terms(model)
    assert orth > 0 and l2 > 0
    assert float(terms["olora_orth"].detach()) == pytest.approx(0.5 * orth, rel=1e-5)
    assert float(terms["olora_l2"].detach()) == pytest.approx(0.1 * l2, rel=1e-5)
    sum(terms.values()).backward()
    grads = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert grads and all(".task_b." in n for n in grads)


def test_single_adapter_has_only_the_l2_term():
    torch.manual_seed(0)
    model = peft.get_peft_model(
        BertForSequenceClassification(tiny_bert_config(vocab_size=100, num_hidden_layers=1)), lora_config(), "first"
    )
    method = OLoRA()
    method.before_task(TaskContext(0, "a", toy_dataset(2), model, pad_collator, 2, 0, 3))
    terms = method.penalty(model, {}, None)
    assert float(terms["olora_orth"]) == 0.0 and method.config.lambda_l2 == 0.0


def test_needs_a_peft_model():
    with pytest.raises(ValueError, match="olora needs a PEFT model"):
        OLoRA().penalty(torch.nn.Linear(2, 2), {}, None)
