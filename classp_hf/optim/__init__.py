"""Optimizers: CLASSP and a registry that builds any optimizer by name (no Hugging Face imports)."""

from classp_hf.optim.classp import CLASSP, classp
from classp_hf.optim.factory import (
    OptimizerInfo,
    create_optimizer,
    get_optimizer_info,
    list_optimizers,
    parse_optim_args,
    register_optimizer,
)

__all__ = [
    "CLASSP",
    "classp",
    "OptimizerInfo",
    "create_optimizer",
    "get_optimizer_info",
    "list_optimizers",
    "parse_optim_args",
    "register_optimizer",
]
