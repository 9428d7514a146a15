"""The tiny run every continual test starts from: a tiny random BERT's config and the two-task quickstart queue."""

from __future__ import annotations

from pathlib import Path

import transformers

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "recipes" / "data" / "quickstart"


def tiny_bert_config(num_labels: int = 3, **overrides):
    """A 2-layer, 32-wide random BERT with MiniLM's vocabulary (fast on CPU)."""
    from transformers import BertConfig

    options = dict(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        num_labels=num_labels,
    )
    options.update(overrides)
    return BertConfig(**options)


def raw_config(model_dir, **overrides):
    def task(name, **extra):
        files = {split: str(SAMPLE / name / f"{split}.csv") for split in ("train", "test")}
        return {"name": name, "data_files": files, "max_train_samples": 32, "max_eval_samples": 24, **extra}

    config = {
        "model": model_dir,
        "labels": ["negative", "neutral", "positive"],
        "max_length": 32,
        "seed": 0,
        "training": {
            "optim": "classp",
            "optim_args": "power=1,eps=1e-8",
            "learning_rate": 1e-3,
            "num_train_epochs": 1,
            "per_device_train_batch_size": 8,
            "disable_tqdm": True,
            "logging_steps": 2,
        },
        "tasks": [
            task("financial_phrasebank"),
            task(
                "amazon_reviews",
                label_map={"negative": "negative", "positive": "positive"},
                training={"learning_rate": 5e-4},
            ),
        ],
    }
    config.update(overrides)
    return config


class RecordStart(transformers.TrainerCallback):
    def __init__(self, runner):
        self.runner = runner

    def on_train_begin(self, args, state, control, optimizer=None, model=None, **kwargs):
        optimizer = optimizer.optimizer  # accelerate's wrapper
        runner = self.runner
        runner.seen_lrs = getattr(runner, "seen_lrs", []) + [[g["lr"] for g in optimizer.param_groups]]
        runner.sums_before = [optimizer.state[p]["grad_sum"].clone() for p in model.parameters()]
