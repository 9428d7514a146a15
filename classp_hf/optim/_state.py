"""CLASSP's accumulator :math:`S` kept in low precision: bfloat16, or 8 bits per element.

``S`` only grows, and most steps add an increment far below its rounding step (MiniLM's encoder adds
~1e-5 a step to sums that reach 1e-3), so rounding to nearest would freeze it. Both formats round
stochastically, with the optimizer's seeded generator (saved in its state dict, the same stream on
every data-parallel rank): the stored value is, in expectation, the exact float32 sum.

``"bfloat16"``: ``grad_sum`` is a bfloat16 tensor (2 bytes per element), rounded stochastically
from the float32 result of each step (16 random bits per element).

``"8bit"``: block-wise, about 1 byte per element. A tensor is seen as rows of its last dimension
(a vector as one row); each row is cut into equal blocks of at most :data:`BLOCK_SIZE` elements
(384 -> 2 x 192, 768 -> 3 x 256; a length that does not divide is padded). Each block stores a
power-of-two scale (float32, ``grad_sum_scales``: 4 bytes per block) and one code per element
(uint8, ``grad_sum_codes``). A code is an unsigned 8-bit float relative to the scale: 4 exponent bits
and 4 mantissa bits (``2**(e-15) * (1 + m/16)``, and ``m * 2**-18`` for ``e = 0``), a non-linear map
like the dynamic maps of bitsandbytes' 8-bit optimizers: logarithmic between octaves, linear within
one, relative steps of 3-6% over 13 octaves below the block's largest value and evenly spaced steps
under that. The scale puts the largest value of a block in ``[0.5, 1)`` (the top octave is headroom
for rounding up), and since it is a power of two, rescaling a block when its maximum grows moves
every code by whole octaves: values that did not change keep their bits (except those pushed under
the evenly spaced range, which are rounded again). A new value is rounded stochastically between
its two neighbouring codes with 16 random bits (unbiased up to 2**-16 of a step).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from classp_hf.optim._rows import RowPlan, compute_dtype
from classp_hf.optim._sharded import local_tensor, match_layout

__all__ = [
    "STATE_DTYPES",
    "SUM_KEY",
    "CODES_KEY",
    "SCALES_KEY",
    "BLOCK_SIZE",
    "EncodedSum",
    "stored_format",
    "code_values",
    "block_layout",
    "encode_8bit",
    "decode_8bit",
    "round_to_bfloat16_stochastically",
]

#: The ``state_dtype`` values: how :math:`S` is stored.
STATE_DTYPES = ("float32", "bfloat16", "8bit")
#: State keys: ``S`` in float32/float64 or bfloat16; the 8-bit codes and block scales.
SUM_KEY = "grad_sum"
#: The same key under the name :class:`~classp_hf.optim.CLASSP` uses.
STATE_KEY = SUM_KEY
#: Top-level :meth:`CLASSP.state_dict` key of the stochastic-rounding generators' states.
RNG_KEY = "stochastic_rounding_rng"
CODES_KEY = "grad_sum_codes"
SCALES_KEY = "grad_sum_scales"
#: Largest number of elements sharing one scale in the 8-bit format.
BLOCK_SIZE = 256
#: float32 exponent bias (127) minus the code's (15), shifted to the code's exponent field.
_EXPONENT_OFFSET = (127 - 15) << 4
#: The smallest code value with a normal exponent, and the step of the evenly spaced codes under it.
_NORMAL_MIN = 2.0**-14
_SUBNORMAL_STEP = 2.0**-18
_CODE_TABLES: dict[torch.device, Tensor] = {}


def code_values(device: torch.device | str = "cpu") -> Tensor:
    """The 256 values of the 8-bit code (float32, ascending): code ``q`` has exponent ``q >> 4``, mantissa
    ``q & 15``."""
    device = torch.device(device)
    table = _CODE_TABLES.get(device)
    if table is None:
        codes = torch.arange(256, dtype=torch.int64)
        exponent, mantissa = codes >> 4, (codes & 15).double()
        normal = torch.pow(2.0, (exponent - 15).double()) * (1.0 + mantissa / 16.0)
        table = torch.where(exponent > 0, normal, mantissa * _SUBNORMAL_STEP).float().to(device)
        _CODE_TABLES[device] = table
    return table


def block_layout(shape: torch.Size | tuple[int, ...]) -> tuple[int, int, int, int]:
    """``(rows, columns, blocks per row, block length)`` of a tensor's 8-bit layout (rows of its last dimension)."""
    columns = shape[-1] if len(shape) else 1
    rows = math.prod(shape[:-1])
    blocks = max(1, math.ceil(columns / BLOCK_SIZE))
    return rows, columns, blocks, math.ceil(columns / blocks)


def _random_bits(shape: tuple[int, ...], generator: torch.Generator, device: torch.device) -> Tensor:
    """Uniform integers in ``[0, 2**16)`` (int32), drawn from ``generator``."""
    return torch.randint(0, 1 << 16, shape, generator=generator, device=device, dtype=torch.int32)


def encode_8bit(values: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Encodes non-negative values, rounding stochastically: see the module docstring.

    Args:
        values (`Tensor`): float32 or float64, any shape (seen as rows of its last dimension).
        generator (`torch.Generator`): of ``values``' device.

    Returns:
        ``codes`` (uint8, ``(rows, blocks * block_length)``) and ``scales`` (float32, ``(rows, blocks)``).
    """
    rows, columns, blocks, length = block_layout(values.shape)
    if values.numel() == 0:
        empty = torch.zeros(rows, blocks * length, dtype=torch.uint8, device=values.device)
        return empty, torch.ones(rows, blocks, dtype=torch.float32, device=values.device)
    data = values.reshape(rows, columns).to(torch.float32)
    if blocks * length != columns:
        data = torch.nn.functional.pad(data, (0, blocks * length - columns))
    data = data.view(rows, blocks, length)
    # A power of two putting each block's largest value in [0.5, 1): frexp's exponent.
    _, exponent = torch.frexp(data.amax(dim=2, keepdim=True))
    scales = torch.ldexp(torch.ones_like(exponent, dtype=torch.float32), exponent)
    scaled = data / scales  # exact: a power of two
    noise = _random_bits(tuple(scaled.shape), generator, scaled.device)
    # Normal range: add the noise under the 4 kept mantissa bits of the float32 and truncate (carries included).
    normal = ((scaled.view(torch.int32) + (noise << 3)) >> 19) - _EXPONENT_OFFSET
    # Evenly spaced range: floor(x / step + u), u the same noise as a fraction.
    even = scaled.mul(1.0 / _SUBNORMAL_STEP).add_(noise.to(torch.float32).mul_(2.0**-16)).to(torch.int32)
    codes = torch.where(scaled >= _NORMAL_MIN, normal, even).to(torch.uint8)
    return codes.view(rows, blocks * length), scales.view(rows, blocks)


def decode_8bit(codes: Tensor, scales: Tensor, columns: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """The values of 8-bit codes, ``(rows, columns)`` in ``dtype``: :func:`encode_8bit` undone up to rounding."""
    rows, blocks = scales.shape
    length = codes.shape[1] // blocks
    if codes.numel() == 0:
        return torch.zeros(rows, columns, dtype=dtype, device=codes.device)
    table = code_values(codes.device)
    values = table.index_select(0, codes.reshape(-1).to(torch.int32)).view(rows, blocks, length)
    values = (values * scales.unsqueeze(2)).view(rows, blocks * length)
    if values.shape[1] != columns:
        values = values[:, :columns]
    return values.to(dtype)


def round_to_bfloat16_stochastically(values: Tensor, generator: torch.Generator) -> Tensor:
    """``values`` (float32, overwritten; float64 is converted first) in bfloat16, rounded stochastically."""
    values = values.to(torch.float32)
    noise = _random_bits(tuple(values.shape), generator, values.device)
    values.view(torch.int32).add_(noise).bitwise_and_(-(1 << 16))
    return values.to(torch.bfloat16)


def stored_format(state: dict) -> str | None:
    """The format a parameter's state holds ``S`` in (a :data:`STATE_DTYPES` value), or `None` without state."""
    if CODES_KEY in state:
        return "8bit"
    value = state.get(SUM_KEY)
    if value is None:
        return None
    return "bfloat16" if value.dtype == torch.bfloat16 else "float32"


def _gather(tensor: Tensor, plan: RowPlan | None) -> Tensor:
    return tensor if plan is None else tensor.index_select(0, plan.rows)


class EncodedSum:
    """The :math:`S` of one parameter kept in bfloat16 or 8 bits, seen as a float tensor for a step.

    :meth:`decode` gives the float values (of the rows of a :class:`~classp_hf.optim._rows.RowPlan`, or of
    the whole tensor, shaped like it); :meth:`encode_` rounds updated values back into the state.

    Args:
        state (`dict`): the parameter's optimizer state, holding the format's entries.
        state_dtype (`str`): ``"bfloat16"`` or ``"8bit"``.
        shape (`torch.Size`): the parameter's shape.
        dtype (`torch.dtype`): the dtype the step computes in.
        generator (`torch.Generator`, *optional*): draws the stochastic rounding, on the state's device
            (needed to encode only).
    """

    def __init__(
        self,
        state: dict,
        state_dtype: str,
        shape: torch.Size,
        dtype: torch.dtype,
        generator: torch.Generator | None = None,
    ) -> None:
        self.state, self.state_dtype, self.shape, self.dtype, self.generator = (
            state,
            state_dtype,
            shape,
            dtype,
            generator,
        )

    @classmethod
    def zeros(cls, state_dtype: str, like: Tensor) -> dict[str, Tensor]:
        """The state entries of an all-zero :math:`S` for a parameter like ``like``."""
        if state_dtype == "bfloat16":
            return {SUM_KEY: torch.zeros_like(like, dtype=torch.bfloat16, memory_format=torch.contiguous_format)}
        rows, _, blocks, length = block_layout(like.shape)
        return {
            CODES_KEY: torch.zeros(rows, blocks * length, dtype=torch.uint8, device=like.device),
            SCALES_KEY: torch.ones(rows, blocks, dtype=torch.float32, device=like.device),
        }

    @classmethod
    def encode(cls, state_dtype: str, values: Tensor, generator: torch.Generator) -> dict[str, Tensor]:
        """The state entries holding ``values`` (float, the parameter's shape; overwritten) in ``state_dtype``."""
        if state_dtype == "bfloat16":
            return {SUM_KEY: round_to_bfloat16_stochastically(values, generator)}
        codes, scales = encode_8bit(values, generator)
        return {CODES_KEY: codes, SCALES_KEY: scales}

    def decode(self, plan: RowPlan | None = None) -> Tensor:
        """The float values of :math:`S`: the rows of ``plan`` (2-D), or the whole tensor in its shape."""
        if self.state_dtype == "bfloat16":
            return _gather(self.state[SUM_KEY], plan).to(self.dtype)
        codes, scales = _gather(self.state[CODES_KEY], plan), _gather(self.state[SCALES_KEY], plan)
        values = decode_8bit(codes, scales, block_layout(self.shape)[1], self.dtype)
        return values if plan is not None else values.view(self.shape)

    def encode_(self, values: Tensor, plan: RowPlan | None = None) -> None:
        """Rounds updated float values (as :meth:`decode` gave them; overwritten) back into the state."""
        encoded = self.encode(self.state_dtype, values, self.generator)
        for key, value in encoded.items():
            if plan is None:
                self.state[key] = value
            else:
                self.state[key].index_copy_(0, plan.rows, value)


def _checked_shape(pid: Any, name: str, value: Any, expected: tuple[int, ...], what: str = "the parameter has") -> None:
    """Raises ``ValueError`` unless ``value`` is a tensor of shape ``expected``."""
    if not isinstance(value, Tensor) or tuple(value.shape) != tuple(expected):
        shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
        raise ValueError(
            f"Invalid CLASSP state_dict: {name} of parameter {pid} has shape {shape}, {what} {tuple(expected)}"
        )


def _loaded_sum(pid: Any, p: Tensor, entries: dict[str, Any]) -> dict[str, Tensor]:
    """The ``S`` entries of a loaded state for parameter ``p``, checked and placed (:meth:`CLASSP.load_state_dict`)."""
    if STATE_KEY in entries:
        grad_sum = entries[STATE_KEY]
        _checked_shape(pid, STATE_KEY, grad_sum, tuple(p.shape))
        dtype = torch.bfloat16 if grad_sum.dtype == torch.bfloat16 else compute_dtype(p.dtype)
        return {STATE_KEY: match_layout(grad_sum, p, dtype)}
    rows, _, blocks, length = block_layout(p.shape)
    codes, scales = entries.get(CODES_KEY), entries.get(SCALES_KEY)
    _checked_shape(pid, CODES_KEY, codes, (rows, blocks * length), "expected")
    _checked_shape(pid, SCALES_KEY, scales, (rows, blocks), "expected")
    device = local_tensor(p).device
    return {
        CODES_KEY: codes.to(device=device, dtype=torch.uint8, copy=True),
        SCALES_KEY: scales.to(device=device, dtype=torch.float32, copy=True),
    }


def _checked_rng_states(value: Any) -> dict[str, Tensor]:
    """The generator states of a state_dict's ``"stochastic_rounding_rng"`` entry, copied, or ``ValueError``."""
    if not isinstance(value, dict) or not all(
        isinstance(name, str) and isinstance(state, Tensor) for name, state in value.items()
    ):
        raise ValueError(
            f"Invalid CLASSP state_dict: {RNG_KEY!r} must map device names to uint8 tensors, got {value!r:.80}"
        )
    return {name: state.detach().clone() for name, state in value.items()}
