"""The continual package's error classes, in one module that imports nothing of classp_hf.

Each is also importable where it is raised (``classp_hf.continual.config.ConfigError``, ...). The ``ValueError``
ones are bad input: the command line prints their one line and exits 2.
"""

from __future__ import annotations

__all__ = ["ConfigError", "OutputDirError", "OutputWriteError", "ResultsVersionError", "ResumeError"]


class ConfigError(ValueError):
    """A run config is invalid; the message names the offending key."""


class OutputDirError(ValueError):
    """The output directory is not usable (non-empty without ``--overwrite``, not a run's, a file in the way)."""


class ResumeError(ValueError):
    """A run cannot be resumed (no run state, another config, a corrupt checkpoint); the message says which."""


class ResultsVersionError(ValueError):
    """``results.json`` was written by a version of classp_hf whose layout this one cannot continue."""


class OutputWriteError(OSError):
    """An output could not be written (a full disk, a lost mount): what was written before stays as it was."""
