"""Every sequence-classification family, encoders and decoders, on tiny random models built from configs.

For each family the installed transformers has (BERT, RoBERTa, DeBERTa-v2, DistilBERT, ELECTRA, ModernBERT,
GPT-2, Llama, Qwen2, Mistral): full fine-tuning with CLASSP, one shared LoRA adapter, one adapter per task.
On Llama (a decoder whose tokenizer has no pad token) and BERT: O-LoRA; on Llama: ``[replay, ewc]``, ``lwf``,
``--resume`` after a kill, gradient checkpointing, bfloat16 weights, the size of an adapters-only checkpoint.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from classp_hf.continual.adapters import adapter_name_for_task
from classp_hf.continual.compare.grid import load_presets
from classp_hf.continual.config import ConfigError, config_from_dict, load_config
from classp_hf.continual.families import classification_head
from classp_hf.continual.results import validate_results
from classp_hf.continual.runner import ContinualRunner

from ..helpers.model_families import DECODERS, EOS, REPO, available_families, run_config

FAMILY_NAMES = available_families()
TASKS = ["financial_phrasebank", "amazon_reviews"]
LORA = {"r": 4, "lora_alpha": 8, "lora_dropout": 0.0}
#: families PEFT has no default ``target_modules`` for
NO_PEFT_DEFAULT = {"distilbert", "modernbert"}
TEXTS = ["profits rose sharply this quarter , beating every forecast", "late again"]


def lora_section(family: str, **extra) -> dict:
    """PEFT's default targets where it has them, ``all-linear`` elsewhere."""
    targets = {"target_modules": "all-linear"} if family in NO_PEFT_DEFAULT else {}
    return {**LORA, **targets, **extra}


VARIANTS = {
    "full": lambda family: {},
    "lora": lambda family: {"peft": lora_section(family)},
    "per_task": lambda family: {"peft": lora_section(family, adapters="per_task")},
}


@pytest.fixture(scope="module", autouse=True)
def fast_tiny_runs():
    """Speed only, nothing family-specific: one thread (tiny matrices run 3-6x faster on a shared CPU), no
    plots (the same for every family, tested in test_report), no ``gc.collect()`` at the end of each task."""
    import accelerate.utils.memory

    from classp_hf.continual import report

    def markdown_only(results, output_dir):
        return [report.write_text_atomic(Path(output_dir) / report.REPORT_FILENAME, report.render_markdown(results))]

    clear_cache = accelerate.utils.memory.clear_device_cache
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(report, "write_report", markdown_only)
        patch.setattr(accelerate.utils.memory, "clear_device_cache", lambda garbage_collection=False: clear_cache())
        yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def family_run(tmp_path_factory, family_model_dir):
    """``family_run(family, variant)``: ``(runner, results)`` of a finished 2-task run (each run made once)."""
    done: dict[tuple[str, str], tuple[ContinualRunner, dict]] = {}

    def run(family: str, variant: str) -> tuple[ContinualRunner, dict]:
        if (family, variant) not in done:
            raw = run_config(family_model_dir(family), **VARIANTS[variant](family))
            output = tmp_path_factory.mktemp(f"{family}-{variant}") / "out"
            runner = ContinualRunner(config_from_dict(raw), output, log=False)
            done[family, variant] = runner, runner.run().to_dict()
        return done[family, variant]

    return run


def logits(model, tokenizer, texts=TEXTS) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(**tokenizer(list(texts), return_tensors="pt", padding=True)).logits


def base_model(model_dir: str, tokenizer) -> torch.nn.Module:
    """The saved tiny model, as a user loads it before adding an adapter (a decoder: pad token id set)."""
    model = AutoModelForSequenceClassification.from_pretrained(model_dir)
    model.config.pad_token_id = tokenizer.pad_token_id
    return model


def trainable(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}


# -- the matrix: every family, full fine-tuning, a shared adapter, one adapter per task -----------------------


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_full_fine_tuning_with_classp(family, family_run, family_model_dir):
    runner, results = family_run(family, "full")
    validate_results(results)
    assert type(runner.optimizer).__name__ == "CLASSP" and results["status"] == "complete"
    assert all(row["steps"] == 2 for row in results["per_task"])
    with_state = {id(p) for p in runner.optimizer.state}  # CLASSP's S, for every weight that got a gradient
    assert with_state and with_state <= {id(p) for p in runner.model.parameters()}
    initial = AutoModelForSequenceClassification.from_pretrained(family_model_dir(family))
    final = AutoModelForSequenceClassification.from_pretrained(runner.output_dir / "model")
    changed = [n for n, p in final.named_parameters() if not torch.equal(p, initial.state_dict()[n])]
    assert changed, "no weight was trained"
    tokenizer = AutoTokenizer.from_pretrained(runner.output_dir / "model")
    assert final.config.pad_token_id == tokenizer.pad_token_id is not None  # saved with the pad token
    torch.testing.assert_close(logits(final, tokenizer), logits(runner.model, runner.tokenizer))


def assert_head_in_every_adapter(model, names: list[str], head: list[str]) -> None:
    """Each adapter has its own trainable copy of every head module (``modules_to_save``)."""
    parameters = dict(model.named_parameters())
    for adapter in names:
        for module in head:
            copies = [n for n in parameters if f".{module}.modules_to_save.{adapter}." in f".{n}"]
            assert copies, f"no copy of {module} for adapter {adapter}"


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_shared_lora_adapter(family, family_run, family_model_dir):
    runner, results = family_run(family, "lora")
    validate_results(results)
    model = runner.model
    head = classification_head(model.get_base_model())
    assert runner.adapters.head == head
    assert_head_in_every_adapter(model, ["default"], head)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert names and all("lora_" in n or ".modules_to_save." in n for n in names)
    assert any("lora_" in n for n in names)
    assert results["per_task"][-1]["trainable_parameters"] < results["total_parameters"] / 5
    folder = runner.output_dir / "adapters" / TASKS[-1]
    reloaded = PeftModel.from_pretrained(base_model(family_model_dir(family), runner.tokenizer), folder)
    torch.testing.assert_close(logits(reloaded, runner.tokenizer), logits(model, runner.tokenizer))


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_lora_adapter_per_task(family, family_run, family_model_dir):
    runner, results = family_run(family, "per_task")
    validate_results(results)
    model = runner.model
    names = [adapter_name_for_task(task) for task in TASKS]
    assert list(model.peft_config) == names
    assert_head_in_every_adapter(model, names, classification_head(model.get_base_model()))
    for task, name in zip(TASKS, names):
        base = base_model(family_model_dir(family), runner.tokenizer)
        reloaded = PeftModel.from_pretrained(base, runner.output_dir / "adapters" / task)
        model.set_adapter(name)
        torch.testing.assert_close(logits(reloaded, runner.tokenizer), logits(model, runner.tokenizer))


# -- pad token, PEFT targets, unsupported families: handled or refused in one line at load -------------------


@pytest.mark.parametrize("family", [f for f in DECODERS if f in FAMILY_NAMES])
def test_decoder_tokenizer_without_pad_pads_with_eos(family, family_model_dir, tmp_path, capsys):
    folder = family_model_dir(family)
    # the saved tokenizer has no pad token; transformers' Qwen2Tokenizer gives it <|endoftext|> when loaded
    without_pad = AutoTokenizer.from_pretrained(folder).pad_token is None
    assert without_pad == (family != "qwen2")
    runner = ContinualRunner(config_from_dict(run_config(folder)), tmp_path / "out")
    runner.setup()
    printed = [line for line in capsys.readouterr().out.splitlines() if "pad token" in line]
    assert len(printed) == without_pad, printed
    assert not printed or "padding with its end-of-sequence token '<|endoftext|>'" in printed[0]
    tokenizer, model = runner.tokenizer, runner.model
    assert tokenizer.pad_token == EOS and model.config.pad_token_id == tokenizer.convert_tokens_to_ids(EOS)
    # the decoder pools the last token that is not padding: a text scores the same alone and padded in a batch
    alone = logits(model, tokenizer, TEXTS[-1:])
    batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
    assert int(batch["attention_mask"][-1].sum()) < batch["input_ids"].shape[1]  # the short text is padded
    torch.testing.assert_close(logits(model, tokenizer)[-1:], alone, rtol=1e-5, atol=1e-5)
    assert not (tmp_path / "out").exists()


def copy_model(family_model_dir, family: str, destination: Path) -> Path:
    shutil.copytree(family_model_dir(family), destination)
    return destination


def test_tokenizer_without_pad_and_eos_is_refused(family_model_dir, tmp_path):
    from transformers import PreTrainedTokenizerFast

    folder = copy_model(family_model_dir, "llama", tmp_path / "model")
    plain = PreTrainedTokenizerFast(tokenizer_object=AutoTokenizer.from_pretrained(folder).backend_tokenizer)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (folder / name).unlink(missing_ok=True)
    plain.save_pretrained(folder)
    runner = ContinualRunner(config_from_dict(run_config(folder)), tmp_path / "out", log=False)
    with pytest.raises(ConfigError, match=r"^config\.model: the tokenizer of '.*' has no pad token and no end-of-seq"):
        runner.setup()
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("family", sorted(NO_PEFT_DEFAULT & set(FAMILY_NAMES)))
def test_family_without_peft_default_names_the_key_and_the_layers(family, family_model_dir, tmp_path):
    expected = {"distilbert": "k_lin, lin1, lin2, out_lin, q_lin, v_lin", "modernbert": "Wi, Wo, Wqkv"}[family]
    runner = ContinualRunner(config_from_dict(run_config(family_model_dir(family), peft=LORA)), tmp_path / "out")
    message = (
        f"config.peft.target_modules: PEFT has no default for '{family}' models; set it to some of the model's "
        f"linear layers: {expected} (or all-linear)"
    )
    with pytest.raises(ConfigError) as error:
        runner.setup()
    assert str(error.value) == message
    assert not (tmp_path / "out").exists()


def test_target_modules_matching_nothing_is_one_line(family_model_dir, tmp_path):
    raw = run_config(family_model_dir("llama"), peft={**LORA, "target_modules": ["query", "value"]})
    runner = ContinualRunner(config_from_dict(raw), tmp_path / "out", log=False)
    with pytest.raises(ConfigError) as error:
        runner.setup()
    message = str(error.value)
    assert message.startswith("config.peft.target_modules: ") and "\n" not in message
    assert "down_proj, gate_proj, k_proj, o_proj, q_proj, up_proj, v_proj" in message


def test_family_without_sequence_classification_is_refused(family_model_dir, tmp_path):
    folder = copy_model(family_model_dir, "bert", tmp_path / "model")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "model_type": "vit", "architectures": ["ViTModel"]}))
    runner = ContinualRunner(config_from_dict(run_config(folder)), tmp_path / "out", log=False)
    with pytest.raises(ConfigError, match=r"^config\.model: '.*' is a 'vit' model, a family with no sequence-class"):
        runner.setup()


def test_head_found_by_what_the_model_reports(family_model_dir):
    expected = {
        "roberta": ["classifier"],
        "deberta-v2": ["pooler", "classifier"],
        "distilbert": ["pre_classifier", "classifier"],
        "modernbert": ["head", "classifier"],
        "llama": ["score"],
        "gpt2": ["score"],
    }
    for family, head in expected.items():
        if family in FAMILY_NAMES:
            model = AutoModelForSequenceClassification.from_pretrained(family_model_dir(family))
            assert classification_head(model) == head, family


@pytest.mark.parametrize("family,peft", [("llama", None), ("distilbert", {**LORA, "target_modules": "all-linear"})])
def test_optim_groups_head_pattern_is_the_head_the_model_reports(family, peft, family_model_dir, tmp_path):
    # the `classp_head` preset's head group, so the preset works on decoders too
    groups = next(g for g in load_presets()["classp_head"].grid["training.optim_groups"] if g)
    assert groups == [{"params": "<head>", "lr_scale": 0.1}]
    training = {**run_config("x")["training"], "optim_groups": groups}
    raw = run_config(family_model_dir(family), training=training, peft=peft)
    runner = ContinualRunner(config_from_dict(raw), tmp_path / "out", log=False)
    runner.setup()
    trainer = runner._trainer(0)
    trainer.create_optimizer()
    names = {id(p): n for n, p in runner.model.named_parameters()}
    scaled = {names[id(p)] for g in trainer.optimizer.param_groups if g["lr"] == 0.1 * 1e-2 for p in g["params"]}
    head = classification_head(runner.model.get_base_model() if peft else runner.model)
    expected = {
        n
        for n, p in runner.model.named_parameters()
        if p.requires_grad and n.removeprefix("base_model.model.").split(".")[0] in head
    }
    assert scaled == expected and expected
    if family == "distilbert":
        assert any("pre_classifier" in n for n in scaled)


# -- methods, resume, memory: on one decoder (and O-LoRA on one encoder) ------------------------------------


def method_run(tmp_path, model_dir, **overrides):
    runner = ContinualRunner(config_from_dict(run_config(model_dir, **overrides)), tmp_path / "out", log=False)
    return runner, runner.run().to_dict()


@pytest.mark.parametrize("family", ["llama", "bert"])
def test_olora(family, family_model_dir, tmp_path):
    peft = lora_section(family, adapters="per_task", init="fresh")
    runner, results = method_run(tmp_path, family_model_dir(family), peft=peft, method="olora")
    validate_results(results)
    model = runner.model
    first = adapter_name_for_task(TASKS[0])
    assert list(model.peft_config) == [first, adapter_name_for_task(TASKS[1])]
    saved = PeftModel.from_pretrained(
        base_model(family_model_dir(family), runner.tokenizer), runner.output_dir / "adapters" / TASKS[0]
    )
    frozen = {n.replace(f".{first}.", ".default."): p for n, p in model.named_parameters() if f".{first}." in n}
    for name, param in saved.named_parameters():
        if ".default." in name:  # the first adapter did not move while the second task trained
            assert not frozen[name].requires_grad
            torch.testing.assert_close(frozen[name], param, rtol=0, atol=0)


@pytest.mark.parametrize("method", [["replay", "ewc"], "lwf"], ids=["replay+ewc", "lwf"])
def test_methods_on_a_decoder(method, family_model_dir, tmp_path):
    args = {"replay": {"buffer_size": 8}, "ewc": {"lambda_": 10.0, "fisher_samples": 4}}
    method_args = {k: v for k, v in args.items() if k in method} if isinstance(method, list) else {}
    runner, results = method_run(tmp_path, family_model_dir("llama"), method=method, method_args=method_args)
    validate_results(results)
    assert results["per_task"][1]["method_state_bytes"] > 0  # buffer and Fisher, or the recorded logits


class KilledBeforeSecondTask(ContinualRunner):
    def _trainer(self, index, context=None):
        if index == 1:
            raise KeyboardInterrupt("killed before task 1")
        return super()._trainer(index, context)


def test_resume_after_a_kill_on_a_decoder_gives_identical_results(family_run, family_model_dir, tmp_path):
    reference, reference_results = family_run("llama", "lora")
    config = config_from_dict(run_config(family_model_dir("llama"), **VARIANTS["lora"]("llama")))
    with pytest.raises(KeyboardInterrupt):
        KilledBeforeSecondTask(config, tmp_path / "out", log=False).run()
    resumed = ContinualRunner(config, tmp_path / "out", log=False, resume=True)
    results = resumed.run().to_dict()
    assert results["resumed_after_tasks"] == [1]
    for key in ("accuracy_matrix", "initial_accuracy", "macro_f1_matrix"):
        assert results[key] == reference_results[key], key
    assert [row["train_loss"] for row in results["per_task"]] == [
        r["train_loss"] for r in reference_results["per_task"]
    ]
    expected = trainable(reference.model)
    for name, param in trainable(resumed.model).items():
        torch.testing.assert_close(param, expected[name], rtol=0, atol=0, msg=name)


@pytest.mark.parametrize("variant", ["full", "lora"])
def test_activation_checkpointing_trains_what_the_plain_run_trains(variant, family_run, family_model_dir, tmp_path):
    reference, reference_results = family_run("llama", variant)
    training = {**run_config("x")["training"], "activation_checkpointing": True}
    # reentrant checkpointing gives frozen inputs no gradient: LoRA needs inputs that require grad
    training["activation_checkpointing_kwargs"] = {"use_reentrant": True}
    runner, results = method_run(tmp_path, family_model_dir("llama"), training=training, **VARIANTS[variant]("llama"))
    base = runner.model.get_base_model() if variant == "lora" else runner.model
    assert base.is_activation_checkpointing
    assert results["accuracy_matrix"] == reference_results["accuracy_matrix"]
    expected = trainable(reference.model)
    for name, param in trainable(runner.model).items():
        torch.testing.assert_close(param, expected[name], rtol=1e-5, atol=1e-6, msg=name)


def test_lora_with_activation_checkpointing_makes_the_inputs_require_grad(family_model_dir, tmp_path):
    """Frozen embeddings give a reentrant checkpointed layer no input that requires grad: set up before training."""
    training = {**run_config("x")["training"], "activation_checkpointing": True}  # transformers 5's name
    raw = run_config(family_model_dir("llama"), training=training, peft=lora_section("llama"))
    runner = ContinualRunner(config_from_dict(raw), tmp_path / "out", log=False)
    runner.setup()
    ids = torch.tensor([[5, 6, 7]])
    assert not runner.model.get_input_embeddings().weight.requires_grad
    assert runner.model.get_input_embeddings()(ids).requires_grad


@pytest.mark.parametrize("key", ["activation_checkpointing", "gradient_checkpointing"])
def test_activation_checkpointing_unsupported_is_refused(key, family_model_dir, tmp_path, monkeypatch):
    from transformers import LlamaForSequenceClassification

    monkeypatch.setattr(LlamaForSequenceClassification, "supports_gradient_checkpointing", False)
    training = {**run_config("x")["training"], key: True}
    runner = ContinualRunner(
        config_from_dict(run_config(family_model_dir("llama"), training=training)), tmp_path / "out", log=False
    )
    message = (
        "config.training.activation_checkpointing (or gradient_checkpointing): LlamaForSequenceClassification does "
        "not support activation checkpointing; leave it out"
    )
    with pytest.raises(ConfigError) as error:
        runner.setup()
    assert str(error.value) == message
    assert not (tmp_path / "out").exists()


def test_bfloat16_decoder_with_lora_on_the_cpu(family_model_dir, tmp_path):
    runner, results = method_run(
        tmp_path, family_model_dir("llama"), model_dtype="bfloat16", peft=lora_section("llama")
    )
    validate_results(results)
    model = runner.model
    assert model.get_base_model().model.embed_tokens.weight.dtype == torch.bfloat16
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert lora_b and all(p.dtype == torch.float32 for p in lora_b)  # PEFT keeps adapters in float32
    assert any(bool(p.abs().sum() > 0) for p in lora_b)  # lora_B starts at zero: trained
    assert all(row["train_loss"] is not None for row in results["per_task"])


def test_adapters_only_checkpoint_is_small(family_run):
    def checkpoint_bytes(runner):
        state = json.loads((runner.output_dir / "run_state.json").read_text())
        folder = runner.output_dir / state["checkpoint"]
        return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())

    full, lora = checkpoint_bytes(family_run("llama", "full")[0]), checkpoint_bytes(family_run("llama", "lora")[0])
    assert lora < 0.1 * full, (lora, full)


# -- the decoder recipe ---------------------------------------------------------------------------------------


def test_decoder_lora_recipe_sets_up_with_a_tiny_decoder(family_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("CLASSP_HF_DATA", str(REPO / "recipes" / "data" / "quickstart"))
    path = REPO / "recipes" / "configs" / "decoder_lora.yaml"
    config = load_config(path, {"model": family_model_dir("qwen2"), "max_length": 32})
    runner = ContinualRunner(config, tmp_path / "out", log=False)
    runner.setup()
    assert runner.tokenizer.pad_token == EOS
    names = {n for n, p in runner.model.named_parameters() if p.requires_grad}
    assert any(".q_proj.lora_A." in n for n in names) and any(".score.modules_to_save." in n for n in names)
    assert not (tmp_path / "out").exists()


def test_compare_lora_classp_and_olora_on_a_decoder(family_model_dir, tmp_path):
    """``classp-hf compare`` (in this process) on the tiny Llama: a shared adapter with CLASSP and O-LoRA complete."""
    import yaml

    from classp_hf.continual.compare import compare

    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump(run_config(family_model_dir("llama"), validation_fraction=0.25)))
    small = {"peft.r": 4, "peft.lora_dropout": 0.0}
    settings = [
        {"name": "lora_classp", "preset": "lora_classp", "grid": None, "overrides": small},
        {"name": "olora", "preset": "olora", "grid": None, "overrides": {**small, "training.learning_rate": 1e-3}},
    ]
    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml.safe_dump({"base": "base.yaml", "seeds": [0], "settings": settings}))
    compare(grid, tmp_path / "out", launcher="inprocess", log=False)
    comparison = json.loads((tmp_path / "out" / "comparison.json").read_text())
    runs = {setting["name"]: setting for setting in comparison["settings"]}
    assert set(runs) == {"lora_classp", "olora"}
    for name in runs:
        results = json.loads((tmp_path / "out" / "runs" / name / "default" / "seed0" / "results.json").read_text())
        assert results["status"] == "complete" and results["model"] == family_model_dir("llama")
    olora = json.loads((tmp_path / "out" / "runs" / "olora" / "default" / "seed0" / "results.json").read_text())
    assert olora["method"] == "olora" and olora["peft"]["adapters"] == "per_task"
