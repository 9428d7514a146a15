"""The continual runner: one model and one optimizer trained over a queue of tasks.

Flow: config -> tasks (loaded and checked before anything is written) -> for each task a
:class:`classp_hf.Trainer` with the persistent optimizer -> every task's test split evaluated ->
results.json, report.md and plots rewritten atomically after each task -> final model.
"""

from __future__ import annotations

import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from classp_hf.continual.checkpoint import (
    RUN_STATE,
    ResumeError,
    check_same_config,
    load_checkpoint,
    read_run_state,
    restore_adapters,
    save_checkpoint,
)
from classp_hf.continual.config import ConfigError, RunConfig, resolve_model_path
from classp_hf.continual.io import write_json_atomic, write_text_atomic
from classp_hf.continual.tasks import TaskData, load_task
from classp_hf.trainer import _unwrap_optimizer

__all__ = ["ContinualRunner", "run_continual", "OutputDirError", "ResumeError", "prepare_output_dir"]

RESULTS = "results.json"


class OutputDirError(ValueError):
    """The output directory is not usable (non-empty without ``--overwrite``)."""


def prepare_output_dir(output_dir: str | os.PathLike, overwrite: bool) -> Path:
    """Checks that ``output_dir`` is absent, empty, or may be overwritten. Writes nothing.

    Raises:
        OutputDirError: a non-empty directory without ``overwrite``, or a file in the way.
    """
    path = Path(output_dir)
    if path.exists() and not path.is_dir():
        raise OutputDirError(f"--output-dir {path} exists and is not a directory")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise OutputDirError(f"--output-dir {path} is not empty; pass --overwrite to write into it")
    return path


def _versions() -> dict[str, str | None]:
    import transformers

    import classp_hf

    try:
        import peft

        peft_version: str | None = peft.__version__
    except ImportError:
        peft_version = None
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft_version,
        "classp_hf": classp_hf.__version__,
    }


def _cpu_processes() -> bool:
    """Several processes launched (accelerate/torchrun) on a machine without CUDA: run them on CPU (gloo)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()


def _is_main_process(use_cpu: bool) -> bool:
    from accelerate import PartialState

    return PartialState(cpu=use_cpu).is_main_process


@dataclass
class ContinualRunner:
    """Runs a :class:`RunConfig` into ``output_dir``.

    Args:
        config: the validated run config.
        output_dir: where config.yaml, results.json, report.md, plots, checkpoints and the final
            model go.
        overwrite: write into a non-empty ``output_dir``.
        log: prints progress lines (main process only).
        resume: continue the run in ``output_dir`` after its last checkpointed task (same config).
    """

    config: RunConfig
    output_dir: Path
    overwrite: bool = False
    log: bool = True
    resume: bool = False
    tasks: list[TaskData] = field(default_factory=list, init=False)
    results: dict[str, Any] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        if self.resume and self.overwrite:
            raise ResumeError("--resume and --overwrite exclude each other: --overwrite starts the run afresh")
        if self.resume:
            self.output_dir = Path(self.output_dir)
            self._read_resume_files()  # raises before anything is loaded or written
        else:
            self.output_dir = prepare_output_dir(self.output_dir, self.overwrite)
        self.use_cpu = bool(self.config.training.get("use_cpu", False)) or _cpu_processes()
        self.is_main = _is_main_process(self.use_cpu)
        self.optimizer: torch.optim.Optimizer | None = None
        self._resumed_optimizer_state: dict[str, Any] | None = None
        self.ever_updated: dict[str, torch.Tensor] = {}

    # -- set-up -----------------------------------------------------------------------------
    def _print(self, message: str) -> None:
        if self.log and self.is_main:
            print(message, flush=True)

    def setup(self) -> None:
        """Loads the tokenizer, the model and every task; raises before writing anything."""
        from transformers import AutoModelForSequenceClassification, AutoTokenizer, set_seed

        config = self.config
        set_seed(config.seed)
        model_path = resolve_model_path(config.model)
        self._print(f"[classp-hf] model {config.model} ({model_path})")
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        except OSError as error:
            raise ConfigError(f"config.model: cannot load {config.model!r}: {str(error).splitlines()[0]}") from None
        self.tasks = []
        for task in config.tasks:
            data = load_task(
                task, config.labels, self.tokenizer, config.max_length, config.seed, config.validation_fraction
            )
            self._print(f"[classp-hf] task {task.name}: {len(data.train)} train, {len(data.test)} test examples")
            self.tasks.append(data)
        id2label = dict(enumerate(config.labels))
        self.model = AutoModelForSequenceClassification.from_pretrained(
            model_path,
            num_labels=len(config.labels),
            id2label=id2label,
            label2id={label: i for i, label in id2label.items()},
            ignore_mismatched_sizes=True,
        )
        self.adapters = None
        if config.peft is not None:
            from classp_hf.continual.adapters import AdapterSetup

            self.adapters = AdapterSetup(config.peft)
            self.model = self.adapters.wrap(self.model, config.tasks[0].name)
        from classp_hf.methods import create_method

        self.method = create_method(config.method, **config.method_args)

    # -- one task ---------------------------------------------------------------------------
    def training_arguments(self, index: int) -> Any:
        """The ``classp_hf.TrainingArguments`` of task ``index`` (top-level options + its overrides)."""
        from classp_hf.training_args import TrainingArguments

        task = self.config.tasks[index]
        options: dict[str, Any] = {"report_to": "none", "logging_steps": 10}
        options.update(self.config.training)
        options.update(task.training)
        options.update(
            output_dir=str(self.output_dir / "trainer" / task.name),
            seed=self.config.seed,
            save_strategy="no",
        )
        if self.use_cpu:
            options["use_cpu"] = True
        if self.use_cpu or not _accelerator_available():
            options.setdefault("dataloader_pin_memory", False)  # nothing to pin for; torch warns otherwise
        return TrainingArguments(**options)

    def _trainer(self, index: int) -> Any:
        from transformers import DataCollatorWithPadding

        from classp_hf.trainer import Trainer

        if self.adapters is not None and self.adapters.start_task(self.model, self.tasks[index].name):
            self.optimizer = None  # a new adapter's parameters start with fresh optimizer state
            self._resumed_optimizer_state = None
        args = self.training_arguments(index)
        os.environ["TENSORBOARD_LOGGING_DIR"] = str(self.output_dir / "logs" / self.tasks[index].name)
        trainer = Trainer(
            model=self.model,
            args=args,
            train_dataset=self.tasks[index].train,
            data_collator=DataCollatorWithPadding(self.tokenizer),
            processing_class=self.tokenizer,
            continual_method=self.method,
        )
        carried_over = self.optimizer is not None
        if not carried_over:
            trainer.create_optimizer()
            self.optimizer = _unwrap_optimizer(trainer.optimizer)
        if self._resumed_optimizer_state is not None:  # --resume: the state saved after the last task
            self.optimizer.load_state_dict(self._resumed_optimizer_state)
            self._resumed_optimizer_state = None
            carried_over = True
        if carried_over:
            # The optimizer (and CLASSP's S) persists across tasks; the schedule restarts from this
            # task's learning rate, which the scheduler reads from `initial_lr`.
            for group in self.optimizer.param_groups:
                group["lr"] = args.learning_rate
                group["initial_lr"] = args.learning_rate
            trainer.optimizer = self.optimizer
        return trainer

    def evaluate(self, trainer: Any, split: str = "test") -> tuple[list[float], list[float]]:
        """Accuracy and macro-F1 on every task's ``split`` (argmax over all shared labels)."""
        from classp_hf.metrics import load_metric

        accuracy_metric, f1_metric = load_metric("accuracy"), load_metric("macro_f1")
        accuracies, f1s = [], []
        for data in self.tasks:
            output = trainer.predict(getattr(data, split), metric_key_prefix=f"{split}_{data.name}")
            predictions = np.argmax(output.predictions, axis=-1)
            references = output.label_ids
            accuracies.append(
                float(accuracy_metric.compute(predictions=predictions, references=references)["accuracy"])
            )
            f1s.append(float(f1_metric.compute(predictions=predictions, references=references)["macro_f1"]))
        return accuracies, f1s

    def _evaluate_own_adapters(self, trainer: Any, index: int, latest: list[float]) -> None:
        """Row ``index`` of ``accuracy_matrix_own_adapter``: each seen task with its own adapter."""
        from classp_hf.metrics import load_metric

        accuracy_metric = load_metric("accuracy")
        row = list(latest)
        for j in range(index):
            self.model.set_adapter(self.adapters.adapter_name(self.tasks[j].name))
            output = trainer.predict(self.tasks[j].test, metric_key_prefix=f"own_{self.tasks[j].name}")
            predictions = np.argmax(output.predictions, axis=-1)
            row[j] = float(accuracy_metric.compute(predictions=predictions, references=output.label_ids)["accuracy"])
        self.model.set_adapter(self.adapters.adapter_name(self.tasks[index].name))
        self.results.setdefault("accuracy_matrix_own_adapter", []).append(row)

    def optimizer_for_tracking(self) -> Any:
        """The optimizer class the run uses (to know whether it can track updates)."""
        from classp_hf.trainer import Trainer

        cls, _ = Trainer.get_optimizer_cls_and_kwargs(self.training_arguments(0))
        return cls

    def _sparsity(self, ever_updated: dict[str, torch.Tensor]) -> dict[str, float | None]:
        """Sparsity of the task just trained; updates ``ever_updated`` (union over earlier tasks)."""
        stats = self.optimizer.update_tracking()
        names = {id(p): name for name, p in self.model.named_parameters()}
        updated = overlap = 0
        for param, mask in stats["masks"].items():
            name = names.get(id(param), str(id(param)))
            mask = mask.detach().to("cpu")
            earlier = ever_updated.get(name)
            updated += int(mask.sum())
            if earlier is not None:
                overlap += int((mask & earlier).sum())
                ever_updated[name] = earlier | mask
            else:
                ever_updated[name] = mask.clone()
        first = len(self.results["per_task"]) == 1
        return {
            "mean_update_fraction": stats["mean_update_fraction"],
            "ever_updated_fraction": stats["ever_updated_fraction"],
            "overlap_with_earlier": None if first or updated == 0 else overlap / updated,
        }

    # -- outputs ----------------------------------------------------------------------------
    def _write_results(self) -> None:
        from classp_hf.continual.report import write_report
        from classp_hf.metrics.continual import continual_metrics

        results = self.results
        for part in (results, results.get("validation")):
            seen = len(part["accuracy_matrix"]) if part else 0
            if seen:  # over the tasks trained so far: the top-left seen x seen block
                block = [row[:seen] for row in part["accuracy_matrix"]]
                part["metrics"] = continual_metrics(block, part["initial_accuracy"][:seen])
        if self.is_main:
            write_json_atomic(self.output_dir / RESULTS, results)
            write_report(results, self.output_dir)

    def _save_task_outputs(self, index: int) -> None:
        """LoRA runs: the task's adapter (and with ``merge: true`` a merged full model)."""
        if self.adapters is None or not self.is_main:
            return
        name = self.tasks[index].name
        self.adapters.save(self.model, self.output_dir / "adapters" / name, name)
        if self.adapters.section["merge"]:
            merged = self.adapters.merged_copy(self.model, name)
            merged.save_pretrained(self.output_dir / "merged" / name)
            self.tokenizer.save_pretrained(self.output_dir / "merged" / name)

    def _save_checkpoint(self, index: int, tracking: bool) -> None:
        """Model, optimizer, method state (and update masks) after task ``index``; see :mod:`.checkpoint`."""
        if not self.is_main:
            return
        save_checkpoint(
            self.output_dir,
            index,
            [data.name for data in self.tasks],
            self.model,
            self.tokenizer,
            self.optimizer,
            self.method.state_dict(),
            self.ever_updated if tracking else None,
        )

    def _read_resume_files(self) -> None:
        """``--resume``: reads and checks the run state, config, checkpoint files and results so far.

        Raises:
            ResumeError: a file is missing or corrupt, or the config is not the run's, naming the file.
        """
        import json

        self.run_state = read_run_state(self.output_dir)
        check_same_config(self.config, self.output_dir)
        self._checkpoint_files = load_checkpoint(self.run_state.checkpoint)
        path = self.output_dir / RESULTS
        try:
            results = json.loads(path.read_text(encoding="utf-8"))
            trained = len(results["accuracy_matrix"])
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise ResumeError(f"--resume: {path} is missing or corrupt ({type(error).__name__})") from None
        done = self.run_state.completed_tasks
        if trained < done:
            raise ResumeError(f"--resume: {path} has {trained} rows, {RUN_STATE} says {done} tasks are done")
        self._resumed_results = results

    def _finished_earlier(self) -> bool:
        """``--resume``: every task is checkpointed and the final model saved (nothing to load or train)."""
        state = self.run_state
        return state.completed_tasks == len(state.tasks) and (self.output_dir / "model").is_dir()

    def _restore(self) -> int:
        """``--resume``: loads the last checkpoint and the results so far; returns the next task's index.

        Raises:
            ResumeError: the checkpoint does not fit this config, naming the file.
        """
        from transformers import AutoModelForSequenceClassification

        state = self.run_state
        names = [data.name for data in self.tasks]
        if state.tasks != names:
            raise ResumeError(f"--resume: {RUN_STATE} lists the tasks {state.tasks}, the config {names}")
        done = state.completed_tasks
        results = self._resumed_results
        # Rows of a task that finished after its checkpoint was written are dropped: it is trained again.
        for part in (results, results.get("validation")):
            for key in ("accuracy_matrix", "macro_f1_matrix", "accuracy_matrix_own_adapter", "per_task"):
                if part and key in part:
                    part[key] = part[key][:done]
        results["status"] = "running" if done < len(names) else "complete"
        results.setdefault("resumed_after_tasks", []).append(done)
        self.results = results
        if self.adapters is None:
            try:
                self.model = AutoModelForSequenceClassification.from_pretrained(state.checkpoint)
            except (OSError, ValueError) as error:
                first = str(error).splitlines()[0]
                raise ResumeError(f"--resume: cannot load the model in {state.checkpoint} ({first})") from None
        else:
            for data in self.tasks[1:done]:  # rebuild the adapters the run had, then load their weights
                self.adapters.start_task(self.model, data.name)
            restore_adapters(self.model, state.checkpoint, self.adapters.names)
        files = self._checkpoint_files
        self._resumed_optimizer_state = files["optimizer"]
        self.method.load_state_dict(files["method"])
        self.ever_updated = files["update_masks"] or {}
        if done < len(names):
            self._print(
                f"[classp-hf] resuming after task {done}/{len(names)} ({names[done - 1]}) from {state.checkpoint}"
            )
        return done

    # -- the run ----------------------------------------------------------------------------
    def _start_results(self) -> None:
        """Writes config.yaml and starts the results dict of a new run."""
        from classp_hf.metrics.continual import majority_class_accuracy

        config = self.config
        if self.is_main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            write_text_atomic(self.output_dir / "config.yaml", yaml.safe_dump(config.to_dict(), sort_keys=False))
        first_args = self.training_arguments(0)
        self.results = {
            "schema_version": 1,
            "status": "running",
            "model": config.model,
            "labels": list(config.labels),
            "seed": config.seed,
            "method": config.method,
            "optimizer": {
                "name": str(getattr(first_args.optim, "value", first_args.optim)),
                "optim_args": first_args.optim_args,
                "learning_rate": first_args.learning_rate,
            },
            "tasks": [data.name for data in self.tasks],
            "initial_accuracy": [],
            "initial_macro_f1": [],
            "majority_accuracy": [majority_class_accuracy(data.test_labels) for data in self.tasks],
            "accuracy_matrix": [],
            "macro_f1_matrix": [],
            "metrics": {"acc": None, "bwt": None, "fwt": None, "forgetting": None},
            "per_task": [],
            "versions": _versions(),
            "total_parameters": sum(p.numel() for p in self.model.parameters()),
            "peft": dict(config.peft) if config.peft else None,
        }
        if config.validation_fraction > 0:
            self.results["validation"] = {
                "fraction": config.validation_fraction,
                "initial_accuracy": [],
                "accuracy_matrix": [],
                "metrics": {"acc": None, "bwt": None, "fwt": None, "forgetting": None},
            }

    def run(self) -> dict[str, Any]:
        """Trains on every task in order and returns the results dict (also in results.json)."""
        from classp_hf.continual.report import format_matrix_table
        from classp_hf.trainer import optimizer_diagnostics

        if self.resume and self._finished_earlier():
            self._print(f"[classp-hf] the run in {self.output_dir} is already complete; nothing to do")
            self.results = self._resumed_results
            return self.results
        if not self.tasks:
            self.setup()
        config = self.config
        total = len(self.tasks)
        start = self._restore() if self.resume else 0
        if start == 0:
            self._start_results()
        tracking = config.diagnostics and hasattr(self.optimizer_for_tracking(), "track_updates")
        for index in range(start, total):
            data = self.tasks[index]
            trainer = self._trainer(index)
            if index == 0:
                self._print("[classp-hf] evaluating the untrained model on every task")
                accuracies, f1s = self.evaluate(trainer)
                self.results["initial_accuracy"], self.results["initial_macro_f1"] = accuracies, f1s
                if "validation" in self.results:
                    self.results["validation"]["initial_accuracy"] = self.evaluate(trainer, "validation")[0]
            args = trainer.args
            self._print(
                f"[classp-hf] task {index + 1}/{total} {data.name}: start "
                f"({len(data.train)} examples, optim {self.results['optimizer']['name']}, lr {args.learning_rate:g})"
            )
            self.method.before_task(self.model, index, data.name)
            if tracking:
                self.optimizer.track_updates()
            started = time.perf_counter()
            output = trainer.train()
            seconds = time.perf_counter() - started
            self.optimizer = _unwrap_optimizer(trainer.optimizer)
            self.method.after_task(self.model, index, data.name, data.train)
            accuracies, f1s = self.evaluate(trainer)
            if "validation" in self.results:
                self.results["validation"]["accuracy_matrix"].append(self.evaluate(trainer, "validation")[0])
            self.results["accuracy_matrix"].append(accuracies)
            self.results["macro_f1_matrix"].append(f1s)
            # Per-task adapters add parameters task by task: count after each task, keep the latest on top.
            total_parameters = sum(p.numel() for p in self.model.parameters())
            self.results["total_parameters"] = total_parameters
            self.results["per_task"].append(
                {
                    "name": data.name,
                    "train_loss": float(output.training_loss) if np.isfinite(output.training_loss) else None,
                    "steps": int(output.global_step),
                    "seconds": round(seconds, 3),
                    "train_examples": len(data.train),
                    "eval_examples": sum(len(t.test) for t in self.tasks),
                    "learning_rate": float(args.learning_rate),
                    "optimizer_diagnostics": optimizer_diagnostics(self.optimizer),
                    "trainable_parameters": sum(p.numel() for p in self.model.parameters() if p.requires_grad),
                    "total_parameters": total_parameters,
                    "optimizer_state_bytes": optimizer_state_bytes(self.optimizer),
                }
            )
            if self.adapters is not None and self.adapters.per_task:
                self._evaluate_own_adapters(trainer, index, accuracies)
            if tracking:
                self.results["per_task"][-1]["sparsity"] = self._sparsity(self.ever_updated)
            if index == total - 1:
                self.results["status"] = "complete"
            self._write_results()
            self._save_task_outputs(index)
            self._save_checkpoint(index, tracking)
            self._print(
                f"[classp-hf] task {index + 1}/{total} {data.name}: done in {seconds:.1f}s, "
                f"loss {output.training_loss:.4f}, accuracy on it {accuracies[index]:.1%}"
            )
        if self.is_main:
            final = self.output_dir / "model"
            model = self.model
            if self.adapters is not None:  # loadable on its own: the last task's adapter merged into a copy
                model = self.adapters.merged_copy(self.model, self.tasks[-1].name)
            model.save_pretrained(final)
            self.tokenizer.save_pretrained(final)
        self._print("\n" + format_matrix_table(self.results))
        return self.results


def _accelerator_available() -> bool:
    """Whether torch sees an accelerator (CUDA, XPU, MPS, ...) that pinned memory would help."""
    accelerator = getattr(torch, "accelerator", None)
    if accelerator is not None:
        return bool(accelerator.is_available())
    return torch.cuda.is_available()


def optimizer_state_bytes(optimizer: Any) -> int:
    """Bytes of every tensor in an optimizer's state (CLASSP: 4 per trainable element)."""
    optimizer = _unwrap_optimizer(optimizer)
    return sum(
        value.numel() * value.element_size()
        for state in optimizer.state.values()
        for value in state.values()
        if isinstance(value, torch.Tensor)
    )


def run_continual(
    config: RunConfig,
    output_dir: str | os.PathLike,
    *,
    overwrite: bool = False,
    log: bool = True,
    resume: bool = False,
) -> dict[str, Any]:
    """Runs a continual fine-tuning config (see :class:`ContinualRunner`).

    Args:
        config: the validated config.
        output_dir: the output folder.
        overwrite: write into a non-empty folder.
        log: print progress lines.
        resume: continue the run in ``output_dir`` after its last checkpointed task.

    Returns:
        The results dict written to ``output_dir/results.json``.
    """
    return ContinualRunner(config, Path(output_dir), overwrite=overwrite, log=log, resume=resume).run()
