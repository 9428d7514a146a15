"""The optimizer state crosses tasks by parameter name into each task's own Trainer; DDP keeps every rank equal."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
import yaml

from classp_hf.continual.config import config_from_dict
from classp_hf.continual.optimizer_state import capture_optimizer_state, check_named_state, named_state_bytes
from classp_hf.continual.results import validate_results
from classp_hf.continual.runner import ContinualRunner
from classp_hf.trainer import Trainer, unwrap_optimizer

from ..helpers.resume import Killed, KilledBeforeTask, three_task_config


class OldHandOver(ContinualRunner):
    """The hand-over before the reshape: one optimizer object reused by every task's Trainer, with the task's
    learning rate written into ``lr`` and ``initial_lr`` (kept here as the reference)."""

    handed_over = None

    def _trainer(self, index, context=None):
        from transformers import DataCollatorWithPadding

        args = self.task_args[index]
        trainer = Trainer(
            model=self.model,
            args=args,
            train_dataset=self.tasks[index].train,
            data_collator=DataCollatorWithPadding(self.tokenizer),
            processing_class=self.tokenizer,
            continual_method=self.method,
        )
        if self.handed_over is None:
            trainer.create_optimizer()
            self.handed_over = unwrap_optimizer(trainer.optimizer)
        else:
            for group in self.handed_over.param_groups:
                group["lr"] = group["initial_lr"] = args.learning_rate
            trainer.optimizer = self.handed_over
        return trainer


@pytest.mark.parametrize("optim_args", ["power=1,eps=1e-8", "threshold=0.5,threshold_mode=relative,power=2"])
def test_carried_state_gives_the_same_run_as_the_old_hand_over(tmp_path, tiny_model_dir, optim_args):
    raw = three_task_config(tiny_model_dir)
    raw["training"]["optim_args"] = optim_args
    new = ContinualRunner(config_from_dict(raw), tmp_path / "new", log=False)
    old = OldHandOver(config_from_dict(raw), tmp_path / "old", log=False)
    new_results, old_results = new.run().to_dict(), old.run().to_dict()
    for key in ("accuracy_matrix", "macro_f1_matrix", "metrics"):
        assert new_results[key] == old_results[key], key
    assert [t["train_loss"] for t in new_results["per_task"]] == [t["train_loss"] for t in old_results["per_task"]]
    for (name, a), (_, b) in zip(new.model.named_parameters(), old.model.named_parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    old_state = {name: old.handed_over.state[p]["grad_sum"] for name, p in old.model.named_parameters()}
    carried = new.optimizer_state["state"]
    assert set(carried) == set(old_state)
    for name, values in carried.items():
        torch.testing.assert_close(values["grad_sum"], old_state[name], rtol=0, atol=0, msg=name)
    # a new optimizer per task, and results count the carried state's bytes
    assert new.optimizer is not None and new.optimizer is not old.handed_over
    assert new_results["per_task"][-1]["optimizer_state_bytes"] == named_state_bytes(new.optimizer_state) > 0


def test_capture_is_keyed_by_parameter_name_and_checked_on_load(tiny_model):
    optimizer = torch.optim.Adam(tiny_model.parameters(), lr=1e-3)
    tiny_model(input_ids=torch.tensor([[101, 2000, 102]]), labels=torch.tensor([1])).loss.backward()
    optimizer.step()

    class Stub:
        model, is_fsdp_enabled, is_deepspeed_enabled = tiny_model, False, False

    Stub.optimizer = optimizer
    named = check_named_state(capture_optimizer_state(Stub), "x")
    assert set(named["state"]) == {name for name, _ in tiny_model.named_parameters()}
    assert set(named["state"]["classifier.weight"]) == {"step", "exp_avg", "exp_avg_sq"}
    with pytest.raises(ValueError, match="x is not a classp_hf optimizer state"):
        check_named_state({"state": {}}, "x")


DRIVER = """
import sys
import torch
from classp_hf.continual.config import load_config
from classp_hf.continual.runner import ContinualRunner

config_path, output, dump = sys.argv[1:4]
runner = ContinualRunner(load_config(config_path), output, log=True, resume=True)
runner.run()
rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
torch.save(
    {
        "weights": {name: p.detach().clone() for name, p in runner.model.named_parameters()},
        "S": {name: v["grad_sum"].clone() for name, v in runner.optimizer_state["state"].items()},
    },
    f"{dump}/rank{rank}.pt",
)
"""


def test_ddp_resumes_a_one_process_run_and_keeps_every_rank_equal(tmp_path, tiny_model_dir):
    """1 process for task 1, killed; resumed under DDP with 2 CPU processes (torchrun, gloo) for tasks 2 and 3."""
    raw = three_task_config(tiny_model_dir)
    raw["training"]["num_train_epochs"] = 2
    config_path = tmp_path / "run.yaml"
    config_path.write_text(yaml.safe_dump(raw))
    output = tmp_path / "out"

    class KilledBeforeSecondTask(KilledBeforeTask):
        kill_at = 1

    with pytest.raises(Killed):
        KilledBeforeSecondTask(config_from_dict(raw), output, log=False).run()
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", str(driver)]
    result = subprocess.run(
        [*command, str(config_path), str(output), str(tmp_path)], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("task 2/3 amazon_reviews: start") == 1  # only the main process prints
    results = json.loads((output / "results.json").read_text())
    validate_results(results)
    assert results["status"] == "complete" and results["resumed_after_tasks"] == [1]
    assert results["per_task"][0]["steps"] == 8  # 32 examples / 8 per device x 2 epochs, one process
    assert results["per_task"][1]["steps"] == 4  # 32 examples / (8 per device x 2 processes) x 2 epochs
    assert all(task["train_loss"] < 1.6 for task in results["per_task"])  # ~ln(3), not 2x (transformers#37474)
    assert json.loads((output / "run_state.json").read_text())["num_processes"] == 2
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    for part in ("weights", "S"):
        assert ranks[0][part].keys() == ranks[1][part].keys() and ranks[0][part]
        for name in ranks[0][part]:
            torch.testing.assert_close(ranks[0][part][name], ranks[1][part][name], rtol=0, atol=0, msg=name)


def test_transformers_prepares_as_the_carried_state_expects(tmp_path, tiny_model):
    """Pins the transformers behaviour StateCarryingTrainer relies on (its _prepare_for_training override).

    ``Trainer.train`` calls the private ``_prepare_for_training(max_steps, train_dataloader, resume_from_checkpoint)``
    once, which prepares the optimizer with accelerate, then calls ``create_scheduler`` with ``lr_scheduler`` unset,
    and returns ``(model, train_dataloader)`` before the first optimizer step.
    """
    import inspect

    import transformers
    from accelerate.optimizer import AcceleratedOptimizer
    from datasets import Dataset

    parameters = list(inspect.signature(transformers.Trainer._prepare_for_training).parameters)
    assert parameters == ["self", "max_steps", "train_dataloader", "resume_from_checkpoint"]
    events = []

    class Recording(Trainer):
        def create_scheduler(self, num_training_steps, optimizer=None):
            events.append(("scheduler", type(self.optimizer), self.lr_scheduler is None))
            return super().create_scheduler(num_training_steps, optimizer)

        def _prepare_for_training(self, *args, **kwargs):
            events.append(("prepare", None, None))
            prepared = super()._prepare_for_training(*args, **kwargs)
            steps = sum(len(s) for s in unwrap_optimizer(self.optimizer).state.values())
            events.append(("prepared", type(self.optimizer), steps == 0 and len(prepared) == 2))
            return prepared

        def optimizer_step_seen(self):
            return any(len(s) for s in unwrap_optimizer(self.optimizer).state.values())

    data = Dataset.from_dict({"input_ids": [[101, 2000 + i, 102] for i in range(4)], "labels": [0, 1, 2, 0]})
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=2, report_to=[], use_cpu=True
    )
    trainer = Recording(model=tiny_model, args=args, train_dataset=data)
    trainer.train()
    assert events == [
        ("prepare", None, None),
        ("scheduler", AcceleratedOptimizer, True),  # inside it, after accelerate prepared the optimizer
        ("prepared", AcceleratedOptimizer, True),  # returned (model, dataloader), no step taken yet
    ]
    assert trainer.optimizer_step_seen()
