"""Continual-learning methods: EWC, replay, LwF, O-LoRA, combinations, and the registry to add more.

``build_method("ewc", {"lambda_": 100.0})`` (or ``create_method("ewc", lambda_=100.0)``) builds a
method; :class:`classp_hf.Trainer` applies it (``continual_method=``) and the continual runner
calls its task hooks. See ``docs/methods.md``.
"""

from classp_hf.methods.base import (
    CompositeMethod,
    ContinualMethod,
    MethodConfig,
    NoMethod,
    TaskContext,
)
from classp_hf.methods.registry import (
    MethodInfo,
    build_method,
    check_method_compatibility,
    create_method,
    get_method_info,
    list_methods,
    parse_method_section,
    register_method,
)

# Registers the built-in methods.
from classp_hf.methods.ewc import EWC, EWCConfig  # noqa: E402  isort: skip
from classp_hf.methods.replay import Replay, ReplayConfig  # noqa: E402  isort: skip
from classp_hf.methods.lwf import LwF, LwFConfig  # noqa: E402  isort: skip
from classp_hf.methods.olora import OLoRA, OLoRAConfig  # noqa: E402  isort: skip

__all__ = [
    "TaskContext",
    "ContinualMethod",
    "MethodConfig",
    "NoMethod",
    "CompositeMethod",
    "MethodInfo",
    "register_method",
    "list_methods",
    "get_method_info",
    "create_method",
    "build_method",
    "parse_method_section",
    "check_method_compatibility",
    "EWC",
    "EWCConfig",
    "Replay",
    "ReplayConfig",
    "LwF",
    "LwFConfig",
    "OLoRA",
    "OLoRAConfig",
]
