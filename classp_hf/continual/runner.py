"""The continual runner: one model trained over a queue of tasks, the optimizer's state carried across them.

Flow: config -> launch checked (:mod:`.launch`) -> tokenizer, tasks and model loaded (:mod:`.model_setup`) and checked
before anything is written -> for each task a :class:`~classp_hf.continual.optimizer_state.StateCarryingTrainer`
built from the task's ``TrainingArguments`` (built once, when the runner is made) and started from the previous
task's optimizer state ->
every task evaluated (:mod:`.evaluation`) -> results (:mod:`.results`) and report rewritten atomically -> checkpoint
(:mod:`.checkpoint`) -> final model. Each task's row is a :class:`~classp_hf.continual.results.TaskRecord` (with
``training.diagnostics``, its update sparsity from :mod:`.sparsity`).
"""

from __future__ import annotations

import copy
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import transformers
import yaml
from transformers import DataCollatorWithPadding

from classp_hf.continual.checkpoint import (
    ResumeError,
    ResumePoint,
    finish_run_state,
    restore_adapters,
    save_checkpoint,
    start_run_state,
)
from classp_hf.continual.config import ConfigError, RunConfig, training_arguments
from classp_hf.continual.console import library_output, set_console_callbacks
from classp_hf.continual.evaluation import TaskScores, evaluate_own_adapters, evaluate_tasks
from classp_hf.continual.families import check_sequence_classification, classification_head, resolve_head_pattern
from classp_hf.continual.initial_cache import initial_scores_key, read_initial_scores, write_initial_scores
from classp_hf.continual.io import check_writable_folder, write_text_atomic
from classp_hf.continual.launch import Backend, detect_backend
from classp_hf.continual.model_check import check_model
from classp_hf.continual.model_setup import (
    check_optim_group_patterns,
    checkpoints_activations,
    load_model,
    load_tokenizer,
)
from classp_hf.continual.optimizer_state import StateCarryingTrainer, capture_optimizer_state, named_state_bytes
from classp_hf.continual.outputs import (
    OutputDirError,
    adopt_run_folder,
    is_complete_model,
    prepare_output_dir,
    save_model_atomic,
    start_run_folder,
)
from classp_hf.continual.ownership import FolderLock, Owner, deactivate
from classp_hf.continual.predictions import final_stage, record_predictions
from classp_hf.continual.report import format_matrix_table, write_report
from classp_hf.continual.results import RunResults, TaskRecord, stage_names
from classp_hf.continual.sparsity import TrackUpdates, task_sparsity
from classp_hf.continual.tasks import TaskData, joint_stage, load_task
from classp_hf.continual.timing import PhaseTimer
from classp_hf.continual.versions import library_versions
from classp_hf.methods import TaskContext, build_method
from classp_hf.metrics.continual import majority_class_accuracy
from classp_hf.trainer import optimizer_diagnostics, optimizer_hyperparameters, unwrap_optimizer
from classp_hf.training_args import TrainingArguments, optimizer_name

__all__ = ["ContinualRunner", "run_continual", "OutputDirError", "ResumeError", "prepare_output_dir"]


def _is_main_process(use_cpu: bool) -> bool:
    from accelerate import PartialState

    return PartialState(cpu=use_cpu).is_main_process


@dataclass
class ContinualRunner:
    """Runs a :class:`RunConfig` into ``output_dir``.

    Everything that can be checked without loading the model is checked when the runner is made (the launch,
    the output folder or the run to resume, every task's ``TrainingArguments``); :meth:`setup` then loads the
    tokenizer, data and model. Nothing is written before both succeed.

    Args:
        config: the validated run config.
        output_dir: where config.yaml, results.json, report.md, plots, checkpoints and the final model go.
        overwrite: start afresh in a folder an earlier run wrote into (removes only what a run writes).
        log: prints progress lines (main process only).
        resume: continue the run in ``output_dir`` after its last checkpointed task (same config).
        verbose: let transformers, datasets and Python warnings print as they do (the load report, evaluation and
            saving bars, the Trainer's log dicts); by default they are held back (see :mod:`.console`).
        cache_dir: a folder shared by runs (``classp-hf compare`` gives ``DIR/cache``): tokenized tasks
            (:mod:`.data_cache`) and the untrained model's scores (:mod:`.initial_cache`) are read from it when made
            before with the same inputs, and added to it otherwise. The results are the same with or without it.
    """

    config: RunConfig
    output_dir: Path
    overwrite: bool = False
    log: bool = True
    resume: bool = False
    verbose: bool = False
    cache_dir: Path | None = None
    tasks: list[TaskData] = field(default_factory=list, init=False)
    stages: list[TaskData] = field(default_factory=list, init=False)
    results: RunResults | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.output_dir = check_writable_folder(self.output_dir)
        if self.resume and self.overwrite:
            raise ResumeError("--resume and --overwrite exclude each other: --overwrite starts the run afresh")
        self.backend: Backend = detect_backend(self.config.training, self.config.peft)
        self.resume_point: ResumePoint | None = None
        if self.resume:
            self.resume_point = ResumePoint.read(self.output_dir, self.config)  # before anything is loaded
        else:
            prepare_output_dir(self.output_dir, self.overwrite)
        point = self.resume_point
        earlier = point.results.timing if point is not None and point.results is not None else None
        self.timer = PhaseTimer(earlier)
        self.is_main = _is_main_process(self.backend.use_cpu)
        self.stage_names = stage_names([task.name for task in self.config.tasks], self.config.queue_mode)
        # outside library_output: TrainingArguments turns disable_tqdm on when transformers logs errors only
        self.task_args = self._training_arguments()
        self.optimizer_state: dict[str, Any] | None = None
        self.optimizer: torch.optim.Optimizer | None = None  # the last task's (unwrapped) optimizer
        self.ever_updated: dict[str, torch.Tensor] = {}
        self.lock = FolderLock(self.output_dir)
        self.owner: Owner | None = None

    def _print(self, message: str, detail: bool = False) -> None:
        """A progress line (main process only); a ``detail`` line only with ``verbose``."""
        if self.log and self.is_main and (self.verbose or not detail):
            print(message, flush=True)

    # -- set-up -----------------------------------------------------------------------------
    def _training_arguments(self) -> list[TrainingArguments]:
        """Each stage's ``classp_hf.TrainingArguments``: a copy of those the config check built (a joint run's one
        stage: the first task's), with the stage's folder, the device now set up."""
        built = training_arguments(self.config, self.backend)
        stages = []
        for index, name in enumerate(self.stage_names):
            args = copy.deepcopy(built[index])
            args.output_dir = str(self.output_dir / "trainer" / name)
            args.set_up_device()
            stages.append(args)
        return stages

    def setup(self) -> None:
        """Loads the tokenizer, every task and the model; raises before writing anything."""
        config = self.config
        transformers.set_seed(config.seed)
        info = check_model(config)  # a missing, empty or broken model folder: one line, now
        check_sequence_classification(info.model_type, config.model)
        model_path = info.path
        self._print(f"[classp-hf] model {config.model} ({model_path})", detail=True)
        self.tokenizer, padding = load_tokenizer(config, model_path)
        if padding:
            self._print(padding)
        self.tasks = []
        with self.timer.phase("tokenization"):
            for task in config.tasks:
                data = load_task(
                    task,
                    config.labels,
                    self.tokenizer,
                    config.max_length,
                    config.seed,
                    config.validation_fraction,
                    cache_dir=self.cache_dir,
                )
                self._print(
                    f"[classp-hf] task {task.name}: {len(data.train)} train, {len(data.test)} test examples",
                    detail=True,
                )
                self.tasks.append(data)
        self.stages = self._stage_data()
        self.model_path = model_path
        self.model = self._load_model(model_path)
        checkpointing = checkpoints_activations(self.task_args, self.model)
        self.adapters = None
        if config.peft is not None:
            from classp_hf.continual.adapters import AdapterSetup

            self.adapters = AdapterSetup(config.peft)
            self.model = self.adapters.wrap(self.model, config.tasks[0].name)
            if checkpointing:
                # the base weights are frozen: without inputs that require grad, a checkpointed layer's
                # LoRA weights would get no gradient (with use_reentrant=True)
                self.model.enable_input_require_grads()
        self.method = build_method(config.method, config.method_args)
        head = classification_head(self.model.get_base_model() if self.adapters is not None else self.model)
        for args in self.task_args:
            args.optim_groups = resolve_head_pattern(args.optim_groups, head)
        check_optim_group_patterns(self.task_args[0], self.model)

    def _stage_data(self) -> list[TaskData]:
        """What each training stage trains on: the tasks, or for ``queue_mode: joint`` one stage on them all."""
        if self.config.queue_mode != "joint":
            return list(self.tasks)
        union = joint_stage(self.tasks)
        self._print(f"[classp-hf] joint training: one stage on {len(union.train)} examples of every task")
        return [union]

    def _fresh_model(self) -> None:
        """``queue_mode: single_task``: the pretrained model again (the same head initialisation as a run of the
        task alone), with fresh optimizer state."""
        transformers.set_seed(self.config.seed)
        self.model = self._load_model(self.model_path)
        self.optimizer_state = None
        self.ever_updated = {}

    def _load_model(self, source: str) -> torch.nn.Module:
        """The model in ``source`` (:func:`~.model_setup.load_model`; no loading bar with ``log`` off)."""
        return load_model(self.config, source, self.tokenizer, bars=self.log)

    # -- one task ---------------------------------------------------------------------------
    def _context(self, index: int) -> TaskContext:
        """What the continual method sees of stage ``index`` (the trainer is added once it exists)."""
        data, args = self.stages[index], self.task_args[index]
        return TaskContext(
            index=index,
            name=data.name,
            train_dataset=data.train,
            model=self.model,
            data_collator=DataCollatorWithPadding(self.tokenizer),
            batch_size=args.per_device_train_batch_size,
            seed=self.config.seed,
            num_labels=len(self.config.labels),
        )

    def _trainer(self, index: int, context: TaskContext | None = None) -> StateCarryingTrainer:
        """The task's Trainer over what the method makes of its data, started from the carried optimizer state.

        ``method.train_dataset`` runs before a new per-task adapter is added: it sees the model as the previous
        task left it (LwF records that model's logits).
        """
        context = context or self._context(index)
        train_dataset = self.method.train_dataset(context)
        if self.adapters is not None:
            transformers.set_seed(self.config.seed + index)  # a fresh adapter's initialisation, the same on resume
            if self.adapters.start_task(self.model, self.tasks[index].name):
                self.optimizer_state = None  # a new adapter's parameters start with fresh optimizer state
        context.trainer = StateCarryingTrainer(
            model=self.model,
            args=self.task_args[index],
            train_dataset=train_dataset,
            data_collator=context.data_collator,
            processing_class=self.tokenizer,
            continual_method=self.method,
            carried_optimizer_state=self.optimizer_state,
        )
        set_console_callbacks(context.trainer, self.verbose)
        _set_tensorboard_folder(context.trainer, self.output_dir / "logs" / self.stages[index].name)
        return context.trainer

    @property
    def _stacks_adapters(self) -> bool:
        """Whether earlier per-task adapters stay active (O-LoRA): the merged models then hold them all."""
        methods = self.config.method if isinstance(self.config.method, list) else [self.config.method]
        return "olora" in methods

    def _tracks_updates(self) -> bool:
        if not self.config.diagnostics:
            return False
        cls, _ = StateCarryingTrainer.get_optimizer_cls_and_kwargs(self.task_args[0])
        return hasattr(cls, "track_updates")

    def _train_task(self, index: int, tracking: bool) -> StateCarryingTrainer:
        """Trains stage ``index``, evaluates every task, records the row and checkpoints; returns the trainer."""
        data, total = self.stages[index], len(self.stages)
        if self.config.queue_mode == "single_task" and index > 0:
            self._fresh_model()
        timer = self.timer
        with timer.phase("method"):
            context = self._context(index)
            trainer = self._trainer(index, context)
        results = self.results
        if not results.initial_accuracy:
            with timer.phase("evaluation"):
                self._evaluate_initial(trainer)
        args = trainer.args
        self._print(
            f"[classp-hf] task {index + 1}/{total} {data.name}: start "
            f"({len(data.train)} train, {len(data.test)} test examples, optim {results.optimizer['name']}, "
            f"lr {args.learning_rate:g})"
        )
        with timer.phase("method"):
            self.method.before_task(context)
        started = time.perf_counter()
        if tracking:
            trainer.add_callback(TrackUpdates())
        trainer_folders = [self.output_dir / "trainer" / self.stage_names[index], self.output_dir / "logs" / data.name]
        before = _files_under(trainer_folders)
        if self.owner is not None:
            self.owner.record(*trainer_folders)  # before the Trainer creates them (a kill may follow)
        with timer.phase("training"):
            output = trainer.train()
        if self.owner is not None:  # what the Trainer wrote (its folder, TensorBoard's logs) is the run's
            self.owner.record(*(_files_under(trainer_folders) - before))
        seconds = time.perf_counter() - started
        self.optimizer = unwrap_optimizer(trainer.optimizer)
        # what the optimizer was built with, read back from it (the config's optim_args are only text)
        results.optimizer["hyperparameters"] = optimizer_hyperparameters(self.optimizer)
        self.optimizer_state = capture_optimizer_state(trainer)
        with timer.phase("method"):
            self.method.after_task(context)
        with timer.phase("evaluation"):
            scores = evaluate_tasks(trainer, self.tasks)
            validation = evaluate_tasks(trainer, self.tasks, "validation").accuracy if results.validation else None
            own = None
            if self.adapters is not None and self.adapters.per_task:
                own = evaluate_own_adapters(
                    trainer, self.model, self.tasks, index, scores.accuracy, self.adapters.adapter_name
                )
        record = TaskRecord(
            name=data.name,
            train_loss=float(output.training_loss) if np.isfinite(output.training_loss) else None,
            steps=int(output.global_step),
            seconds=round(seconds, 3),
            train_examples=len(data.train),
            eval_examples=sum(len(t.test) for t in self.tasks),
            learning_rate=float(args.learning_rate),
            optimizer_diagnostics=optimizer_diagnostics(self.optimizer),
            # under FSDP and ZeRO each process sees its own shard: the main process's numbers
            optimizer_diagnostics_scope="rank" if self.backend.sharded else "global",
            trainable_parameters=sum(p.numel() for p in self.model.parameters() if p.requires_grad),
            # per-task adapters add parameters task by task: counted after each task
            total_parameters=sum(p.numel() for p in self.model.parameters()),
            optimizer_state_bytes=named_state_bytes(self.optimizer_state),
            method_state_bytes=int(self.method.state_bytes()),
        )
        if tracking:
            first = index == 0 or self.config.queue_mode == "single_task"
            record.sparsity = task_sparsity(self.optimizer, self.model, self.ever_updated, first)
        results.add_task(
            scores.accuracy,
            scores.macro_f1,
            record,
            validation_accuracy=validation,
            own_adapter_accuracy=own,
            task_label_accuracy=scores.task_label_accuracy,
        )
        self._write_results()
        if self.is_main:
            with timer.phase("report"):
                self._record_predictions(index, scores)
        with timer.phase("checkpoint"):
            self._save_task_outputs(index, trainer)
            if self.config.keep_last_checkpoint or index < len(self.stages) - 1:
                self._save_checkpoint(index, trainer, tracking)
        self._print(
            f"[classp-hf] task {index + 1}/{total} {data.name}: done in {seconds:.1f}s, "
            f"loss {output.training_loss:.4f}, accuracy on it {self._own_accuracy(index, scores.accuracy):.1%}"
        )
        return trainer

    def _own_accuracy(self, index: int, accuracy: list[float]) -> float:
        """The accuracy on what stage ``index`` trained on (a joint stage: the mean over the tasks)."""
        return float(np.mean(accuracy)) if self.config.queue_mode == "joint" else accuracy[index]

    def _record_predictions(self, index: int, scores: Any) -> None:
        """Writes ``predictions.json``: the predictions of the tasks whose final accuracy stage ``index`` decides."""
        mode, total = self.config.queue_mode, len(self.tasks)
        columns = [j for j in range(total) if final_stage(j, total, mode) == index]
        if mode == "sequential":
            columns = list(range(total))  # each stage's row; the last one stays
        record_predictions(
            self.output_dir,
            stage=index,
            task_names=[data.name for data in self.tasks],
            columns=columns,
            example_index=[data.test_index or list(range(len(data.test))) for data in self.tasks],
            labels=scores.references,
            predictions=scores.predictions,
            queue_mode=mode,
            seed=self.config.seed,
        )

    # -- outputs ----------------------------------------------------------------------------
    def _save_task_outputs(self, index: int, trainer: Any) -> None:
        """LoRA runs: the task's adapter (and with ``merge: true`` a merged full model)."""
        if self.adapters is None or not self.is_main:
            return
        name = self.tasks[index].name
        self.adapters.save(self.model, self.output_dir / "adapters" / name, name)
        if self.adapters.section["merge"]:
            merged = self.adapters.merged_copy(self.model, name, with_earlier=self._stacks_adapters)
            save_model_atomic(merged, self.tokenizer, self.output_dir / "merged" / name)

    def _model_state_dict(self, trainer: Any | None) -> dict[str, torch.Tensor] | None:
        """The full model state dict under a sharded backend (collective: every process calls it), else `None`
        (also when no trainer sharded the model in this process)."""
        if not self.backend.sharded or trainer is None:
            return None
        return trainer.accelerator.get_state_dict(trainer.model_wrapped)

    def _write_results(self, report: bool = True) -> None:
        """results.json (with the timing so far) and, with ``report``, report.md and the plots (main process)."""
        if not self.is_main:
            return
        with self.timer.phase("report"):
            self.results.timing = self.timer.to_dict()
            self.results.write(self.output_dir)
            if report:
                write_report(self.results.to_dict(), self.output_dir)

    def _initial_key(self, trainer: Any) -> str | None:
        """The untrained model's key in the cache (:mod:`.initial_cache`), or `None` without a cache (or with
        several processes, which must all take the same path)."""
        if self.cache_dir is None or self.backend.num_processes > 1 or any(t.cache_key is None for t in self.tasks):
            return None
        return initial_scores_key(
            self.model_path,
            self.config,
            [task.cache_key for task in self.tasks],
            trainer.args.per_device_eval_batch_size,
            self.results.backend,
            self.results.versions,
        )

    def _evaluate_initial(self, trainer: Any) -> None:
        """The untrained model's scores: from the cache when a run with the same key evaluated it, else evaluated
        (and added to the cache)."""
        results = self.results
        key = self._initial_key(trainer)
        cached = None if key is None else read_initial_scores(self.cache_dir, key)
        if cached is not None:
            self._print("[classp-hf] the untrained model's scores: from the cache (the same model, seed and data)")
            scores = TaskScores(cached["accuracy"], cached["macro_f1"], cached["task_label_accuracy"])
            validation = cached["validation_accuracy"]
        else:
            self._print("[classp-hf] evaluating the untrained model on every task", detail=True)
            scores = evaluate_tasks(trainer, self.tasks)
            validation = evaluate_tasks(trainer, self.tasks, "validation").accuracy if results.validation else None
            if key is not None and self.is_main:
                write_initial_scores(
                    self.cache_dir,
                    key,
                    {
                        "accuracy": scores.accuracy,
                        "macro_f1": scores.macro_f1,
                        "validation_accuracy": validation,
                        "task_label_accuracy": scores.task_label_accuracy,
                    },
                )
        results.set_initial(scores.accuracy, scores.macro_f1, validation, scores.task_label_accuracy)

    def _save_checkpoint(self, index: int, trainer: Any, tracking: bool) -> None:
        """Model, optimizer, method state (and update masks) after task ``index``; see :mod:`.checkpoint`."""
        state_dict = self._model_state_dict(trainer)
        if not self.is_main:
            return

        def save_model(folder: Path) -> None:  # what --resume loads; the tokenizer comes from config.model
            self.model.save_pretrained(folder, **({"state_dict": state_dict} if state_dict is not None else {}))

        save_checkpoint(
            self.output_dir,
            index,
            list(self.stage_names),
            save_model,
            {
                "optimizer": self.optimizer_state,
                "method": self.method.state_dict(),
                "update_masks": self.ever_updated if tracking else None,
            },
            num_processes=self.backend.num_processes,
        )

    def _save_final_model(self, trainer: Any | None) -> None:
        state_dict = self._model_state_dict(trainer)
        if not self.is_main:
            return
        model = self.model
        if self.adapters is not None:  # loadable on its own: the last task's adapter merged into a copy
            model = self.adapters.merged_copy(self.model, self.tasks[-1].name, with_earlier=self._stacks_adapters)
        save_model_atomic(model, self.tokenizer, self.output_dir / "model", state_dict=state_dict)

    # -- start or resume --------------------------------------------------------------------
    def _start(self) -> None:
        """A new run: clears an earlier run's outputs (``--overwrite``), writes config.yaml and the run state."""
        config = self.config
        args = self.task_args[0]
        self.results = RunResults.start(
            validation_fraction=config.validation_fraction,
            per_task_adapters=self.adapters is not None and self.adapters.per_task,
            model=config.model,
            labels=list(config.labels),
            seed=config.seed,
            method=config.method,
            optimizer={
                "name": optimizer_name(args.optim),
                "optim_args": args.optim_args,
                "learning_rate": args.learning_rate,
            },
            tasks=[data.name for data in self.tasks],
            majority_accuracy=[majority_class_accuracy(data.test_labels) for data in self.tasks],
            versions=library_versions(),
            total_parameters=sum(p.numel() for p in self.model.parameters()),
            peft=dict(config.peft) if config.peft else None,
            backend=self.backend.to_dict(getattr(config, "model_dtype", None)),
            queue_mode=config.queue_mode,
        )
        if self.is_main:
            # the marker first (after --overwrite removed what the earlier run wrote); --resume keeps the run's
            self.owner = adopt_run_folder(self.output_dir) if self.resume else start_run_folder(self.output_dir)
            write_text_atomic(self.output_dir / "config.yaml", yaml.safe_dump(config.to_dict(), sort_keys=False))
            start_run_state(self.output_dir, list(self.stage_names), self.backend.num_processes)

    def _restore(self) -> int:
        """``--resume``: loads the last checkpoint and the results so far; returns the next task's index.

        Raises:
            ResumeError: the checkpoint does not fit this config, naming the file.
        """
        point = self.resume_point
        done = point.completed_tasks
        names = list(self.stage_names)
        if done == 0:  # killed during the first task: start it again
            if self.is_main:
                self.owner = adopt_run_folder(self.output_dir)
                point.clean_up()
            self._print(f"[classp-hf] resuming: no task was finished in {self.output_dir}; starting the first again")
            self._start()
            return 0
        self.results = point.results
        self.results.truncate(done)  # rows of a task finished after its checkpoint are trained again
        self.results.resumed_after_tasks.append(done)
        checkpoint = point.run_state.checkpoint
        if self.adapters is None:
            try:
                self.model = self._load_model(str(checkpoint))
            except ConfigError as error:
                reason = str(error).split(": ", 2)[-1]
                raise ResumeError(f"--resume: cannot load the model in {checkpoint} ({reason})") from None
        else:
            for data in self.tasks[1:done]:  # rebuild the adapters the run had, then load their weights
                self.adapters.start_task(self.model, data.name)
            restore_adapters(self.model, checkpoint, self.adapters.names)
        if self.is_main:  # everything loaded: now remove what the kill left half-written
            self.owner = adopt_run_folder(self.output_dir)
            point.clean_up()
        self.optimizer_state = point.files["optimizer"]
        self.method.load_state_dict(point.files["method"])
        self.ever_updated = point.files["update_masks"] or {}
        if done < len(names):
            self._print(f"[classp-hf] resuming after task {done}/{len(names)} ({names[done - 1]}) from {checkpoint}")
        return done

    # -- the run ----------------------------------------------------------------------------
    def run(self) -> RunResults:
        """Trains on every task in order and returns the results (also in results.json).

        The main process holds the output folder's lock (:class:`~classp_hf.continual.ownership.FolderLock`) from
        here to the end, so a second writer on the folder is refused at once.

        Raises:
            FolderBusyError: another live process writes into the folder (naming its pid).
        """
        self._claim_folder()
        try:
            with library_output(self.verbose):
                return self._run()
        finally:
            deactivate(self.owner)
            self.owner = None
            self.lock.release()

    def _claim_folder(self) -> None:
        """Locks the output folder (main process) and checks again what was checked without the lock: every process
        gets the main process's verdict, so none goes on alone."""
        caught: ValueError | None = None
        if self.is_main:
            try:
                self.lock.acquire()
                self._check_again()
            except ValueError as error:
                self.lock.release()
                caught = error
        message = _broadcast_from_main(None if caught is None else str(caught), self.backend.num_processes)
        if caught is not None:
            raise caught
        if message is not None:
            raise (ResumeError if self.resume else OutputDirError)(message)

    def _check_again(self) -> None:
        """The folder as it is now, under the lock, must be what the runner was made for."""
        if not self.resume:
            prepare_output_dir(self.output_dir, self.overwrite)
            return
        from classp_hf.continual.checkpoint import read_run_state

        now = read_run_state(self.output_dir)
        if now != self.resume_point.run_state:
            raise ResumeError(
                f"--resume: {self.output_dir / 'run_state.json'} changed since it was read (another process wrote "
                "it); run the command again"
            )

    def _run(self) -> RunResults:
        point = self.resume_point
        if point is not None and point.finished():
            model = self.output_dir / "model"
            kept = "" if is_complete_model(model) else f" (it keeps no final model in {model})"
            self._print(f"[classp-hf] the run in {self.output_dir} is already complete{kept}; nothing to do")
            self.results = point.results
            return self.results
        with self.timer.phase("startup"):
            if not self.tasks:
                self.setup()
            start = self._restore() if self.resume else None
            if start is None:
                self._start()
                start = 0
        tracking = self._tracks_updates()
        trainer = None
        for index in range(start, len(self.stages)):
            trainer = self._train_task(index, tracking)
        with self.timer.phase("final_model"):
            if self.config.save_final_model:  # also when every task was done and only the final model was missing
                self._save_final_model(trainer)
            if self.is_main:
                finish_run_state(
                    self.output_dir,
                    list(self.stage_names),
                    self.backend.num_processes,
                    keep_checkpoint=self.config.keep_last_checkpoint,
                )
        self._write_results(report=False)  # the finished run's timing: results.json alone, the report is written
        self._print("\n" + format_matrix_table(self.results.to_dict()))
        return self.results


def _files_under(folders: list[Path]) -> set[Path]:
    """The folders that exist and everything in them."""
    return {path for folder in folders if folder.is_dir() for path in (folder, *folder.rglob("*"))}


def _broadcast_from_main(message: str | None, num_processes: int) -> str | None:
    """The main process's ``message`` on every process (only the main process locks and checks the folder)."""
    import torch.distributed as dist

    if num_processes <= 1 or not (dist.is_available() and dist.is_initialized()):
        return message
    box = [message]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _set_tensorboard_folder(trainer: transformers.Trainer, folder: Path) -> None:
    """Points the Trainer's TensorBoard callback (``report_to: tensorboard``) at ``folder`` (one per task).

    transformers reads the folder from ``TENSORBOARD_LOGGING_DIR`` when the callback is made; setting the callback's
    own ``logging_dir`` before training starts does the same without changing the process's environment.
    """
    from transformers.integrations import TensorBoardCallback

    for callback in trainer.callback_handler.callbacks:
        if isinstance(callback, TensorBoardCallback):
            callback.logging_dir = str(folder)


def run_continual(
    config: RunConfig,
    output_dir: str | os.PathLike,
    *,
    overwrite: bool = False,
    log: bool = True,
    resume: bool = False,
    verbose: bool = False,
    cache_dir: str | os.PathLike | None = None,
) -> RunResults:
    """Runs a continual fine-tuning config (see :class:`ContinualRunner`).

    Args:
        config: the validated config.
        output_dir: the output folder.
        overwrite: start afresh in a folder an earlier run wrote into.
        log: print progress lines.
        resume: continue the run in ``output_dir`` after its last checkpointed task.
        verbose: let the libraries print as they do (see :mod:`.console`).
        cache_dir: a folder of tokenized tasks and untrained-model scores shared by runs (see :class:`ContinualRunner`).

    Returns:
        The results (also written to ``output_dir/results.json``).
    """
    cache = None if cache_dir is None else Path(cache_dir)
    runner = ContinualRunner(
        config, Path(output_dir), overwrite=overwrite, log=log, resume=resume, cache_dir=cache, verbose=verbose
    )
    return runner.run()
