"""Command-line overrides: ``key=value`` and ``~key`` parsed (:func:`parse_override_args`) and applied to a parsed
config (:func:`apply_overrides`: dotted keys, ``tasks.<name|index|*>.<key>``).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import yaml

from classp_hf.continual.config.load import parse_yaml
from classp_hf.continual.config.schema import RunConfig, TaskConfig
from classp_hf.continual.config.sections import _AdapterOptions, _lora_field_types, _training_field_types
from classp_hf.continual.config.validate import _field_types, _union_arms, require
from classp_hf.continual.errors import ConfigError
from classp_hf.continual.io import first_line

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
