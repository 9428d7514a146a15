"""Continual fine-tuning over a queue of tasks: config, task data, runner, results and report."""

from classp_hf.continual.config import ConfigError, RunConfig, TaskConfig, load_config

__all__ = ["ConfigError", "RunConfig", "TaskConfig", "load_config"]
