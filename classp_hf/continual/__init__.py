"""Continual fine-tuning over a queue of tasks: config, task data, runner, results and report."""

from classp_hf.continual.api import run
from classp_hf.continual.config import ConfigError, RunConfig, TaskConfig, load_config
from classp_hf.continual.results import RunResults

__all__ = ["ConfigError", "RunConfig", "RunResults", "TaskConfig", "load_config", "run"]
