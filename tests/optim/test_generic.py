"""torch's generic optimizer tests (``TestOptimRenewed``) re-expressed for CLASSP.

torch's ``test/test_optim.py`` is not shipped in its wheels, and ``torch.testing._internal.common_optimizers``
needs test-only packages, so the generic checks are written again here over :data:`CLASSP_INFO`, an
``OptimizerInfo``-style entry (the configurations torch's ``optim_inputs_func`` would list for CLASSP). Adapted
from PyTorch's ``test/test_optim.py`` and ``torch/testing/_internal/common_optimizers.py`` (BSD-3-Clause,
Copyright (c) 2016- Facebook, Inc. and the PyTorch contributors): the test names are torch's, the model and
the number of steps of ``_test_derived_optimizers`` are torch's; the bodies are ours.

The fused path compiles: its tests run on ``aot_eager`` (dynamo traces and guards the same graphs as with
inductor, so recompilation limits show the same; no C++ compile) except one on inductor where a C++ compiler
exists. CUDA-only checks (state loaded onto another device) run where CUDA is present.
"""

from __future__ import annotations

import copy
import io
import os
import pickle
import shutil
import warnings
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
from torch.nn import Parameter
from torch.optim.optimizer import register_optimizer_step_post_hook

from classp_hf.optim import CLASSP, _fused

HAS_CXX = any(shutil.which(name) for name in (os.environ.get("CXX", "g++"), "g++", "c++", "clang++"))
FP16_REDUCED_PRECISION = {"atol": 1e-5, "rtol": 1e-4}  # torch's tolerance for float16 / bfloat16 parity


@dataclass(frozen=True)
class OptimizerInput:
    """One configuration of the optimizer (torch's ``OptimizerInput``)."""

    desc: str
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class OptimizerInfo:
    """The optimizer under test (the fields of torch's ``OptimizerInfo`` these tests use)."""

    optim_cls: type
    optim_inputs: tuple[OptimizerInput, ...]
    supported_impls: tuple[str, ...] = ("foreach", "fused")
    supports_fused_on: tuple[str, ...] = ("cpu", "cuda")


CLASSP_INFO = OptimizerInfo(
    CLASSP,
    (
        OptimizerInput("default", dict(lr=0.1)),
        OptimizerInput("threshold", dict(lr=0.1, threshold=1e-3)),
        OptimizerInput("weight_decay", dict(lr=0.1, threshold=1e-4, weight_decay=0.1)),
        OptimizerInput("relative", dict(lr=0.1, threshold=0.5, threshold_mode="relative")),
        OptimizerInput("quantile", dict(lr=0.1, threshold=0.5, threshold_mode="quantile")),
        OptimizerInput("power 2", dict(lr=0.1, power=2.0)),
        OptimizerInput("power 1.5, no decay", dict(lr=1e-3, power=1.5, apply_decay=False)),
        OptimizerInput("maximize", dict(lr=0.1, maximize=True)),
    ),
)
INPUTS = {item.desc: item for item in CLASSP_INFO.optim_inputs}


@pytest.fixture
def eager_compile(monkeypatch):
    """The fused path on aot_eager, with a fresh dynamo cache (and a fresh set of structures run eagerly)."""
    monkeypatch.setattr(_fused, "BACKEND", "aot_eager")
    monkeypatch.setattr(_fused, "_COMPILED", {})
    monkeypatch.setattr(_fused, "_EAGER", set())
    torch._dynamo.reset()


def model_and_params(dtype=torch.float32, device="cpu"):
    """torch's model of ``_test_derived_optimizers``, with a 0-dim parameter last (pytorch#100701)."""
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Sigmoid(), torch.nn.Linear(3, 1), torch.nn.Sigmoid())
    model.to(dtype=dtype, device=device)
    zero_dim = torch.rand((), device=device).to(dtype).requires_grad_()
    return model, list(model.parameters()) + [zero_dim]


def derived_runs(dtype, kwargs, flag):
    """``_test_derived_optimizers``: 7 steps with ``flag`` False and True (a step without gradients at 3)."""
    runs = []
    inputs = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5, 0.6], dtype=dtype).reshape(3, 2)
    for value in (False, True):
        model, params = model_and_params(dtype)
        optimizer = CLASSP(params, **{**kwargs, flag: value, **({"foreach": False} if flag == "fused" else {})})
        for step in range(7):
            optimizer.zero_grad()
            if step != 3:  # a step with every gradient None is a no-op
                model(inputs).sum().backward()
                params[-1].grad = torch.full_like(params[-1], 0.25 * (step - 2))
            optimizer.step()
        runs.append((params, optimizer))
    return runs


def assert_same_state_dicts(first, second):
    assert first["param_groups"] == second["param_groups"]
    torch.testing.assert_close(first["state"], second["state"], rtol=0, atol=0)


def assert_same_runs(runs, **tolerance):
    (params, optimizer), (other_params, other) = runs
    for p, q in zip(params, other_params):
        torch.testing.assert_close(q, p, **tolerance)
        for key, value in optimizer.state[p].items():
            torch.testing.assert_close(other.state[q][key], value, **tolerance)


def test_optim_inputs_do_not_specify_global_cliquey_kwargs():
    for item in CLASSP_INFO.optim_inputs:
        assert not {"foreach", "fused", "differentiable"} & set(item.kwargs)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(lr=-1.0), "Invalid lr"),
        (dict(threshold=-1.0), "Invalid threshold"),
        (dict(threshold=1.5, threshold_mode="quantile"), "Invalid threshold value: 1.5"),
        (dict(threshold_mode="median"), "Invalid threshold_mode"),
        (dict(power=0.0), "Invalid power"),
        (dict(eps=0.0), "Invalid eps"),
        (dict(weight_decay=-0.1), "Invalid weight_decay"),
        (dict(foreach=True, fused=True), "exclusive"),
        (dict(fused="yes"), "Invalid fused"),
    ],
)
def test_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        CLASSP([Parameter(torch.zeros(2))], **kwargs)


def test_errors_at_step_and_for_unsupported_parameters():
    weight = Parameter(torch.zeros(3))
    optimizer = CLASSP([weight])
    weight.grad = torch.ones(3).to_sparse()
    with pytest.raises(RuntimeError, match="does not support sparse gradients"):
        optimizer.step()
    with pytest.raises(RuntimeError, match="does not support complex parameters; optimize torch.view_as_real"):
        CLASSP([Parameter(torch.zeros(3, dtype=torch.complex64))])
    with pytest.raises(RuntimeError, match="complex"):
        optimizer.add_param_group({"params": [Parameter(torch.zeros(2, dtype=torch.complex64))]})
    assert len(optimizer.param_groups) == 1  # a refused group is not kept


@pytest.mark.parametrize("contiguous", [True, False])
@pytest.mark.parametrize("desc", list(INPUTS))
def test_forloop_goes_right_direction(desc, contiguous):
    kwargs = {**INPUTS[desc].kwargs, "foreach": False}
    generator = torch.Generator().manual_seed(0)
    if contiguous:
        weight = Parameter(torch.randn((10, 5), generator=generator))
        bias = Parameter(torch.randn(10, generator=generator))
    else:
        weight = Parameter(torch.randn((10, 5, 2), generator=generator)[..., 0])
        bias = Parameter(torch.randn((10, 2), generator=generator)[..., 0])
    inputs = torch.randn(5, generator=generator)
    optimizer = CLASSP([weight, bias], **kwargs)

    def closure():
        optimizer.zero_grad()
        loss = (weight.mv(inputs) + bias).pow(2).sum()
        loss.backward()
        return loss

    initial = closure().item()
    for _ in range(20):
        optimizer.step(closure)
    if kwargs.get("maximize"):
        assert closure().item() > initial
    else:
        assert closure().item() < initial


@pytest.mark.parametrize("desc", list(INPUTS))
def test_foreach_matches_forloop(desc):
    assert_same_runs(derived_runs(torch.float64, INPUTS[desc].kwargs, "foreach"))


def test_fused_matches_forloop(eager_compile):
    """Every configuration and dtype in one process, as torch's suite runs them: 32 differently configured fused
    optimizers must not exhaust dynamo's recompile limit (8 per code object), and each matches the for-loop."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no fallback warning: every structure compiled
        for dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
            tolerance = FP16_REDUCED_PRECISION if dtype in (torch.float16, torch.bfloat16) else {}
            for item in CLASSP_INFO.optim_inputs:
                assert_same_runs(derived_runs(dtype, item.kwargs, "fused"), **tolerance)


@pytest.mark.skipif(not HAS_CXX, reason="inductor needs a C++ compiler (the aot_eager tests above still run)")
def test_fused_matches_forloop_on_inductor(monkeypatch):
    monkeypatch.setattr(_fused, "BACKEND", "inductor")
    assert_same_runs(derived_runs(torch.float32, INPUTS["weight_decay"].kwargs, "fused"))


@torch._dynamo.config.patch(recompile_limit=1)
def test_fused_falls_back_once_at_the_recompile_limit(eager_compile):
    params = [Parameter(torch.randn(n)) for n in (6, 1, 5)]  # a length of 1 is specialised: a second graph
    reference = [Parameter(p.detach().clone()) for p in params]
    fused, forloop = CLASSP(params, lr=0.1, fused=True), CLASSP(reference, lr=0.1, foreach=False)
    with pytest.warns(RuntimeWarning, match="recompile limit") as caught:
        for step in range(3):
            for p, q in zip(params, reference):
                p.grad = torch.randn(p.shape, generator=torch.Generator().manual_seed(step))
                q.grad = p.grad.clone()
            fused.step()
            forloop.step()
    assert len([w for w in caught if "recompile limit" in str(w.message)]) == 1
    for p, q in zip(params, reference):
        torch.testing.assert_close(p, q)


def test_fused_error_on_params_on_meta(eager_compile):
    with torch.device("meta"):
        model = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Sigmoid(), torch.nn.Linear(3, 1))
    optimizer = CLASSP(model.parameters(), lr=0.1, fused=True)
    with torch.device("meta"):
        for p in model.parameters():
            p.grad = torch.rand_like(p)
    with pytest.raises(RuntimeError, match="`fused=True` requires all the params to be floating point Tensors"):
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    assert not optimizer.state  # refused before any state was made
    model.to_empty(device="cpu")
    # to_empty keeps the Parameter objects where the meta and CPU tensor types allow it (torch's test relies on
    # that) and makes new ones where not (it depends on what ran before in the process): point the group at them
    params = optimizer.param_groups[0]["params"] = list(model.parameters())
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in params:  # to_empty leaves the memory as it was: give it values
            p.copy_(torch.randn(p.shape, generator=generator))
            p.grad = torch.rand(p.shape, generator=generator) + 0.1
    before = [p.detach().clone() for p in params]
    optimizer.step()  # the same optimizer steps once its parameters are real
    assert all(torch.all(p < b) for p, b in zip(params, before))  # positive gradients: every element went down


@pytest.mark.parametrize("impl", ["forloop", "foreach"])
def test_step_is_noop_when_params_have_no_grad(impl):
    params = [Parameter(torch.randn(2, 3)) for _ in range(2)]
    before = [p.detach().clone() for p in params]
    optimizer = CLASSP(params, lr=0.1, weight_decay=0.1, foreach=impl == "foreach")
    optimizer.step()
    assert all(torch.equal(p, b) for p, b in zip(params, before))
    assert not optimizer.state


@pytest.mark.parametrize("impl", ["forloop", "foreach"])
def test_step_is_noop_for_zero_grads(impl):
    params = [Parameter(torch.randn(2, 3)) for _ in range(2)]
    before = [p.detach().clone() for p in params]
    optimizer = CLASSP(params, lr=0.1, weight_decay=0.1, foreach=impl == "foreach")
    for p in params:
        p.grad = torch.zeros_like(p)
    optimizer.step()
    assert all(torch.equal(p, b) for p, b in zip(params, before))  # a zero gradient never passes the test


def test_param_groups_weight_decay_and_lr_go_right_direction():
    generator = torch.Generator().manual_seed(0)
    weight, bias = Parameter(torch.randn(10, 5, generator=generator)), Parameter(torch.randn(10, generator=generator))
    inputs = torch.randn(5, generator=generator)
    optimizer = CLASSP([{"params": [weight], "weight_decay": 0.1}, {"params": [bias], "lr": 0.01}], lr=0.1)
    schedule = torch.optim.lr_scheduler.StepLR(optimizer, step_size=5, gamma=0.5)

    def closure():
        optimizer.zero_grad()
        loss = (weight.mv(inputs) + bias).pow(2).sum()
        loss.backward()
        return loss

    initial = closure().item()
    for _ in range(20):
        optimizer.step(closure)
        schedule.step()
    assert closure().item() < initial
    assert optimizer.param_groups[1]["lr"] == pytest.approx(0.01 * 0.5**4)


def test_step_with_closure_returns_its_loss_with_grad_enabled():
    weight = Parameter(torch.ones(3))
    optimizer = CLASSP([weight], lr=0.1)
    seen = []

    def closure():
        seen.append(torch.is_grad_enabled())
        optimizer.zero_grad()
        loss = (weight * 2).sum()
        loss.backward()
        return loss

    with torch.no_grad():
        loss = optimizer.step(closure)
    assert seen == [True] and loss.item() == 6.0
    assert torch.all(weight < 1)
    assert optimizer.step() is None


@pytest.mark.parametrize("set_to_none", [True, False])
def test_zero_grad(set_to_none):
    weight = Parameter(torch.ones(3))
    weight.grad = torch.ones(3)
    CLASSP([weight]).zero_grad(set_to_none=set_to_none)
    assert weight.grad is None if set_to_none else torch.equal(weight.grad, torch.zeros(3))


def test_step_all_hooks():
    weight = Parameter(torch.ones(2))
    weight.grad = torch.ones(2)
    optimizer = CLASSP([weight], lr=0.1)
    calls = []
    optimizer.register_step_pre_hook(lambda opt, args, kwargs: calls.append("pre"))
    optimizer.register_step_post_hook(lambda opt, args, kwargs: calls.append("post"))
    handle = register_optimizer_step_post_hook(lambda opt, args, kwargs: calls.append("global"))
    try:
        optimizer.step()
    finally:
        handle.remove()
    assert calls == ["pre", "post", "global"]


def trained(kwargs=None, steps=3, dtype=torch.float32):
    model, params = model_and_params(dtype)
    optimizer = CLASSP(params, **(kwargs or dict(lr=0.1, threshold=1e-4, weight_decay=0.01)))
    inputs = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5, 0.6], dtype=dtype).reshape(3, 2)

    def closure():
        optimizer.zero_grad()
        loss = model(inputs).sum()
        loss.backward()
        params[-1].grad = torch.full_like(params[-1], 0.5)
        return loss

    for _ in range(steps):
        optimizer.step(closure)
    return params, optimizer, closure


def copied(params, optimizer_kwargs=None, dtype=None):
    fresh = [Parameter(p.detach().clone().to(dtype or p.dtype)) for p in params]
    return fresh, CLASSP(fresh, **(optimizer_kwargs or dict(lr=0.1, threshold=1e-4, weight_decay=0.01)))


def step_both(params, optimizer, other_params, other, steps=3):
    for step in range(steps):
        generator = torch.Generator().manual_seed(step)
        for p, q in zip(params, other_params):
            p.grad = torch.randn(p.shape, generator=generator, dtype=p.dtype)
            q.grad = p.grad.to(q.dtype)
        optimizer.step()
        other.step()


def test_state_dict_deterministic():
    params, optimizer, _ = trained()
    other_params, other = copied(params)
    state_dict = copy.deepcopy(optimizer.state_dict())
    loaded = copy.deepcopy(state_dict)
    other.load_state_dict(loaded)
    step_both(params, optimizer, other_params, other)
    assert_same_runs([(params, optimizer), (other_params, other)])
    assert all(torch.equal(a, b) for a, b in zip(params, other_params))
    # loading did not change the dict it read, and equal optimizers give equal dicts
    assert_same_state_dicts(loaded, state_dict)
    assert_same_state_dicts(other.state_dict(), optimizer.state_dict())


def test_load_state_dict_into_another_dtype():
    """A float32 run's state loaded into float64 and bfloat16 parameters: S follows the compute dtype."""
    params, optimizer, _ = trained()
    for dtype, state_dtype in ((torch.float64, torch.float64), (torch.bfloat16, torch.float32)):
        other_params, other = copied(params, dtype=dtype)
        other.load_state_dict(optimizer.state_dict())
        for p, q in zip(params, other_params):
            assert other.state[q]["grad_sum"].dtype == state_dtype
            torch.testing.assert_close(other.state[q]["grad_sum"].float(), optimizer.state[p]["grad_sum"])
        reference = copy.deepcopy((params, optimizer))
        step_both(*reference, other_params, other, steps=2)
        tolerance = dict(rtol=1e-2, atol=1e-2) if dtype == torch.bfloat16 else {}
        for p, q in zip(reference[0], other_params):
            torch.testing.assert_close(q.detach().float(), p.detach(), **tolerance)
            assert other.state[q]["grad_sum"].dtype == state_dtype


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (another device to load the state onto)")
def test_state_dict_with_cuda_params():
    params, optimizer, _ = trained()
    cuda_params = [Parameter(p.detach().clone().cuda()) for p in params]
    cuda = CLASSP(cuda_params, lr=0.1, threshold=1e-4, weight_decay=0.01)
    cuda.load_state_dict(optimizer.state_dict())
    step_both(params, optimizer, cuda_params, cuda)
    for p, q in zip(params, cuda_params):
        torch.testing.assert_close(q.cpu(), p)
        assert cuda.state[q]["grad_sum"].device == q.device


def test_can_load_older_state_dict():
    """A state dict written before the newer group keys existed loads with their defaults and steps alike."""
    params, optimizer, _ = trained()
    state_dict = optimizer.state_dict()
    for group in state_dict["param_groups"]:
        for key in ("foreach", "fused", "maximize", "stochastic_rounding", "state_dtype", "threshold_mode"):
            del group[key]
    other_params, other = copied(params)
    other.load_state_dict(state_dict)
    assert other.param_groups[0]["threshold_mode"] == "absolute" and other.param_groups[0]["fused"] is None
    step_both(params, optimizer, other_params, other)
    assert all(torch.equal(a, b) for a, b in zip(params, other_params))


def test_save_load_equality_with_weights_only():
    params, optimizer, _ = trained()
    buffer = io.BytesIO()
    torch.save(optimizer.state_dict(), buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)
    assert_same_state_dicts(loaded, optimizer.state_dict())
    other_params, other = copied(params)
    other.load_state_dict(loaded)
    step_both(params, optimizer, other_params, other)
    assert all(torch.equal(a, b) for a, b in zip(params, other_params))


def test_deepcopy_copies_all_public_attrs():
    _, optimizer, _ = trained()
    public = {key for key in optimizer.__dict__ if not key.startswith("_")}
    assert public == {key for key in copy.deepcopy(optimizer).__dict__ if not key.startswith("_")}


@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_copies_continue_alike(how):
    params, optimizer, _ = trained(dict(lr=0.1, threshold=1e-4, stochastic_rounding=True, seed=3))
    bundle = (params, optimizer)
    other_params, other = copy.deepcopy(bundle) if how == "deepcopy" else pickle.loads(pickle.dumps(bundle))
    step_both(params, optimizer, other_params, other)
    assert all(torch.equal(a, b) for a, b in zip(params, other_params))


def test_param_group_added_later():
    params, optimizer, _ = trained()
    extra = Parameter(torch.ones(4))
    optimizer.add_param_group({"params": [extra], "lr": 0.5, "threshold": 0.0})
    assert optimizer.param_groups[-1]["power"] == optimizer.defaults["power"]  # defaults filled in
    extra.grad = torch.tensor([1.0, -1.0, 0.0, 2.0])
    optimizer.step()
    assert extra.detach().tolist()[2] == 1.0 and extra.detach()[0] < 1 and extra.detach()[1] > 1
    assert set(optimizer.state[extra]) == {"grad_sum"}
    with pytest.raises(ValueError, match="some parameters appear in more than one parameter group"):
        optimizer.add_param_group({"params": [extra]})


@pytest.mark.parametrize("impl", ["forloop", "foreach"])
def test_empty_and_zero_dim_params(impl):
    empty, scalar = Parameter(torch.empty(0)), Parameter(torch.tensor(1.0))
    optimizer = CLASSP([empty, scalar], lr=0.1, foreach=impl == "foreach")
    empty.grad, scalar.grad = torch.empty(0), torch.tensor(0.5)
    optimizer.step()
    assert empty.shape == (0,) and optimizer.state[empty]["grad_sum"].shape == (0,)
    assert scalar.item() < 1.0 and optimizer.state[scalar]["grad_sum"].shape == ()


def test_optimizer_can_be_printed():
    text = repr(CLASSP([Parameter(torch.zeros(1))], lr=0.1, threshold=1e-3))
    assert text.startswith("CLASSP (") and "threshold: 0.001" in text


def test_non_empty_state():
    params, optimizer, _ = trained()
    assert all(optimizer.state[p] for p in params)
