"""The fused (``torch.compile``) path: equal to foreach, no recompilation under a schedule, refused with foreach.

The compiled tests run on inductor (C++ on the CPU) when a C++ compiler is installed. Without one (e.g. the
slim Docker image) they run on ``aot_eager``, which traces and checks the same graph but runs it with eager
kernels: the test ids say which backend ran (``[inductor]`` or ``[aot_eager-no-cxx]``).
"""

from __future__ import annotations

import importlib
import os
import shutil

import pytest
import torch
import torch._dynamo
from torch._dynamo.utils import counters

from classp_hf.optim import CLASSP, _fused, create_optimizer

classp_module = importlib.import_module("classp_hf.optim._functional")  # the functional update

HAS_CXX = any(shutil.which(name) for name in (os.environ.get("CXX", "g++"), "g++", "c++", "clang++"))
#: inductor where it can compile C++, else aot_eager (named in the test id: never a silent skip).
MAIN_BACKEND = pytest.param("inductor", id="inductor") if HAS_CXX else pytest.param("aot_eager", id="aot_eager-no-cxx")
#: The other variants trace the same function; aot_eager keeps them fast (inductor's C++ compile is ~10 s each).
FALLBACK = "aot_eager"

GROUPS = [  # every threshold mode in one optimizer: one compiled graph serves them all
    dict(threshold=0.0),
    dict(threshold=0.3, weight_decay=0.1),
    dict(threshold=0.5, threshold_mode="relative"),
    dict(threshold=0.25, threshold_mode="quantile"),
]
SHAPES = [(8, 16), (16,), (3, 5), (24,)]


@pytest.fixture
def backend(request, monkeypatch):
    monkeypatch.setattr(_fused, "BACKEND", request.param)
    return request.param


def make(fused, dtype=torch.float32, groups=GROUPS, **kwargs):
    generator = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(s, generator=generator).to(dtype)) for s in SHAPES]
    param_groups = [{"params": [p], **g} for p, g in zip(params, groups * len(SHAPES))]
    path = dict(fused=True) if fused else dict(foreach=True)
    return params, CLASSP(param_groups, lr=0.05, eps=1e-3, **path, **kwargs)


def train(params, optimizer, steps=5, seed=1):
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=generator).to(p.dtype)
        params[0].grad[0, 0] = float("nan")
        params[1].grad[:4] = 0.0
        optimizer.step()


def assert_close_runs(foreach_run, fused_run, **tolerance):
    (params, optimizer), (fused_params, fused) = foreach_run, fused_run
    for p, q in zip(params, fused_params):
        torch.testing.assert_close(q, p, **tolerance)
        torch.testing.assert_close(fused.state[q]["grad_sum"], optimizer.state[p]["grad_sum"], **tolerance)
    fractions = [[d["update_fraction"] for d in opt.diagnostics()] for opt in (optimizer, fused)]
    assert fractions[0] == fractions[1]


@pytest.mark.parametrize("backend", [MAIN_BACKEND], indirect=True)
def test_fused_matches_foreach_in_every_mode(backend):
    foreach_run = make(False)
    fused_run = make(True)
    for _, optimizer in (foreach_run, fused_run):
        optimizer.track_updates()
    train(*foreach_run)
    counters.clear()
    train(*fused_run)
    assert counters["stats"]["calls_captured"] > 0  # the compiled function ran (not an eager fallback)
    assert_close_runs(foreach_run, fused_run, rtol=1e-6, atol=1e-7)
    masks, fused_masks = foreach_run[1].update_tracking()["masks"], fused_run[1].update_tracking()["masks"]
    assert all(torch.equal(masks[p], fused_masks[q]) for p, q in zip(foreach_run[0], fused_run[0]))


@pytest.mark.parametrize("backend", [MAIN_BACKEND], indirect=True)
def test_a_schedule_does_not_recompile(backend):
    torch._dynamo.reset()
    params, optimizer = make(True, groups=[dict(threshold=0.01, weight_decay=0.01)])
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (1 + step))
    generator = torch.Generator().manual_seed(1)

    def step():
        for p in params:
            p.grad = torch.randn(p.shape, generator=generator)
        optimizer.step()
        schedule.step()
        for group in optimizer.param_groups:  # a schedule may move weight decay and threshold too
            group["weight_decay"] *= 0.9
            group["threshold"] *= 1.1

    counters.clear()
    step()
    graphs = counters["stats"]["unique_graphs"]
    assert graphs >= 1
    lrs = set()
    with torch._dynamo.config.patch(error_on_recompile=True):
        for _ in range(20):
            step()
            lrs.add(optimizer.param_groups[0]["lr"])
    assert counters["stats"]["unique_graphs"] == graphs
    assert len(lrs) == 20


@pytest.mark.parametrize("backend", [FALLBACK], indirect=True)
@pytest.mark.parametrize(
    "kwargs",
    [
        dict(power=2.0),
        dict(power=1.5),
        dict(apply_decay=False),
        dict(maximize=True),
    ],
    ids=["power2", "power1.5", "no_decay", "maximize"],
)
def test_fused_variants_match_foreach(kwargs, backend):
    foreach_run, fused_run = make(False, **kwargs), make(True, **kwargs)
    train(*foreach_run)
    train(*fused_run)
    assert_close_runs(foreach_run, fused_run, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", [FALLBACK], indirect=True)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float64])
def test_fused_low_and_high_precision(dtype, backend):
    kwargs = dict(stochastic_rounding=True, seed=4)
    foreach_run, fused_run = make(False, dtype, **kwargs), make(True, dtype, **kwargs)
    train(*foreach_run)
    train(*fused_run)
    assert all(p.dtype == dtype for p in fused_run[0])
    assert fused_run[1].state[fused_run[0][0]]["grad_sum"].dtype == classp_module._compute_dtype(dtype)
    # The same stochastic-rounding draws: a bfloat16 weight differs at most by the rare element whose float32
    # update rounded differently (one unit in the last place).
    tolerance = dict(rtol=2**-7, atol=1e-6) if dtype == torch.bfloat16 else dict(rtol=1e-12, atol=1e-14)
    assert_close_runs(foreach_run, fused_run, **tolerance)
    if dtype == torch.bfloat16:
        assert torch.equal(foreach_run[1]._rng_states()["cpu"], fused_run[1]._rng_states()["cpu"])


@pytest.mark.parametrize("backend", [FALLBACK], indirect=True)
def test_fused_skips_rows_and_handles_strided_parameters(backend, monkeypatch):
    monkeypatch.setattr(importlib.import_module("classp_hf.optim._rows"), "MIN_NUMEL", 256)
    runs = []
    for fused in (False, True):
        generator = torch.Generator().manual_seed(0)
        embedding = torch.nn.Parameter(torch.randn(200, 16, generator=generator))
        strided = torch.nn.Parameter(torch.randn(16, 6, generator=generator).t())  # not contiguous
        optimizer = CLASSP([embedding, strided], lr=0.05, threshold=0.5, threshold_mode="relative", fused=fused)
        grad_generator = torch.Generator().manual_seed(1)
        for step in range(3):
            grad = torch.zeros(200, 16)
            if step < 2:  # the last step's gradient is all zero: no row can change, the gathered tensor is empty
                rows = torch.randint(0, 200, (8,), generator=grad_generator)
                grad[rows] = torch.randn(8, 16, generator=grad_generator)
            embedding.grad = grad
            strided.grad = torch.randn(16, 6, generator=grad_generator).t()
            optimizer.step()
        runs.append(((embedding, strided), optimizer))
    assert_close_runs(*runs, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("backend", [FALLBACK], indirect=True)
@pytest.mark.parametrize("state_dtype", ["bfloat16", "8bit"])
def test_fused_with_low_precision_state(state_dtype, backend):
    foreach_run, fused_run = make(False, state_dtype=state_dtype), make(True, state_dtype=state_dtype)
    train(*foreach_run)
    train(*fused_run)
    (params, optimizer), (fused_params, fused) = foreach_run, fused_run
    for a, b in zip(params, fused_params):
        assert set(fused.state[b]) == set(optimizer.state[a])
        # The same draws on S: equal up to the rare element whose float32 sum differed in the last bit and so
        # rounded to the other neighbour (one code step, 1/16).
        torch.testing.assert_close(fused.grad_sum(b), optimizer.grad_sum(a), rtol=1 / 16, atol=1e-6)
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)


def test_fused_and_foreach_are_exclusive():
    with pytest.raises(ValueError, match="Invalid fused value: fused=True and foreach=True"):
        CLASSP([torch.nn.Parameter(torch.zeros(2))], fused=True, foreach=True)
    with pytest.raises(ValueError, match="Invalid fused value"):
        CLASSP([torch.nn.Parameter(torch.zeros(2))], fused="yes")
    weight = torch.nn.Parameter(torch.zeros(2))
    with pytest.raises(ValueError, match="exclusive"):
        classp_module.classp(
            [weight], [torch.ones(2)], [torch.zeros(2)], lr=0.1, threshold=0.0, power=1.0, eps=1e-4,
            apply_decay=True, weight_decay=0.0, maximize=False, foreach=True, fused=True,
        )  # fmt: skip


def test_fused_through_the_registry_and_state_dict():
    optimizer = create_optimizer("classp", [torch.nn.Parameter(torch.zeros(2))], optim_args="fused=true")
    assert optimizer.param_groups[0]["fused"] is True
    fresh = CLASSP([torch.nn.Parameter(torch.zeros(2))])
    assert fresh.param_groups[0]["fused"] is None
    fresh.load_state_dict(optimizer.state_dict())
    assert fresh.param_groups[0]["fused"] is True
