"""CLASSP against a literal element-by-element implementation of the update rule."""

from __future__ import annotations

import copy
import importlib
import io
import math

import pytest
import torch

from classp_hf.optim import CLASSP

# (name, group kwargs list) pairs; each list has one dict per param group.
OPTIM_INPUTS = [
    ("decay_only", [dict(lr=0.1, threshold=0.0, power=1.0, eps=1e-3)]),
    ("threshold", [dict(lr=0.05, threshold=0.3, power=1.0, eps=1e-4)]),
    ("power2", [dict(lr=0.1, threshold=0.0, power=2.0, eps=1e-6)]),
    ("power1.5_threshold", [dict(lr=0.02, threshold=0.1, power=1.5, eps=1e-2)]),
    ("no_decay", [dict(lr=0.01, threshold=0.2, power=1.0, eps=1e-8, apply_decay=False)]),
    ("weight_decay", [dict(lr=0.05, threshold=0.5, power=1.0, eps=1e-3, weight_decay=0.1)]),
    ("maximize", [dict(lr=0.05, threshold=0.1, power=1.0, eps=1e-3, maximize=True)]),
    (
        "two_groups",
        [
            dict(lr=0.1, threshold=0.8, power=1.0, eps=1e-3, weight_decay=0.01),
            dict(lr=0.01, threshold=0.0, power=3.0, eps=1e-5),
        ],
    ),
]

ERROR_INPUTS = [
    (dict(lr=-1.0), "lr"),
    (dict(threshold=-0.1), "threshold"),
    (dict(power=0.0), "power"),
    (dict(power=-2.0), "power"),
    (dict(eps=0.0), "eps"),
    (dict(eps=-1e-8), "eps"),
    (dict(weight_decay=-0.1), "weight_decay"),
    (dict(lr="0.1"), "lr"),
    (dict(threshold=None), "threshold"),
    (dict(power=True), "power"),
    (dict(apply_decay=1), "apply_decay"),
    (dict(eps=float("nan")), "eps"),
]


def reference_step(weights, sums, grads, hp):
    """The rule of classp.md, one element at a time, in float64 Python arithmetic."""
    lr, threshold, power, eps = hp["lr"], hp.get("threshold", 0.0), hp.get("power", 1.0), hp["eps"]
    apply_decay, weight_decay = hp.get("apply_decay", True), hp.get("weight_decay", 0.0)
    for w, s, g in zip(weights, sums, grads):
        for i in range(len(w)):
            gi = -g[i] if hp.get("maximize", False) else g[i]
            if gi * gi > threshold:
                w[i] -= lr * weight_decay * w[i]
                s[i] += abs(gi) ** power
                w[i] -= lr * gi / (eps + s[i]) ** (1.0 / power) if apply_decay else lr * gi


def make_groups(configs, seed=0):
    generator = torch.Generator().manual_seed(seed)
    shapes = [(4, 5), (7,), (3, 2, 2)]
    groups = []
    for index, config in enumerate(configs):
        params = [
            torch.randn(shape, generator=generator, dtype=torch.float32) for shape in shapes[index:] + shapes[:index]
        ]
        groups.append({"params": [torch.nn.Parameter(p) for p in params], **config})
    return groups


def random_grads(params, generator):
    return [
        torch.randn(p.shape, generator=generator) * (0.2 + torch.rand(p.shape, generator=generator)) for p in params
    ]


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("name,configs", OPTIM_INPUTS, ids=[n for n, _ in OPTIM_INPUTS])
def test_matches_literal_reference(name, configs, foreach):
    groups = make_groups(configs)
    ref_weights = [[p.detach().double().flatten().tolist() for p in g["params"]] for g in groups]
    ref_sums = [[[0.0] * p.numel() for p in g["params"]] for g in groups]
    optimizer = CLASSP(groups, foreach=foreach)
    generator = torch.Generator().manual_seed(1)
    for _ in range(12):
        for gi, group in enumerate(optimizer.param_groups):
            grads = random_grads(group["params"], generator)
            for p, g in zip(group["params"], grads):
                p.grad = g.clone()
            reference_step(ref_weights[gi], ref_sums[gi], [g.double().flatten().tolist() for g in grads], configs[gi])
        optimizer.step()
    for gi, group in enumerate(optimizer.param_groups):
        for pi, p in enumerate(group["params"]):
            expected_w = torch.tensor(ref_weights[gi][pi], dtype=torch.float64).view(p.shape)
            expected_s = torch.tensor(ref_sums[gi][pi], dtype=torch.float64).view(p.shape)
            torch.testing.assert_close(p.detach().double(), expected_w, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(optimizer.state[p]["grad_sum"].double(), expected_s, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name,configs", OPTIM_INPUTS, ids=[n for n, _ in OPTIM_INPUTS])
def test_foreach_matches_single_tensor(name, configs):
    runs = []
    configs = [{"power": 1.0, **c} for c in configs]
    for foreach in (False, True):
        groups = make_groups(configs)
        optimizer = CLASSP(groups, foreach=foreach)
        generator = torch.Generator().manual_seed(3)
        for _ in range(8):
            for group in optimizer.param_groups:
                for p, g in zip(group["params"], random_grads(group["params"], generator)):
                    p.grad = g
            optimizer.step()
        runs.append(optimizer)
    # Bit-identical for power 1 and 2 (exact elementwise ops); a general power goes through pow(),
    # whose vectorised and scalar kernels may differ in the last bit.
    exact = all(group["power"] in (1.0, 2.0) for group in configs)
    tolerance = dict(rtol=0, atol=0) if exact else dict(rtol=1e-6, atol=1e-7)
    for g0, g1 in zip(runs[0].param_groups, runs[1].param_groups):
        for p0, p1 in zip(g0["params"], g1["params"]):
            torch.testing.assert_close(p0, p1, **tolerance)
            torch.testing.assert_close(runs[0].state[p0]["grad_sum"], runs[1].state[p1]["grad_sum"], **tolerance)
    for d0, d1 in zip(runs[0].diagnostics(), runs[1].diagnostics()):
        assert d0["update_fraction"] == d1["update_fraction"]
        assert d0.pop("scope") == d1.pop("scope") == "global"
        assert d0 == (d1 if exact else pytest.approx(d1, rel=1e-6))


def test_threshold_is_per_element_and_leaves_failing_weights_alone():
    weight = torch.nn.Parameter(torch.zeros(4))
    optimizer = CLASSP([weight], lr=0.1, threshold=0.25, eps=1e-8, weight_decay=0.5)
    weight.data.fill_(1.0)
    weight.grad = torch.tensor([0.1, -0.6, 0.5, 2.0])  # g^2: 0.01, 0.36, 0.25, 4.0
    optimizer.step()
    state = optimizer.state[weight]["grad_sum"]
    assert state.tolist() == pytest.approx([0.0, 0.6, 0.0, 2.0])
    assert weight[0].item() == 1.0 and weight[2].item() == 1.0  # failing: no step, no weight decay
    assert weight[1].item() == pytest.approx(1.0 * (1 - 0.05) + 0.1)
    assert weight[3].item() == pytest.approx(1.0 * (1 - 0.05) - 0.1)
    assert optimizer.diagnostics()[0]["update_fraction"] == 0.5


def test_paper_threshold_freezes_pretrained_scale_gradients():
    weight = torch.nn.Parameter(torch.ones(1000))
    optimizer = CLASSP([weight], lr=0.025, threshold=0.99, eps=1e-4)
    weight.grad = torch.randn(1000) * 2e-5
    optimizer.step()
    assert torch.equal(weight.detach(), torch.ones(1000))
    assert optimizer.diagnostics()[0]["update_fraction"] == 0.0


@pytest.mark.parametrize("foreach", [False, True])
def test_power2_threshold0_is_adagrad_with_eps_inside_the_root(foreach):
    torch.manual_seed(0)
    start = torch.randn(6, 3)
    classp_param, adagrad_param = torch.nn.Parameter(start.clone()), torch.nn.Parameter(start.clone())
    classp_opt = CLASSP([classp_param], lr=0.1, power=2.0, threshold=0.0, eps=1e-10, foreach=foreach)
    adagrad_opt = torch.optim.Adagrad([adagrad_param], lr=0.1, eps=0.0, foreach=foreach)
    for _ in range(10):
        grad = torch.randn(6, 3)
        classp_param.grad, adagrad_param.grad = grad.clone(), grad.clone()
        classp_opt.step()
        adagrad_opt.step()
    torch.testing.assert_close(classp_param, adagrad_param, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(classp_opt.state[classp_param]["grad_sum"], adagrad_opt.state[adagrad_param]["sum"])


@pytest.mark.parametrize("foreach", [False, True])
def test_non_finite_gradients_are_skipped(foreach):
    weight = torch.nn.Parameter(torch.ones(5))
    optimizer = CLASSP([weight], lr=0.1, eps=1e-8, foreach=foreach)
    weight.grad = torch.tensor([float("nan"), float("inf"), -float("inf"), 0.5, 0.0])
    optimizer.step()
    state = optimizer.state[weight]["grad_sum"]
    assert torch.isfinite(state).all() and torch.isfinite(weight).all()
    assert state.tolist() == pytest.approx([0.0, 0.0, 0.0, 0.5, 0.0])
    assert weight.tolist() == pytest.approx([1.0, 1.0, 1.0, 0.9, 1.0])
    assert optimizer.diagnostics()[0]["update_fraction"] == pytest.approx(0.2)


@pytest.mark.parametrize("kwargs,culprit", ERROR_INPUTS)
def test_invalid_hyperparameters_name_the_culprit(kwargs, culprit):
    with pytest.raises(ValueError, match=rf"Invalid {culprit} value"):
        CLASSP([torch.nn.Parameter(torch.zeros(2))], **kwargs)


def test_invalid_hyperparameter_in_a_later_group():
    with pytest.raises(ValueError, match="Invalid power value"):
        CLASSP(
            [
                {"params": [torch.nn.Parameter(torch.zeros(2))]},
                {"params": [torch.nn.Parameter(torch.zeros(2))], "power": 0},
            ]
        )


def test_groups_do_not_leak_hyperparameters():
    a, b = torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(3))
    optimizer = CLASSP([{"params": [a], "lr": 0.5, "threshold": 10.0}, {"params": [b]}], lr=0.1)
    a.grad = b.grad = torch.ones(3)
    optimizer.step()
    assert torch.equal(a.detach(), torch.zeros(3))  # 1 < threshold 10: frozen
    assert b.tolist() == pytest.approx([-0.1 / (1e-4 + 1.0)] * 3, rel=1e-6)  # default threshold 0 and eps 1e-4
    assert optimizer.param_groups[1]["threshold"] == 0.0


def test_sparse_gradients_are_refused():
    embedding = torch.nn.Embedding(10, 3, sparse=True)
    optimizer = CLASSP(embedding.parameters())
    embedding(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(RuntimeError, match="sparse gradients"):
        optimizer.step()


def test_params_without_grad_are_skipped_and_closure_is_called():
    used, unused = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(2))
    optimizer = CLASSP([used, unused], lr=0.1)

    def closure():
        optimizer.zero_grad()
        loss = (used * 2).sum()
        loss.backward()
        return loss

    loss = optimizer.step(closure)
    assert loss.item() == 4.0
    assert unused.tolist() == [1.0, 1.0] and unused not in optimizer.state  # state is made at a first gradient
    assert used.tolist() == pytest.approx([1 - 0.1 * 2 / (1e-4 + 2)] * 2)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("foreach", [False, True])
def test_low_precision_params_keep_float32_state(dtype, foreach):
    weight = torch.nn.Parameter(torch.ones(8, dtype=dtype))
    optimizer = CLASSP([weight], lr=0.01, foreach=foreach)
    weight.grad = torch.full((8,), 0.37, dtype=dtype)
    optimizer.step()
    grad_sum = optimizer.state[weight]["grad_sum"]
    assert grad_sum.dtype == torch.float32 and weight.dtype == dtype
    assert grad_sum[0].item() == torch.tensor(0.37, dtype=dtype).float().item()

    reloaded_weight = torch.nn.Parameter(weight.detach().clone())
    reloaded = CLASSP([reloaded_weight], lr=0.01)
    buffer = io.BytesIO()
    torch.save(optimizer.state_dict(), buffer)
    buffer.seek(0)
    reloaded.load_state_dict(torch.load(buffer, weights_only=True))
    restored = reloaded.state[reloaded_weight]["grad_sum"]
    assert restored.dtype == torch.float32
    assert torch.equal(restored, grad_sum)  # bit-exact: never rounded through the parameter's dtype


def _train(optimizer, params, steps, seed):
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=generator) * 0.5
        optimizer.step()


@pytest.mark.parametrize("foreach", [False, True])
def test_resume_from_state_dict_follows_the_same_trajectory(foreach, tmp_path):
    configs = OPTIM_INPUTS[-1][1]
    groups = make_groups(configs)
    resumed_groups = copy.deepcopy(groups)
    uninterrupted = CLASSP(groups, foreach=foreach)
    params = [p for g in uninterrupted.param_groups for p in g["params"]]
    _train(uninterrupted, params, 5, seed=0)
    torch.save(
        {"optimizer": uninterrupted.state_dict(), "params": [p.detach().clone() for p in params]}, tmp_path / "c"
    )
    _train(uninterrupted, params, 5, seed=1)

    checkpoint = torch.load(tmp_path / "c", weights_only=True)
    fresh = CLASSP(resumed_groups, foreach=not foreach)  # any path, any construction-time values
    fresh_params = [p for g in fresh.param_groups for p in g["params"]]
    with torch.no_grad():
        for p, saved in zip(fresh_params, checkpoint["params"]):
            p.copy_(saved)
    fresh.load_state_dict(checkpoint["optimizer"])
    assert fresh.param_groups[0]["foreach"] == foreach  # hyperparameters come from the checkpoint
    _train(fresh, fresh_params, 5, seed=1)
    for p, q in zip(params, fresh_params):
        torch.testing.assert_close(p, q, rtol=0, atol=0)
        torch.testing.assert_close(uninterrupted.state[p]["grad_sum"], fresh.state[q]["grad_sum"], rtol=0, atol=0)


def test_state_dict_holds_only_plain_values():
    optimizer = CLASSP(make_groups(OPTIM_INPUTS[-1][1]))
    assert optimizer.state_dict()["state"] == {}  # no state before a first gradient
    params = [p for group in optimizer.param_groups for p in group["params"]]
    _train(optimizer, params, 1, seed=0)
    state = optimizer.state_dict()
    assert len(state["state"]) == len(params)
    for group in state["param_groups"]:
        for key, value in group.items():
            assert value is None or isinstance(value, (bool, int, float, str, list)), key
    assert all(set(s) == {"grad_sum"} for s in state["state"].values())


def test_corrupt_state_dict_is_refused_with_a_clear_error():
    weight = torch.nn.Parameter(torch.zeros(3))
    optimizer = CLASSP([weight])
    state = optimizer.state_dict()
    state["state"][0] = {"grad_sum": torch.zeros(4)}
    with pytest.raises(ValueError, match="grad_sum of parameter 0 has shape"):
        CLASSP([torch.nn.Parameter(torch.zeros(3))]).load_state_dict(state)
    with pytest.raises(ValueError, match="Invalid CLASSP state_dict"):
        optimizer.load_state_dict({"bogus": 1})


def test_diagnostics_report_grad_sum_statistics():
    weight = torch.nn.Parameter(torch.zeros(4))
    optimizer = CLASSP([weight], lr=0.1)
    assert optimizer.diagnostics()[0]["update_fraction"] == 0.0
    weight.grad = torch.tensor([1.0, -3.0, 0.0, 0.0])
    optimizer.step()
    diagnostics = optimizer.diagnostics()[0]
    assert diagnostics["numel"] == 4
    assert diagnostics["update_fraction"] == 0.5
    assert diagnostics["grad_sum_mean"] == pytest.approx(1.0)
    assert diagnostics["grad_sum_max"] == pytest.approx(3.0)
    assert diagnostics["grad_sum_nonzero_fraction"] == 0.5
    assert not math.isnan(diagnostics["grad_sum_mean"])


@pytest.mark.parametrize("name,configs", OPTIM_INPUTS, ids=[n for n, _ in OPTIM_INPUTS])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_flat_mask_of_accelerators_matches_single_tensor(name, configs, dtype, monkeypatch):
    """The multi-tensor path masks one flat buffer on accelerators; forced on the CPU it gives the same result."""
    classp_module = importlib.import_module("classp_hf.optim._functional")  # the functional update

    runs = []
    for foreach, flat in ((False, False), (True, True)):
        monkeypatch.setattr(classp_module, "_FLAT_MASK_ON_CPU", flat)
        groups = make_groups(configs)
        for group in groups:
            group["params"] = [torch.nn.Parameter(p.detach().to(dtype)) for p in group["params"]]
        optimizer = CLASSP(groups, foreach=foreach)
        generator = torch.Generator().manual_seed(5)
        for _ in range(6):
            for group in optimizer.param_groups:
                for p, g in zip(group["params"], random_grads(group["params"], generator)):
                    g.view(-1)[0] = float("nan")
                    p.grad = g.to(dtype)
            optimizer.step()
        runs.append(optimizer)
    exact = all(c.get("power", 1.0) in (1.0, 2.0) for c in configs)
    tolerance = dict(rtol=0, atol=0) if exact else dict(rtol=1e-6, atol=1e-7)
    for g0, g1 in zip(runs[0].param_groups, runs[1].param_groups):
        for p0, p1 in zip(g0["params"], g1["params"]):
            assert torch.isfinite(p0).all()
            torch.testing.assert_close(p0, p1, **tolerance)
            torch.testing.assert_close(runs[0].state[p0]["grad_sum"], runs[1].state[p1]["grad_sum"], **tolerance)
    assert [d["update_fraction"] for d in runs[0].diagnostics()] == [
        d["update_fraction"] for d in runs[1].diagnostics()
    ]


@pytest.mark.parametrize("foreach", [False, True])
def test_state_is_made_at_a_parameters_first_gradient(foreach):
    used, later = torch.nn.Parameter(torch.zeros(4)), torch.nn.Parameter(torch.zeros(2, 3))
    optimizer = CLASSP([used, later], lr=0.1, foreach=foreach)
    optimizer.track_updates()
    assert len(optimizer.state) == 0
    used.grad = torch.tensor([1.0, -3.0, 0.0, 0.0])
    optimizer.step()
    assert list(optimizer.state) == [used] and later not in optimizer.state
    # A parameter without state counts as S = 0 over all 10 elements.
    diagnostics = optimizer.diagnostics()[0]
    assert diagnostics == dict(
        numel=10,
        update_fraction=0.2,
        grad_sum_mean=pytest.approx(0.4),
        grad_sum_max=3.0,
        grad_sum_nonzero_fraction=0.2,
        scope="global",
    )
    tracking = optimizer.update_tracking()
    assert tracking["mean_update_fraction"] == pytest.approx(0.2) and tracking["scope"] == "global"
    assert len(optimizer.state) == 1  # reading diagnostics adds no empty state entries
    later.grad = torch.ones(2, 3)
    optimizer.step()
    assert optimizer.state[later]["grad_sum"].tolist() == [[1.0] * 3] * 2


def test_diagnostics_of_an_optimizer_that_never_stepped():
    optimizer = CLASSP([torch.nn.Parameter(torch.zeros(3))])
    assert optimizer.diagnostics() == [
        dict(
            numel=3,
            update_fraction=0.0,
            grad_sum_mean=0.0,
            grad_sum_max=0.0,
            grad_sum_nonzero_fraction=0.0,
            scope="global",
        )
    ]


@pytest.mark.parametrize("foreach", [False, True])
def test_parameters_swapped_after_construction_are_optimized(foreach):
    """What accelerate's FSDP2 preparation does: it replaces the parameters in param_groups after the optimizer
    is built (there with DTensors); the state is made at the first step, so it belongs to the new tensors."""
    original = [torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(2))]
    optimizer = CLASSP(original, lr=0.1, foreach=foreach)
    swapped = [torch.nn.Parameter(p.detach().clone()) for p in original]
    optimizer.param_groups[0]["params"] = swapped
    for p in swapped:
        p.grad = torch.ones_like(p)
    optimizer.step()
    assert set(optimizer.state) == set(swapped)
    assert all(torch.all(p < 1.0) for p in swapped) and all(torch.all(p == 1.0) for p in original)


@pytest.mark.parametrize("foreach", [False, True])
def test_resume_with_state_for_only_some_parameters(foreach):
    weights = [torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(2))]
    optimizer = CLASSP(weights, lr=0.1, foreach=foreach)
    _train(optimizer, weights[:1], 2, seed=0)
    checkpoint = io.BytesIO()
    torch.save({"optimizer": optimizer.state_dict(), "weights": [w.detach().clone() for w in weights]}, checkpoint)
    _train(optimizer, weights, 2, seed=1)

    checkpoint.seek(0)
    saved = torch.load(checkpoint, weights_only=True)
    assert list(saved["optimizer"]["state"]) == [0]
    resumed_weights = [torch.nn.Parameter(w) for w in saved["weights"]]
    resumed = CLASSP(resumed_weights, lr=0.1)
    resumed.load_state_dict(saved["optimizer"])
    assert resumed_weights[1] not in resumed.state
    _train(resumed, resumed_weights, 2, seed=1)
    for w, r in zip(weights, resumed_weights):
        assert torch.equal(w, r) and torch.equal(optimizer.state[w]["grad_sum"], resumed.state[r]["grad_sum"])
