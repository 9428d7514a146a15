"""LoRA adapters (PEFT) over a task queue: one shared adapter, or one named adapter per task.

The config's ``peft:`` section takes any ``peft.LoraConfig`` field plus:

- ``adapters: shared`` (default): one adapter trained task after task; the optimizer and its
  state (CLASSP's S) persist across tasks, as for full fine-tuning.
- ``adapters: per_task``: a new adapter for each task (PEFT name ``task~<task name>~``, saved under
  ``adapters/<task name>/``), initialised from the previous task's adapter (``init: previous``,
  default; copied tensor by tensor) or fresh (``init: fresh``); earlier adapters are frozen.
  The classification head (every module the model adds to its base model, see
  :func:`~classp_hf.continual.families.classification_head`: ``classifier``, ``score``, DistilBERT's
  ``pre_classifier``, DeBERTa's ``pooler``, ...) is in ``modules_to_save``, so each adapter carries its
  own copy of the head: with ``init: previous`` the new copy starts from the previous adapter's head, with
  ``fresh`` from the base model's head. Every parameter a new adapter trains is new, so it starts
  with fresh optimizer state (a new optimizer per task, the head's copy included).
- ``merge: true``: after each task also save a merged full model (merging a copy; the base
  weights are never changed).
"""

from __future__ import annotations

import copy
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from classp_hf.continual.config import ConfigError, build_lora_config, parse_peft_section
from classp_hf.continual.families import check_lora_targets, classification_head, linear_layer_names
from classp_hf.continual.outputs import replace_folder

__all__ = ["AdapterSetup", "parse_peft_section", "adapter_name_for_task"]


def adapter_name_for_task(task_name: str) -> str:
    """The PEFT adapter name of a task's own adapter: ``task~<name>~``, a ``.`` in the name written ``+``.

    PEFT keys adapters in ``ModuleDict``s next to the model's modules and matches module names by
    suffix (``modules_to_save``) and adapter names by substring (freezing): a task named like a module
    (``value``, ``dense``, ``classifier``) or like the start of another task's name must not leak
    into either. ``~`` occurs in no module name and no task name, so no adapter name ends like a
    module or sits inside another adapter's name; a ``ModuleDict`` key cannot hold a ``.``.
    """
    return f"task~{task_name.replace('.', '+')}~"


def check_target_modules(target_modules: Any, model: nn.Module) -> None:
    """Matches ``peft.target_modules`` against the model's module names as PEFT does, before it wraps anything.

    A list entry matches a module whose name is the entry or ends with ``.<entry>``; a string is a regular
    expression that must match a whole name (``all-linear`` is PEFT's own and passes).

    Raises:
        ConfigError: ``config.peft.target_modules: ...`` naming the entry and the candidate names.
    """
    import re

    from classp_hf.continual.config import ConfigError

    if not target_modules or target_modules == "all-linear":
        return
    names = [name for name, _ in model.named_modules() if name]
    candidates = ", ".join(linear_layer_names(model))
    if isinstance(target_modules, str):
        if not any(re.fullmatch(target_modules, name) for name in names):
            raise ConfigError(
                f"config.peft.target_modules: {target_modules!r} matches no module name of the model "
                f"(a string is a regular expression over whole names; the model's linear layers: {candidates})"
            )
        return
    for entry in target_modules:
        if not any(name == entry or name.endswith(f".{entry}") for name in names):
            raise ConfigError(
                f"config.peft.target_modules: {entry!r} matches no module of the model (the model's linear layers: "
                f"{candidates}, or all-linear)"
            )


@dataclass
class AdapterSetup:
    """Applies a validated ``peft:`` section to a model and manages its adapters across tasks.

    Args:
        section: the output of :func:`parse_peft_section`.
    """

    section: dict[str, Any]
    names: list[str] = field(default_factory=list)
    head: list[str] = field(default_factory=list)

    @property
    def per_task(self) -> bool:
        return self.section["adapters"] == "per_task"

    def adapter_name(self, task_name: str) -> str:
        """The adapter a task trains: :func:`adapter_name_for_task` (per_task) or ``default`` (shared)."""
        return adapter_name_for_task(task_name) if self.per_task else "default"

    def lora_config(self) -> Any:
        """The ``peft.LoraConfig`` of each adapter: the section's, the model's head added to ``modules_to_save``."""
        section = dict(self.section)
        section["modules_to_save"] = list(dict.fromkeys([*(section.get("modules_to_save") or []), *self.head]))
        return build_lora_config(section)

    def wrap(self, model: torch.nn.Module, first_task: str) -> Any:
        """Wraps the base model in a ``PeftModel`` with the first task's adapter.

        Raises:
            ConfigError: ``target_modules`` left out on a family PEFT has no default for, an entry that matches
                no module of the model (with candidates), or matching none of the model's layers.
        """
        import peft

        check_target_modules(self.section.get("target_modules"), model)  # each entry, with candidates
        check_lora_targets(self.section, model)
        self.head = classification_head(model)
        name = self.adapter_name(first_task)
        self.names = [name]
        try:
            return peft.get_peft_model(model, self.lora_config(), adapter_name=name)
        except ValueError as error:  # PEFT's "Target modules {...} not found in the base model ..."
            message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise ConfigError(
                f"config.peft.target_modules: {message} (the model's linear layers: "
                f"{', '.join(linear_layer_names(model))}, or all-linear)"
            ) from None

    def start_task(self, model: Any, task_name: str) -> bool:
        """Before a later task: in per_task mode, add and activate its adapter (earlier ones frozen).

        Returns:
            Whether a new adapter was added (its parameters then need fresh optimizer state).
        """
        name = self.adapter_name(task_name)
        if name in self.names:
            return False
        previous = self.names[-1]
        model.add_adapter(name, self.lora_config())
        if self.section["init"] == "previous":
            self._copy_adapter(model, previous, name)
        model.set_adapter(name)
        self.names.append(name)
        return True

    @staticmethod
    def _copy_adapter(model: nn.Module, source: str, target: str) -> None:
        """Copies adapter ``source`` into ``target`` by structure: every PEFT ``ModuleDict`` /
        ``ParameterDict`` holding both (``lora_A``, ``lora_B``, ``lora_embedding_*``, DoRA magnitudes,
        the ``modules_to_save`` head copies) gets ``[target]`` loaded from ``[source]``.

        Raises:
            RuntimeError: the two adapters differ in structure, or a tensor of ``target`` was not copied.
        """
        copied: set[int] = set()
        with torch.no_grad():
            for container in model.modules():
                if not isinstance(container, (nn.ModuleDict, nn.ParameterDict)) or target not in container:
                    continue
                if source not in container:
                    raise RuntimeError(f"adapter {source!r} has no counterpart of a {target!r} tensor")
                copied |= _copy_entry(container, source, target)
        expected = {id(p) for name, p in model.named_parameters() if target in name.split(".")}
        if not copied or expected - copied:
            raise RuntimeError(
                f"initialising adapter {target!r} from {source!r} copied {len(expected & copied)} "
                f"of its {len(expected)} tensors"
            )

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
            replace_folder(source, folder)  # a user's files in an earlier copy stay
        return folder

    def merged_copy(self, model: Any, task_name: str, with_earlier: bool = False) -> torch.nn.Module:
        """A full model with the task's adapter merged in; ``model`` (and its base weights) untouched.

        Args:
            model: the ``PeftModel``.
            task_name: the task whose adapter (and head copy) the model gets.
            with_earlier: also merge every earlier adapter (O-LoRA keeps them all active).
        """
        name = self.adapter_name(task_name)
        names = self.names[: self.names.index(name) + 1] if with_earlier else [name]
        clone = copy.deepcopy(model)
        clone.set_adapter(name)
        return clone.merge_and_unload(adapter_names=names)


def _copy_entry(container: nn.ModuleDict | nn.ParameterDict, source: str, target: str) -> set[int]:
    """Copies ``container[source]`` into ``container[target]``; returns the ids of the tensors written."""
    if isinstance(container, nn.ParameterDict):
        destination, origin = container[target], container[source]
        if destination.shape != origin.shape:
            raise RuntimeError(f"adapters {source!r} and {target!r} differ in shape")
        destination.copy_(origin)
        return {id(destination)}
    destination = dict(container[target].named_parameters()) | dict(container[target].named_buffers())
    origin = dict(container[source].named_parameters()) | dict(container[source].named_buffers())
    if destination.keys() != origin.keys() or any(t.shape != origin[k].shape for k, t in destination.items()):
        raise RuntimeError(f"adapters {source!r} and {target!r} differ in structure")
    for key, tensor in destination.items():
        tensor.copy_(origin[key])
    return {id(tensor) for tensor in destination.values()}
