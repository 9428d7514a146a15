"""Tiny models, data and collators shared by the tests of classp_hf.methods."""

from __future__ import annotations

import torch
from datasets import Dataset
from torch import nn


class BagOfWords(nn.Module):
    """Mean of frozen token embeddings, then a trainable linear head: gradients by hand are easy."""

    def __init__(self, vocab: int = 100, dim: int = 4, labels: int = 3, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.embed = nn.Embedding(vocab, dim)
        self.embed.requires_grad_(False)
        self.head = nn.Linear(dim, labels)

    def features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        mask = attention_mask.unsqueeze(-1).float()
        return (self.embed(input_ids) * mask).sum(1) / mask.sum(1)

    def forward(self, input_ids, attention_mask, labels=None):
        return {"logits": self.head(self.features(input_ids, attention_mask))}


def pad_collator(features: list[dict]) -> dict[str, torch.Tensor]:
    """Pads token lists with 0 (right) and stacks every column into a tensor."""
    batch = {}
    for key in features[0]:
        values = [feature[key] for feature in features]
        if isinstance(values[0], list):
            width = max(len(value) for value in values)
            values = [value + [0] * (width - len(value)) for value in values]
        batch[key] = torch.tensor(values)
    return batch


def toy_dataset(n: int = 12, labels: tuple[int, ...] = (0, 1, 2), seed: int = 0, offset: int = 0) -> Dataset:
    """``n`` examples of 2 to 5 tokens; ``labels`` cycled; ids start at ``offset`` to tell tasks apart."""
    generator = torch.Generator().manual_seed(seed)
    rows = {"input_ids": [], "attention_mask": [], "labels": []}
    for i in range(n):
        length = int(torch.randint(2, 6, (1,), generator=generator))
        ids = (torch.randint(1, 19, (length,), generator=generator)).tolist()
        rows["input_ids"].append([offset + i] + ids[1:])
        rows["attention_mask"].append([1] * length)
        rows["labels"].append(labels[i % len(labels)])
    return Dataset.from_dict(rows)
