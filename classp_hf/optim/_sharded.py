"""CLASSP's view of sharded parameters: DTensors (FSDP2, tensor parallel) seen through their local shards.

CLASSP's update is element-wise, so it runs on each rank's local shard of a parameter, its gradient
and its state; only a statistic over a whole tensor (relative mode's mean of :math:`g^2`) needs the
other shards, through :func:`sum_over_shards`. Without ``torch.distributed`` every tensor is local.
"""

from __future__ import annotations

import torch
from torch import Tensor

try:
    from torch.distributed.tensor import DTensor, distribute_tensor
except ImportError:  # a torch build without distributed support: no DTensor can exist
    DTensor = None
    distribute_tensor = None

__all__ = ["is_dtensor", "local_tensor", "match_layout", "sum_over_shards"]


def is_dtensor(tensor: Tensor) -> bool:
    """Whether ``tensor`` is a :class:`torch.distributed.tensor.DTensor`."""
    return DTensor is not None and isinstance(tensor, DTensor)


def local_tensor(tensor: Tensor) -> Tensor:
    """The rank's shard of a DTensor (an alias: writing to it writes the DTensor), else ``tensor`` itself."""
    return tensor._local_tensor if is_dtensor(tensor) else tensor


def _shard_groups(tensor: Tensor) -> tuple[tuple[int, ...], tuple]:
    """The mesh dimensions a DTensor is sharded over, and their process groups."""
    mesh = tensor.device_mesh
    dims = tuple(dim for dim, placement in enumerate(tensor.placements) if placement.is_shard())
    return dims, tuple(mesh.get_group(dim) for dim in dims)


def sum_over_shards(values: list[Tensor], dtensors: list[Tensor]) -> list[Tensor]:
    """Sums per-shard 0-dim statistics over all shards of their DTensors.

    ``values[i]`` is this rank's partial sum for ``dtensors[i]``; the result is the sum over the
    mesh dimensions where ``dtensors[i]`` is sharded (replicated dimensions hold copies and are
    not summed). One all-reduce per distinct sharding layout, so every rank must call this with
    the same tensors in the same order.

    Args:
        values (`list[Tensor]`): 0-dim tensors, one per DTensor, on the DTensors' device.
        dtensors (`list[DTensor]`): the tensors the values describe.

    Returns:
        The summed values, in the order of ``values``.
    """
    layouts: dict[tuple, list[int]] = {}
    groups_of: dict[tuple, tuple] = {}
    for index, tensor in enumerate(dtensors):
        dims, groups = _shard_groups(tensor)
        key = (id(tensor.device_mesh), dims)
        layouts.setdefault(key, []).append(index)
        groups_of[key] = groups
    out: list[Tensor] = list(values)
    for key, indices in layouts.items():
        stacked = torch.stack([values[index] for index in indices])
        for group in groups_of[key]:
            torch.distributed.all_reduce(stacked, group=group)
        for index, total in zip(indices, stacked.unbind()):
            out[index] = total
    return out


def match_layout(value: Tensor, param: Tensor, dtype: torch.dtype) -> Tensor:
    """A copy of a state tensor in ``dtype``, laid out as ``param``: sharded like a DTensor parameter, else whole.

    A whole tensor loaded for a DTensor parameter is cut locally into the parameter's placements
    (no communication: every rank holds the same whole tensor); a DTensor loaded for a plain
    parameter is gathered (a collective: every rank must load).
    """
    if is_dtensor(param) and not is_dtensor(value):
        value = value.to(device=local_tensor(param).device, dtype=dtype)
        return distribute_tensor(value, param.device_mesh, param.placements, src_data_rank=None)
    if is_dtensor(value) and not is_dtensor(param):
        value = value.full_tensor()
    return value.to(device=param.device, dtype=dtype).clone()
