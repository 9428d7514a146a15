"""LoRA adapters over the queue: shared and per-task, saved adapters, merged models, base weights untouched."""

from __future__ import annotations

import pytest
import torch
from peft import PeftModel

from classp_hf.continual.adapters import AdapterSetup, adapter_name_for_task
from classp_hf.continual.config import ConfigError, config_from_dict, parse_peft_section
from classp_hf.continual.results import validate_results
from classp_hf.continual.runner import ContinualRunner
from classp_hf.methods import ContinualMethod, register_method
from classp_hf.optim import list_optimizers

from ..helpers.runs import raw_config

LORA = {"r": 4, "lora_alpha": 8, "lora_dropout": 0.0, "target_modules": ["query", "value"]}


def lora_run(tmp_path, model_dir, **peft):
    raw = raw_config(model_dir, peft={**LORA, **peft})
    raw["training"]["learning_rate"] = 5e-3
    runner = ContinualRunner(config_from_dict(raw), tmp_path / "out", log=False)
    return runner, runner.run().to_dict()


def base_weights(model_dir):
    from transformers import AutoModelForSequenceClassification

    return {
        n: p.detach().clone()
        for n, p in AutoModelForSequenceClassification.from_pretrained(model_dir).named_parameters()
    }


def logits(model, tokenizer, texts=("profits rose sharply", "the flight was late again")):
    model.eval()
    with torch.no_grad():
        return model(**tokenizer(list(texts), return_tensors="pt", padding=True)).logits


@pytest.fixture(scope="module")
def shared_run(tmp_path_factory, tiny_model_dir):
    return lora_run(tmp_path_factory.mktemp("shared"), tiny_model_dir, merge=True)


@pytest.fixture(scope="module")
def per_task_run(tmp_path_factory, tiny_model_dir):
    return lora_run(tmp_path_factory.mktemp("per_task"), tiny_model_dir, adapters="per_task", init="previous")


def test_shared_adapter_results_and_state(shared_run):
    runner, results = shared_run
    validate_results(results)
    assert results["peft"]["adapters"] == "shared"
    trainable = [p for p in runner.model.parameters() if p.requires_grad]
    optimizer_params = {id(p) for p in runner.optimizer.state}
    assert optimizer_params == {id(p) for p in trainable}  # state for trainable parameters only
    last = results["per_task"][-1]
    assert last["trainable_parameters"] == sum(p.numel() for p in trainable) < results["total_parameters"] / 10
    assert last["optimizer_state_bytes"] == 4 * last["trainable_parameters"]  # CLASSP: one float32 per element
    assert sum(float(s["grad_sum"].sum()) for s in runner.optimizer.state.values()) > 0


def test_saved_adapter_reloads_with_identical_predictions(shared_run, tiny_model_dir):
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    runner, _ = shared_run
    folder = runner.output_dir / "adapters" / "amazon_reviews"
    assert (folder / "adapter_config.json").is_file()
    reloaded = PeftModel.from_pretrained(AutoModelForSequenceClassification.from_pretrained(tiny_model_dir), folder)
    torch.testing.assert_close(logits(reloaded, runner.tokenizer), logits(runner.model, runner.tokenizer))


def test_base_weights_untouched_and_merged_model(shared_run, tiny_model_dir):
    from transformers import AutoModelForSequenceClassification

    runner, _ = shared_run
    original = base_weights(tiny_model_dir)
    base = runner.model.get_base_model()
    for name, param in base.named_parameters():
        if "lora_" in name or "modules_to_save" in name:
            continue
        key = name.replace(".base_layer", "").replace(".original_module", "")
        torch.testing.assert_close(param, original[key], rtol=0, atol=0, msg=name)
    merged = AutoModelForSequenceClassification.from_pretrained(runner.output_dir / "merged" / "amazon_reviews")
    torch.testing.assert_close(logits(merged, runner.tokenizer), logits(runner.model, runner.tokenizer))
    final = AutoModelForSequenceClassification.from_pretrained(runner.output_dir / "model")
    assert final.config.id2label[2] == "positive"
    torch.testing.assert_close(logits(final, runner.tokenizer), logits(runner.model, runner.tokenizer))


def test_per_task_adapters(per_task_run, tiny_model_dir):
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    runner, results = per_task_run
    validate_results(results)
    names = ["financial_phrasebank", "amazon_reviews"]
    assert list(runner.model.peft_config) == [adapter_name_for_task(name) for name in names]
    latest, own = results["accuracy_matrix"], results["accuracy_matrix_own_adapter"]
    assert len(own) == 2 and own[0] == latest[0]
    assert own[1][1] == latest[1][1]
    # The first adapter is frozen after its task: with its own adapter, task 1 scores what it scored then.
    assert own[1][0] == latest[0][0]
    for name in names:
        folder = runner.output_dir / "adapters" / name
        reloaded = PeftModel.from_pretrained(AutoModelForSequenceClassification.from_pretrained(tiny_model_dir), folder)
        runner.model.set_adapter(adapter_name_for_task(name))
        torch.testing.assert_close(logits(reloaded, runner.tokenizer), logits(runner.model, runner.tokenizer))
    runner.model.set_adapter(adapter_name_for_task(names[-1]))
    # Only the latest adapter is trainable; the optimizer holds state for it alone.
    trainable = {n for n, p in runner.model.named_parameters() if p.requires_grad}
    assert trainable and all(".task~amazon_reviews~." in n for n in trainable)
    assert {id(p) for p in runner.optimizer.state} == {id(p) for p in runner.model.parameters() if p.requires_grad}
    # Each task's new adapter (with its head copy) adds exactly its trainable parameters to the model.
    first, second = results["per_task"]
    assert second["total_parameters"] == first["total_parameters"] + second["trainable_parameters"]
    all_parameters = sum(p.numel() for p in runner.model.parameters())
    assert results["total_parameters"] == second["total_parameters"] == all_parameters


@pytest.mark.parametrize("optim", sorted(set(list_optimizers()) & {"classp", "sgd", "adam", "adamw", "adagrad"}))
def test_every_optimizer_works_with_lora(tmp_path, tiny_model_dir, optim):
    raw = raw_config(tiny_model_dir, peft=LORA)
    raw["tasks"] = raw["tasks"][:1]
    raw["training"].update(optim=optim, optim_args=None, max_steps=2)
    runner = ContinualRunner(config_from_dict(raw), tmp_path / "out", log=False)
    results = runner.run().to_dict()
    trainable = {id(p) for p in runner.model.parameters() if p.requires_grad}
    assert set(map(id, runner.optimizer.state)) <= trainable
    if optim != "sgd":
        assert results["per_task"][0]["optimizer_state_bytes"] > 0


@pytest.mark.parametrize(
    "peft,message",
    [
        ({"rank": 4}, r"config\.peft\.rank: not a peft\.LoraConfig field"),
        ({"adapters": "each"}, r"config\.peft\.adapters: expected shared or per_task"),
        ({"init": "random"}, r"config\.peft\.init: expected previous or fresh"),
        ({"merge": "yes"}, r"config\.peft\.merge: expected true or false"),
        ({"r": "eight"}, r"config\.peft\.r: expected an integer, got 'eight'"),
        ({"r": 0}, r"config\.peft\.r: expected a positive integer, got 0"),
        ({"lora_dropout": 1.5}, r"config\.peft\.lora_dropout: expected a number in \[0, 1\), got 1\.5"),
        ({"target_modules": 5}, r"config\.peft\.target_modules: expected a string, a list of strings or null"),
        ({"bias": "some"}, r"config\.peft\.bias: expected one of none, all, lora_only, got 'some'"),
        ({"use_dora": "no"}, r"config\.peft\.use_dora: expected true or false, got 'no'"),
    ],
)
def test_invalid_peft_section(tiny_model_dir, peft, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict(raw_config(tiny_model_dir, peft=peft))


def test_peft_section_types_from_lora_config():
    section = parse_peft_section(
        {"r": 4, "lora_alpha": 8.5, "init_lora_weights": "pissa_niter_4", "adapters": "per_task"}
    )
    assert section["init_lora_weights"] == "pissa_niter_4" and section["lora_alpha"] == 8.5
    assert section["init"] == "previous" and section["merge"] is False


def lora_on_tiny_bert(model_dir, first_task, **section):
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(0)
    setup = AdapterSetup(parse_peft_section({**LORA, "adapters": "per_task", **section}))
    return setup, setup.wrap(AutoModelForSequenceClassification.from_pretrained(model_dir), first_task)


def adapter_tensors(model, adapter):
    """An adapter's tensors by name without the adapter part (``...query.lora_A.weight``)."""
    return {
        ".".join(part for part in name.split(".") if part != adapter): param
        for name, param in model.named_parameters()
        if adapter in name.split(".")
    }


def randomise(model, adapter):
    with torch.no_grad():
        for param in adapter_tensors(model, adapter).values():
            param.normal_()


@pytest.mark.parametrize("second", ["value", "query", "dense", "classifier", "default", "first.2", "firs"])
def test_per_task_adapter_named_like_a_module_copies_every_tensor(tiny_model_dir, second):
    """A task named like a module used to get a partial copy (``.value.`` matched the module too)."""
    setup, model = lora_on_tiny_bert(tiny_model_dir, "first")
    randomise(model, adapter_name_for_task("first"))
    assert setup.start_task(model, second)
    source = adapter_tensors(model, adapter_name_for_task("first"))
    target = adapter_tensors(model, adapter_name_for_task(second))
    assert len(target) == 2 * 2 * 2 + 2  # 2 layers x (query, value) x (A, B) + the head copy's weight and bias
    assert target.keys() == source.keys()
    for name, param in target.items():
        torch.testing.assert_close(param, source[name], rtol=0, atol=0, msg=name)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in model.named_parameters() if adapter_name_for_task(second) in n.split(".")}


def test_fresh_per_task_adapter_is_not_copied(tiny_model_dir):
    setup, model = lora_on_tiny_bert(tiny_model_dir, "first", init="fresh")
    randomise(model, adapter_name_for_task("first"))
    setup.start_task(model, "value")
    source = adapter_tensors(model, adapter_name_for_task("first"))
    target = adapter_tensors(model, adapter_name_for_task("value"))
    assert not any(torch.equal(param, source[name]) for name, param in target.items() if "lora_A" in name)


def test_copy_refuses_an_adapter_name_that_is_a_module_name(tiny_model_dir):
    """The copy checks that every tensor of the target was written: a clashing name cannot pass silently."""
    import peft

    setup, model = lora_on_tiny_bert(tiny_model_dir, "first")
    model.add_adapter("value", peft.LoraConfig(**LORA, task_type="SEQ_CLS"))
    with pytest.raises(RuntimeError, match=r"initialising adapter 'value' from 'task~first~' copied \d+ of its \d+"):
        setup._copy_adapter(model, adapter_name_for_task("first"), "value")


def test_adapter_of_a_task_named_value_saves_under_the_task_name_and_reloads(tmp_path, tiny_model_dir):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    setup, model = lora_on_tiny_bert(tiny_model_dir, "first")
    setup.start_task(model, "value")
    randomise(model, adapter_name_for_task("value"))
    folder = setup.save(model, tmp_path / "adapters" / "value", "value")
    assert sorted(p.name for p in (tmp_path / "adapters").iterdir()) == ["value"]
    reloaded = PeftModel.from_pretrained(AutoModelForSequenceClassification.from_pretrained(tiny_model_dir), folder)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    torch.testing.assert_close(logits(reloaded, tokenizer), logits(model, tokenizer))
    plain = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir)
    assert not torch.allclose(logits(reloaded, tokenizer), logits(plain, tokenizer))  # the adapter counts


class AnchorL2(ContinualMethod):
    """A minimal stateful method (EWC-shaped): pulls trainable weights towards their values after the last task."""

    name = "anchor_l2_test"

    def __init__(self, strength: float = 1.0):
        self.strength = strength
        self.anchors: dict[str, torch.Tensor] = {}
        self.calls: list[tuple[str, int, bool]] = []
        self.penalties: list[float] = []

    def before_task(self, ctx):
        self.calls.append(("before", ctx.index, isinstance(ctx.model, PeftModel)))

    def penalty(self, model, inputs, outputs):
        terms = [
            ((param - self.anchors[name]) ** 2).sum()
            for name, param in model.named_parameters()
            if param.requires_grad and name in self.anchors
        ]
        if not terms:
            return None
        value = self.strength * torch.stack(terms).sum()
        self.penalties.append(float(value.detach()))
        return {"anchor": value}

    def after_task(self, ctx):
        self.calls.append(("after", ctx.index, isinstance(ctx.model, PeftModel)))
        self.anchors = {n: p.detach().clone() for n, p in ctx.model.named_parameters() if p.requires_grad}

    def state_dict(self):
        return {"anchors": self.anchors}

    def load_state_dict(self, state):
        self.anchors = dict(state["anchors"])


def test_a_stateful_method_runs_on_lora_and_survives_resume(tmp_path, tiny_model_dir):
    """Later methods (EWC, replay) plug in the same way on a PeftModel, and their state is checkpointed."""
    register_method(AnchorL2.name, AnchorL2)
    raw = raw_config(tiny_model_dir, peft={**LORA, "adapters": "shared"}, method=AnchorL2.name)
    raw["method_args"] = {"strength": 10.0}
    raw["training"]["learning_rate"] = 5e-3
    reference = ContinualRunner(config_from_dict(raw), tmp_path / "ref", log=False)
    results = reference.run().to_dict()
    method = reference.method
    assert method.calls == [("before", 0, True), ("after", 0, True), ("before", 1, True), ("after", 1, True)]
    # Anchored on the adapter and its head copy only (the frozen base has no trainable weight).
    assert method.anchors and all("lora_" in n or "modules_to_save" in n for n in method.anchors)
    assert len(method.penalties) >= 2 and method.penalties[-1] > 0  # task 2 trained against task 1's anchors

    class KilledBeforeSecondTask(ContinualRunner):
        def _trainer(self, index, context=None):
            if index == 1:
                raise RuntimeError("killed")
            return super()._trainer(index, context)

    with pytest.raises(RuntimeError, match="killed"):
        KilledBeforeSecondTask(config_from_dict(raw), tmp_path / "out", log=False).run()
    resumed = ContinualRunner(config_from_dict(raw), tmp_path / "out", log=False, resume=True)
    resumed_results = resumed.run().to_dict()
    assert resumed.method.penalties == method.penalties[-len(resumed.method.penalties) :]  # same anchors restored
    assert resumed_results["accuracy_matrix"] == results["accuracy_matrix"]
