"""The registry of continual methods and the validation of a run config's ``method`` section.

``method: ewc`` with ``method_args: {lambda_: 100}`` names one method and its arguments;
``method: [replay, ewc]`` with ``method_args: {replay: {buffer_size: 500}, ewc: {lambda_: 100}}``
combines several (a :class:`~classp_hf.methods.base.CompositeMethod`).
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from classp_hf.methods.base import CompositeMethod, ContinualMethod, MethodConfig, NoMethod, check_method_args
from classp_hf.validation import check_keys

__all__ = [
    "MethodInfo",
    "register_method",
    "list_methods",
    "get_method_info",
    "parse_method_section",
    "build_method",
    "create_method",
    "check_method_compatibility",
]


@dataclass(frozen=True)
class MethodInfo:
    """What the registry knows about one continual method.

    Args:
        name (`str`): the config name (``method: name``).
        method_class (`Callable`): the method class. With a ``config_class`` it is called with the
            config instance, else with the arguments as keywords.
        config_class (`type`, *optional*): the :class:`MethodConfig` dataclass of its arguments.
    """

    name: str
    method_class: Callable[..., ContinualMethod]
    config_class: type[MethodConfig] | None = None

    def parse_args(self, args: Mapping[str, Any], prefix: str) -> MethodConfig | dict[str, Any]:
        """Checks ``args``: returns the config instance (or the keyword arguments of a config-less method)."""
        if self.config_class is not None:
            return self.config_class(**check_method_args(self.config_class, args, prefix, self.name))
        if getattr(self.method_class, "__init__", None) is ContinualMethod.__init__:
            parameters = {}  # the base class's constructor: no options without a config class
        else:
            parameters = dict(inspect.signature(self.method_class).parameters)
        takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
        if not takes_any:
            check_keys(args, parameters, prefix, self.name)
        return dict(args)

    def build(self, config: MethodConfig | dict[str, Any]) -> ContinualMethod:
        """Instantiates the method from what :meth:`parse_args` returned."""
        if self.config_class is not None:
            return self.method_class(config)
        return self.method_class(**config)


_METHODS: dict[str, MethodInfo] = {}


def register_method(
    name: str, method_class: Callable[..., ContinualMethod], config_class: type[MethodConfig] | None = None
) -> MethodInfo:
    """Registers a continual method under ``name`` (usable as ``method: name`` in a run config).

    Registering a name again replaces the entry.

    Args:
        name (`str`): the config name.
        method_class (`Callable`): a :class:`ContinualMethod` subclass (or a factory returning one).
        config_class (`type`, *optional*): the dataclass of its arguments (a :class:`MethodConfig`);
            defaults to ``method_class.config_class``. Without one, the arguments are checked
            against the names ``method_class`` accepts.

    Returns:
        The new :class:`MethodInfo`.
    """
    if config_class is None:
        config_class = getattr(method_class, "config_class", None)
    info = MethodInfo(name=name, method_class=method_class, config_class=config_class)
    _METHODS[name] = info
    return info


def list_methods() -> list[str]:
    """Returns the registered method names, sorted."""
    return sorted(_METHODS)


def get_method_info(name: str, key: str = "method") -> MethodInfo:
    """Returns the registry entry of ``name``.

    Raises:
        ValueError: for an unknown name, naming ``key``, with the closest match and the known names.
    """
    if isinstance(name, str) and name in _METHODS:
        return _METHODS[name]
    close = difflib.get_close_matches(str(name), list(_METHODS), n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise ValueError(f"{key}: unknown method {name!r}.{hint} (known: {', '.join(list_methods())})")


def parse_method_section(method: Any, method_args: Any = None) -> list[tuple[str, MethodConfig | dict[str, Any]]]:
    """Validates a run config's ``method`` and ``method_args``.

    Args:
        method: a method name, or a list of names (combined in that order).
        method_args: the arguments: a mapping of the method's arguments for one name; for a list,
            a mapping from listed names to their arguments (a name may be left out).

    Returns:
        ``[(name, config), ...]`` in order; ``config`` is the method's config dataclass instance
        (a dict of keyword arguments for a method registered without one).

    Raises:
        ValueError: one line naming the culprit (``method``, ``method[1]``, ``method_args.lambda_``,
            ``method_args.ewc.lambda_``): unknown method or argument, wrong type or bound, a
            missing required argument, a method listed twice.
    """
    if method_args is None:
        method_args = {}
    if not isinstance(method_args, Mapping):
        raise ValueError("method_args: expected a mapping")
    if isinstance(method, str):
        info = get_method_info(method)
        return [(method, info.parse_args(method_args, "method_args"))]
    if not isinstance(method, list) or not method or not all(isinstance(name, str) for name in method):
        raise ValueError("method: expected a method name or a non-empty list of method names")
    for position, name in enumerate(method):
        get_method_info(name, f"method[{position}]")
        if method.count(name) > 1:
            raise ValueError(f"method: {name!r} is listed twice")
    if "none" in method and len(method) > 1:
        raise ValueError("method: 'none' cannot be combined with other methods")
    for key, args in method_args.items():
        if key not in method:
            raise ValueError(
                f"method_args.{key}: not a listed method; with a list of methods, method_args maps each "
                f"listed method ({', '.join(method)}) to its arguments"
            )
        if args is not None and not isinstance(args, Mapping):
            raise ValueError(f"method_args.{key}: expected a mapping of {key}'s arguments")
    return [(name, _METHODS[name].parse_args(method_args.get(name) or {}, f"method_args.{name}")) for name in method]


def build_method(method: Any, method_args: Any = None) -> ContinualMethod:
    """Builds the method a run config names (validated as in :func:`parse_method_section`).

    Returns:
        The method; a :class:`~classp_hf.methods.base.CompositeMethod` for a list of several.
    """
    methods = [(name, _METHODS[name].build(config)) for name, config in parse_method_section(method, method_args)]
    if isinstance(method, str):
        return methods[0][1]
    return CompositeMethod(methods)


def create_method(name: str, **args: Any) -> ContinualMethod:
    """Builds the registered method ``name`` with its arguments, e.g. ``create_method("ewc", lambda_=100.0)``.

    Raises:
        ValueError: unknown name (listing the known ones) or argument, naming it.
    """
    return build_method(name, args)


def check_method_compatibility(names: list[str], peft_section: Mapping[str, Any] | None) -> None:
    """Checks that the methods fit the run's ``peft:`` section (each method's ``check_compatibility``).

    Args:
        names (`list[str]`): the methods of the run.
        peft_section (`Mapping`, *optional*): the validated ``peft:`` section, `None` for full fine-tuning.

    Raises:
        ValueError: naming ``method`` (e.g. ``ewc`` with ``adapters: per_task``).
    """
    for name in names:
        check = getattr(get_method_info(name).method_class, "check_compatibility", None)
        if check is not None:
            check(peft_section)


register_method("none", NoMethod)
