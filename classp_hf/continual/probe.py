"""Gradient probe: the scale of per-element g^2 per module group, and the threshold for a target sparsity.

``classp-hf probe CONFIG`` runs a few batches of the first task (no weight update) and tells, per
module group, the quantiles of g^2 and the share of elements each candidate threshold would
update, then suggests a threshold for ``--target-fraction`` in ``--mode``.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from classp_hf.continual.config import ConfigError, RunConfig
from classp_hf.continual.io import check_writable_folder

__all__ = ["module_group", "probe_gradients", "format_probe", "check_json_target", "CANDIDATES"]

#: Candidate thresholds shown per mode.
CANDIDATES = {
    "absolute": [1e-12, 1e-11, 1e-10, 1e-9, 1e-8, 1e-7, 1e-6, 1e-5],
    "relative": [0.1, 0.5, 1.0, 2.0, 5.0, 10.0],
    "quantile": [0.01, 0.05, 0.1, 0.25, 0.5, 1.0],
}
QUANTILES = (0.5, 0.9, 0.99)
#: Elements sampled per batch (over the whole model) to estimate quantiles; below that, all of them.
SAMPLE_BUDGET = 2_000_000


def module_group(name: str) -> str:
    """Groups a parameter name by module: up to its first layer index, else its module's first two parts.

    ``bert.encoder.layer.3.attention.self.query.weight`` -> ``bert.encoder.layer.3``;
    ``bert.embeddings.word_embeddings.weight`` -> ``bert.embeddings``; ``classifier.weight`` -> ``classifier``.

    Args:
        name: a parameter name from ``named_parameters()``.

    Returns:
        The group name.
    """
    parts = name.split(".")
    for index, part in enumerate(parts):
        if re.fullmatch(r"\d+", part):
            return ".".join(parts[: index + 1])
    module = parts[:-1] or parts
    return ".".join(module[:2])


def _batches(config: RunConfig, tokenizer: Any, count: int) -> list[dict[str, torch.Tensor]]:
    from transformers import DataCollatorWithPadding

    from classp_hf.continual.tasks import load_task

    task = load_task(config.tasks[0], config.labels, tokenizer, config.max_length, config.seed)
    batch_size = int(config.training.get("per_device_train_batch_size", 8))
    order = np.random.default_rng(config.seed).permutation(len(task.train))
    collator = DataCollatorWithPadding(tokenizer)
    batches = []
    for start in range(0, min(len(order), count * batch_size), batch_size):
        rows = [task.train[int(i)] for i in order[start : start + batch_size]]
        batches.append(collator(rows))
    if not batches:
        raise ConfigError(f"tasks[0] ({task.name}): no training examples to probe")
    return batches


def probe_gradients(
    config: RunConfig,
    *,
    batches: int = 8,
    mode: str = "absolute",
    target_fraction: float = 0.1,
    candidates: Sequence[float] | None = None,
    model: Any = None,
    tokenizer: Any = None,
) -> dict[str, Any]:
    """Measures per-element g^2 on a few batches of the first task, without updating the model.

    Args:
        config: the run config (model, first task, batch size, max_length, seed).
        batches: number of batches.
        mode: ``absolute``, ``relative`` or ``quantile`` (see :class:`classp_hf.optim.CLASSP`).
        target_fraction: share of elements a step should update; the suggestion aims at it.
        candidates: thresholds to report; the mode's defaults if omitted.
        model, tokenizer: already loaded ones (else loaded from ``config.model``, after
            :func:`~classp_hf.continual.model_check.check_model`).

    Returns:
        ``{"mode", "target_fraction", "batches", "candidates", "groups": [...], "overall": {...},
        "suggested_threshold"}``; each group and ``overall`` hold ``numel``, ``zero_fraction``,
        ``g2_quantiles`` and ``update_fraction`` (one value per candidate, the mean over batches).

    Raises:
        ConfigError: unknown mode, target fraction outside (0, 1], a bad model or ``max_length``.
    """
    from classp_hf.continual.families import align_pad_token_id, set_pad_token
    from classp_hf.continual.model_check import check_model
    from classp_hf.continual.model_setup import load_model, load_tokenizer

    if mode not in CANDIDATES:
        raise ConfigError(f"--mode: unknown threshold mode {mode!r} (one of {', '.join(CANDIDATES)})")
    if not 0 < target_fraction <= 1:
        raise ConfigError(f"--target-fraction: expected a fraction in (0, 1], got {target_fraction}")
    if batches < 1:
        raise ConfigError(f"--batches: expected a positive number, got {batches}")
    candidates = list(candidates or CANDIDATES[mode])
    torch.manual_seed(config.seed)
    if model is None or tokenizer is None:
        path = check_model(config).path
    if tokenizer is None:
        tokenizer, _ = load_tokenizer(config, path)  # with a pad token (decoder tokenizers ship without one)
    else:
        set_pad_token(tokenizer, config.model)
    if model is None:
        model = load_model(config, path, tokenizer)  # the run's model: its labels, head and model_dtype
    else:
        align_pad_token_id(model, tokenizer)
    model.train()  # dropout on, as in training
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    total = sum(p.numel() for _, p in named)
    rate = min(1.0, SAMPLE_BUDGET / max(total, 1))
    generator = torch.Generator().manual_seed(config.seed)
    groups = list(dict.fromkeys(module_group(name) for name, _ in named))
    samples: dict[str, list[np.ndarray]] = {g: [] for g in groups}  # g^2, or g^2 / mean(g^2) per tensor
    counts = {g: np.zeros(len(candidates)) for g in groups}
    zeros = dict.fromkeys(groups, 0)
    numel = {g: 0 for g in groups}
    for name, p in named:
        numel[module_group(name)] += p.numel()
    data = _batches(config, tokenizer, batches)
    for batch in data:
        model.zero_grad(set_to_none=True)
        model(**batch).loss.backward()
        for name, p in named:
            group = module_group(name)
            g2 = p.grad.detach().float().square().flatten() if p.grad is not None else torch.zeros(p.numel())
            zeros[group] += int((g2 == 0).sum())
            measure = g2 / g2.mean() if mode == "relative" and g2.mean() > 0 else g2
            for k, threshold in enumerate(candidates):
                counts[group][k] += _updated(g2, measure, threshold, mode)
            keep = g2 if rate >= 1 else g2[torch.rand(g2.numel(), generator=generator) < rate]
            samples[group].append((keep / g2.mean() if mode == "relative" and g2.mean() > 0 else keep).numpy())
    model.zero_grad(set_to_none=True)
    n_batches = len(data)
    report_groups = []
    for group in groups:
        values = np.concatenate(samples[group]) if samples[group] else np.zeros(1)
        report_groups.append(_summary(group, numel[group], zeros[group], values, counts[group], n_batches))
    everything = np.concatenate([np.concatenate(samples[g]) for g in groups if samples[g]])
    overall = _summary("all", total, sum(zeros.values()), everything, sum(counts[g] for g in groups), n_batches)
    if mode == "quantile":
        suggested = target_fraction
    else:
        suggested = float(np.quantile(everything, 1 - target_fraction))
    return {
        "mode": mode,
        "target_fraction": target_fraction,
        "batches": n_batches,
        "batch_size": int(data[0]["input_ids"].shape[0]),
        "candidates": candidates,
        "groups": report_groups,
        "overall": overall,
        "suggested_threshold": suggested,
        "measure": "g^2 / mean(g^2) of its tensor" if mode == "relative" else "g^2",
    }


def check_json_target(path: str | os.PathLike) -> Path:
    """Checks that ``--json`` can be written (not a folder, no file in the way of its folder); writes nothing.

    Raises:
        ConfigError: naming ``--json`` and the problem.
    """
    target = Path(path)
    if target.is_dir():
        raise ConfigError(f"--json: {target} is a directory; give a file path")
    for parent in target.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ConfigError(f"--json: {parent} is a file, so {target} cannot be written")
            break
    check_writable_folder(target.parent, "--json")
    return target


def _updated(g2: torch.Tensor, measure: torch.Tensor, threshold: float, mode: str) -> int:
    """Elements one step would update at ``threshold`` in ``mode`` (as CLASSP decides it)."""
    if mode == "quantile":
        nonzero = int((g2 > 0).sum())
        return min(nonzero, math.ceil(threshold * g2.numel()))
    return int((measure > threshold).sum())


def _summary(
    name: str,
    numel: int,
    zeros: int,
    values: np.ndarray,
    counts: np.ndarray,
    batches: int,
) -> dict[str, Any]:
    return {
        "group": name,
        "numel": int(numel),
        "zero_fraction": zeros / (numel * batches),
        "g2_quantiles": {f"p{int(q * 100)}": float(np.quantile(values, q)) for q in QUANTILES},
        "update_fraction": [float(c) / (numel * batches) for c in counts],
    }


def format_probe(result: dict[str, Any]) -> str:
    """A console table of :func:`probe_gradients`'s result."""
    candidates = result["candidates"]
    head = f"{'group':<26}{'elements':>11}{'zero':>7}{'p50':>10}{'p90':>10}{'p99':>10}"
    head += "".join(f"{c:>9.2g}" for c in candidates)
    lines = [
        f"per-element {result['measure']} over {result['batches']} batches of {result['batch_size']}; "
        f"columns after p99: share of elements updated per step at each {result['mode']} threshold",
        head,
        "-" * len(head),
    ]
    for row in [*result["groups"], result["overall"]]:
        q = row["g2_quantiles"]
        line = f"{row['group']:<26}{row['numel']:>11,}{row['zero_fraction']:>7.1%}"
        line += f"{q['p50']:>10.2e}{q['p90']:>10.2e}{q['p99']:>10.2e}"
        line += "".join(f"{f:>9.1%}" for f in row["update_fraction"])
        lines.append(line)
    lines.append(
        f"suggested: threshold_mode={result['mode']}, threshold={result['suggested_threshold']:.3g} "
        f"(about {result['target_fraction']:.0%} of elements per step)"
    )
    return "\n".join(lines)
