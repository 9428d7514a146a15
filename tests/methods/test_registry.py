"""The method registry: config validation, combinations, compatibility with the peft section, custom methods."""

from __future__ import annotations

import io
import runpy
from dataclasses import dataclass, field

import pytest
import torch

from classp_hf.methods import (
    EWC,
    CompositeMethod,
    ContinualMethod,
    EWCConfig,
    LwF,
    MethodConfig,
    NoMethod,
    Replay,
    TaskContext,
    build_method,
    check_method_compatibility,
    create_method,
    list_methods,
    parse_method_section,
    register_method,
)

from ..helpers.methods import BagOfWords, pad_collator, toy_dataset
from ..helpers.runs import REPO


def test_builtin_methods_are_registered():
    assert {"none", "ewc", "replay", "lwf", "olora"} <= set(list_methods())
    assert isinstance(create_method("none"), NoMethod)
    method = create_method("ewc", lambda_=5, mode="online")
    assert isinstance(method, EWC) and method.config == EWCConfig(lambda_=5.0, mode="online")
    assert isinstance(method.config.lambda_, float)


def test_parse_single_and_list():
    assert parse_method_section("none", None) == [("none", {})]
    assert parse_method_section("ewc", {"lambda_": 2}) == [("ewc", EWCConfig(lambda_=2.0))]
    parsed = parse_method_section(["replay", "ewc"], {"replay": {"buffer_size": 5}, "ewc": {"lambda_": 1.0}})
    assert [name for name, _ in parsed] == ["replay", "ewc"]
    assert parsed[0][1].buffer_size == 5 and parsed[1][1].lambda_ == 1.0
    assert parse_method_section(["lwf"], {})[0][1].temperature == 2.0


@pytest.mark.parametrize(
    "method,method_args,message",
    [
        ("ewk", {}, r"^method: unknown method 'ewk'\. Did you mean 'ewc'\?"),
        ("ewc", {}, r"^method_args\.lambda_: required by ewc"),
        ("ewc", {"lambda_": -1}, r"^method_args\.lambda_: expected a number >= 0, got -1$"),
        ("ewc", {"lambda_": "big"}, r"^method_args\.lambda_: expected a finite number, got 'big'$"),
        ("ewc", {"lambda_": float("inf")}, r"^method_args\.lambda_: expected a finite number, got inf$"),
        (
            "ewc",
            {"lamda": 1},
            r"^method_args\.lamda: unknown key for ewc \(did you mean 'lambda_'\? accepted: fisher_samples, gamma,",
        ),
        ("ewc", {"lambda_": 1, "mode": "offline"}, r"^method_args\.mode: expected separate or online, got 'offline'$"),
        ("ewc", {"lambda_": 1, "gamma": 0}, r"^method_args\.gamma: expected a number in \(0, 1\], got 0$"),
        ("ewc", {"lambda_": 1, "fisher_samples": 2.5}, r"^method_args\.fisher_samples: expected an integer, got 2\.5$"),
        ("replay", {"buffer_size": 0}, r"^method_args\.buffer_size: expected an integer >= 1, got 0$"),
        (
            "replay",
            {"buffer_size": 4, "replay_ratio": 1},
            r"^method_args\.replay_ratio: expected a number in \(0, 1\), got 1$",
        ),
        ("lwf", {"temperature": 0}, r"^method_args\.temperature: expected a number > 0"),
        ("none", {"lambda_": 1}, r"^method_args\.lambda_: unknown key for none \(none accepted\)$"),
        (["replay", "replay"], {}, r"^method: 'replay' is listed twice$"),
        (["replay", "ewk"], {}, r"^method\[1\]: unknown method 'ewk'"),
        (["none", "ewc"], {}, r"^method: 'none' cannot be combined"),
        ([], {}, r"^method: expected a method name or a non-empty list"),
        (3, {}, r"^method: expected a method name"),
        ("ewc", [1], r"^method_args: expected a mapping$"),
        (["replay", "ewc"], {"lambda_": 1}, r"^method_args\.lambda_: not a listed method"),
        (["replay", "ewc"], {"ewc": 3}, r"^method_args\.ewc: expected a mapping of ewc's arguments$"),
        (["replay", "ewc"], {"replay": {"buffer_size": 2}, "ewc": {"lambda_": -2}}, r"^method_args\.ewc\.lambda_: "),
        (["replay", "ewc"], {"ewc": {"lambda_": 2}}, r"^method_args\.replay\.buffer_size: required by replay"),
    ],
)
def test_bad_method_sections_name_the_key(method, method_args, message):
    with pytest.raises(ValueError, match=message) as error:
        parse_method_section(method, method_args)
    assert "\n" not in str(error.value)


def test_compatibility_with_the_peft_section():
    per_task = {"adapters": "per_task", "init": "previous", "merge": False}
    check_method_compatibility(["ewc", "replay", "lwf"], None)
    check_method_compatibility(["ewc"], {**per_task, "adapters": "shared"})
    check_method_compatibility(["olora", "replay"], {**per_task, "init": "fresh"})
    with pytest.raises(ValueError, match=r"^method: ewc .*adapters: per_task"):
        check_method_compatibility(["replay", "ewc"], per_task)
    for section in (None, {**per_task, "adapters": "shared"}, per_task):
        with pytest.raises(ValueError, match=r"^method: olora .*adapters: per_task and init: fresh"):
            check_method_compatibility(["olora"], section)


class Tagged(ContinualMethod):
    """A method that records its hooks and returns a fixed term."""

    def __init__(self, tag, term="penalty", value=1.0, log=None):
        self.tag, self.term, self.value, self.log = tag, term, value, log if log is not None else []

    def train_dataset(self, ctx):
        self.log.append((self.tag, "dataset", ctx.train_dataset.column_names))
        return ctx.train_dataset.add_column(self.tag, [0] * len(ctx.train_dataset))

    def before_task(self, ctx):
        self.log.append((self.tag, "before"))

    def after_task(self, ctx):
        self.log.append((self.tag, "after", ctx.train_dataset.column_names))

    def collate(self, collator):
        return lambda features: {**collator(features), "order": collator(features).get("order", []) + [self.tag]}

    def extra_columns(self):
        return [self.tag]

    def penalty(self, model, inputs, outputs):
        return {self.term: torch.tensor(self.value)}

    def state_dict(self):
        return {"tag": self.tag}

    def load_state_dict(self, state):
        self.tag = state["tag"]


def test_composite_runs_hooks_in_order_and_adds_penalties():
    log = []
    first, second = Tagged("a", value=1.0, log=log), Tagged("b", value=2.0, log=log)
    third = Tagged("c", term="own", value=4.0, log=log)
    method = CompositeMethod([("a", first), ("b", second), ("c", third)])
    data = toy_dataset(3)
    ctx = TaskContext(0, "t", data, BagOfWords(), pad_collator, 2, 0, 3)
    dataset = method.train_dataset(ctx)
    assert {"a", "b", "c"} <= set(dataset.column_names)
    assert log[1] == ("b", "dataset", [*data.column_names, "a"])  # each sees the previous one's output
    method.before_task(ctx)
    method.after_task(ctx)
    assert [entry[:2] for entry in log[3:]] == [(t, h) for h in ("before", "after") for t in "abc"]
    assert log[-1][2] == data.column_names  # after_task: the original data
    assert method.collate(pad_collator)([data[0]])["order"] == ["a", "b", "c"]
    assert method.extra_columns() == ["a", "b", "c"]
    terms = method.penalty(None, {}, None)
    assert {k: float(v) for k, v in terms.items()} == {"a.penalty": 1.0, "b.penalty": 2.0, "own": 4.0}
    assert method.state_dict() == {"a": {"tag": "a"}, "b": {"tag": "b"}, "c": {"tag": "c"}}
    with pytest.raises(ValueError, match="the checkpoint holds the states of"):
        method.load_state_dict({"a": {}})


def test_build_method_makes_a_composite_whose_state_round_trips():
    method = build_method(["replay", "lwf", "ewc"], {"replay": {"buffer_size": 3}, "ewc": {"lambda_": 1}})
    assert isinstance(method, CompositeMethod) and method.name == "replay+lwf+ewc"
    assert [type(m) for _, m in method.methods] == [Replay, LwF, EWC]
    model, data = BagOfWords(), toy_dataset(6)
    method.after_task(TaskContext(0, "t", data, model, pad_collator, 2, 0, 3))
    buffer = io.BytesIO()
    torch.save(method.state_dict(), buffer)
    buffer.seek(0)
    restored = build_method(["replay", "lwf", "ewc"], {"replay": {"buffer_size": 3}, "ewc": {"lambda_": 1}})
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    assert restored.methods[0][1].buffer == method.methods[0][1].buffer
    assert restored.state_bytes() == method.state_bytes() > 0


@dataclass
class L2Config(MethodConfig):
    strength: float = field(default=1.0, metadata={"help": "weight", "ge": 0})


class L2ToStart(ContinualMethod):
    name = "l2_to_start_test"
    config_class = L2Config


def test_custom_method_with_a_config_class_is_validated():
    register_method("l2_to_start_test", L2ToStart, L2Config)
    assert create_method("l2_to_start_test", strength=2).config.strength == 2.0
    with pytest.raises(ValueError, match=r"^method_args\.strength: expected a number >= 0"):
        parse_method_section("l2_to_start_test", {"strength": -1})
    with pytest.raises(ValueError, match=r"^L2Config\.strength: expected a number >= 0"):
        L2Config(strength=-1)


def test_custom_method_without_config_class_checks_argument_names():
    class Plain(ContinualMethod):
        def __init__(self, strength: float = 1.0):
            self.strength = strength

    register_method("plain_test", Plain)
    assert create_method("plain_test", strength=3).strength == 3
    with pytest.raises(
        ValueError, match=r"^method_args\.strenght: unknown key for plain_test \(did you mean 'strength'\?"
    ):
        create_method("plain_test", strenght=3)


def test_stateless_methods_refuse_foreign_state():
    with pytest.raises(ValueError, match="keeps no state"):
        NoMethod().load_state_dict({"x": 1})
    with pytest.raises(TypeError, match="takes no options"):
        NoMethod(strength=1)


def test_the_custom_method_example_in_the_docs_runs(tmp_path, capsys, monkeypatch):
    text = (REPO / "docs" / "methods.md").read_text(encoding="utf-8")
    code = text.split("## Writing your own method", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    script = tmp_path / "example.py"
    script.write_text(code.replace("/tmp/l2_anchor", str(tmp_path)), encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    runpy.run_path(str(script), run_name="docs_example")
    lines = [line for line in capsys.readouterr().out.splitlines() if not line.startswith("{")]  # not the logs
    assert lines[0] == "0 [None, None]"
    second = eval(lines[1].split(" ", 1)[1])
    assert second[0] == 0.0 and second[1] > 0
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, num_labels=3
    )
    assert lines[2] == f"state bytes: {4 * sum(p.numel() for p in BertForSequenceClassification(config).parameters())}"
