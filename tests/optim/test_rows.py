"""Row skipping: a step on only the rows that can change is bit for bit the dense step."""

from __future__ import annotations

import importlib
import math

import pytest
import torch

from classp_hf.optim import CLASSP, _rows

classp_module = importlib.import_module("classp_hf.optim.classp")  # the package exports a function of that name
functional_module = importlib.import_module("classp_hf.optim._functional")  # the functional update

#: (threshold_mode, threshold): every mode, with and without a threshold, quantile with and without selection.
MODES = [
    ("absolute", 0.0),
    ("absolute", 0.3),
    ("relative", 0.5),
    ("relative", 4.0),
    ("quantile", 0.02),
    ("quantile", 0.5),
]
#: Embedding-like matrices (rows of 64 elements: whole SIMD vectors; rows of 13: scalar tails), a dense one, a vector.
SHAPES = [(300, 64), (200, 13), (40, 16), (16,)]
SPARSE = {(300, 64), (200, 13)}


def bits(tensor):
    """The raw bits of a float tensor, for bit-for-bit comparisons."""
    return tensor.detach().view({2: torch.int16, 4: torch.int32, 8: torch.int64}[tensor.element_size()])


def sparse_row_grads(generator, steps, dtype=torch.float32):
    """Per step, gradients whose embedding-like matrix has ~6% non-zero rows (one with a NaN, one only a NaN)."""
    out = []
    for step in range(steps):
        grads = []
        for shape in SHAPES:
            scale = 10 ** torch.empty(shape).uniform_(-2, 0, generator=generator)
            grad = torch.randn(shape, generator=generator) * scale
            if shape in SPARSE:
                keep = torch.rand(shape[0], generator=generator) < 0.06
                grad[~keep] = 0.0
                live = torch.nonzero(keep).flatten()
                grad[live[0], 3] = float("nan")
                grad[live[1]] = 0.0
                grad[live[1], step % shape[1]] = float("nan") if step % 2 else float("inf")
            grads.append(grad.to(dtype))
        out.append(grads)
    return out


def run(dtype, steps, skip_rows, monkeypatch, **hyperparameters):
    monkeypatch.setattr(classp_module, "_SKIP_ROWS", skip_rows)
    generator = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter((torch.randn(s, generator=generator) + 3.0).to(dtype)) for s in SHAPES]
    optimizer = CLASSP(params, **hyperparameters)
    optimizer.track_updates()
    fractions = []
    for grads in sparse_row_grads(torch.Generator().manual_seed(1), steps, dtype):
        for p, g in zip(params, grads):
            p.grad = g
        optimizer.step()
        fractions.append(optimizer.diagnostics()[0]["update_fraction"])
    return params, optimizer, fractions


@pytest.fixture
def small_tensors_skip_rows(monkeypatch):
    """Row skipping for the test's small matrices, and a record of the plans made."""
    monkeypatch.setattr(_rows, "MIN_NUMEL", 256)
    plans = []
    original = functional_module.plan_rows

    def recording(*args, **kwargs):
        result = original(*args, **kwargs)
        plans.append(result)
        return result

    monkeypatch.setattr(functional_module, "plan_rows", recording)
    return plans


def assert_same_run(dense, skipped):
    (dense_params, dense_opt, dense_fractions), (params, optimizer, fractions) = dense, skipped
    for p, q in zip(dense_params, params):
        assert torch.equal(bits(p), bits(q))
        assert torch.equal(bits(dense_opt.state[p]["grad_sum"]), bits(optimizer.state[q]["grad_sum"]))
    assert fractions == dense_fractions
    dense_masks, masks = dense_opt.update_tracking()["masks"], optimizer.update_tracking()["masks"]
    assert all(torch.equal(dense_masks[p], masks[q]) for p, q in zip(dense_params, params))


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("power", [1.0, 2.0, 1.5])
@pytest.mark.parametrize("mode,threshold", MODES)
def test_skipping_rows_is_bit_for_bit_the_dense_step(
    mode, threshold, power, foreach, monkeypatch, small_tensors_skip_rows
):
    hyperparameters = dict(
        lr=0.05, threshold=threshold, threshold_mode=mode, power=power, eps=1e-3, weight_decay=0.1, foreach=foreach
    )
    dense = run(torch.float32, 5, False, monkeypatch, **hyperparameters)
    assert small_tensors_skip_rows == []
    skipped = run(torch.float32, 5, True, monkeypatch, **hyperparameters)
    assert_same_run(dense, skipped)
    # The embedding-like matrices skipped their empty rows at every step (rows of 13 elements: only for powers
    # 1 and 2, whose kernels give the same bits in SIMD and scalar code); the dense matrix and the vector did not.
    assert len(small_tensors_skip_rows) == 5
    for plans in small_tensors_skip_rows:
        assert plans[2] is None and plans[3] is None
        assert plans[0] is not None and plans[0].num_rows == 300 and plans[0].rows.numel() <= 0.06 * 300 + 10
        assert (plans[1] is not None) == (power in (1.0, 2.0))
    assert 0.0 < dense[2][-1] < 1.0


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize(
    "dtype,stochastic_rounding,mode,threshold",
    [
        (torch.bfloat16, True, "absolute", 0.0),
        (torch.bfloat16, True, "relative", 0.5),
        (torch.float16, True, "quantile", 0.05),
        (torch.bfloat16, False, "absolute", 0.3),
        (torch.float64, False, "relative", 0.5),
    ],
)
def test_skipping_rows_is_exact_in_every_dtype(
    dtype, stochastic_rounding, mode, threshold, foreach, monkeypatch, small_tensors_skip_rows
):
    hyperparameters = dict(
        lr=0.01,
        threshold=threshold,
        threshold_mode=mode,
        weight_decay=0.05,
        stochastic_rounding=stochastic_rounding,
        seed=3,
        foreach=foreach,
    )
    dense = run(dtype, 4, False, monkeypatch, **hyperparameters)
    skipped = run(dtype, 4, True, monkeypatch, **hyperparameters)
    assert any(plan is not None for plans in small_tensors_skip_rows for plan in plans)
    assert_same_run(dense, skipped)
    if stochastic_rounding:  # the generators advanced alike: the streams stay in step after the run
        assert torch.equal(dense[1].state_dict()["stochastic_rounding_rng"]["cpu"], skipped[1]._rng_states()["cpu"])


def test_rows_are_skipped_only_where_most_are_empty(monkeypatch):
    monkeypatch.setattr(_rows, "MIN_NUMEL", 256)
    dense = torch.randn(64, 8)
    assert _rows.plan_rows([dense], 0.0, "absolute") == [None]  # the probe sees full rows: no row scan
    sparse = torch.zeros(64, 8)
    sparse[[3, 40]] = 1.0
    (plan,) = _rows.plan_rows([sparse], 0.0, "absolute")
    assert plan.rows.tolist() == [3, 40] and plan.num_rows == 64 and plan.cutoff is None
    # Non-zero but masked rows are skipped too: absolute cut-off sqrt(0.25) = 0.5.
    sparse[3] = 0.4
    sparse[5, 2] = -0.6
    (plan,) = _rows.plan_rows([sparse], 0.25, "absolute")
    assert plan.rows.tolist() == [5, 40]
    # A probe that misses rows (non-zeros away from the first and last columns) is corrected by the scan.
    hidden = torch.zeros(64, 8)
    hidden[:40, 4] = 1.0
    assert _rows.plan_rows([hidden], 0.0, "absolute") == [None]  # 40 of 64 rows live: more than half
    small = torch.zeros(10, 8)
    assert _rows.plan_rows([small, sparse.flatten(), sparse.to(torch.float64)], 0.0, "absolute")[:2] == [None, None]


def test_relative_norm_does_not_depend_on_the_rows_gathered():
    generator = torch.Generator().manual_seed(0)
    values = (torch.randn(500, 24, generator=generator) * 10 ** torch.empty(500, 24).uniform_(-6, 2)).abs()
    values[torch.rand(500, generator=generator) < 0.8] = 0.0
    live = torch.nonzero(values.amax(dim=1) > 0).flatten()
    whole = _rows.relative_norm(values)
    assert whole.dtype == torch.float64
    assert torch.equal(whole, _rows.relative_norm(values.index_select(0, live)))
    assert torch.equal(whole, _rows.relative_norm(values.index_select(0, live.flip(0))))  # any row order
    assert whole.item() == pytest.approx(torch.linalg.vector_norm(values.double()).item(), rel=1e-14)
    # One row's sum is the same alone and among others (chunks of rows in a reused buffer).
    sums = _rows._row_sums_of_squares(values)
    assert all(torch.equal(sums[i : i + 1], _rows._row_sums_of_squares(values[i : i + 1])) for i in live[:20].tolist())


def test_quantile_selects_only_among_the_non_zeros(monkeypatch):
    selected = []
    original = _rows.kth_smallest

    def recording(values, k):
        selected.append((values.numel(), k))
        return original(values, k)

    monkeypatch.setattr(_rows, "kth_smallest", recording)
    magnitude = torch.zeros(10_000)
    magnitude[:50] = torch.arange(1.0, 51.0)
    assert _rows.quantile_cutoff(magnitude, 0.01, 10_000) == 0.0  # 50 non-zeros <= 100 to keep: no selection
    assert selected == []
    cutoff = _rows.quantile_cutoff(magnitude, 0.002, 10_000)  # keep 20 of the 50 non-zeros
    assert selected == [(50, 30)]
    assert cutoff.item() == 30.0 and torch.equal(cutoff, torch.kthvalue(magnitude, 10_000 - 20).values)
    # The subset of rows holding every non-zero gives the whole tensor's cut-off.
    assert torch.equal(_rows.quantile_cutoff(magnitude[:64], 0.002, 10_000), cutoff)
    assert math.ceil(0.002 * 10_000) == 20
