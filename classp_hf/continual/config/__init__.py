"""The run config: one YAML file describing a model, a label set, training options and a task queue.

Loading applies command-line overrides (``training.learning_rate=1e-2``, ``tasks.imdb.max_train_samples=64``),
expands ``${VAR}`` / ``${VAR:-default}`` from the environment, resolves relative data paths against
the config file's folder and validates every key and value, the ``training:`` section by building
``classp_hf.TrainingArguments`` for each task and the optimizer on a dummy parameter. Each error is
one line that names the key (``tasks[1] (imdb).training.learning_rate``) and comes before any model,
data or output folder is touched.

One module per job (each imports only the ones above it in this list):

- :mod:`~classp_hf.continual.config.schema`: :class:`RunConfig`, :class:`TaskConfig`, the key constants and
  :func:`stored_config_differences`.
- :mod:`~classp_hf.continual.config.load`: YAML parsing (duplicate keys, alias bombs), ``${VAR}`` expansion,
  ``pkg:`` model resolution.
- :mod:`~classp_hf.continual.config.validate`: the config's side of :mod:`classp_hf.validation` (the one
  checker the methods and ``optim_args`` use too): :func:`check_value`, :func:`check_keys` raising
  :class:`ConfigError`, :func:`require`, value ranges.
- :mod:`~classp_hf.continual.config.sections`: the ``peft``, ``training`` (TrainingArguments), optimizer and
  method sections.
- :mod:`~classp_hf.continual.config.overrides`: ``key=value`` / ``~key`` overrides.
- :mod:`~classp_hf.continual.config.build`: :func:`config_from_dict` (tasks, queue mode, the whole config) and
  :func:`load_config`.

Every name is importable from here (``from classp_hf.continual.config import load_config``).
"""

from classp_hf.continual.config.build import config_from_dict, load_config
from classp_hf.continual.config.load import (
    MAX_ALIAS_EXPANSION,
    MODEL_ENTRY_POINTS,
    expand_env,
    parse_yaml,
    read_yaml_file,
    resolve_model_path,
)
from classp_hf.continual.config.overrides import apply_overrides, parse_override_args
from classp_hf.continual.config.schema import (
    MAX_SEED,
    MODEL_DTYPES,
    RESULT_NEUTRAL_KEYS,
    RUNNER_OWNED_TRAINING_KEYS,
    RUNNER_TRAINING_DEFAULTS,
    TASK_TRAINING_KEYS,
    ModelDtype,
    QueueMode,
    RunConfig,
    TaskConfig,
    stored_config_differences,
)
from classp_hf.continual.config.sections import (
    build_lora_config,
    parse_peft_section,
    task_training_options,
    training_arguments,
)
from classp_hf.continual.config.validate import _describe, check_keys, check_value, require
from classp_hf.continual.errors import ConfigError

__all__ = [
    "ConfigError",
    "MAX_SEED",
    "TaskConfig",
    "RunConfig",
    "MODEL_DTYPES",
    "load_config",
    "config_from_dict",
    "apply_overrides",
    "parse_override_args",
    "expand_env",
    "resolve_model_path",
    "check_value",
    "parse_peft_section",
    "build_lora_config",
    "task_training_options",
    "training_arguments",
    "TASK_TRAINING_KEYS",
    "RUNNER_OWNED_TRAINING_KEYS",
    "RUNNER_TRAINING_DEFAULTS",
    "RESULT_NEUTRAL_KEYS",
    "MAX_ALIAS_EXPANSION",
    "MODEL_ENTRY_POINTS",
    "ModelDtype",
    "QueueMode",
    "check_keys",
    "require",
    "parse_yaml",
    "read_yaml_file",
    "stored_config_differences",
    "_describe",
]
