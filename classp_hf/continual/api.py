"""The Python entry point for notebooks and scripts: ``classp_hf.continual.run(config, output_dir, overrides=...)``."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from classp_hf.continual.config import RunConfig, config_from_dict, load_config
from classp_hf.continual.results import RunResults

__all__ = ["run"]


def run(
    config: RunConfig | str | os.PathLike | Mapping[str, Any],
    output_dir: str | os.PathLike,
    *,
    overrides: Mapping[str, Any] | None = None,
    overwrite: bool = False,
    resume: bool = False,
    log: bool = True,
    verbose: bool = False,
) -> RunResults:
    """Runs (or resumes) a continual fine-tuning config, as ``classp-hf run`` does.

    Args:
        config: a YAML path, a parsed config mapping (relative paths resolve against the working directory), or a
            :class:`RunConfig`.
        output_dir: the run's folder.
        overrides: dotted keys to values applied on top of the config and validated with it, e.g.
            ``{"training.learning_rate": 1e-2, "tasks.imdb.max_train_samples": 200}``.
        overwrite: start afresh in a folder an earlier run wrote into.
        resume: continue the run in ``output_dir``.
        log: print progress lines.
        verbose: let transformers, datasets and Python warnings print as they do (``--verbose``).

    Returns:
        The run's :class:`RunResults` (``.to_dict()`` is results.json).

    Raises:
        ConfigError, OutputDirError, ResumeError: bad input, named in one line (all are ``ValueError``).

    Example:
        >>> from classp_hf.continual import run
        >>> results = run("recipes/configs/quickstart.yaml", "runs/lr1e-2", overrides={"training.learning_rate": 1e-2})
        >>> results.metrics["acc"]
    """
    from classp_hf.continual.runner import run_continual

    if isinstance(config, RunConfig):
        base = Path(config.source).resolve().parent if config.source else None
        config = config_from_dict(config.to_dict(), base_dir=base, source=config.source, overrides=overrides)
    elif isinstance(config, Mapping):
        config = config_from_dict(dict(config), base_dir=Path.cwd(), source="config", overrides=overrides)
    else:
        config = load_config(config, overrides=overrides)
    return run_continual(config, output_dir, overwrite=overwrite, log=log, resume=resume, verbose=verbose)
