"""CLASSP on a CUDA device: correctness against the CPU, both code paths, dtypes, and a Trainer run.

    python benchmarks/gpu_check.py --json gpu_check.json

Checks (each prints PASS/FAIL; the exit code is the number of failures):
- foreach (the default on CUDA) equals the single-tensor path bit for bit on CUDA, for every
  threshold mode and several powers;
- CUDA agrees with the CPU to float32 rounding;
- bfloat16 parameters keep float32 state; a CUDA state_dict loads on the CPU and back;
- non-finite gradients are skipped on CUDA;
- a few steps of ``classp_hf.Trainer`` with ``optim="classp"`` on a small random BERT on CUDA;
- a skipped fp16 step (GradScaler on CUDA) changes neither S nor the weights;
- ``--backends``: the continual runner through ``accelerate launch`` at world size 1 with the FSDP2 and the
  DeepSpeed ZeRO-2 configs of ``recipes/accelerate/`` (and plain, as the reference), on a small random BERT with a
  word-piece vocabulary built from the embedded quick-start sample (no Hub, no model package needed): every run
  completes, CLASSP's S crosses the tasks, and the final weights agree with the plain run.

DeepSpeed is not on the GPU image: build its wheel here (``make gpu-wheels``, pure Python, ops compiled at run time)
and carry ``.whl``; the script installs nothing itself. At most about 5 minutes on one H200.
"""

from __future__ import annotations

import argparse
import collections
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from classp_hf.optim import CLASSP
from classp_hf.optim._functional import _default_to_fused_or_foreach

CASES = [
    dict(threshold=0.0, threshold_mode="absolute", power=1.0),
    dict(threshold=1e-3, threshold_mode="absolute", power=1.0),
    dict(threshold=1.0, threshold_mode="relative", power=1.0),
    dict(threshold=0.2, threshold_mode="quantile", power=1.0),
    dict(threshold=0.0, threshold_mode="absolute", power=2.0),
    dict(threshold=0.5, threshold_mode="relative", power=1.5, weight_decay=0.01),
]
SHAPES = [(384, 384), (1536, 384), (384,), (30522, 384), (3, 384)]


def _run(device: str, foreach: bool, case: dict[str, Any], dtype: torch.dtype = torch.float32, steps: int = 5):
    generator = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(s, generator=generator).to(device=device, dtype=dtype)) for s in SHAPES]
    optimizer = CLASSP(params, lr=1e-3, eps=1e-8, foreach=foreach, **case)
    for _ in range(steps):
        for p in params:
            p.grad = (torch.randn(p.shape, generator=generator) * 1e-2).to(device=device, dtype=dtype)
        optimizer.step()
    return params, optimizer


def check_paths(report: dict[str, Any]) -> None:
    failures = []
    for case in CASES:
        single, opt_single = _run("cuda", False, case)
        multi, opt_multi = _run("cuda", True, case)
        cpu, opt_cpu = _run("cpu", False, case)
        same = all(torch.equal(a, b) for a, b in zip(single, multi)) and all(
            torch.equal(opt_single.state[a]["grad_sum"], opt_multi.state[b]["grad_sum"]) for a, b in zip(single, multi)
        )
        close = all(torch.allclose(a.cpu(), b, rtol=1e-5, atol=1e-6) for a, b in zip(multi, cpu))
        fractions = (opt_multi.diagnostics()[0]["update_fraction"], opt_cpu.diagnostics()[0]["update_fraction"])
        if not (same and close):
            failures.append({"case": case, "foreach_equals_single": same, "cuda_close_to_cpu": close})
        report.setdefault("paths", []).append(
            {**case, "foreach_equals_single": same, "cuda_close_to_cpu": close, "update_fraction_cuda_cpu": fractions}
        )
    _verdict(report, "foreach == single-tensor on CUDA, CUDA ~ CPU", not failures)


def check_dtypes_and_state(report: dict[str, Any]) -> None:
    params, optimizer = _run("cuda", True, CASES[1], dtype=torch.bfloat16)
    fp32 = all(optimizer.state[p]["grad_sum"].dtype == torch.float32 for p in params)
    cpu_params = [torch.nn.Parameter(p.detach().float().cpu()) for p in params]
    cpu_opt = CLASSP(cpu_params)
    cpu_opt.load_state_dict(optimizer.state_dict())
    moved = all(cpu_opt.state[p]["grad_sum"].device.type == "cpu" for p in cpu_params)
    exact = all(
        torch.equal(cpu_opt.state[q]["grad_sum"], optimizer.state[p]["grad_sum"].cpu())
        for p, q in zip(params, cpu_params)
    )
    _verdict(report, "bf16 params: float32 state; CUDA state_dict loads on CPU exactly", fp32 and moved and exact)
    default_foreach = _default_to_fused_or_foreach(params, differentiable=False, use_fused=False)[1]
    _verdict(report, "foreach is the default for CUDA tensors", bool(default_foreach))


def check_non_finite(report: dict[str, Any]) -> None:
    for foreach in (False, True):
        weight = torch.nn.Parameter(torch.ones(5, device="cuda"))
        optimizer = CLASSP([weight], lr=0.1, foreach=foreach)
        weight.grad = torch.tensor([float("nan"), float("inf"), -float("inf"), 0.5, 0.0], device="cuda")
        optimizer.step()
        ok = torch.isfinite(weight).all().item() and weight.tolist()[:3] == [1.0, 1.0, 1.0]
        ok = ok and optimizer.state[weight]["grad_sum"].tolist()[:3] == [0.0, 0.0, 0.0]
        _verdict(report, f"non-finite gradients skipped on CUDA (foreach={foreach})", ok)


def check_trainer(report: dict[str, Any]) -> None:
    from transformers import BertConfig, BertForSequenceClassification

    from classp_hf import Trainer, TrainingArguments

    torch.manual_seed(0)
    model = BertForSequenceClassification(
        BertConfig(
            vocab_size=1000,
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=128,
            num_labels=3,
        )
    )

    class Data(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return 256

        def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
            g = torch.Generator().manual_seed(i)
            ids = torch.randint(5, 1000, (24,), generator=g)
            return {"input_ids": ids, "attention_mask": torch.ones(24, dtype=torch.long), "labels": int(ids[0]) % 3}

    args = TrainingArguments(
        "/tmp/gpu_check_trainer",
        optim="classp",
        learning_rate=1e-3,
        max_steps=30,
        per_device_train_batch_size=32,
        logging_steps=10,
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
    )
    trainer = Trainer(model=model, args=args, train_dataset=Data())
    started = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - started
    optimizer = trainer.optimizer.optimizer if hasattr(trainer.optimizer, "optimizer") else trainer.optimizer
    on_cuda = all(s["grad_sum"].is_cuda for s in optimizer.state.values())
    logs = [h for h in trainer.state.log_history if "loss" in h]
    report["trainer"] = {
        "seconds": seconds,
        "losses": [h["loss"] for h in logs],
        "update_fraction": [h.get("optim/update_fraction") for h in logs],
    }
    _verdict(
        report,
        "classp_hf.Trainer(optim='classp') on CUDA: state on CUDA, diagnostics logged",
        on_cuda and all(h.get("optim/update_fraction") for h in logs),
    )


def check_skipped_fp16_step(report: dict[str, Any]) -> None:
    params = [torch.nn.Parameter(torch.ones(64, device="cuda"))]
    optimizer = CLASSP(params, lr=1e-2)
    scaler = torch.amp.GradScaler("cuda", init_scale=2.0**16)
    with torch.autocast("cuda", dtype=torch.float16):
        loss = (params[0].half() * 1e4).sum()  # scaled by 2**16 the fp16 gradient overflows
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    unchanged = (
        torch.equal(params[0], torch.ones_like(params[0]))
        and not optimizer.state.get(params[0], {}).get("grad_sum", torch.zeros(1)).any()
    )
    _verdict(report, "a skipped fp16 step (GradScaler, CUDA) changes neither S nor the weights", unchanged)


REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "recipes" / "data" / "quickstart"


def _tiny_model(folder: Path) -> None:
    """A small random BERT and a word-piece tokenizer whose vocabulary is the sample's most common words."""
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    words: collections.Counter = collections.Counter()
    for path in SAMPLE.glob("*/train.csv"):
        with open(path, encoding="utf-8") as handle:
            for row in csv.DictReader(handle):
                words.update(row["text"].lower().split())
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *[w for w, _ in words.most_common(3000)]]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(dict.fromkeys(vocab)) + "\n", encoding="utf-8")
    BertTokenizerFast(vocab=str(folder / "vocab.txt")).save_pretrained(folder)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(dict.fromkeys(vocab)),
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=128,
        num_labels=3,
    )
    BertForSequenceClassification(config).save_pretrained(folder)


def _backend_run(name: str, config_path: Path, output: Path) -> dict[str, Any]:
    command = [sys.executable, "-m", "accelerate.commands.launch"]
    if name != "plain":
        command += ["--config_file", str(REPO / "recipes" / "accelerate" / f"{name}.yaml")]
    command += ["--num_processes", "1", str(REPO / "recipes" / "continual_sentiment.py")]
    command += ["--config", str(config_path), "--output-dir", str(output)]
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, timeout=240, env={**os.environ})
    record: dict[str, Any] = {"seconds": round(time.perf_counter() - started, 1), "returncode": result.returncode}
    if result.returncode != 0:
        record["stderr"] = result.stderr[-2000:]
        return record
    results = json.loads((output / "results.json").read_text())
    record.update(
        acc=results["metrics"]["acc"],
        backend=results["backend"],
        state_bytes=[t["optimizer_state_bytes"] for t in results["per_task"]],
        losses=[t["train_loss"] for t in results["per_task"]],
    )
    return record


def check_backends(report: dict[str, Any]) -> None:
    import yaml
    from safetensors.torch import load_file

    work = Path(tempfile.mkdtemp(prefix="gpu_backends_"))
    _tiny_model(work / "model")
    tasks = [
        {
            "name": name,
            "data_files": {split: str(SAMPLE / name / f"{split}.csv") for split in ("train", "test")},
            "max_train_samples": 128,
            "max_eval_samples": 64,
            **({"label_map": {"negative": "negative", "positive": "positive"}} if name == "amazon_reviews" else {}),
        }
        for name in ("financial_phrasebank", "amazon_reviews")
    ]
    config = {
        "model": str(work / "model"),
        "labels": ["negative", "neutral", "positive"],
        "max_length": 64,
        "seed": 0,
        "training": {
            "optim": "classp",
            "optim_args": "threshold=1e-10",
            "learning_rate": 1e-3,
            "num_train_epochs": 1,
            "per_device_train_batch_size": 16,
            "disable_tqdm": True,
        },
        "tasks": tasks,
    }
    config_path = work / "run.yaml"
    config_path.write_text(yaml.safe_dump(config))
    runs = {name: _backend_run(name, config_path, work / name) for name in ("plain", "fsdp2", "zero2")}
    report["backends"] = runs
    reference = load_file(work / "plain" / "model" / "model.safetensors")
    for name in ("fsdp2", "zero2"):
        record = runs[name]
        ok = record["returncode"] == 0 and all(b > 0 for b in record.get("state_bytes", [0]))
        if ok:
            weights = load_file(work / name / "model" / "model.safetensors")
            record["max_weight_difference"] = max(
                float((weights[k].float() - reference[k].float()).abs().max()) for k in reference
            )
            ok = record["max_weight_difference"] < 1e-3
        _verdict(report, f"runner under {name} at world size 1: completes, S carried, weights match the plain run", ok)


def _verdict(report: dict[str, Any], name: str, ok: bool) -> None:
    report.setdefault("checks", []).append({"check": name, "ok": bool(ok)})
    print(f"{'PASS' if ok else 'FAIL'}  {name}", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default=None, help="write the report here")
    parser.add_argument(
        "--backends", action="store_true", help="also run the runner under FSDP2 and ZeRO-2 (needs deepspeed)"
    )
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("no CUDA device", file=sys.stderr)
        return 1
    report: dict[str, Any] = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}
    print(f"device: {report['device']}, torch {report['torch']}", flush=True)
    checks = [check_paths, check_dtypes_and_state, check_non_finite, check_trainer, check_skipped_fp16_step]
    if args.backends:
        checks.append(check_backends)
    for check in checks:
        try:
            check(report)
        except Exception as error:  # report and go on: one broken check must not hide the others
            _verdict(report, f"{check.__name__} raised {type(error).__name__}: {error}", False)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(report, handle, indent=2, default=str)
    return sum(not c["ok"] for c in report["checks"])


if __name__ == "__main__":
    sys.exit(main())
