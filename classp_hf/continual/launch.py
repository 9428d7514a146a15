"""How a run was launched (one process, DDP, FSDP, DeepSpeed; CPU or accelerator) and what that launch allows.

accelerate honours FSDP and DeepSpeed only on accelerators: on a CPU machine an FSDP launch silently runs DDP and a
DeepSpeed launch a plain process group. The runner refuses such launches in one line instead of running something
else than what was asked for, and refuses the settings a sharded backend cannot run exactly.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch

from classp_hf.continual.errors import ConfigError

__all__ = ["Backend", "detect_backend", "accelerator_available"]


def accelerator_available() -> bool:
    """Whether torch sees an accelerator (CUDA, XPU, MPS, ...)."""
    accelerator = getattr(torch, "accelerator", None)
    if accelerator is not None:
        return bool(accelerator.is_available())
    return torch.cuda.is_available()


def _flag(name: str) -> bool:
    return os.environ.get(name, "false").strip().lower() in ("1", "true", "yes")


def _optim_arg(training: dict[str, Any], key: str) -> str | None:
    for entry in str(training.get("optim_args") or "").split(","):
        name, _, value = entry.partition("=")
        if name.strip() == key:
            return value.strip()
    return None


@dataclass(frozen=True)
class Backend:
    """The launch a run is in.

    Args:
        distributed_type: ``no`` (one process), ``ddp``, ``fsdp`` or ``deepspeed``.
        num_processes: the world size.
        use_cpu: the processes run on the CPU (no accelerator, or ``use_cpu: true``).
        mixed_precision: ``no``, ``bf16`` or ``fp16`` (``training.bf16`` / ``fp16``).
    """

    distributed_type: str
    num_processes: int
    use_cpu: bool
    mixed_precision: str = "no"

    @property
    def sharded(self) -> bool:
        """Whether parameters (and optimizer state) are split across processes."""
        return self.distributed_type in ("fsdp", "deepspeed")

    def to_dict(self, model_dtype: str | None) -> dict[str, Any]:
        """The ``backend`` part of results.json."""
        return {
            "distributed_type": self.distributed_type,
            "num_processes": self.num_processes,
            "mixed_precision": self.mixed_precision,
            "model_dtype": model_dtype,
            "device": "cpu" if self.use_cpu else "accelerator",
        }


def detect_backend(training: dict[str, Any], peft: dict[str, Any] | None = None) -> Backend:
    """Reads the launch from the environment accelerate / torchrun set, and checks the config fits it.

    Args:
        training: the config's ``training`` section.
        peft: the config's ``peft`` section, if any.

    Returns:
        The backend.

    Raises:
        ConfigError: an FSDP or DeepSpeed launch on the CPU (accelerate would not honour it), a CLASSP threshold
            mode a sharded backend cannot run exactly, or per-task LoRA adapters under FSDP.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    use_cpu = bool(training.get("use_cpu", False)) or not accelerator_available()
    fsdp, deepspeed = _flag("ACCELERATE_USE_FSDP"), _flag("ACCELERATE_USE_DEEPSPEED")
    for asked, name in ((fsdp, "FSDP"), (deepspeed, "DeepSpeed")):
        if asked and use_cpu:
            raise ConfigError(
                f"the launch asks for {name}, but accelerate runs {name} only on accelerators (on the CPU it would "
                "silently run plain data parallelism): launch with recipes/accelerate/cpu_processes.yaml here"
            )
    if deepspeed:
        kind = "deepspeed"
    elif fsdp:
        kind = "fsdp"
    else:
        kind = "ddp" if world > 1 else "no"
    mixed = "bf16" if training.get("bf16") else "fp16" if training.get("fp16") else "no"
    backend = Backend(kind, world, use_cpu, mixed)
    if backend.sharded:
        mode = _optim_arg(training, "threshold_mode")
        if mode == "quantile" or (mode == "relative" and kind == "deepspeed"):
            where = "FSDP" if kind == "fsdp" else "DeepSpeed ZeRO"
            raise ConfigError(
                f"config.training.optim_args: threshold_mode={mode} needs whole tensors, which {where} splits across "
                "processes; use threshold_mode=absolute (element-wise, exact)"
                + (" or relative" if kind == "fsdp" else "")
            )
        state_dtype = _optim_arg(training, "state_dtype")
        if state_dtype not in (None, "float32"):
            raise ConfigError(
                f"config.training.optim_args: state_dtype={state_dtype} is not supported under sharded backends"
            )
    if kind == "fsdp" and peft is not None:
        if peft.get("adapters") == "per_task":
            raise ConfigError(
                "config.peft.adapters: per_task adapters are not supported under FSDP (FSDP shards the parameters "
                "once, a new adapter per task would need re-sharding)"
            )
        raise ConfigError(
            "config.peft: LoRA under FSDP is not supported yet (adapters are saved from unsharded weights); "
            "LoRA's few trainable parameters fit DDP (recipes/accelerate/multi_gpu.yaml)"
        )
    return backend
