"""CLASSP's precision: float64 computation, bit-exact masked elements, stochastic rounding, skipped AMP steps."""

from __future__ import annotations

import copy
import importlib
import io

import pytest
import torch

from classp_hf.optim import CLASSP, create_optimizer

classp_module = importlib.import_module("classp_hf.optim._functional")  # the functional update

LOW_PRECISION = [torch.bfloat16, torch.float16]


def round_trip(state_dict):
    """``state_dict`` through ``torch.save`` and ``torch.load(weights_only=True)``."""
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def bits(tensor):
    """The raw bits of a float tensor, for bit-for-bit comparisons (``-0.0 != 0.0``, ``nan == nan``)."""
    return tensor.detach().view({2: torch.int16, 4: torch.int32, 8: torch.int64}[tensor.element_size()])


@pytest.mark.parametrize("foreach", [False, True])
def test_float64_parameters_are_updated_in_float64(foreach):
    start = 1.0 + 2.0**-40  # 1.0 in float32
    weight = torch.nn.Parameter(torch.full((4,), start, dtype=torch.float64))
    optimizer = CLASSP([weight], lr=1e-12, threshold=0.25, eps=1e-4, foreach=foreach)
    grads = torch.tensor([0.1, -0.6, 0.5, 2.0], dtype=torch.float64)  # g^2: 0.01, 0.36, 0.25, 4.0
    weight.grad = grads.clone()
    optimizer.step()
    grad_sum = optimizer.state[weight]["grad_sum"]
    assert grad_sum.dtype == torch.float64
    assert grad_sum.tolist() == [0.0, 0.6, 0.0, 2.0]
    assert weight[0].item() == start and weight[2].item() == start  # masked: exactly unchanged
    # Passing elements take a step of lr * g / (eps + |g|) ~ 1e-12, invisible in float32.
    for i in (1, 3):
        expected = start - 1e-12 * grads[i].item() / (1e-4 + abs(grads[i].item()))
        assert weight[i].item() == pytest.approx(expected, rel=0, abs=1e-20)
        assert weight[i].item() != start


@pytest.mark.parametrize("stochastic_rounding", [False, True])
@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
def test_masked_elements_keep_their_bits(dtype, foreach, stochastic_rounding):
    generator = torch.Generator().manual_seed(0)
    weight = torch.nn.Parameter((torch.randn(64, 8, generator=generator) * 3).to(dtype))
    weight.data[0, :4] = torch.tensor([1.0 + 2.0**-40, 65504.0, 1e-7, -2.5], dtype=torch.float64).to(dtype)
    optimizer = CLASSP(
        [weight], lr=0.05, threshold=1.0, weight_decay=0.1, foreach=foreach, stochastic_rounding=stochastic_rounding
    )
    for _ in range(5):
        before = weight.detach().clone()
        grad = torch.randn(64, 8, generator=generator) * 1.5
        weight.grad = grad.to(dtype)
        optimizer.step()
        masked = weight.grad.float().abs() <= 1.0  # g^2 <= threshold
        assert 0 < masked.sum() < masked.numel()
        assert torch.equal(bits(weight)[masked], bits(before)[masked])
        assert not torch.equal(weight[~masked], before[~masked])


@pytest.mark.parametrize(
    "param_dtype,saved_dtype,expected",
    [
        (torch.float64, torch.float64, torch.float64),
        (torch.float64, torch.float32, torch.float64),
        (torch.float32, torch.float64, torch.float32),
        (torch.bfloat16, torch.float64, torch.float32),
    ],
)
def test_load_state_dict_keeps_grad_sum_in_the_compute_dtype(param_dtype, saved_dtype, expected):
    weight = torch.nn.Parameter(torch.ones(3, dtype=param_dtype))
    optimizer = CLASSP([weight])
    weight.grad = torch.full((3,), 0.5, dtype=param_dtype)
    optimizer.step()
    state = round_trip(optimizer.state_dict())
    state["state"][0]["grad_sum"] = torch.tensor([1.0 + 2.0**-40, 2.0, 3.0], dtype=saved_dtype)
    optimizer.load_state_dict(state)
    grad_sum = optimizer.state[weight]["grad_sum"]
    assert grad_sum.dtype == expected
    assert grad_sum.tolist() == torch.tensor([1.0 + 2.0**-40, 2.0, 3.0], dtype=saved_dtype).to(expected).tolist()


# -- stochastic rounding --


@pytest.mark.parametrize("kwargs,culprit", [(dict(stochastic_rounding=1), "stochastic_rounding")])
def test_invalid_stochastic_rounding_is_refused(kwargs, culprit):
    with pytest.raises(ValueError, match=rf"Invalid {culprit} value"):
        CLASSP([torch.nn.Parameter(torch.zeros(2))], **kwargs)


@pytest.mark.parametrize("seed", [-1, 1.5, True, "3", 2**64])
def test_invalid_seed_is_refused(seed):
    with pytest.raises(ValueError, match="Invalid seed value"):
        CLASSP([torch.nn.Parameter(torch.zeros(2))], seed=seed)


def test_registry_accepts_stochastic_rounding_and_seed():
    params = [torch.nn.Parameter(torch.zeros(2, dtype=torch.bfloat16))]
    optimizer = create_optimizer("classp", params, optim_args="stochastic_rounding=true,seed=7")
    assert optimizer.param_groups[0]["stochastic_rounding"] is True and optimizer._seed == 7
    assert create_optimizer("classp", params).param_groups[0]["stochastic_rounding"] is False  # off by default


def neighbours(value, dtype):
    """The two ``dtype`` values around a float (the same twice where it is representable), low to high."""
    nearest = torch.tensor(value, dtype=dtype)
    if nearest.item() == value:
        return value, value
    toward = 1 if abs(nearest.item()) < abs(value) else -1  # one unit in the last place, in magnitude
    other = (nearest.view(torch.int16) + toward).view(dtype)
    return tuple(sorted((nearest.item(), other.item())))


@pytest.mark.parametrize("dtype", LOW_PRECISION)
def test_stochastic_rounding_picks_a_neighbour_with_the_right_probability(dtype):
    spacing_at_one = {torch.bfloat16: 2.0**-7, torch.float16: 2.0**-10}[dtype]
    # (value, probability of rounding away from zero): normal numbers of both signs and a float16 subnormal.
    cases = [(1 + 0.3 * spacing_at_one, 0.3), (-(2 + 1.5 * spacing_at_one), 0.75), (2.25 * 2.0**-24, 0.25)]
    if dtype == torch.bfloat16:
        cases[2] = (1e-30, None)  # bfloat16 has float32's range: checked for neighbours only
    rounder = classp_module._STOCHASTIC_ROUNDERS[dtype]
    generator = torch.Generator().manual_seed(0)
    n = 1 << 16
    for value, probability in cases:
        param = torch.empty(n, dtype=dtype)
        value = torch.tensor(value, dtype=torch.float32).item()
        low, high = neighbours(value, dtype)
        assert low < value < high
        rounder(param, torch.full((n,), value, dtype=torch.float32), generator)  # overwrites its float32 input
        rounded = param.double()
        assert torch.all((rounded == low) | (rounded == high)), value
        if probability is not None:
            away = (rounded.abs() == max(abs(low), abs(high))).double().mean().item()
            assert away == pytest.approx(probability, abs=0.01), value  # 1 / sqrt(n) = 0.004


@pytest.mark.parametrize("dtype", LOW_PRECISION)
def test_stochastic_rounding_moves_weights_that_rounding_to_nearest_freezes(dtype):
    n, steps, lr = 1 << 14, 100, 1e-4
    runs = {}
    for name, kwargs in (("nearest", {}), ("stochastic", dict(stochastic_rounding=True)), ("float64", {})):
        weight = torch.nn.Parameter(torch.ones(n, dtype=torch.float64 if name == "float64" else dtype))
        optimizer = CLASSP([weight], lr=lr, apply_decay=False, **kwargs)
        for _ in range(steps):
            weight.grad = torch.ones_like(weight)
            optimizer.step()
        runs[name] = weight.detach().double()
    expected = runs["float64"][0].item()  # no weight decay: the step does not depend on w, so E[w] is exact
    assert expected == pytest.approx(1.0 - steps * lr)
    assert torch.all(runs["nearest"] == 1.0)  # 1e-4 is below half a unit in the last place: every step is lost
    # bfloat16 below 1 has a spacing of 2**-8: each step goes down one spacing with probability 1e-4 * 2**8,
    # so an element's standard deviation after 100 steps is about sqrt(100 * 0.026) * 2**-8 = 0.006, and the
    # mean of 2**14 elements' 5e-5 (float16: 1.5e-5). 5e-4 (5% of the move) is ten of those.
    assert runs["stochastic"].mean().item() == pytest.approx(expected, abs=5e-4)


def train_low_precision(optimizer, weights, steps, seed):
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        for weight in weights:
            weight.grad = (torch.randn(weight.shape, generator=generator) * 0.1).to(weight.dtype)
        optimizer.step()


def low_precision_params():
    generator = torch.Generator().manual_seed(3)
    return [
        torch.nn.Parameter(torch.randn(shape, generator=generator).to(dtype))
        for shape, dtype in (
            ((16, 8), torch.bfloat16),
            ((5,), torch.float32),
            ((9,), torch.float16),
            ((7,), torch.bfloat16),
        )
    ]


@pytest.mark.parametrize("foreach", [False, True])
def test_stochastic_rounding_resumes_bit_for_bit(foreach):
    hyperparameters = dict(lr=1e-3, threshold=0.003, weight_decay=0.01, stochastic_rounding=True, seed=11)
    weights = low_precision_params()
    uninterrupted = CLASSP(weights, foreach=foreach, **hyperparameters)
    train_low_precision(uninterrupted, weights, 4, seed=0)
    saved = round_trip({"optimizer": uninterrupted.state_dict(), "weights": [w.detach().clone() for w in weights]})
    assert set(saved["optimizer"]["stochastic_rounding_rng"]) == {"cpu"}
    assert saved["optimizer"]["stochastic_rounding_rng"]["cpu"].dtype == torch.uint8
    train_low_precision(uninterrupted, weights, 4, seed=1)

    resumed_weights = [torch.nn.Parameter(w) for w in saved["weights"]]
    resumed = CLASSP(resumed_weights, foreach=not foreach, **{**hyperparameters, "seed": 0})
    resumed.load_state_dict(saved["optimizer"])
    train_low_precision(resumed, resumed_weights, 4, seed=1)
    for w, r in zip(weights, resumed_weights):
        assert torch.equal(bits(w), bits(r))
        assert torch.equal(uninterrupted.state[w]["grad_sum"], resumed.state[r]["grad_sum"])


@pytest.mark.parametrize("flat_mask", [False, True])
def test_stochastic_rounding_is_the_same_on_both_paths_and_across_replicas(flat_mask, monkeypatch):
    monkeypatch.setattr(classp_module, "_FLAT_MASK_ON_CPU", flat_mask)  # also the accelerators' multi-tensor path
    finals = []
    for foreach, seed in ((False, 5), (True, 5), (False, 5), (False, 6)):
        weights = low_precision_params()
        optimizer = CLASSP(weights, lr=1e-3, threshold=0.003, stochastic_rounding=True, seed=seed, foreach=foreach)
        train_low_precision(optimizer, weights, 3, 0)
        finals.append([bits(w) for w in weights])
    same = [all(torch.equal(a, b) for a, b in zip(finals[0], other)) for other in finals[1:]]
    assert same == [True, True, False]  # foreach == single tensor; same seed == same stream (DDP replicas)


def test_a_deep_copy_continues_the_same_stream():
    weights = low_precision_params()
    optimizer = CLASSP(weights, lr=1e-3, stochastic_rounding=True, seed=9)
    train_low_precision(optimizer, weights, 2, seed=0)
    copied = copy.deepcopy({"optimizer": optimizer, "weights": weights})
    assert copied["optimizer"]._seed == 9
    train_low_precision(optimizer, weights, 2, seed=1)
    train_low_precision(copied["optimizer"], copied["weights"], 2, seed=1)
    assert all(torch.equal(bits(w), bits(c)) for w, c in zip(weights, copied["weights"]))


def test_stochastic_rounding_draws_nothing_for_float32_or_at_lr_zero():
    weight32 = torch.nn.Parameter(torch.ones(4))
    optimizer = CLASSP([weight32], stochastic_rounding=True)
    train_low_precision(optimizer, [weight32], 2, seed=0)
    assert "stochastic_rounding_rng" not in optimizer.state_dict()

    weight = torch.nn.Parameter(torch.ones(4, dtype=torch.bfloat16))
    optimizer = CLASSP([weight], stochastic_rounding=True, lr=0.0)  # e.g. torch.distributed.checkpoint's init step
    train_low_precision(optimizer, [weight], 2, seed=0)
    assert "stochastic_rounding_rng" not in optimizer.state_dict()
    optimizer.param_groups[0]["lr"] = 1e-3
    train_low_precision(optimizer, [weight], 1, seed=0)
    assert "stochastic_rounding_rng" in optimizer.state_dict()


def test_corrupt_generator_state_is_refused():
    optimizer = CLASSP([torch.nn.Parameter(torch.zeros(2))])
    state = optimizer.state_dict()
    state["stochastic_rounding_rng"] = {"cpu": [1, 2]}
    with pytest.raises(ValueError, match="Invalid CLASSP state_dict: 'stochastic_rounding_rng'"):
        optimizer.load_state_dict(state)


# -- AMP loss scaling --


def test_a_step_skipped_by_grad_scaler_changes_nothing():
    torch.manual_seed(0)
    model = torch.nn.Linear(8, 4)
    optimizer = CLASSP(model.parameters(), lr=0.01, threshold=0.01)
    reference_weights = [torch.nn.Parameter(p.detach().clone()) for p in model.parameters()]
    reference = CLASSP(reference_weights, lr=0.01, threshold=0.01)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    generator = torch.Generator().manual_seed(1)
    for batch, input_scale in enumerate((1.0, 1e4, 1.0)):  # the second batch overflows float16
        before = [p.detach().clone() for p in model.parameters()]
        sums_before = [optimizer.state[p]["grad_sum"].clone() for p in model.parameters()] if batch else []
        with torch.autocast("cpu", dtype=torch.float16):
            out = model(torch.randn(16, 8, generator=generator) * input_scale)
        scaler.scale(out.float().pow(2).mean()).backward()
        scaler.unscale_(optimizer)
        overflow = not all(torch.isfinite(p.grad).all() for p in model.parameters())
        assert overflow == (batch == 1)
        if not overflow:  # the reference sees the good steps' unscaled gradients only
            for r, p in zip(reference_weights, model.parameters()):
                r.grad = p.grad.clone()
            reference.step()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad()
        if overflow:
            assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
            assert all(torch.equal(s, optimizer.state[p]["grad_sum"]) for s, p in zip(sums_before, model.parameters()))
        else:
            assert not any(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert scaler.get_scale() == 2.0**9  # backed off once
    for r, p in zip(reference_weights, model.parameters()):
        assert torch.equal(r, p)
        assert torch.equal(reference.state[r]["grad_sum"], optimizer.state[p]["grad_sum"])
