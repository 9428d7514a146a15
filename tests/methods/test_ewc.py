"""EWC: the Fisher and the penalty against hand computations, online decay, state round trip."""

from __future__ import annotations

import io

import pytest
import torch

from classp_hf.methods import EWC, TaskContext, create_method
from classp_hf.methods.ewc import empirical_fisher, sample_indices

from ..helpers.methods import BagOfWords, pad_collator, toy_dataset
from ..helpers.runs import tiny_bert_config


def context(model, data, index=0, seed=0):
    return TaskContext(index, f"t{index}", data, model, pad_collator, batch_size=4, seed=seed, num_labels=3)


def fisher_by_hand(model, data):
    """Mean over examples of ((e_y - p) f^T)^2 and (e_y - p)^2: the gradients of log p_y of a linear head."""
    weight, bias = torch.zeros_like(model.head.weight), torch.zeros_like(model.head.bias)
    with torch.no_grad():
        for example in data:
            ids = torch.tensor([example["input_ids"]])
            features = model.features(ids, torch.ones_like(ids))[0]
            p = torch.softmax(model.head(features), dim=-1)
            delta = torch.nn.functional.one_hot(torch.tensor(example["labels"]), 3).float() - p
            weight += torch.outer(delta, features) ** 2
            bias += delta**2
    return {"head.weight": weight / len(data), "head.bias": bias / len(data)}


def test_fisher_matches_the_gradients_by_hand():
    model, data = BagOfWords(), toy_dataset(10)
    model.train()
    fisher = empirical_fisher(model, data, pad_collator, list(range(len(data))))
    assert set(fisher) == {"head.weight", "head.bias"}  # the frozen embedding is left out
    expected = fisher_by_hand(model, data)
    for name in fisher:
        torch.testing.assert_close(fisher[name], expected[name])
    assert model.training  # train mode restored


def test_fisher_uses_eval_mode():
    class DropoutBag(BagOfWords):
        def forward(self, input_ids, attention_mask, labels=None):
            features = torch.nn.functional.dropout(self.features(input_ids, attention_mask), 0.9, self.training)
            return {"logits": self.head(features)}

    model, data = DropoutBag(), toy_dataset(6)
    model.train()
    fisher = empirical_fisher(model, data, pad_collator, list(range(6)))
    torch.testing.assert_close(fisher["head.weight"], fisher_by_hand(model, data)["head.weight"])


def test_fisher_samples_is_a_seeded_subset():
    assert sample_indices(5, 10, (0, 1)) == [0, 1, 2, 3, 4]
    picked = sample_indices(50, 8, (3, 1))
    assert len(set(picked)) == 8 and picked == sorted(picked) and picked == sample_indices(50, 8, (3, 1))
    assert picked != sample_indices(50, 8, (3, 2))  # another task, another subset
    model, data = BagOfWords(), toy_dataset(12)
    method = EWC(lambda_=1.0, fisher_samples=5)
    method.after_task(context(model, data, index=1, seed=3))
    expected = fisher_by_hand(model, data.select(sample_indices(12, 5, (3, 1))))
    torch.testing.assert_close(method.anchors[0]["fisher"]["head.bias"], expected["head.bias"])


def test_penalty_value_and_gradient_by_hand():
    model = BagOfWords()
    method = EWC(lambda_=4.0)
    fisher_w = torch.arange(12.0).reshape(3, 4) / 10
    fisher_b = torch.tensor([1.0, 2.0, 3.0])
    anchor_w, anchor_b = model.head.weight.detach().clone(), model.head.bias.detach().clone()
    method.anchors = [
        {
            "fisher": {"head.weight": fisher_w, "head.bias": fisher_b},
            "weights": {"head.weight": anchor_w, "head.bias": anchor_b},
        }
    ]
    assert float(method.penalty(model, {}, None)["ewc"].detach()) == 0.0
    with torch.no_grad():
        model.head.weight += 0.5
        model.head.bias -= torch.tensor([1.0, 0.0, 2.0])
    value = method.penalty(model, {}, None)["ewc"]
    # (4 / 2) * (sum F_w * 0.25 + 1 * 1 + 3 * 4) = 2 * (6.6 * 0.25 + 13) = 29.3
    assert value.item() == pytest.approx(2.0 * (fisher_w.sum().item() * 0.25 + 13.0))
    value.backward()
    torch.testing.assert_close(model.head.weight.grad, 4.0 * fisher_w * 0.5)
    torch.testing.assert_close(model.head.bias.grad, 4.0 * fisher_b * torch.tensor([-1.0, 0.0, -2.0]))
    assert model.embed.weight.grad is None


def two_tasks(method, model):
    data_a, data_b = toy_dataset(8, seed=1), toy_dataset(8, seed=2)
    method.after_task(context(model, data_a, 0))
    fisher_a = fisher_by_hand(model, data_a)
    weights_a = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    with torch.no_grad():
        model.head.weight.mul_(1.5)
    method.after_task(context(model, data_b, 1))
    return fisher_a, weights_a, fisher_by_hand(model, data_b)


def test_separate_mode_keeps_one_anchor_per_task():
    model, method = BagOfWords(), EWC(lambda_=2.0)
    fisher_a, weights_a, fisher_b = two_tasks(method, model)
    assert len(method.anchors) == 2
    torch.testing.assert_close(method.anchors[0]["weights"]["head.weight"], weights_a["head.weight"])
    with torch.no_grad():
        model.head.bias.add_(0.3)
    params = dict(model.named_parameters())
    expected = sum(
        (f[n] * (params[n] - w[n]) ** 2).sum()
        for f, w in ((fisher_a, weights_a), (fisher_b, method.anchors[1]["weights"]))
        for n in f
    )
    assert method.penalty(model, {}, None)["ewc"].item() == pytest.approx(expected.item(), rel=1e-5)


def test_online_mode_decays_one_running_fisher():
    model, method = BagOfWords(), EWC(lambda_=2.0, mode="online", gamma=0.25)
    fisher_a, _, fisher_b = two_tasks(method, model)
    assert len(method.anchors) == 1
    for name in fisher_a:
        torch.testing.assert_close(method.anchors[0]["fisher"][name], 0.25 * fisher_a[name] + fisher_b[name])
    torch.testing.assert_close(method.anchors[0]["weights"]["head.weight"], model.head.weight.detach())
    assert method.state_bytes() == 2 * (12 + 3) * 4


def test_state_round_trip_is_bit_for_bit():
    model, method = BagOfWords(), EWC(lambda_=3.0)
    two_tasks(method, model)
    buffer = io.BytesIO()
    torch.save(method.state_dict(), buffer)
    buffer.seek(0)
    restored = create_method("ewc", lambda_=3.0)
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    with torch.no_grad():
        model.head.weight.add_(0.1)
    assert torch.equal(restored.penalty(model, {}, None)["ewc"], method.penalty(model, {}, None)["ewc"])
    assert restored.state_bytes() == method.state_bytes() == 2 * 2 * (12 + 3) * 4
    with pytest.raises(ValueError, match="mode 'separate'"):
        EWC(lambda_=3.0, mode="online").load_state_dict(method.state_dict())


def test_no_penalty_before_the_first_task_ends():
    assert EWC(lambda_=1.0).penalty(BagOfWords(), {}, None) is None


def test_shared_lora_adapter_anchors_only_the_adapter():
    import peft
    from transformers import BertForSequenceClassification

    torch.manual_seed(0)
    base = BertForSequenceClassification(tiny_bert_config(vocab_size=100, num_hidden_layers=1))
    model = peft.get_peft_model(base, peft.LoraConfig(task_type="SEQ_CLS", r=2, target_modules=["query", "value"]))
    data = toy_dataset(4).add_column("token_type_ids", [[0] * len(ids) for ids in toy_dataset(4)["input_ids"]])
    method = EWC(lambda_=1.0)
    method.after_task(context(model, data))
    names = set(method.anchors[0]["fisher"])
    assert names == {n for n, p in model.named_parameters() if p.requires_grad}
    assert all("lora_" in n or "modules_to_save" in n for n in names)
    assert any(float(f.sum()) > 0 for n, f in method.anchors[0]["fisher"].items() if "lora_B" in n or "modules" in n)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(0.01)
    method.penalty(model, {}, None)["ewc"].backward()
    assert all(p.grad is None for p in model.parameters() if not p.requires_grad)


def _fisher_on_rank(rank, store, out):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        model, data = BagOfWords(), toy_dataset(7)
        method = EWC(lambda_=1.0)
        method.after_task(context(model, data))
        torch.save(method.state_dict(), f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def test_fisher_is_all_reduced_across_processes(tmp_path):
    """Two gloo processes each take every other example; both end with the Fisher of all seven."""
    import torch.multiprocessing as mp

    mp.spawn(_fisher_on_rank, args=(str(tmp_path / "store"), str(tmp_path / "state")), nprocs=2)
    expected = fisher_by_hand(BagOfWords(), toy_dataset(7))
    states = [torch.load(tmp_path / f"state.{rank}", weights_only=True) for rank in (0, 1)]
    for name, value in expected.items():
        torch.testing.assert_close(states[0]["anchors"][0]["fisher"][name], value)
        assert torch.equal(states[0]["anchors"][0]["fisher"][name], states[1]["anchors"][0]["fisher"][name])
