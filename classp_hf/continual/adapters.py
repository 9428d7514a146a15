"""LoRA adapters (PEFT) over a task queue: one shared adapter, or one named adapter per task.

The config's ``peft:`` section takes any ``peft.LoraConfig`` field plus:

- ``adapters: shared`` (default): one adapter trained task after task; the optimizer and its
  state (CLASSP's S) persist across tasks, as for full fine-tuning.
- ``adapters: per_task``: a new adapter named after each task, initialised from the previous
  task's adapter (``init: previous``, default) or fresh (``init: fresh``); earlier adapters are
  frozen. The classification head is in ``modules_to_save``, so each adapter carries its own
  copy of the head: with ``init: previous`` the new copy starts from the previous adapter's head,
  with ``fresh`` from the base model's head. Every parameter a new adapter trains is new, so it
  starts with fresh optimizer state (a new optimizer per task, the head's copy included).
- ``merge: true``: after each task also save a merged full model (merging a copy; the base
  weights are never changed).
"""

from __future__ import annotations

import copy
import dataclasses
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from classp_hf.continual.config import ConfigError

__all__ = ["AdapterSetup", "parse_peft_section"]

_OWN_KEYS = {"adapters", "init", "merge"}


def _lora_fields() -> set[str]:
    import peft

    return {f.name for f in dataclasses.fields(peft.LoraConfig) if f.init}


def parse_peft_section(raw: Any) -> dict[str, Any] | None:
    """Validates the ``peft:`` section of a run config.

    Args:
        raw: the section (a mapping) or `None`.

    Returns:
        The section with defaults filled in (``adapters: shared``, ``init: previous``,
        ``merge: false``), or `None` when absent.

    Raises:
        ConfigError: naming an unknown key or a bad value.
    """
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise ConfigError("config.peft: expected a mapping of peft.LoraConfig fields")
    allowed = _lora_fields() | _OWN_KEYS
    for key in raw:
        if key not in allowed:
            raise ConfigError(f"config.peft.{key}: not a peft.LoraConfig field (nor adapters, init, merge)")
    section = {"adapters": "shared", "init": "previous", "merge": False, **raw}
    if section["adapters"] not in ("shared", "per_task"):
        raise ConfigError(f"config.peft.adapters: expected shared or per_task, got {section['adapters']!r}")
    if section["init"] not in ("previous", "fresh"):
        raise ConfigError(f"config.peft.init: expected previous or fresh, got {section['init']!r}")
    if not isinstance(section["merge"], bool):
        raise ConfigError("config.peft.merge: expected true or false")
    try:
        _lora_config(section)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"config.peft: {str(error).splitlines()[0]}") from None
    return section


def _lora_config(section: dict[str, Any]) -> Any:
    import peft

    options = {key: value for key, value in section.items() if key not in _OWN_KEYS}
    options.setdefault("task_type", "SEQ_CLS")
    return peft.LoraConfig(**options)


@dataclass
class AdapterSetup:
    """Applies a validated ``peft:`` section to a model and manages its adapters across tasks.

    Args:
        section: the output of :func:`parse_peft_section`.
    """

    section: dict[str, Any]
    names: list[str] = field(default_factory=list)

    @property
    def per_task(self) -> bool:
        return self.section["adapters"] == "per_task"

    def adapter_name(self, task_name: str) -> str:
        """The adapter a task trains: its own name (per_task) or ``default`` (shared)."""
        return task_name if self.per_task else "default"

    def wrap(self, model: torch.nn.Module, first_task: str) -> Any:
        """Wraps the base model in a ``PeftModel`` with the first task's adapter."""
        import peft

        name = self.adapter_name(first_task)
        self.names = [name]
        return peft.get_peft_model(model, _lora_config(self.section), adapter_name=name)

    def start_task(self, model: Any, task_name: str) -> bool:
        """Before a later task: in per_task mode, add and activate its adapter (earlier ones frozen).

        Returns:
            Whether a new adapter was added (its parameters then need fresh optimizer state).
        """
        name = self.adapter_name(task_name)
        if name in self.names:
            return False
        previous = self.names[-1]
        model.add_adapter(name, _lora_config(self.section))
        if self.section["init"] == "previous":
            self._copy_adapter(model, previous, name)
        model.set_adapter(name)
        self.names.append(name)
        return True

    @staticmethod
    def _copy_adapter(model: Any, source: str, target: str) -> None:
        """Copies every parameter of adapter ``source`` (LoRA matrices and head copy) into ``target``."""
        params = dict(model.named_parameters())
        copied = 0
        with torch.no_grad():
            for name, param in params.items():
                key = f".{target}."
                if key not in name:
                    continue
                twin = name.replace(key, f".{source}.")
                if twin in params:
                    param.copy_(params[twin])
                    copied += 1
        if copied == 0:
            raise RuntimeError(f"no parameters of adapter {source!r} found to initialise {target!r}")

    def save(self, model: Any, folder: Path, task_name: str) -> Path:
        """Saves a task's adapter so that ``PeftModel.from_pretrained(base, folder)`` loads it.

        PEFT saves an adapter not named ``default`` into a subfolder of that name; the files are
        moved up so the folder itself holds ``adapter_config.json`` and the weights.
        """
        name = self.adapter_name(task_name)
        folder.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=folder.parent, prefix=f".{folder.name}.") as tmp:
            saved = Path(tmp) / "saved"
            model.save_pretrained(saved, selected_adapters=[name])
            source = saved if name == "default" else saved / name
            if folder.exists():
                shutil.rmtree(folder)
            shutil.move(str(source), str(folder))
        return folder

    def merged_copy(self, model: Any, task_name: str) -> torch.nn.Module:
        """A full model with the task's adapter merged in; ``model`` (and its base weights) untouched."""
        clone = copy.deepcopy(model)
        clone.set_adapter(self.adapter_name(task_name))
        return clone.merge_and_unload(adapter_names=[self.adapter_name(task_name)])
