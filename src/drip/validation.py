"""Checks at the boundary: turn user input into tensors the scorer can trust, or raise.

Every check raises ``DripInputError`` naming the argument, what was expected and what was found;
nothing here has side effects, so a failed check leaves all state as it was.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from .errors import DripInputError

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def as_tensor(value: Any, name: str) -> torch.Tensor:
    """``value`` (tensor, numpy array, nested list or number) as a dense tensor, or a clear error.

    Sparse, quantized, nested and meta tensors are refused: none of them holds plain values that
    can be scored or stored byte for byte (reading a stored quantized tensor crashed torch).
    """
    tensor = value if isinstance(value, torch.Tensor) else _convert(value, name)
    if tensor.layout != torch.strided or tensor.is_quantized or tensor.is_nested or tensor.is_meta:
        kind = "quantized" if tensor.is_quantized else "nested" if tensor.is_nested else "meta"
        found = kind if tensor.layout == torch.strided else str(tensor.layout).removeprefix("torch.")
        raise DripInputError(f"{name}: expected a dense tensor holding its values, got a {found} tensor")
    return tensor


def _convert(value: Any, name: str) -> torch.Tensor:
    try:
        if isinstance(value, np.ndarray):
            if value.dtype.kind in "OUSV":
                raise TypeError(f"numpy dtype {value.dtype}")
            # torch refuses negative strides and foreign byte order; a native copy has neither.
            if not value.dtype.isnative or any(stride < 0 for stride in value.strides):
                value = np.ascontiguousarray(value, dtype=value.dtype.newbyteorder("="))
        return torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError, OverflowError) as err:
        raise DripInputError(
            f"{name}: expected a tensor, a numpy array or a (nested) list of numbers, "
            f"got {type(value).__name__} ({err})"
        ) from None


def check_inputs(
    x: Any,
    *,
    name: str = "x",
    sample_shape: Sequence[int] | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """A batch ``x: (B, *sample_shape)`` of finite floats, cast to ``dtype`` on ``device``.

    Integer, boolean and complex inputs are refused rather than converted: their scale (0-255
    pixels? PCM samples?) is the caller's to decide, and a silent guess would score garbage.
    """
    tensor = as_tensor(x, name)
    if tensor.dtype not in _FLOAT_DTYPES:
        raise DripInputError(
            f"{name}: expected a floating-point tensor, got {tensor.dtype}; convert and scale it "
            "as the model was trained"
        )
    if tensor.dim() < 1:
        raise DripInputError(f"{name}: expected a batch (B, ...), got a scalar")
    if tensor.shape == (0,) and sample_shape is not None:  # [] is an empty batch of any shape
        tensor = tensor.reshape(0, *sample_shape)
    if sample_shape is not None and tuple(tensor.shape[1:]) != tuple(sample_shape):
        raise DripInputError(
            f"{name}: expected shape (B, {', '.join(map(str, sample_shape))}), got {tuple(tensor.shape)}"
        )
    if tensor.dtype != dtype or tensor.device != torch.device(device):  # a no-op .to() costs us too
        tensor = tensor.to(device=device, dtype=dtype)
    if tensor.numel() and not all_finite(tensor):
        bad = (~torch.isfinite(tensor)).flatten(1).any(1).nonzero().flatten()
        # Values finite in float64 may overflow in the model's dtype: name the cast as well.
        raise DripInputError(
            f"{name}: expected finite values, but samples {bad[:10].tolist()} contain NaN or infinite "
            f"values (as {dtype})"
        )
    return tensor


def all_finite(tensor: torch.Tensor) -> bool:
    """Whether every element is finite, in one reduction when they are."""
    # A few values (a batch-1 score) are checked in Python, cheaper than any kernel. Else: a sum
    # is finite only if every element is, and isfinite().all() costs three kernels; a non-finite
    # sum may be an overflow of finite values: recheck.
    if tensor.numel() <= 16:
        return all(map(math.isfinite, tensor.tolist() if tensor.dim() == 1 else tensor.reshape(-1).tolist()))
    return math.isfinite(tensor.sum()) or bool(torch.isfinite(tensor).all())


def check_labels(
    y: Any,
    *,
    count: int,
    num_classes: int | None,
    name: str = "y",
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """``count`` integer labels in ``[0, num_classes)`` as an int64 tensor of shape (count,)."""
    tensor = as_tensor(y, name)
    if tensor.numel() == 0:  # an empty list has no integer dtype to show
        tensor = tensor.to(torch.int64)
    if tensor.dtype == torch.bool or tensor.dtype.is_floating_point or tensor.dtype.is_complex:
        raise DripInputError(f"{name}: expected integer class labels, got {tensor.dtype}")
    if tensor.dim() == 0:
        tensor = tensor.reshape(1)
    if tensor.dim() != 1:
        raise DripInputError(f"{name}: expected a 1-D tensor of labels, got shape {tuple(tensor.shape)}")
    if tensor.numel() != count:
        raise DripInputError(f"{name}: got {tensor.numel()} labels for {count} samples, expected one each")
    if tensor.dtype != torch.int64 or tensor.device != torch.device(device):
        tensor = tensor.to(device=device, dtype=torch.int64)
    if count:
        low, high = int_range(tensor)
        if low < 0 or (num_classes is not None and high >= num_classes):
            bound = f"[0, {num_classes})" if num_classes is not None else ">= 0"
            bad = low if low < 0 else high
            raise DripInputError(f"{name}: label {bad} is out of range, expected {bound}")
    return tensor


def int_range(tensor: torch.Tensor) -> tuple[int, int]:
    """``(min, max)`` of a non-empty 1-D integer tensor, by the cheaper way for its size."""
    # Checked on every scored batch, where per-call overhead is the cost: a copy to Python beats
    # two reductions up to a few dozen values (measured), one aminmax wins beyond.
    if tensor.numel() <= 32:
        values = tensor.tolist()
        return min(values), max(values)
    low, high = torch.aminmax(tensor)
    return int(low), int(high)


def check_fraction(value: float, name: str, *, allow_one: bool = False) -> float:
    """A float in [0, 1) (or [0, 1] with ``allow_one``), else a clear error."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise DripInputError(f"{name}: expected a number in [0, 1), got {value!r}")
    value = float(value)
    upper_ok = value <= 1.0 if allow_one else value < 1.0
    if not (value >= 0.0 and upper_ok):
        raise DripInputError(f"{name}: expected a number in [0, {'1]' if allow_one else '1)'}, got {value}")
    return value
