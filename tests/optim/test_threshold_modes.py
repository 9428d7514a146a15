"""Threshold modes (absolute, relative, quantile) against a literal reference, and update tracking."""

from __future__ import annotations

import math

import pytest
import torch

from classp_hf.optim import CLASSP, create_optimizer


def passes(g, threshold, mode):
    """Which elements of one tensor pass, computed literally in float64."""
    g = g.double().flatten().tolist()
    if mode == "absolute":
        return [x * x > threshold for x in g]
    if mode == "relative":
        mean = sum(x * x for x in g) / len(g)
        return [x * x > threshold * mean for x in g]
    keep = math.ceil(threshold * len(g))
    if keep >= len(g):
        return [x != 0 for x in g]
    cutoff = sorted(abs(x) for x in g)[len(g) - keep - 1]
    return [abs(x) > cutoff and x != 0 for x in g]


def reference_run(shapes, grads_per_step, lr, threshold, mode, eps, power):
    weights = [torch.zeros(s, dtype=torch.float64).flatten().tolist() for s in shapes]
    sums = [[0.0] * len(w) for w in weights]
    for grads in grads_per_step:
        for w, s, g in zip(weights, sums, grads):
            mask = passes(g, threshold, mode)
            flat = g.double().flatten().tolist()
            for i, ok in enumerate(mask):
                if ok:
                    s[i] += abs(flat[i]) ** power
                    w[i] -= lr * flat[i] / (eps + s[i]) ** (1 / power)
    return weights, sums


CASES = [
    ("absolute", 0.3, 1.0),
    ("relative", 0.5, 1.0),
    ("relative", 2.0, 2.0),
    ("quantile", 0.25, 1.0),
    ("quantile", 0.6, 1.5),
    ("quantile", 1.0, 1.0),
]


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("mode,threshold,power", CASES)
def test_modes_match_literal_reference(mode, threshold, power, foreach):
    generator = torch.Generator().manual_seed(0)
    shapes = [(6, 5), (9,)]
    params = [torch.nn.Parameter(torch.zeros(s)) for s in shapes]
    optimizer = CLASSP(params, lr=0.1, threshold=threshold, threshold_mode=mode, eps=1e-3, power=power, foreach=foreach)
    steps = []
    for _ in range(6):
        grads = [
            torch.randn(s, generator=generator) * 10 ** torch.empty(s).uniform_(-3, 0, generator=generator)
            for s in shapes
        ]
        steps.append(grads)
        for p, g in zip(params, grads):
            p.grad = g.clone()
        optimizer.step()
    weights, sums = reference_run(shapes, steps, 0.1, threshold, mode, 1e-3, power)
    for p, w, s in zip(params, weights, sums):
        torch.testing.assert_close(
            p.detach().double().flatten(), torch.tensor(w, dtype=torch.float64), rtol=1e-5, atol=1e-6
        )
        torch.testing.assert_close(
            optimizer.state[p]["grad_sum"].double().flatten(),
            torch.tensor(s, dtype=torch.float64),
            rtol=1e-5,
            atol=1e-6,
        )


def test_relative_threshold_is_scale_free():
    torch.manual_seed(0)
    grad = torch.randn(200)
    fractions = []
    for scale in (1e-6, 1.0, 1e4):
        weight = torch.nn.Parameter(torch.zeros(200))
        optimizer = CLASSP([weight], threshold=1.0, threshold_mode="relative")
        weight.grad = grad * scale
        optimizer.step()
        fractions.append(optimizer.diagnostics()[0]["update_fraction"])
    assert fractions[0] == fractions[1] == fractions[2]
    assert 0.2 < fractions[0] < 0.5  # g^2 > mean(g^2) for a Gaussian: ~32%


def test_relative_all_zero_tensor_updates_nothing():
    weight = torch.nn.Parameter(torch.ones(5))
    optimizer = CLASSP([weight], threshold=0.5, threshold_mode="relative")
    weight.grad = torch.zeros(5)
    optimizer.step()
    assert weight.tolist() == [1.0] * 5 and optimizer.diagnostics()[0]["update_fraction"] == 0.0


@pytest.mark.parametrize("foreach", [False, True])
def test_quantile_updates_the_fraction_and_never_zero_gradients(foreach):
    weight = torch.nn.Parameter(torch.zeros(100))
    optimizer = CLASSP([weight], threshold=0.1, threshold_mode="quantile", foreach=foreach)
    grad = torch.randn(100)
    weight.grad = grad
    optimizer.step()
    assert optimizer.diagnostics()[0]["update_fraction"] == 0.1
    top = set(grad.abs().topk(10).indices.tolist())
    assert set(torch.nonzero(weight).flatten().tolist()) == top
    sparse = torch.zeros(100)
    sparse[:3] = 1.0
    weight.grad = sparse  # fewer non-zero gradients than the fraction: only they pass
    optimizer.step()
    assert optimizer.diagnostics()[0]["update_fraction"] == pytest.approx(0.03)
    ties = torch.ones(100)  # all tied at the cut-off: none pass (at most the fraction is updated)
    weight.grad = ties
    optimizer.step()
    assert optimizer.diagnostics()[0]["update_fraction"] == 0.0


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(threshold_mode="median"), "Invalid threshold_mode value: 'median'"),
        (dict(threshold_mode="quantile", threshold=0.0), "Invalid threshold value: 0.0 .*quantile"),
        (dict(threshold_mode="quantile", threshold=1.5), "Invalid threshold value: 1.5"),
        (dict(threshold_mode="relative", threshold=-1.0), "Invalid threshold value"),
    ],
)
def test_invalid_modes(kwargs, message):
    with pytest.raises(ValueError, match=message):
        CLASSP([torch.nn.Parameter(torch.zeros(2))], **kwargs)


def test_mode_through_optim_args_and_state_dict():
    weight = torch.nn.Parameter(torch.zeros(4))
    optimizer = create_optimizer("classp", [weight], optim_args="threshold=0.5,threshold_mode=quantile")
    assert optimizer.param_groups[0]["threshold_mode"] == "quantile"
    fresh = CLASSP([torch.nn.Parameter(torch.zeros(4))])
    fresh.load_state_dict(optimizer.state_dict())
    assert fresh.param_groups[0]["threshold_mode"] == "quantile"


@pytest.mark.parametrize("foreach", [False, True])
def test_update_tracking(foreach):
    a, b = torch.nn.Parameter(torch.zeros(4)), torch.nn.Parameter(torch.zeros(2))
    optimizer = CLASSP([a, b], threshold=0.25, foreach=foreach)
    with pytest.raises(RuntimeError, match="tracking is off"):
        optimizer.update_tracking()
    optimizer.track_updates()
    a.grad, b.grad = torch.tensor([1.0, 0.1, 0.0, 0.0]), torch.tensor([0.0, 0.0])
    optimizer.step()
    a.grad, b.grad = torch.tensor([0.0, 0.0, 2.0, 0.0]), torch.tensor([1.0, 0.0])
    optimizer.step()
    stats = optimizer.update_tracking()
    assert stats["steps"] == 2
    assert stats["mean_update_fraction"] == pytest.approx((1 + 2) / (6 * 2))
    assert stats["ever_updated_fraction"] == pytest.approx(3 / 6)
    assert stats["masks"][a].tolist() == [True, False, True, False] and stats["masks"][b].tolist() == [True, False]
    assert "masks" not in str(optimizer.state_dict())  # diagnostics only, never in the checkpoint
    optimizer.track_updates()  # reset for the next task
    assert optimizer.update_tracking()["steps"] == 0 and optimizer.update_tracking()["masks"] == {}


def test_tracking_survives_load_state_dict_as_accelerate_calls_it():
    weight = torch.nn.Parameter(torch.zeros(3))
    optimizer = CLASSP([weight])
    optimizer.track_updates()
    optimizer.load_state_dict(optimizer.state_dict())  # accelerate.AcceleratedOptimizer does this on wrap
    weight.grad = torch.tensor([1.0, 0.0, 0.0])
    optimizer.step()
    assert optimizer.update_tracking()["ever_updated_fraction"] == pytest.approx(1 / 3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_kth_smallest_picks_what_kthvalue_picks(dtype):
    """The quantile cut-off: numpy's selection on the CPU (float32/64), torch.kthvalue otherwise, same value."""
    import importlib

    classp_module = importlib.import_module("classp_hf.optim._functional")  # the functional update
    generator = torch.Generator().manual_seed(0)
    values = torch.randn(5000, generator=generator).abs().to(dtype)
    values[:1000] = 0.0  # many ties, as zero gradients give
    values[1000:1100] = values[2000]
    for k in (1, 999, 1000, 1001, 1050, 2500, 4999, 5000):
        got = classp_module._kth_smallest(values, k)
        assert got.dtype == dtype and got.dim() == 0
        assert torch.equal(got, torch.kthvalue(values, k).values), k
