"""A comparison's grid file and a launcher that writes finished run folders with crafted results."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from classp_hf.continual.compare.execute import Attempt
from classp_hf.continual.compare.grid import load_grid
from classp_hf.continual.ownership import Owner

TASKS = ["financial_phrasebank", "amazon_reviews"]


def write_grid(folder: Path, settings, **extra) -> Path:
    path = folder / "grid.yaml"
    path.write_text(yaml.safe_dump({"base": "configs/base.yaml", "seeds": [0], "settings": settings, **extra}))
    return path


def crafted_results(config, test_acc: float, validation_acc: float) -> dict:
    """A complete results.json whose final test row is ``test_acc`` and validation row ``validation_acc``."""
    names = [task.name for task in config.tasks]
    first_task_final = test_acc
    last = [test_acc, test_acc]
    matrix = [[0.7, 0.3], last]
    return {
        "schema_version": 2,
        "status": "complete",
        "tasks": names,
        "seed": config.seed,
        "accuracy_matrix": matrix,
        "metrics": {"acc": test_acc, "bwt": first_task_final - 0.7, "fwt": None, "forgetting": 0.7 - first_task_final},
        "validation": {
            "fraction": config.validation_fraction,
            "initial_accuracy": [0.3, 0.3],
            "accuracy_matrix": [[0.6, 0.3], [validation_acc, validation_acc]],
            "metrics": {"acc": validation_acc, "bwt": None, "fwt": None, "forgetting": None},
        },
        "task_labels": {  # the argmax over each task's own labels: 5 points better here
            "initial_accuracy": [0.3, 0.3],
            "accuracy_matrix": [[0.7, 0.35], [test_acc + 0.05, test_acc + 0.05]],
            "metrics": {"acc": test_acc + 0.05, "bwt": None, "fwt": None, "forgetting": None},
        },
        "per_task": [
            {
                "name": name,
                "seconds": 1.5,
                "steps": 3,
                "train_examples": 24,
                "trainable_parameters": 1000,
                "total_parameters": 5000 + 1000 * index,
                "optimizer_state_bytes": 4000,
                "method_state_bytes": 1000 * index,
            }
            for index, name in enumerate(names)
        ],
    }


class FakeLauncher:
    """Writes a finished run folder with the numbers ``outcome(job)`` gives: ``(test_acc, validation_acc)``, or an
    error string for a failed run."""

    def __init__(self, outcome):
        self.outcome = outcome
        self.launched = []

    def launch(self, job):
        self.launched.append((job.setting, job.point.name, job.seed, job.mode))
        result = self.outcome(job)
        if isinstance(result, str):
            return Attempt(False, result, 0.5, 0.25)
        run = job.run_dir
        run.mkdir(parents=True, exist_ok=True)
        owner = Owner.read(run) or Owner.create(run, "run")  # as a run does: its marker, then what it writes
        written = ["model/config.json", "model/model.safetensors", "checkpoints/last", "config.yaml"]
        owner.record(*(run / name for name in [*written, "run_state.json", "results.json"]))
        (run / "model").mkdir(exist_ok=True)
        (run / "model" / "config.json").write_text("{}")
        (run / "model" / "model.safetensors").write_text("")
        (run / "checkpoints" / "last").mkdir(parents=True, exist_ok=True)
        (run / "config.yaml").write_text(yaml.safe_dump(job.config.to_dict(), sort_keys=False))
        names = [task.name for task in job.config.tasks]
        state = {"completed_tasks": len(names), "tasks": names, "checkpoint": "checkpoints/last", "num_processes": 1}
        (run / "run_state.json").write_text(json.dumps(state))
        (run / "results.json").write_text(json.dumps(crafted_results(job.config, *result)))
        return Attempt(True, None, 2.0, 3.0)


def comparison_config(folder: Path):
    """The run config of the setting ``plain`` in ``folder``'s grid."""
    grid = load_grid(folder / "grid.yaml")
    setting = grid.settings[0]
    return grid.run_config(setting, setting.points[0], 0)
