"""Grid files and presets of ``classp-hf compare``: which settings to run, on which seeds, over which grid.

A grid file (``recipes/experiments/*.yaml``) names a base run config, overrides applied to every setting, the seeds
and the settings::

    base: ../configs/experiment_fpb_imdb.yaml   # relative to the grid file
    seeds: [0, 1, 2]
    overrides: {validation_fraction: 0.2}        # every setting; tasks.*.<key> sets the key of every task
    settings:
      - classp                                   # a preset (classp_hf/presets.yaml), with its grid
      - {preset: ewc, grid: {method_args.lambda_: [100, 1000]}}   # a preset with another grid
      - name: adamw_5e-5                         # a setting of its own: any dotted override keys
        overrides: {training.optim: adamw_torch, training.optim_args: null, training.learning_rate: 5.0e-5}
    profiles:                                    # optional variants, chosen with --profile NAME
      gpu: {overrides: {tasks.*.max_train_samples: null}}

A setting's grid (``{dotted key: [values]}``) spans every combination of its values; the grid runs on the first
seed, and the point with the best validation ACC is run on the other seeds (:mod:`classp_hf.continual.compare`).
Everything is checked when the grid is loaded: every grid point's run config is built and validated like
``classp-hf run`` would, so a bad key or value is one line naming the setting, before anything runs.
"""

from __future__ import annotations

import copy
import difflib
import functools
import hashlib
import itertools
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from classp_hf.continual.config import (
    MAX_SEED,
    ConfigError,
    RunConfig,
    check_keys,
    config_from_dict,
    parse_yaml,
    read_yaml_file,
    require,
)

__all__ = [
    "PRESETS_RESOURCE",
    "GridPoint",
    "Setting",
    "Grid",
    "Preset",
    "load_presets",
    "load_grid",
    "grid_from_dict",
    "grid_from_presets",
    "merge_overrides",
    "parse_seeds",
]

PRESETS_RESOURCE = "presets.yaml"
"""The presets shipped in the package (``classp_hf/presets.yaml``)."""

#: A setting's or preset's name (it names a folder: not ``.`` or ``..``).
_NAME = re.compile(r"(?!\.+$)[A-Za-z0-9_.+-]+")
_GRID_KEYS = {"base", "description", "seeds", "overrides", "settings", "profiles"}
_SETTING_KEYS = {"name", "preset", "description", "overrides", "grid"}
_PRESET_KEYS = {"description", "optimizer", "optim_args", "method", "method_args", "overrides", "grid"}
_PROFILE_KEYS = {"base", "seeds", "overrides"}
#: The optimizer of a preset that names none (method presets train with AdamW unless they say otherwise).
DEFAULT_PRESET_OPTIMIZER = "adamw_torch"
_MAX_SLUG = 60


# -- overrides ---------------------------------------------------------------------------------


def _check_overrides(raw: Any, where: str) -> dict[str, Any]:
    if raw is None:
        return {}
    require(isinstance(raw, dict), f"{where}: expected a mapping of dotted keys to values")
    for key in raw:
        require(isinstance(key, str) and all(key.split(".")), f"{where}: {key!r} is not a dotted key (e.g. seed, a.b)")
    return dict(raw)


def _expand_task_wildcards(overrides: Mapping[str, Any], task_names: Sequence[str]) -> dict[str, Any]:
    """``tasks.*.<key>`` -> ``tasks.<name>.<key>`` for every task of the base config."""
    expanded: dict[str, Any] = {}
    for key, value in overrides.items():
        if key.startswith("tasks.*."):
            for name in task_names:
                expanded[f"tasks.{name}.{key[len('tasks.*.') :]}"] = value
        else:
            expanded[key] = value
    return expanded


def merge_overrides(*layers: Mapping[str, Any]) -> dict[str, Any]:
    """Merges dotted-key overrides, later layers first in rank.

    A key set by a later layer replaces the same key and every key below it from earlier layers
    (``method_args`` replaces an earlier ``method_args.lambda_``), and moves to the end, so that applying the
    result in order (:func:`classp_hf.continual.config.apply_overrides`) gives each later layer the last word.

    Args:
        *layers: ``{dotted key: value}`` mappings, lowest rank first.

    Returns:
        The merged mapping.
    """
    merged: dict[str, Any] = {}
    for layer in layers:
        for key, value in layer.items():
            for old in [k for k in merged if k == key or k.startswith(key + ".")]:
                del merged[old]
            merged[key] = value
    return merged


# -- grid points -------------------------------------------------------------------------------


_SHORT_KEYS = {"learning_rate": "lr"}


def _value_text(value: Any) -> str:
    """``5e-05`` -> ``5e-5``, ``0.001`` -> ``1e-3``, ``10000.0`` -> ``1e4``, ``100.0`` -> ``100``; a mapping or
    list in YAML flow style."""
    if isinstance(value, float):
        text = f"{value:.3e}" if value != 0 and abs(value) < 1e-2 else f"{value:.4g}"
        if "e" in text:
            mantissa, exponent = text.split("e")
            mantissa = mantissa.rstrip("0").rstrip(".") if "." in mantissa else mantissa
            text = f"{mantissa}e{int(exponent)}"
        return text
    if isinstance(value, (dict, list)):
        return yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()
    return "null" if value is None else str(value)


def _short_key(key: str) -> str:
    last = key.rsplit(".", 1)[-1]
    return _SHORT_KEYS.get(last, last)


def _slug(text: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9_.+-]+", "-", text).strip("-.") or "point"
    if len(slug) > _MAX_SLUG:
        digest = hashlib.sha1(text.encode("utf-8")).hexdigest()[:8]
        slug = f"{slug[: _MAX_SLUG - 9].rstrip('-.')}-{digest}"
    return slug


@dataclass(frozen=True)
class GridPoint:
    """One combination of a setting's grid values.

    Args:
        name: its folder name (letters, digits, ``_.+-``; ``default`` for a setting without a grid).
        overrides: ``{dotted key: value}`` of this point.
    """

    name: str
    overrides: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """``learning_rate=0.001, lambda_=100``: the last part of each key and its value."""
        if not self.overrides:
            return "default"
        return ", ".join(f"{_short_key(key)}={_value_text(value)}" for key, value in self.overrides.items())


def _grid_points(grid: Mapping[str, list[Any]]) -> list[GridPoint]:
    if not grid:
        return [GridPoint("default")]
    keys = list(grid)
    points, names = [], set()
    for values in itertools.product(*(grid[key] for key in keys)):
        overrides = dict(zip(keys, values))
        name = _slug("_".join(f"{_short_key(key)}-{_value_text(value)}" for key, value in overrides.items()))
        if name in names:  # two values that differ only in characters a folder name drops
            name = f"{name[: _MAX_SLUG - 9]}-{hashlib.sha1(repr(overrides).encode()).hexdigest()[:8]}"
        names.add(name)
        points.append(GridPoint(name, overrides))
    return points


def _check_grid(raw: Any, where: str) -> dict[str, list[Any]]:
    if raw is None:
        return {}
    require(isinstance(raw, dict), f"{where}: expected a mapping of dotted keys to lists of values")
    grid = {}
    for key, values in raw.items():
        require(isinstance(key, str) and all(key.split(".")), f"{where}: {key!r} is not a dotted key")
        require(isinstance(values, list) and len(values) >= 1, f"{where}.{key}: expected a non-empty list of values")
        texts = [repr(value) for value in values]
        require(len(set(texts)) == len(texts), f"{where}.{key}: a value is listed twice")
        for value in values:
            require(
                not (isinstance(value, float) and not math.isfinite(value)),
                f"{where}.{key}: {value!r} is not a finite number",
            )
        grid[key] = list(values)
    return grid


# -- settings and presets ----------------------------------------------------------------------


@dataclass
class Setting:
    """One setting of a comparison: overrides of the base config, and an optional grid over override keys.

    Args:
        name: the setting's name (folder-safe).
        overrides: ``{dotted key: value}`` on top of the comparison's own overrides.
        grid: ``{dotted key: [values]}``; every combination is a :class:`GridPoint`.
        preset: the preset it came from, if any.
        description: one line for the report.
    """

    name: str
    overrides: dict[str, Any] = field(default_factory=dict)
    grid: dict[str, list[Any]] = field(default_factory=dict)
    preset: str | None = None
    description: str = ""

    @functools.cached_property
    def points(self) -> list[GridPoint]:
        """The grid points in grid order (one ``default`` point without a grid)."""
        return _grid_points(self.grid)

    def point(self, name: str) -> GridPoint:
        """The grid point called ``name``."""
        for point in self.points:
            if point.name == name:
                return point
        raise KeyError(name)


@dataclass(frozen=True)
class Preset:
    """A named setting shipped in ``classp_hf/presets.yaml``.

    Args:
        name: the preset's name.
        description: one line.
        overrides: what it sets: ``training.optim``, ``training.optim_args``, ``method``, ``method_args`` and its
            further overrides.
        grid: its grid.
    """

    name: str
    description: str
    overrides: dict[str, Any]
    grid: dict[str, list[Any]]

    def setting(self) -> Setting:
        """The preset as a :class:`Setting` of the same name."""
        return Setting(
            name=self.name,
            overrides=copy.deepcopy(self.overrides),
            grid=copy.deepcopy(self.grid),
            preset=self.name,
            description=self.description,
        )


def _preset_from_dict(name: str, raw: Any, where: str) -> Preset:
    where = f"{where}.{name}"
    require(_NAME.fullmatch(str(name)) is not None, f"{where}: a preset name uses letters, digits and _.+-")
    require(isinstance(raw, dict), f"{where}: expected a mapping")
    check_keys(raw, _PRESET_KEYS, where)
    overrides = {
        "training.optim": raw.get("optimizer", DEFAULT_PRESET_OPTIMIZER),
        "training.optim_args": raw.get("optim_args"),
        "method": raw.get("method", "none"),
        "method_args": raw.get("method_args") or {},
    }
    overrides = merge_overrides(overrides, _check_overrides(raw.get("overrides"), f"{where}.overrides"))
    return Preset(str(name), str(raw.get("description", "")), overrides, _check_grid(raw.get("grid"), f"{where}.grid"))


@functools.cache
def _shipped_presets_text() -> str:
    return resources.files("classp_hf").joinpath(PRESETS_RESOURCE).read_text(encoding="utf-8")


def load_presets(path: str | os.PathLike | None = None) -> dict[str, Preset]:
    """Reads presets: ``{name: {description, optimizer, optim_args, method, method_args, overrides, grid}}``.

    A preset that names no optimizer trains with AdamW (``adamw_torch``) and no ``optim_args``; one without a
    method is plain fine-tuning (``method: none``).

    Args:
        path: a YAML file; `None`: the presets shipped with the package.

    Returns:
        ``{name: Preset}`` in file order.

    Raises:
        ConfigError: naming the preset and key.
    """
    where = str(path) if path is not None else f"classp_hf/{PRESETS_RESOURCE}"
    raw = read_yaml_file(Path(path), "presets") if path is not None else parse_yaml(_shipped_presets_text())
    require(isinstance(raw, dict) and raw, f"{where}: expected a mapping of preset names")
    return {str(name): _preset_from_dict(name, value, where) for name, value in raw.items()}


def _unknown_preset(name: Any, presets: Mapping[str, Preset], where: str) -> ConfigError:
    close = difflib.get_close_matches(str(name), list(presets), n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return ConfigError(f"{where}: unknown preset {name!r} ({hint}presets: {', '.join(presets)})")


def _setting_from_raw(raw: Any, index: int, presets: Mapping[str, Preset], source: str) -> Setting:
    where = f"{source}: settings[{index}]"
    if isinstance(raw, str):
        raw = {"preset": raw}
    require(isinstance(raw, dict), f"{where}: expected a preset name or a mapping (name, preset, overrides, grid)")
    check_keys(raw, _SETTING_KEYS, where)
    preset_name = raw.get("preset")
    require("name" in raw or preset_name is not None, f"{where}: give a name (or a preset)")
    if preset_name is not None and preset_name not in presets:
        raise _unknown_preset(preset_name, presets, f"{where}.preset")
    base = presets[preset_name].setting() if preset_name is not None else Setting(name="")
    name = raw.get("name", preset_name)
    require(
        isinstance(name, str) and _NAME.fullmatch(name) is not None,
        f"{where}.name: {name!r}: use letters, digits and _.+-, not only dots (it names a folder)",
    )
    where = f"{source}: settings[{index}] ({name})"
    overrides = merge_overrides(base.overrides, _check_overrides(raw.get("overrides"), f"{where}.overrides"))
    grid = _check_grid(raw["grid"], f"{where}.grid") if "grid" in raw else base.grid
    description = raw.get("description", base.description)
    return Setting(name=name, overrides=overrides, grid=grid, preset=preset_name, description=str(description or ""))


def parse_seeds(raw: Any, where: str = "seeds") -> list[int]:
    """Checks a list of seeds (or ``"0,1,2"``): non-negative integers, at least one, none twice.

    Raises:
        ConfigError: naming ``where``.
    """
    if isinstance(raw, str):
        try:
            raw = [int(part) for part in raw.split(",") if part.strip()]
        except ValueError:
            raise ConfigError(f"{where}: expected comma-separated integers, e.g. 0,1,2, got {raw!r}") from None
    if isinstance(raw, int) and not isinstance(raw, bool):
        raw = [raw]
    require(
        isinstance(raw, list) and raw and all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in raw),
        f"{where}: expected a non-empty list of non-negative integers, got {raw!r}",
    )
    require(len(set(raw)) == len(raw), f"{where}: a seed is listed twice in {raw}")
    for seed in raw:
        require(seed <= MAX_SEED, f"{where}: seed {seed} is out of range (a seed is an integer in [0, 2**32 - 1])")
    return list(raw)


# -- the grid ----------------------------------------------------------------------------------


@dataclass
class Grid:
    """A comparison: a base config, overrides for every setting, the settings and the seeds.

    Args:
        base_config: the base run config (YAML path).
        settings: the settings, in report order.
        seeds: the seeds; grids run on the first.
        overrides: ``{dotted key: value}`` under every setting's own (``tasks.*.<key>``: every task).
        command_overrides: ``{dotted key: value}`` over every setting's own (from the command line); a grid
            point's values still win.
        source: where the grid came from (for messages and the report).
        description: one line for the report.
    """

    base_config: Path
    settings: list[Setting]
    seeds: list[int] = field(default_factory=lambda: [0])
    overrides: dict[str, Any] = field(default_factory=dict)
    command_overrides: dict[str, Any] = field(default_factory=dict)
    source: str = "grid"
    description: str = ""

    def __post_init__(self) -> None:
        self.base_config = Path(self.base_config)
        names = [setting.name for setting in self.settings]
        require(bool(names), f"{self.source}: settings: expected at least one setting")
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ConfigError(f"{self.source}: settings: the name {duplicates[0]!r} is used twice")
        self.seeds = parse_seeds(self.seeds, f"{self.source}: seeds")

    def setting(self, name: str) -> Setting:
        """The setting called ``name``."""
        for setting in self.settings:
            if setting.name == name:
                return setting
        raise KeyError(name)

    @functools.cached_property
    def _base_raw(self) -> dict[str, Any]:
        path = self.base_config
        require(path.is_file(), f"{self.source}: base: config file not found: {path}")
        raw = read_yaml_file(path, "base")
        require(isinstance(raw, dict), f"{path}: expected a mapping at the top level")
        return raw

    @functools.cached_property
    def task_names(self) -> list[str]:
        """The base config's task names (what ``tasks.*`` expands to)."""
        tasks = self._base_raw.get("tasks")
        require(isinstance(tasks, list), f"{self.base_config}: tasks: expected a list")
        return [str(task.get("name")) for task in tasks if isinstance(task, dict)]

    def overrides_for(self, setting: Setting, point: GridPoint, seed: int) -> dict[str, Any]:
        """The dotted overrides of one run, later ones winning: the grid file's, the setting's, the command line's,
        the grid point's, then ``seed``."""
        layers = (self.overrides, setting.overrides, self.command_overrides, point.overrides, {"seed": seed})
        return merge_overrides(*(_expand_task_wildcards(layer, self.task_names) for layer in layers))

    def run_config(self, setting: Setting, point: GridPoint, seed: int) -> RunConfig:
        """The validated run config of ``setting`` at ``point`` and ``seed``.

        Raises:
            ConfigError: naming the setting and point, then the key.
        """
        overrides = self.overrides_for(setting, point, seed)
        raw = copy.deepcopy(self._base_raw)
        raw.setdefault("keep_last_checkpoint", False)  # a finished run of a comparison keeps no checkpoint
        try:
            return config_from_dict(
                raw,
                base_dir=self.base_config.resolve().parent,
                source=str(self.base_config),
                overrides=overrides,
            )
        except ValueError as error:
            at = "" if point.name == "default" else f" at {point.label}"
            raise ConfigError(f"{self.source}: setting {setting.name}{at}: {error}") from None

    def check(self) -> None:
        """Builds every setting's grid-point configs on the first seed; checks one queue and validation splits.

        Raises:
            ConfigError: the first bad key or value (naming the setting and point), a setting that changes the
                task queue, or a grid without ``validation_fraction > 0`` (choosing needs validation accuracy).
        """
        queue: list[str] | None = None
        for setting in self.settings:
            for point in setting.points:
                config = self.run_config(setting, point, self.seeds[0])
                names = [task.name for task in config.tasks]
                if queue is None:
                    queue = names
                require(
                    names == queue,
                    f"{self.source}: setting {setting.name} trains the tasks {names}, the others {queue}: "
                    "a comparison needs one queue",
                )
                if len(setting.points) > 1 and config.validation_fraction <= 0:
                    raise ConfigError(
                        f"{self.source}: setting {setting.name} has a grid over {', '.join(setting.grid)}, chosen on "
                        "validation accuracy: set validation_fraction > 0 (e.g. overrides: {validation_fraction: 0.2} "
                        "in the grid file, or validation_fraction=0.2 on the command line)"
                    )


def grid_from_dict(
    raw: Any,
    base_dir: str | os.PathLike | None = None,
    source: str = "grid",
    *,
    presets: Mapping[str, Preset] | None = None,
    profile: str | None = None,
    seeds: Sequence[int] | str | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Grid:
    """Builds a :class:`Grid` from a parsed grid file (see the module docstring) and checks it.

    Args:
        raw: the parsed YAML.
        base_dir: the folder ``base`` is relative to (the grid file's).
        source: for messages.
        presets: the presets settings may name (default: the shipped ones).
        profile: a ``profiles:`` entry to apply (its base, seeds and overrides win).
        seeds: replace the file's seeds.
        overrides: applied over every setting's own overrides (a grid point's values still win).

    Returns:
        The checked grid (every grid point's config built and validated).

    Raises:
        ConfigError: one line naming the key.
    """
    presets = load_presets() if presets is None else presets
    require(isinstance(raw, dict), f"{source}: expected a mapping (base, seeds, overrides, settings)")
    check_keys(raw, _GRID_KEYS, source)
    profiles = raw.get("profiles") or {}
    require(isinstance(profiles, dict), f"{source}: profiles: expected a mapping of profile names")
    chosen: dict[str, Any] = {}
    if profile is not None:
        if profile not in profiles:
            known = ", ".join(profiles) or "none"
            raise ConfigError(f"--profile {profile}: {source} has no such profile (profiles: {known})")
        chosen = profiles[profile] or {}
        require(isinstance(chosen, dict), f"{source}: profiles.{profile}: expected a mapping")
        check_keys(chosen, _PROFILE_KEYS, f"{source}: profiles.{profile}")
    base = chosen.get("base", raw.get("base"))
    require(isinstance(base, str) and base, f"{source}: base: required, the path of the base run config")
    base_path = Path(os.path.expandvars(base)).expanduser()
    if not base_path.is_absolute() and base_dir is not None:
        base_path = Path(base_dir) / base_path
    settings_raw = raw.get("settings")
    require(isinstance(settings_raw, list) and settings_raw, f"{source}: settings: expected a non-empty list")
    grid = Grid(
        base_config=base_path,
        settings=[_setting_from_raw(item, index, presets, source) for index, item in enumerate(settings_raw)],
        seeds=(
            parse_seeds(seeds, "--seeds")
            if seeds is not None
            else parse_seeds(chosen.get("seeds", raw.get("seeds", [0])), f"{source}: seeds")
        ),
        overrides=merge_overrides(
            _check_overrides(raw.get("overrides"), f"{source}: overrides"),
            _check_overrides(chosen.get("overrides"), f"{source}: profiles.{profile}.overrides"),
        ),
        command_overrides=dict(overrides or {}),
        source=source,
        description=str(raw.get("description", "") or ""),
    )
    grid.check()
    return grid


def load_grid(
    path: str | os.PathLike,
    *,
    profile: str | None = None,
    seeds: Sequence[int] | str | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Grid:
    """Reads and checks a grid file (see :func:`grid_from_dict`); ``base`` resolves against the file's folder.

    Raises:
        ConfigError: a missing file, malformed YAML or a bad key or value, in one line.
    """
    path = Path(path)
    require(path.is_file(), f"grid file not found: {path}")
    raw = read_yaml_file(path, "grid")
    return grid_from_dict(raw, path.resolve().parent, str(path), profile=profile, seeds=seeds, overrides=overrides)


def grid_from_presets(
    config: str | os.PathLike,
    presets: Sequence[str] | str,
    *,
    seeds: Sequence[int] | str | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Grid:
    """A grid of shipped presets over a run config (``classp-hf compare --config C --presets a,b``).

    Args:
        config: the base run config.
        presets: preset names (a list, or ``"classp,adamw"``).
        seeds: default ``[0]``.
        overrides: applied over every setting's own (e.g. ``{"validation_fraction": 0.2}``).

    Raises:
        ConfigError: an unknown preset (with the closest name), or any bad key or value.
    """
    if isinstance(presets, str):
        presets = [name.strip() for name in presets.split(",") if name.strip()]
    require(bool(presets), "--presets: expected comma-separated preset names, e.g. classp,adamw")
    shipped = load_presets()
    for name in presets:
        if name not in shipped:
            raise _unknown_preset(name, shipped, "--presets")
    raw = {"base": str(Path(config).resolve()), "settings": list(presets)}
    return grid_from_dict(raw, None, f"--config {config}", presets=shipped, seeds=seeds, overrides=overrides)
