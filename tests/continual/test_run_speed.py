"""Runs that spend their time training: sorted evaluation, the tokenized-task and untrained-model caches,
``keep_last_checkpoint: false`` and the timing record. Correctness only: no timing is asserted."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import torch

import classp_hf.continual.runner as runner_module
from classp_hf.continual import tasks as tasks_module
from classp_hf.continual.checkpoint import ResumeError, read_run_state
from classp_hf.continual.compare.folder import run_state as _run_state
from classp_hf.continual.config import ConfigError, TaskConfig, config_from_dict, stored_config_differences
from classp_hf.continual.data_cache import read_cached_task
from classp_hf.continual.evaluation import _logits, length_order
from classp_hf.continual.results import validate_results
from classp_hf.continual.runner import ContinualRunner
from classp_hf.continual.tasks import load_task
from classp_hf.continual.timing import PHASES, PhaseTimer

from ..helpers.runs import SAMPLE, raw_config

LABELS = ["negative", "neutral", "positive"]


def fpb_task(**extra):
    files = {split: str(SAMPLE / "financial_phrasebank" / f"{split}.csv") for split in ("train", "test")}
    return TaskConfig(name="financial_phrasebank", data_files=files, max_train_samples=40, max_eval_samples=30, **extra)


# -- evaluation ---------------------------------------------------------------------------------------------------


def test_length_sorted_evaluation_gives_every_example_its_own_prediction(tiny_model, tokenizer, tmp_path):
    from transformers import DataCollatorWithPadding

    from classp_hf.trainer import Trainer
    from classp_hf.training_args import TrainingArguments

    data = load_task(fpb_task(), LABELS, tokenizer, 64, seed=0)
    order = length_order(data.test)
    lengths = [len(ids) for ids in data.test["input_ids"]]
    assert [lengths[i] for i in order] == sorted(lengths, reverse=True)
    assert not np.array_equal(order, np.arange(len(order)))  # the sample is not sorted already: the test means it
    args = TrainingArguments(
        output_dir=str(tmp_path), per_device_eval_batch_size=8, report_to="none", use_cpu=True, disable_tqdm=True
    )
    trainer = Trainer(model=tiny_model, args=args, data_collator=DataCollatorWithPadding(tokenizer))
    sorted_logits, sorted_labels = _logits(trainer, data.test, "test", sort_by_length=True)
    plain_logits, plain_labels = _logits(trainer, data.test, "test", sort_by_length=False)
    assert np.array_equal(sorted_labels, np.asarray(data.test["labels"]))
    assert np.array_equal(sorted_labels, plain_labels)
    assert np.array_equal(sorted_logits.argmax(-1), plain_logits.argmax(-1))
    np.testing.assert_allclose(sorted_logits, plain_logits, rtol=0, atol=1e-5)
    assert torch.is_grad_enabled()  # inference mode was left
    # evaluating leaves torch's random state as it was: training after it draws the same dropout masks and batch
    # order whether or not the untrained model was scored in this process
    state = torch.get_rng_state()
    _logits(trainer, data.test, "test")
    assert torch.equal(torch.get_rng_state(), state)


# -- the tokenized-task cache -------------------------------------------------------------------------------------


def test_cached_tasks_are_identical_and_read_back_instead_of_tokenized(tokenizer, tmp_path, monkeypatch):
    task = fpb_task()
    fresh = load_task(task, LABELS, tokenizer, 48, seed=1, validation_fraction=0.25)
    first = load_task(task, LABELS, tokenizer, 48, seed=1, validation_fraction=0.25, cache_dir=tmp_path)
    monkeypatch.setattr(tasks_module, "_tokenize_task", lambda *a, **k: pytest.fail("tokenized again"))
    again = load_task(task, LABELS, tokenizer, 48, seed=1, validation_fraction=0.25, cache_dir=tmp_path)
    assert first.cache_key == again.cache_key and fresh.cache_key is None
    for split in ("train", "test", "validation"):
        expected = getattr(fresh, split).to_dict()
        assert getattr(first, split).to_dict() == expected, split
        assert getattr(again, split).to_dict() == expected, split
    # the test rows (predictions.json's example_index, what compare pairs runs on) come back from the cache too
    assert fresh.test_index is not None and len(fresh.test_index) == 30 and fresh.test_index != list(range(30))
    assert first.test_index == again.test_index == fresh.test_index
    assert len(list((tmp_path / "tokenized").iterdir())) == 1


def test_a_cache_entry_without_its_test_rows_is_tokenized_again(tokenizer, tmp_path):
    """An entry lacking ``test_index.json`` (damaged) is not read: its runs would record other example rows."""
    task = fpb_task()
    first = load_task(task, LABELS, tokenizer, 48, seed=1, validation_fraction=0.25, cache_dir=tmp_path)
    (entry,) = (tmp_path / "tokenized").iterdir()
    (entry / "test_index.json").unlink()
    assert read_cached_task(tmp_path, task.name, first.cache_key) is None
    (entry / "test_index.json").write_text('{"rows": 1}')
    assert read_cached_task(tmp_path, task.name, first.cache_key) is None
    (entry / "test_index.json").write_text(json.dumps(first.test_index))
    assert read_cached_task(tmp_path, task.name, first.cache_key)["test_index"] == first.test_index


def test_the_cache_key_changes_with_the_tokenizer_max_length_and_data(tokenizer, tmp_path):
    from transformers import AutoTokenizer

    from classp_hf.continual.data_cache import task_cache_key

    data = tmp_path / "data"
    shutil.copytree(SAMPLE / "financial_phrasebank", data)
    task = TaskConfig(name="fpb", data_files={s: str(data / f"{s}.csv") for s in ("train", "test")})
    key = task_cache_key(task, LABELS, tokenizer, 64, 0, 0.0)
    assert task_cache_key(task, LABELS, tokenizer, 64, 0, 0.0) == key
    assert task_cache_key(task, LABELS, tokenizer, 32, 0, 0.0) != key  # max_length
    assert task_cache_key(task, LABELS, tokenizer, 64, 1, 0.0) != key  # seed (the sample)
    other = AutoTokenizer.from_pretrained(tokenizer.name_or_path)
    assert task_cache_key(task, LABELS, other, 64, 0, 0.0) == key  # the same tokenizer loaded again
    other.add_tokens(["zzqx"])
    assert task_cache_key(task, LABELS, other, 64, 0, 0.0) != key  # another vocabulary
    lowered = AutoTokenizer.from_pretrained(tokenizer.name_or_path, model_max_length=7)
    assert task_cache_key(task, LABELS, lowered, 64, 0, 0.0) != key  # another setting
    # the same files copied elsewhere (new paths, new timestamps, e.g. a node's scratch disk): the same entry
    moved = tmp_path / "staged"
    shutil.copytree(data, moved)
    os.utime(moved / "train.csv", (1, 1))
    staged = TaskConfig(name="fpb", data_files={s: str(moved / f"{s}.csv") for s in ("train", "test")})
    assert task_cache_key(staged, LABELS, tokenizer, 64, 0, 0.0) == key
    with open(data / "train.csv", "a", encoding="utf-8") as handle:
        handle.write('"a new sentence",positive\n')
    assert task_cache_key(task, LABELS, tokenizer, 64, 0, 0.0) != key  # the data changed


# -- a run: keep_last_checkpoint false, the timing record, the untrained model's scores from the cache --------------


def check_timing(results):
    timing = results["timing"]
    assert set(timing["phases"]) == set(PHASES)
    phases = timing["phases"]
    assert all(value >= 0 for value in phases.values())
    assert phases["training"] > 0 and phases["evaluation"] > 0 and phases["tokenization"] > 0
    assert sum(phases.values()) + timing["other_seconds"] == pytest.approx(timing["total_seconds"], abs=0.01)
    # the phases and the total are stored to the millisecond, the share (from unrounded seconds) to 4 places
    rounding = 1e-4 + 1e-3 / timing["total_seconds"]
    assert timing["training_share"] == pytest.approx(phases["training"] / timing["total_seconds"], abs=rounding)
    train_seconds = sum(task["seconds"] for task in results["per_task"])
    assert phases["training"] <= train_seconds + 0.01  # Trainer.train inside each task's timed seconds


class CountingRunner(ContinualRunner):
    evaluations = 0


@pytest.fixture
def count_evaluations(monkeypatch):
    real = runner_module.evaluate_tasks

    def counting(*args, **kwargs):
        CountingRunner.evaluations += 1
        return real(*args, **kwargs)

    CountingRunner.evaluations = 0
    monkeypatch.setattr(runner_module, "evaluate_tasks", counting)
    return CountingRunner


def test_a_run_without_its_last_checkpoint_is_finished_and_shares_the_cache(
    tmp_path,
    tiny_model_dir,
    count_evaluations,
):
    raw = raw_config(tiny_model_dir, keep_last_checkpoint=False, validation_fraction=0.25)
    cache = tmp_path / "cache"
    first = count_evaluations(config_from_dict(raw), tmp_path / "a", log=False, cache_dir=cache).run().to_dict()
    assert count_evaluations.evaluations == 6  # test + validation: untrained, after task 1, after task 2
    run = tmp_path / "a"
    assert not (run / "checkpoints").exists()
    state = read_run_state(run, require_checkpoint=False)
    assert state.completed_tasks == 2 and state.checkpoint is None
    assert _run_state(run) == "finished"
    on_disk = json.loads((run / "results.json").read_text())
    assert on_disk == first and first["status"] == "complete"
    validate_results(on_disk)
    check_timing(first)
    assert first["timing"]["phases"]["final_model"] > 0  # the last write came after the final model
    # --resume of the finished run: nothing to do, nothing needed from a checkpoint
    resumed = ContinualRunner(config_from_dict(raw), run, log=False, resume=True).run().to_dict()
    assert resumed == first
    # keep_last_checkpoint is no config difference (a run made with either is reused / resumed)
    assert stored_config_differences(config_from_dict({**raw, "keep_last_checkpoint": True}), run / "config.yaml") == []
    # a second run (another learning rate) takes the untrained model's scores from the cache: identical numbers
    count_evaluations.evaluations = 0
    other = {**raw, "training": {**raw["training"], "learning_rate": 5e-4}}
    second = count_evaluations(config_from_dict(other), tmp_path / "b", log=False, cache_dir=cache).run().to_dict()
    assert count_evaluations.evaluations == 4
    assert second["initial_accuracy"] == first["initial_accuracy"]
    assert second["initial_macro_f1"] == first["initial_macro_f1"]
    assert second["validation"]["initial_accuracy"] == first["validation"]["initial_accuracy"]
    assert second["task_labels"]["initial_accuracy"] == first["task_labels"]["initial_accuracy"]
    # the first run again, its untrained scores now from the cache: the same training, to the last digit
    count_evaluations.evaluations = 0
    again = count_evaluations(config_from_dict(raw), tmp_path / "c", log=False, cache_dir=cache).run().to_dict()
    assert count_evaluations.evaluations == 4
    assert [t["train_loss"] for t in again["per_task"]] == [t["train_loss"] for t in first["per_task"]]
    assert again["accuracy_matrix"] == first["accuracy_matrix"]
    # the user deletes the finished run's final model to save room: still finished, nothing re-run or lost
    shutil.rmtree(run / "model")
    assert _run_state(run) == "finished"  # compare skips it and reports it
    again = ContinualRunner(config_from_dict(raw), run, log=False, resume=True).run().to_dict()
    assert again == first and json.loads((run / "results.json").read_text()) == first


def test_a_run_without_a_final_model_is_finished_and_keeps_its_last_checkpoint(tmp_path, tiny_model_dir, capsys):
    raw = raw_config(tiny_model_dir, save_final_model=False, keep_last_checkpoint=True)
    run = tmp_path / "run"
    results = ContinualRunner(config_from_dict(raw), run, log=False).run().to_dict()
    assert results["status"] == "complete" and not (run / "model").exists()
    on_disk = json.loads((run / "run_state.json").read_text())
    assert on_disk["finished"] is True and on_disk["checkpoint"] == "checkpoints/task-01-amazon_reviews"
    assert (run / on_disk["checkpoint"] / "optimizer.pt").is_file()
    assert _run_state(run) == "finished"
    # save_final_model is no config difference (a run made with either is reused / resumed)
    assert stored_config_differences(config_from_dict({**raw, "save_final_model": True}), run / "config.yaml") == []
    resumed = ContinualRunner(config_from_dict({**raw, "save_final_model": True}), run, log=True, resume=True)
    assert resumed.run().to_dict() == results and not (run / "model").exists()  # finished: nothing to do
    assert f"already complete (it keeps no final model in {run / 'model'}); nothing to do" in capsys.readouterr().out
    shutil.rmtree(run / "checkpoints")  # the user removes the last checkpoint too: still finished
    assert _run_state(run) == "finished"
    assert ContinualRunner(config_from_dict(raw), run, log=False, resume=True).run().to_dict() == results


def test_run_state_without_finished_reads_as_an_earlier_classp_hf_wrote_it(tmp_path):
    def state(**record):
        (tmp_path / "run_state.json").write_text(json.dumps({"tasks": ["a", "b"], **record}))
        return read_run_state(tmp_path, require_checkpoint=False)

    assert state(completed_tasks=2, checkpoint=None).finished  # keep_last_checkpoint: false, finished
    assert not state(completed_tasks=2, checkpoint="checkpoints/task-01-b").finished  # the final model decides
    assert not state(completed_tasks=1, checkpoint="checkpoints/task-00-a").finished
    with pytest.raises(ResumeError, match=r"^--resume: .*run_state\.json is corrupt \(finished True after 1 of 2"):
        state(completed_tasks=1, checkpoint="checkpoints/task-00-a", finished=True)
    with pytest.raises(ResumeError, match=r"^--resume: .*run_state\.json is corrupt \(finished 'yes'"):
        state(completed_tasks=2, checkpoint=None, finished="yes")
    with pytest.raises(ResumeError, match=r"^--resume: .*run_state\.json is corrupt \(completed_tasks 1, checkpoint"):
        state(completed_tasks=1, checkpoint=None, finished=False)


@pytest.mark.parametrize("key", ["keep_last_checkpoint", "save_final_model"])
def test_what_a_run_keeps_must_be_a_bool(tiny_model_dir, key):
    with pytest.raises(ConfigError, match=rf"^config\.{key}: expected true or false$"):
        config_from_dict(raw_config(tiny_model_dir, **{key: "no"}))
    config = config_from_dict(raw_config(tiny_model_dir))
    assert config.keep_last_checkpoint is True and config.save_final_model is True


def test_phase_timer_counts_a_nested_phase_toward_itself_only():
    timer = PhaseTimer({"phases": {"training": 2.0}, "total_seconds": 5.0, "attempts": 1})
    with timer.phase("startup"):
        with timer.phase("training"):
            sum(range(10**5))
        with timer.phase("startup"):
            pass
    record = timer.to_dict()
    assert record["phases"]["training"] > 2.0 and record["phases"]["startup"] >= 0 and record["attempts"] == 2
    assert sum(record["phases"].values()) <= record["total_seconds"]
    with pytest.raises(ValueError, match="unknown phase 'warmup'"):
        with timer.phase("warmup"):
            pass
