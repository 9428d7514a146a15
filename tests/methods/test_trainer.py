"""Each method through classp_hf.Trainer over two tasks, in the continual runner's order of calls."""

from __future__ import annotations

import pytest
import torch
from transformers import BertForSequenceClassification, DataCollatorWithPadding

from classp_hf import TrainingArguments
from classp_hf.methods import TaskContext, build_method
from classp_hf.trainer import Trainer

from ..helpers.methods import toy_dataset
from ..helpers.runs import tiny_bert_config


def run_two_tasks(tmp_path, tokenizer, method):
    """Trains two 2-step tasks; returns the method terms logged per task and the training batch sizes."""
    torch.manual_seed(0)
    model = BertForSequenceClassification(tiny_bert_config(vocab_size=100, num_hidden_layers=1))
    collator = DataCollatorWithPadding(tokenizer)
    tasks = [toy_dataset(12, labels=(0, 1), seed=1), toy_dataset(12, labels=(1, 2), seed=2, offset=50)]
    logged, sizes = [], []
    for index, data in enumerate(tasks):
        ctx = TaskContext(index, f"t{index}", data, model, collator, batch_size=4, seed=0, num_labels=3)
        dataset = method.train_dataset(ctx)
        args = TrainingArguments(
            output_dir=str(tmp_path / f"t{index}"),
            optim="classp",
            learning_rate=1e-3,
            per_device_train_batch_size=4,
            max_steps=2,
            logging_steps=1,
            report_to=[],
            disable_tqdm=True,
            use_cpu=True,
            save_strategy="no",
            seed=0,
        )
        trainer = Trainer(model, args, train_dataset=dataset, data_collator=collator, continual_method=method)
        ctx.trainer = trainer
        method.before_task(ctx)
        loader = trainer.get_train_dataloader()
        sizes.append([len(batch["labels"]) for batch in loader][:2])
        trainer.train()
        method.after_task(ctx)
        logged.append(
            [{k: v for k, v in h.items() if k.startswith("method/")} for h in trainer.state.log_history if "loss" in h]
        )
    return logged, sizes


@pytest.mark.parametrize(
    "method,method_args,terms,sizes",
    [
        ("ewc", {"lambda_": 1000.0, "fisher_samples": 6}, {"method/ewc"}, [4, 4]),
        ("replay", {"buffer_size": 6, "replay_ratio": 0.5}, set(), [4, 8]),
        ("lwf", {}, {"method/lwf"}, [4, 4]),
        (
            ["replay", "lwf", "ewc"],
            {"replay": {"buffer_size": 6}, "ewc": {"lambda_": 10.0}},
            {"method/lwf", "method/ewc"},
            [4, 8],
        ),
    ],
)
def test_method_through_the_trainer(tmp_path, tokenizer, method, method_args, terms, sizes):
    instance = build_method(method, method_args)
    logged, batch_sizes = run_two_tasks(tmp_path, tokenizer, instance)
    assert all(not entry for entry in logged[0])  # nothing to protect on the first task
    assert all(set(entry) == terms for entry in logged[1])
    for term in terms:
        assert logged[1][-1][term] > 0
    assert [sizes_of_task[0] for sizes_of_task in batch_sizes] == sizes
    assert instance.state_bytes() > 0
