"""Continual fine-tuning over a queue of tasks: config, task data, runner, results, report and comparisons."""

from classp_hf.continual.api import run
from classp_hf.continual.compare import Comparison, compare
from classp_hf.continual.config import ConfigError, RunConfig, TaskConfig, load_config
from classp_hf.continual.results import RunResults

__all__ = ["Comparison", "ConfigError", "RunConfig", "RunResults", "TaskConfig", "compare", "load_config", "run"]
