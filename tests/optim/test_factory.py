"""The optimizer registry: names, groups, argument parsing, user registration."""

from __future__ import annotations

import pytest
import torch

from classp_hf.optim import CLASSP, create_optimizer, get_optimizer_info, list_optimizers, register_optimizer
from classp_hf.optim.factory import _REGISTRY, param_groups_with_weight_decay, parse_optim_args


class Block(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.dense = torch.nn.Linear(4, 4)
        self.LayerNorm = torch.nn.LayerNorm(4)
        self.frozen = torch.nn.Linear(4, 2)
        self.frozen.requires_grad_(False)


def test_registry_holds_the_baselines():
    assert {"classp", "sgd", "adam", "adamw", "adagrad"} <= set(list_optimizers())


@pytest.mark.parametrize(
    "name,cls", [("classp", CLASSP), ("sgd", torch.optim.SGD), ("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW)]
)
def test_create_by_name_with_transformers_style_groups(name, cls):
    optimizer = create_optimizer(name, Block(), lr=0.01, weight_decay=0.1)
    assert type(optimizer) is cls
    decay, no_decay = optimizer.param_groups
    model = Block()
    names = dict(model.named_parameters())
    assert [p.shape for p in decay["params"]] == [names["dense.weight"].shape]
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert len(no_decay["params"]) == 3  # dense.bias, LayerNorm.weight, LayerNorm.bias; frozen excluded
    assert all(group["lr"] == 0.01 for group in optimizer.param_groups)


def test_decay_groups_match_transformers_trainer(tiny_model):
    from transformers import Trainer, TrainingArguments

    trainer = Trainer(model=tiny_model, args=TrainingArguments("unused", report_to=[], use_cpu=True))
    expected = set(trainer.get_decay_parameter_names(tiny_model))
    decay_group = param_groups_with_weight_decay(tiny_model, 0.1)[0]["params"]
    ids = {id(p) for p in decay_group}
    assert {n for n, p in tiny_model.named_parameters() if id(p) in ids} == expected


def test_unknown_name_lists_known_ones():
    with pytest.raises(
        ValueError, match=r"Unknown optimizer 'clasp'\. Did you mean 'classp'\? Known optimizers: .*adagrad"
    ):
        create_optimizer("clasp", [torch.nn.Parameter(torch.zeros(1))])


def test_parse_optim_args_types_and_errors():
    assert parse_optim_args("classp", "threshold=1e-9, power=2,apply_decay=false") == {
        "threshold": 1e-9,
        "power": 2.0,
        "apply_decay": False,
    }
    with pytest.raises(
        ValueError, match=r"^optim_args\.thresold: unknown key for optimizer 'classp' \(did you mean 'threshold'\?"
    ):
        parse_optim_args("classp", "thresold=1")
    with pytest.raises(ValueError, match=r"^optim_args\.power: expected a finite number, got 'abc'$"):
        parse_optim_args("classp", "power=abc")
    with pytest.raises(ValueError, match=r"^optim_args: malformed entry 'power' \(expected key=value\)$"):
        parse_optim_args("classp", "power")
    with pytest.raises(ValueError, match=r"^optim_args\.apply_decay: expected true or false, got 'maybe'$"):
        parse_optim_args("classp", "apply_decay=maybe")


def test_invalid_hyperparameter_through_the_factory_names_it():
    with pytest.raises(ValueError, match="Invalid threshold value"):
        create_optimizer("classp", [torch.nn.Parameter(torch.zeros(1))], threshold=-1.0)


def test_users_register_their_own_optimizer():
    class Halver(torch.optim.Optimizer):
        def __init__(self, params, lr=1.0, factor=0.5):
            super().__init__(params, dict(lr=lr, factor=factor))

        @torch.no_grad()
        def step(self, closure=None):
            for group in self.param_groups:
                for p in group["params"]:
                    p.mul_(group["factor"])

    try:
        info = register_optimizer("halver", Halver, description="halves weights", arg_types={"factor": float})
        assert get_optimizer_info("halver") is info
        weight = torch.nn.Parameter(torch.ones(2))
        optimizer = create_optimizer("halver", [weight], optim_args="factor=0.25")
        optimizer.step()
        assert weight.tolist() == [0.25, 0.25]
        with pytest.raises(ValueError, match="already registered"):
            register_optimizer("halver", Halver)
        with pytest.raises(ValueError, match="Invalid optimizer name"):
            register_optimizer("Bad Name", Halver)
    finally:
        _REGISTRY.pop("halver", None)


def test_dotted_path_is_imported_on_use():
    try:
        register_optimizer("rprop_test", "torch.optim.Rprop")
        assert type(create_optimizer("rprop_test", [torch.nn.Parameter(torch.zeros(1))])) is torch.optim.Rprop
    finally:
        _REGISTRY.pop("rprop_test", None)
