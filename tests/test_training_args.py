"""Optimizer names and optim_args in TrainingArguments, in code and on the command line."""

from __future__ import annotations

import warnings

import pytest
from transformers import HfArgumentParser
from transformers.training_args import OptimizerNames

from classp_hf import TrainingArguments


def parse(argv):
    return HfArgumentParser(TrainingArguments).parse_args_into_dataclasses(["--output_dir", "unused", *argv])[0]


def test_classp_by_name_on_the_command_line():
    args = parse(["--optim", "classp", "--optim_args", "threshold=1e-9,power=1,eps=1e-8", "--learning_rate", "1e-3"])
    assert args.optim == "classp"
    assert args.optim_args == "threshold=1e-9,power=1,eps=1e-8"
    assert args.learning_rate == 1e-3


def test_transformers_names_keep_their_meaning():
    args = TrainingArguments("unused", optim="adagrad")
    assert args.optim == OptimizerNames.ADAGRAD


@pytest.mark.parametrize(
    "optim,optim_args,message",
    [
        ("clasp", None, r"Unknown optimizer 'clasp'\. Did you mean 'classp'\?"),
        (
            "classp",
            "thresold=1e-9",
            r"^optim_args\.thresold: unknown key for optimizer 'classp' \(did you mean 'threshold'",
        ),
        ("classp", "power=one", r"^optim_args\.power: expected a finite number, got 'one'"),
        ("classp", "power", r"^optim_args: malformed entry 'power' \(expected key=value\)"),
        (
            "adagrad",
            "threshold=1",
            r"^optim_args\.threshold: unknown key for transformers' optimizer 'adagrad' \(accepted: eps",
        ),
        ("sgd", "momentum=fast", r"^optim_args\.momentum: expected a finite number, got 'fast'"),
        (
            "adamw_torch",
            "eps=1e-6",
            r"^optim_args\.eps: transformers ignores this key for optimizer 'adamw_torch'; set training\.adam_epsilon",
        ),
    ],
)
def test_bad_optimizer_input_names_the_culprit(optim, optim_args, message):
    with pytest.raises(ValueError, match=message):
        TrainingArguments("unused", optim=optim, optim_args=optim_args, learning_rate=1e-3)


def test_typo_on_the_command_line_lists_known_names():
    with pytest.raises(ValueError, match="Known optimizers: .*adamw.*classp"):
        parse(["--optim", "clasp"])


def test_default_learning_rate_with_classp_warns():
    with pytest.warns(UserWarning, match="learning_rate=5e-05 barely moves"):
        TrainingArguments("unused", optim="classp")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        TrainingArguments("unused", optim="classp", learning_rate=1e-3)
        TrainingArguments("unused", optim="adamw_torch")


def test_set_optimizer_accepts_registry_names():
    args = TrainingArguments("unused").set_optimizer(name="classp", learning_rate=2e-3, args="power=2")
    assert args.optim == "classp" and args.learning_rate == 2e-3 and args.optim_args == "power=2"
    with pytest.raises(ValueError, match="Unknown optimizer 'nope'"):
        TrainingArguments("unused").set_optimizer(name="nope")


def test_optim_groups_and_mask_absent_labels_on_the_command_line():
    groups = '[{"params": "classifier", "lr_scale": 0.1, "threshold": 0.1, "threshold_mode": "quantile"}]'
    args = parse(["--optim", "classp", "--learning_rate", "1e-3", "--optim_groups", groups, "--mask_absent_labels"])
    assert args.optim_groups == [
        {"params": "classifier", "lr_scale": 0.1, "threshold": 0.1, "threshold_mode": "quantile"}
    ]
    assert args.mask_absent_labels is True
    assert parse([]).optim_groups is None and parse([]).mask_absent_labels is False
    in_code = TrainingArguments("unused", optim="adamw_torch", optim_groups=[{"params": "head", "weight_decay": 1}])
    assert in_code.optim_groups == [{"params": "head", "weight_decay": 1.0}]
    with pytest.raises(
        ValueError, match=r"^optim_groups\[0\]\.threshold: unknown key for 'adamw_torch' \(accepted: amsgrad,"
    ):
        TrainingArguments("unused", optim="adamw_torch", optim_groups=[{"params": "head", "threshold": 0.1}])
    with pytest.raises(ValueError, match=r"^optim_groups\[0\]\.momentum: expected a finite number, got 'high'$"):
        TrainingArguments("unused", optim="sgd", optim_groups=[{"params": "head", "momentum": "high"}])


@pytest.mark.parametrize(
    "optim_groups,message",
    [
        ('[{"params": "x",', r"^optim_groups: not valid JSON"),
        ({"params": "x"}, r"^optim_groups: expected a list"),
        ([{"lr_scale": 2}], r"^optim_groups\[0\]\.params: expected a regular expression"),
        ([{"params": "("}], r"^optim_groups\[0\]\.params: invalid regular expression"),
        ([{"params": "x", "lr_scale": 0}], r"^optim_groups\[0\]\.lr_scale: expected a number > 0"),
        ([{"params": "x"}, {"params": "y", "lr": 1}], r"^optim_groups\[1\]\.lr: set lr_scale"),
        (
            [{"params": "x", "thresold": 1}],
            r"^optim_groups\[0\]\.thresold: unknown key for 'classp' \(did you mean 'threshold'",
        ),
        ([{"params": "x", "power": "two"}], r"^optim_groups\[0\]\.power: expected a finite number, got 'two'$"),
    ],
)
def test_bad_optim_groups_name_the_entry(optim_groups, message):
    with pytest.raises(ValueError, match=message):
        TrainingArguments("unused", optim="classp", learning_rate=1e-3, optim_groups=optim_groups)


def test_mask_absent_labels_excludes_label_smoothing():
    with pytest.raises(ValueError, match="^mask_absent_labels: cannot be combined with label_smoothing_factor"):
        TrainingArguments("unused", mask_absent_labels=True, label_smoothing_factor=0.1)


def test_deferred_device_setup_leaves_the_device_to_set_up_device():
    """Arguments built under ``deferred_device_setup()`` (the config check) set no device up until asked (the
    runner), then do it as transformers' ``__post_init__`` would have."""
    from classp_hf.training_args import deferred_device_setup

    with deferred_device_setup():
        args = TrainingArguments("unused", report_to="none", optim="classp", learning_rate=1e-3)
    assert "_setup_devices" not in args.__dict__  # transformers' cached set-up not run
    assert args.device.type == "cpu"  # the placeholder
    assert args.set_up_device() == args.device and "_setup_devices" in args.__dict__
    plain = TrainingArguments("unused", report_to="none", optim="classp", learning_rate=1e-3)
    assert "_setup_devices" in plain.__dict__ and plain.set_up_device() == plain.device  # no-op outside
