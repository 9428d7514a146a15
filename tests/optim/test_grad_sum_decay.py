"""CLASSP's ``grad_sum_decay``: S is multiplied by gamma at each task boundary, exactly once, also after --resume."""

from __future__ import annotations

import pytest
import torch

from classp_hf.continual.config import ConfigError, config_from_dict
from classp_hf.continual.runner import ContinualRunner
from classp_hf.optim import CLASSP
from classp_hf.optim.factory import create_optimizer, parse_optim_args

from ..helpers.resume import kill_resume_and_compare, three_task_config
from ..helpers.runs import RecordStart, raw_config


def stepped(gammas, state_dtype="float32", steps=3):
    """A CLASSP with one group per gamma, stepped a few times on seeded gradients."""
    generator = torch.Generator().manual_seed(0)
    groups = [
        {"params": [torch.nn.Parameter(torch.randn(4, 6, generator=generator))], "grad_sum_decay": gamma}
        for gamma in gammas
    ]
    optimizer = CLASSP(groups, lr=0.01, state_dtype=state_dtype)
    params = [p for group in groups for p in group["params"]]
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=generator)
        optimizer.step()
    return optimizer, params


def test_decay_multiplies_each_groups_sum_by_its_gamma_exactly():
    optimizer, params = stepped([0.5, 0.1, 1.0])
    before = [optimizer.grad_sum(p).clone() for p in params]
    optimizer.decay_grad_sum()
    for p, sum_before, gamma in zip(params, before, [0.5, 0.1, 1.0]):
        torch.testing.assert_close(optimizer.grad_sum(p), sum_before * gamma, rtol=0, atol=0)
    assert not torch.equal(optimizer.grad_sum(params[0]), before[0])


def test_gamma_one_leaves_everything_bit_identical():
    decayed, decayed_params = stepped([1.0], steps=2)
    plain, plain_params = stepped([1.0], steps=2)
    decayed.decay_grad_sum()  # a boundary with gamma 1: nothing changes, then both step alike
    for optimizer, params in ((decayed, decayed_params), (plain, plain_params)):
        for p in params:
            p.grad = torch.full(p.shape, 0.3)
        optimizer.step()
    for a, b in zip(decayed_params, plain_params):
        assert torch.equal(a, b)
        assert torch.equal(decayed.grad_sum(a), plain.grad_sum(b))
    assert CLASSP([torch.nn.Parameter(torch.zeros(1))]).defaults["grad_sum_decay"] == 1.0


@pytest.mark.parametrize("state_dtype", ["bfloat16", "8bit"])
def test_low_precision_sums_decay_to_gamma_times_s_up_to_their_rounding(state_dtype):
    optimizer, params = stepped([0.5], state_dtype=state_dtype)
    before = optimizer.grad_sum(params[0]).clone()
    optimizer.decay_grad_sum()
    after = optimizer.grad_sum(params[0])
    torch.testing.assert_close(after, before * 0.5, rtol=0.07, atol=0)
    assert ("grad_sum_codes" in optimizer.state[params[0]]) == (state_dtype == "8bit")  # its format is kept


def test_parameters_without_state_and_an_unstepped_optimizer_are_left_alone():
    optimizer = CLASSP([torch.nn.Parameter(torch.ones(3))], grad_sum_decay=0.5)
    optimizer.decay_grad_sum()
    assert len(optimizer.state) == 0


@pytest.mark.parametrize("value", [0.0, -0.5, 1.5, float("nan"), "0.5", True, None])
def test_invalid_gamma_is_refused_naming_the_key(value):
    with pytest.raises(ValueError, match=r"^Invalid grad_sum_decay value: "):
        CLASSP([torch.nn.Parameter(torch.zeros(2))], grad_sum_decay=value)
    with pytest.raises(ValueError, match=r"^Invalid grad_sum_decay value: "):
        CLASSP([{"params": [torch.nn.Parameter(torch.zeros(2))], "grad_sum_decay": value}])


def test_factory_types_and_validates_the_option(tiny_model):
    assert parse_optim_args("classp", "grad_sum_decay=0.25") == {"grad_sum_decay": 0.25}
    assert parse_optim_args("classp", {"grad_sum_decay": 1}) == {"grad_sum_decay": 1.0}
    optimizer = create_optimizer("classp", tiny_model, optim_args="grad_sum_decay=0.5")
    assert {group["grad_sum_decay"] for group in optimizer.param_groups} == {0.5}
    with pytest.raises(ValueError, match=r"^optim_args\.grad_sum_decay: expected a finite number, got 'half'$"):
        parse_optim_args("classp", "grad_sum_decay=half")
    with pytest.raises(ValueError, match=r"Invalid grad_sum_decay value: 2\.0 \(must be in \(0, 1\]\)"):
        create_optimizer("classp", tiny_model, optim_args="grad_sum_decay=2")


@pytest.mark.parametrize(
    "optim_args,message",
    [
        ("grad_sum_decay=0", r"^config\.training\.optim_args: Invalid grad_sum_decay value: 0\.0 \(must be in \(0, 1"),
        ("grad_sum_decay=1.01", r"^config\.training\.optim_args: Invalid grad_sum_decay value: 1\.01 \(must be in"),
        ("grad_sum_decay=x", r"^config\.training\.optim_args\.grad_sum_decay: expected a finite number, got 'x'$"),
    ],
)
def test_config_refuses_a_bad_gamma_in_one_line(tiny_model_dir, optim_args, message):
    raw = raw_config(tiny_model_dir)
    raw["training"]["optim_args"] = optim_args
    with pytest.raises(ConfigError, match=message):
        config_from_dict(raw)


class CarriedRecorder(ContinualRunner):
    """Keeps the carried state each later task starts from, and S as that task's optimizer holds it at its start."""

    def _trainer(self, index, context=None):
        if index > 0:
            self.carried = {name: v["grad_sum"].clone() for name, v in self.optimizer_state["state"].items()}
        trainer = super()._trainer(index, context)
        if index > 0:
            trainer.add_callback(RecordStart(self))
        return trainer


def test_the_runner_decays_the_carried_state_once_at_the_boundary(tmp_path, tiny_model_dir):
    raw = raw_config(tiny_model_dir)
    raw["training"]["optim_args"] = "power=1,eps=1e-8,grad_sum_decay=0.5"
    runner = CarriedRecorder(config_from_dict(raw), tmp_path / "out", log=False)
    runner.run()
    names = [name for name, _ in runner.model.named_parameters()]
    assert len(runner.sums_before) == len(names)
    for name, at_start in zip(names, runner.sums_before):
        torch.testing.assert_close(at_start, runner.carried[name] * 0.5, rtol=0, atol=0, msg=name)


def test_a_resumed_run_decays_exactly_as_the_uninterrupted_one(tmp_path, tiny_model_dir):
    raw = three_task_config(tiny_model_dir)
    raw["training"]["optim_args"] = "power=1,eps=1e-8,grad_sum_decay=0.5"
    kill_resume_and_compare(raw, tmp_path)
