"""Low-precision S (``state_dtype="bfloat16"`` and ``"8bit"``): accuracy on a recorded real gradient sequence,
unbiased rounding, state bytes, checkpoints, conversion, the registry and the refusals."""

from __future__ import annotations

import importlib
import io

import pytest
import torch
from torch import nn

from classp_hf.optim import CLASSP, _rows, _state, create_optimizer

from ..helpers.runs import tiny_bert_config

classp_module = importlib.import_module("classp_hf.optim._functional")  # the functional update

LR, EPS = 1e-3, 1e-4
STEPS = 16
#: Stated tolerances against float32 S on the recorded sequence (16 steps of a 64-wide tiny BERT on real text),
#: as (mean of S over all elements, mean of S per tensor of >= 1000 updated elements, mean |relative error| of
#: the per-element step size lr / (eps + S), its 99th percentile); observed with seed 1: bfloat16 0.007%, 0.07%,
#: 0.19%, 1.1%; 8-bit 0.004%, 0.31%, 1.5%, 9.1% (and a mean signed step-size error of 0.07%: no bias).
TOLERANCES = {"bfloat16": (1e-3, 5e-3, 1e-2, 5e-2), "8bit": (1e-2, 3e-2, 5e-2, 0.25)}


def bits(tensor):
    return tensor.detach().view({2: torch.int16, 4: torch.int32, 8: torch.int64}[tensor.element_size()])


def state_bytes(optimizer):
    return sum(v.numel() * v.element_size() for s in optimizer.state.values() for v in s.values())


@pytest.fixture(scope="module")
def recorded(tokenizer):
    """16 steps of real-text gradients of a tiny BERT trained with float32 CLASSP, and its initial weights."""
    from transformers import BertForSequenceClassification

    real_gradients = _real_gradients()
    torch.manual_seed(0)
    model = BertForSequenceClassification(tiny_bert_config(hidden_size=64, intermediate_size=128))
    texts, labels = real_gradients.sample_texts(96)
    batch = tokenizer(texts, padding="max_length", truncation=True, max_length=32, return_tensors="pt")
    labels = torch.tensor(labels)
    params = list(model.parameters())
    initial = [p.detach().clone() for p in params]
    optimizer = CLASSP(params, lr=LR, eps=EPS)
    sequence = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a shared machine: two threads wait for each other at every kernel
    try:
        for step in range(STEPS):
            rows = slice(8 * step % 96, 8 * step % 96 + 8)
            model.zero_grad()
            inputs = {key: batch[key][rows] for key in ("input_ids", "attention_mask")}
            model(**inputs, labels=labels[rows]).loss.backward()
            sequence.append([p.grad.clone() for p in params])
            optimizer.step()
    finally:
        torch.set_num_threads(threads)
    return initial, sequence


def _real_gradients():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    import real_gradients

    return real_gradients


def replay(recorded, state_dtype, **kwargs):
    initial, sequence = recorded
    params = [nn.Parameter(p.clone()) for p in initial]
    optimizer = CLASSP(params, lr=LR, eps=EPS, state_dtype=state_dtype, seed=1, **kwargs)
    for grads in sequence:
        for p, g in zip(params, grads):
            p.grad = g
        optimizer.step()
    return params, optimizer


@pytest.fixture(scope="module")
def float32_run(recorded):
    return replay(recorded, "float32")


@pytest.mark.parametrize("state_dtype", ["bfloat16", "8bit"])
def test_low_precision_s_matches_float32_on_real_gradients(recorded, float32_run, state_dtype):
    params, optimizer = replay(recorded, state_dtype)
    reference = [float32_run[1].grad_sum(p).double() for p in float32_run[0]]
    sums = [optimizer.grad_sum(p).double() for p in params]
    total, per_tensor, step_mean, step_p99 = TOLERANCES[state_dtype]
    assert sum(s.sum() for s in sums) / sum(r.sum() for r in reference) == pytest.approx(1.0, abs=total)
    checked = 0
    for s, r in zip(sums, reference):
        if int((r > 0).sum()) >= 1000:
            assert (s.sum() / r.sum()).item() == pytest.approx(1.0, abs=per_tensor)
            checked += 1
    assert checked >= 8
    updated = [r > 0 for r in reference]
    ratio = torch.cat([(EPS + r[m]) / (EPS + s[m]) for s, r, m in zip(sums, reference, updated)])  # step / float32's
    error = (ratio - 1).abs()
    assert error.mean().item() < step_mean
    assert error.quantile(0.99).item() < step_p99
    assert abs((ratio - 1).mean().item()) < step_mean / 4  # no systematic bias
    assert all(torch.isfinite(p).all() for p in params)


def test_rounding_to_nearest_would_freeze_s_but_stochastic_rounding_does_not():
    generator = torch.Generator().manual_seed(0)
    for state_dtype in ("bfloat16", "8bit"):
        state = _state.EncodedSum.zeros(state_dtype, torch.zeros(4096))
        encoded = _state.EncodedSum(state, state_dtype, torch.Size([4096]), torch.float32, generator)
        encoded.encode_(torch.full((4096,), 1e-3))
        for _ in range(200):  # each increment is 1e-3 of S: far below half a rounding step of either format
            encoded.encode_(encoded.decode() + 1e-6)
        exact = 1e-3 + 200 * 1e-6
        assert encoded.decode().mean().item() == pytest.approx(exact, rel=2e-3), state_dtype
    nearest = torch.tensor(1e-3, dtype=torch.bfloat16)
    for _ in range(200):
        nearest = (nearest.float() + 1e-6).to(torch.bfloat16)
    assert nearest.item() == torch.tensor(1e-3, dtype=torch.bfloat16).item()  # rounding to nearest: frozen


def test_8bit_code_and_exact_re_encoding():
    table = _state.code_values()
    assert table.shape == (256,) and table[0] == 0 and torch.all(table[1:] > table[:-1])
    assert table[16].item() == 2.0**-14 and table[240].item() == 1.0 and table[255].item() == 1.9375
    generator = torch.Generator().manual_seed(0)
    values = torch.rand(300, 384, generator=generator) ** 4 * 1e-2
    values[5] = 0.0
    codes, scales = _state.encode_8bit(values, generator)
    assert codes.shape == (300, 384) and scales.shape == (300, 2)  # 2 blocks of 192 per row
    assert torch.all(torch.frexp(scales)[0] == 0.5)  # powers of two
    decoded = _state.decode_8bit(codes, scales, 384)
    assert torch.all(decoded[5] == 0.0)
    large = values > values.amax() * 1e-3
    assert ((decoded - values).abs() / values)[large].max() < 1 / 16  # one step of a 4-bit mantissa
    again = _state.encode_8bit(decoded, generator)  # values on the grid keep their codes: nothing drawn matters
    assert torch.equal(again[0], codes) and torch.equal(again[1], scales)
    assert _state.block_layout((30522, 384)) == (30522, 384, 2, 192)
    assert _state.block_layout((768, 3072)) == (768, 3072, 12, 256)
    assert _state.block_layout((1000,)) == (1, 1000, 4, 250)
    assert _state.block_layout((7, 257)) == (7, 257, 2, 129)  # padded to 258


@pytest.mark.parametrize("state_dtype,expected", [("float32", 4.0), ("bfloat16", 2.0), ("8bit", 1.0 + 4 / 192)])
def test_state_bytes(state_dtype, expected):
    weight = nn.Parameter(torch.zeros(100, 384))
    optimizer = CLASSP([weight], state_dtype=state_dtype)
    weight.grad = torch.ones(100, 384)
    optimizer.step()
    assert state_bytes(optimizer) / weight.numel() == pytest.approx(expected)
    assert optimizer.state_bytes() == state_bytes(optimizer)
    assert optimizer.grad_sum(weight).dtype == torch.float32 and optimizer.grad_sum(weight).shape == weight.shape


@pytest.mark.parametrize("state_dtype", ["bfloat16", "8bit"])
def test_checkpoint_keeps_the_format_and_resumes_bit_for_bit(state_dtype):
    generator = torch.Generator().manual_seed(0)
    weights = [nn.Parameter(torch.randn(shape, generator=generator)) for shape in ((40, 48), (48,), (3, 5))]

    def train(optimizer, params, seed):
        grads = torch.Generator().manual_seed(seed)
        for _ in range(3):
            for p in params:
                p.grad = torch.randn(p.shape, generator=grads) * 1e-2
            optimizer.step()

    optimizer = CLASSP(weights, lr=LR, state_dtype=state_dtype, seed=3)
    train(optimizer, weights, 0)
    buffer = io.BytesIO()
    torch.save({"optimizer": optimizer.state_dict(), "weights": [w.detach().clone() for w in weights]}, buffer)
    train(optimizer, weights, 1)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    assert "stochastic_rounding_rng" in saved["optimizer"]  # S's rounding draws from the saved generator
    resumed_weights = [nn.Parameter(w) for w in saved["weights"]]
    resumed = CLASSP(resumed_weights, lr=LR, seed=0)  # state_dtype and seed stream come from the checkpoint
    resumed.load_state_dict(saved["optimizer"])
    assert resumed.param_groups[0]["state_dtype"] == state_dtype
    for w, r in zip(weights, resumed_weights):
        assert set(resumed.state[r]) == set(optimizer.state[w])
        for key, value in resumed.state[r].items():
            assert value.dtype == optimizer.state[w][key].dtype  # not forced to float32
    train(resumed, resumed_weights, 1)
    for w, r in zip(weights, resumed_weights):
        assert torch.equal(bits(w), bits(r))
        for key, value in optimizer.state[w].items():
            assert torch.equal(value, resumed.state[r][key])


def test_corrupt_8bit_state_is_refused():
    weight = nn.Parameter(torch.zeros(4, 6))
    optimizer = CLASSP([weight], state_dtype="8bit")
    weight.grad = torch.ones(4, 6)
    optimizer.step()
    state = optimizer.state_dict()
    state["state"][0]["grad_sum_codes"] = torch.zeros(3, 6, dtype=torch.uint8)
    with pytest.raises(ValueError, match=r"grad_sum_codes of parameter 0 has shape \(3, 6\), expected \(4, 6\)"):
        CLASSP([nn.Parameter(torch.zeros(4, 6))]).load_state_dict(state)


def test_changing_state_dtype_converts_the_state():
    weight = nn.Parameter(torch.zeros(64, 32))
    optimizer = CLASSP([weight], lr=LR)
    generator = torch.Generator().manual_seed(0)
    weight.grad = torch.rand(64, 32, generator=generator)
    optimizer.step()
    before = optimizer.grad_sum(weight).clone()
    for state_dtype, keys in (("8bit", {"grad_sum_codes", "grad_sum_scales"}), ("bfloat16", {"grad_sum"})):
        optimizer.param_groups[0]["state_dtype"] = state_dtype
        weight.grad = torch.zeros(64, 32)
        optimizer.step()
        assert set(optimizer.state[weight]) == keys
        torch.testing.assert_close(optimizer.grad_sum(weight), before, rtol=1 / 16, atol=0)
    optimizer.param_groups[0]["state_dtype"] = "float32"
    optimizer.step()
    assert optimizer.state[weight]["grad_sum"].dtype == torch.float32


@pytest.mark.parametrize("state_dtype", ["bfloat16", "8bit"])
def test_both_paths_and_skipped_rows_round_alike(state_dtype, monkeypatch):
    monkeypatch.setattr(_rows, "MIN_NUMEL", 256)
    runs = []
    for foreach in (False, True):
        generator = torch.Generator().manual_seed(0)
        embedding = nn.Parameter(torch.randn(200, 64, generator=generator))
        optimizer = CLASSP([embedding], lr=LR, state_dtype=state_dtype, foreach=foreach)
        optimizer.track_updates()
        codes = []
        for _ in range(3):
            grad = torch.zeros(200, 64)
            grad[torch.randint(0, 200, (6,), generator=generator)] = torch.randn(6, 64, generator=generator)
            embedding.grad = grad
            before = {key: value.clone() for key, value in optimizer.state[embedding].items()}
            optimizer.step()
            never = ~optimizer.update_tracking()["masks"][embedding].any(dim=1)
            for key, value in before.items():  # rows never updated keep their stored bits
                assert torch.equal(value[never], optimizer.state[embedding][key][never])
            codes.append({key: value.clone() for key, value in optimizer.state[embedding].items()})
        runs.append((embedding, codes))
    (a, codes_a), (b, codes_b) = runs
    assert torch.equal(a, b)
    assert all(torch.equal(x[key], y[key]) for x, y in zip(codes_a, codes_b) for key in x)


def test_state_dtype_through_the_registry_and_bad_values():
    params = [nn.Parameter(torch.zeros(2))]
    optimizer = create_optimizer("classp", params, optim_args="state_dtype=8bit,fused=false")
    assert optimizer.param_groups[0]["state_dtype"] == "8bit"
    assert create_optimizer("classp", params).param_groups[0]["state_dtype"] == "float32"
    with pytest.raises(ValueError, match=r"Invalid state_dtype value: 'int4' \(one of float32, bfloat16, 8bit\)"):
        create_optimizer("classp", params, optim_args="state_dtype=int4")
    with pytest.raises(ValueError, match="Invalid state_dtype value"):
        CLASSP(params, state_dtype=torch.bfloat16)


def test_diagnostics_decode_low_precision_s():
    weight = nn.Parameter(torch.zeros(4))
    optimizer = CLASSP([weight], state_dtype="8bit")
    weight.grad = torch.tensor([1.0, -3.0, 0.0, 0.0])
    optimizer.step()
    diagnostics = optimizer.diagnostics()[0]
    assert diagnostics["grad_sum_mean"] == pytest.approx(1.0, rel=1 / 16)
    assert diagnostics["grad_sum_max"] == pytest.approx(3.0, rel=1 / 16)
    assert diagnostics["grad_sum_nonzero_fraction"] == 0.5


def test_low_precision_state_is_refused_on_dtensor_parameters(tmp_path):
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    dist.init_process_group("gloo", store=dist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1)
    try:
        mesh = init_device_mesh("cpu", (1,))
        param = nn.Parameter(distribute_tensor(torch.zeros(4, 3), mesh, [Shard(0)]))
        param.grad = distribute_tensor(torch.ones(4, 3), mesh, [Shard(0)])
        with pytest.raises(ValueError, match="Invalid state_dtype value: 'bfloat16' is not supported with FSDP"):
            CLASSP([param], state_dtype="bfloat16").step()
        optimizer = CLASSP([param])  # float32 S works
        optimizer.step()
        assert optimizer.grad_sum(param).full_tensor().sum().item() == 12.0
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("state_dtype", ["bfloat16", "8bit"])
@pytest.mark.parametrize("shape", [(200, 64), (5, 0), (), (3, 0, 4)], ids=["rows", "empty-rows", "scalar", "3d-empty"])
def test_edge_shapes_and_steps_that_change_no_row(state_dtype, shape, monkeypatch):
    monkeypatch.setattr(_rows, "MIN_NUMEL", 256)  # (200, 64) skips rows: with a zero gradient, all of them
    weight = nn.Parameter(torch.randn(shape))
    optimizer = CLASSP([weight], threshold=2.0, threshold_mode="relative", state_dtype=state_dtype)
    weight.grad = torch.zeros(shape)
    optimizer.step()
    assert torch.equal(optimizer.grad_sum(weight), torch.zeros(shape))
    weight.grad = torch.ones(shape)
    optimizer.step()
    assert optimizer.grad_sum(weight).shape == weight.shape
    assert torch.equal(optimizer.grad_sum(weight), torch.zeros(shape))  # g^2 = mean(g^2) < 2 mean(g^2): nothing passes
    weight.grad = torch.arange(weight.numel(), dtype=torch.float32).reshape(shape)
    optimizer.step()
    reloaded = CLASSP([nn.Parameter(weight.detach().clone())], state_dtype=state_dtype)
    reloaded.load_state_dict(optimizer.state_dict())
    assert torch.equal(reloaded.grad_sum(reloaded.param_groups[0]["params"][0]), optimizer.grad_sum(weight))
