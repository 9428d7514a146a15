"""Killing a run at a chosen point and comparing a resumed run with the uninterrupted one."""

from __future__ import annotations

import hashlib

import pytest
import torch

from classp_hf.continual.config import config_from_dict
from classp_hf.continual.results import validate_results
from classp_hf.continual.runner import ContinualRunner

from .runs import SAMPLE, raw_config

LORA = {"r": 4, "lora_alpha": 8, "lora_dropout": 0.0, "target_modules": ["query", "value"]}


class Killed(RuntimeError):
    """Stands for the process dying (power cut, OOM kill, Ctrl-C) at a chosen point."""


class KilledBeforeTask(ContinualRunner):
    """Dies when task ``kill_at`` is about to start."""

    kill_at = 2

    def _trainer(self, index, context=None):
        if index == self.kill_at:
            raise Killed(f"killed before task {index}")
        return super()._trainer(index, context)


def three_task_config(model_dir, **overrides):
    raw = raw_config(model_dir, **overrides)
    files = {split: str(SAMPLE / "airline_tweets" / f"{split}.csv") for split in ("train", "test")}
    task = {"name": "airline_tweets", "data_files": files, "max_train_samples": 32, "max_eval_samples": 24}
    raw["tasks"].append(task)
    raw["diagnostics"] = True
    return raw


def final_state(runner):
    return {name: tensor.detach().clone() for name, tensor in runner.model.state_dict().items()}


def assert_same_run(resumed, resumed_results, reference, reference_results):
    assert resumed_results["status"] == "complete"
    validate_results(resumed_results)
    for key in ("accuracy_matrix", "macro_f1_matrix", "initial_accuracy", "metrics"):
        assert resumed_results[key] == reference_results[key], key
    assert [t["train_loss"] for t in resumed_results["per_task"]] == [
        t["train_loss"] for t in reference_results["per_task"]
    ]
    for key in ("accuracy_matrix_own_adapter",):
        assert resumed_results.get(key) == reference_results.get(key)
    expected = final_state(reference)
    got = final_state(resumed)
    assert got.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=0, atol=0, msg=name)
    # The optimizer state continues, not restarts: CLASSP's S (AdamW's moments) is the uninterrupted run's.
    states = list(resumed.optimizer.state.values())
    reference_states = list(reference.optimizer.state.values())
    assert len(states) == len(reference_states) > 0
    for a, b in zip(states, reference_states):
        assert a.keys() == b.keys()
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)


def kill_resume_and_compare(raw, tmp_path):
    """Runs ``raw`` uninterrupted (into ``tmp_path/ref``) and killed before its third task then resumed (into
    ``tmp_path/out``), and asserts the two are the same run (:func:`assert_same_run`).

    Returns:
        ``(resumed runner, its results dict, the uninterrupted run's results dict)``.
    """
    reference = ContinualRunner(config_from_dict(raw), tmp_path / "ref", log=False)
    reference_results = reference.run().to_dict()
    with pytest.raises(Killed):
        KilledBeforeTask(config_from_dict(raw), tmp_path / "out", log=False).run()
    resumed = ContinualRunner(config_from_dict(raw), tmp_path / "out", log=False, resume=True)
    results = resumed.run().to_dict()
    assert_same_run(resumed, results, reference, reference_results)
    return resumed, results, reference_results


def snapshot(folder):
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }
