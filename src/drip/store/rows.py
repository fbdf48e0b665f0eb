"""Rows to and from tensors: the checks of what ``add`` is given, a sample encoded as a row, a row decoded.

Pure functions, no SQLite: a tensor becomes its bytes, shape and dtype (``_encode``,
``_encode_batch``), a label, score, source and checkpoint are checked at the boundary, and a row
read back is checked whole before it becomes a tensor again (``_decode``): a damaged or
hand-edited row is a ``DripStoreError``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from ..errors import DripInputError, DripStoreError
from ..validation import as_tensor

# Dtypes whose bytes are the values (no scale, no zero point, no layout); the unsigned ones past
# uint8 exist from torch 2.3 on.
_STORABLE = {
    name: getattr(torch, name)
    for name in (
        "bool", "uint8", "int8", "int16", "int32", "int64", "uint16", "uint32", "uint64",
        "float16", "bfloat16", "float32", "float64",
    )
    if isinstance(getattr(torch, name, None), torch.dtype)
}  # fmt: skip
_SQLITE_INT_MAX = 2**63 - 1


@dataclass(frozen=True)
class StoredSample:
    """One row of the store."""

    id: int
    x: torch.Tensor
    label: int
    score: float | None
    created_at: float
    source: str | None


class _Encoded(NamedTuple):  # a NamedTuple: built per row, 3x cheaper than a frozen dataclass
    label: int
    score: float | None
    shape: str
    dtype: str
    data: bytes
    source: str | None


def _storable_dtype(tensor: torch.Tensor, where: str) -> str:
    dtype = str(tensor.dtype).removeprefix("torch.")
    if _STORABLE.get(dtype) != tensor.dtype:
        raise DripInputError(
            f"{where}x: expected a tensor of one of {sorted(_STORABLE)}, got dtype {tensor.dtype}, "
            "which cannot be stored"
        )
    return dtype


# Each row check first passes what a filter hands over (ints, floats, ASCII ids) as is: the full
# checks cost about 7 us a row, as much as SQLite's insert of the row.


def check_source(source: Any, name: str = "source") -> str | None:
    """One sample's id: a string UTF-8 can encode, or None; ``name`` says which in the error.
    The filter checks every id with it before scoring, the store each id it writes."""
    if source is None or (type(source) is str and source.isascii()):
        return source
    if not isinstance(source, str):
        raise DripInputError(f"{name}: expected a string or None, got {type(source).__name__} {source!r}")
    if not _is_utf8(source):
        raise DripInputError(f"{name}: expected text that UTF-8 can encode, got {source!r}")
    return source


def _encode(x: Any, label: Any, score: Any, source: Any, where: str) -> _Encoded:
    tensor = as_tensor(x, f"{where}x")
    dtype = _storable_dtype(tensor, where)
    source = check_source(source, f"{where}source")
    data = tensor.detach().cpu().contiguous().reshape(-1)
    return _Encoded(
        label=_check_label(label, where),
        score=_check_score(score, where),
        shape=json.dumps(list(tensor.shape)),
        dtype=dtype,
        data=data.view(torch.uint8).numpy().tobytes() if data.numel() else b"",
        source=source,
    )


def _encode_batch(xs: torch.Tensor, labels: list, scores: list, sources: list) -> list[_Encoded]:
    """``_encode`` of every row of a batch tensor, with one copy and one shape for all rows."""
    dtype = _storable_dtype(xs, "")
    data = xs.detach().cpu().contiguous()
    blob = data.reshape(-1).view(torch.uint8).numpy().tobytes() if data.numel() else b""
    size = len(blob) // len(data)
    shape = json.dumps(list(data.shape[1:]))
    rows = []
    several = len(data) > 1
    for i, (label, score, source) in enumerate(zip(labels, scores, sources)):
        where = f"sample {i}: " if several else ""
        rows.append(
            _Encoded(
                label=_check_label(label, where),
                score=_check_score(score, where),
                shape=shape,
                dtype=dtype,
                data=blob[i * size : (i + 1) * size],
                source=check_source(source, f"{where}source"),
            )
        )
    return rows


def _scalar(value: Any) -> Any:
    """A one-element tensor or numpy value as a Python number; anything else unchanged."""
    if isinstance(value, torch.Tensor):
        dense = value.layout == torch.strided and not value.is_meta and not value.is_quantized
        return value.item() if dense and value.numel() == 1 else value
    if isinstance(value, (np.ndarray, np.generic)) and np.size(value) == 1:
        return np.asarray(value).item()
    return value


def _check_label(label: Any, where: str) -> int:
    if type(label) is int and 0 <= label <= _SQLITE_INT_MAX:
        return label
    found = label
    if isinstance(label, (torch.Tensor, np.ndarray, np.generic)):
        label = _scalar(label)
    if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label <= _SQLITE_INT_MAX:
        raise DripInputError(f"{where}label: expected a non-negative integer below 2**63, got {found!r}")
    return int(label)


def _check_score(score: Any, where: str) -> float | None:
    if score is None or (type(score) is float and math.isfinite(score)):
        return score
    found, score = score, _scalar(score)
    if isinstance(score, bool) or not isinstance(score, (int, float)):
        raise DripInputError(f"{where}score: expected a finite number or None, got {found!r}")
    try:
        value = float(score)
    except OverflowError:
        value = math.inf
    if not math.isfinite(value):
        raise DripInputError(f"{where}score: expected a finite number or None, got {found!r}")
    return value


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _as_list(values: Any, name: str) -> list[Any]:
    """Per-sample values (a sequence, tensor or array; not a string) as a list."""
    if isinstance(values, (torch.Tensor, np.ndarray)) and values.ndim > 0:
        return list(values)
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise DripInputError(f"{name}: expected one value per sample, got {type(values).__name__}")
    return list(values)


def _is_pair(value: Any) -> bool:
    return (
        isinstance(value, tuple)
        and len(value) == 2
        and all(isinstance(part, str) and _is_utf8(part) for part in value)
    )


def _checkpoints(checkpoint: Any) -> list[tuple[str, str]]:
    """``add_batch``'s ``checkpoint``: None, one (name, value) pair, or a list of pairs."""
    if checkpoint is None:
        return []
    if _is_pair(checkpoint):
        return [checkpoint]
    if isinstance(checkpoint, list) and all(_is_pair(pair) for pair in checkpoint):
        return list(checkpoint)
    raise DripInputError(
        f"checkpoint: expected a (name, value) pair of strings or a list of them, got {checkpoint!r}"
    )


def _decode(
    row_id: int, label: Any, score: Any, shape: Any, dtype: Any, data: Any, where: Path
) -> torch.Tensor:
    """A row's tensor, after checking the row is whole: a hand-edited or damaged row is an error."""
    torch_dtype = _STORABLE.get(dtype) if isinstance(dtype, str) else None
    try:
        dims = json.loads(shape) if isinstance(shape, str) else None
    except (json.JSONDecodeError, RecursionError):
        dims = None
    problem = None
    if torch_dtype is None:
        problem = f"dtype {dtype!r} is not one drip stores"
    elif not isinstance(dims, list) or not all(type(d) is int and d >= 0 for d in dims):
        problem = f"shape {shape!r} is not a list of sizes"
    elif not isinstance(data, bytes) or len(data) != math.prod(dims) * torch_dtype.itemsize:
        found = f"{len(data)} bytes" if isinstance(data, bytes) else type(data).__name__
        needed = math.prod(dims) * torch_dtype.itemsize
        problem = f"data holds {found}, but shape {dims} of {dtype} needs {needed} bytes"
    elif isinstance(label, bool) or not isinstance(label, int) or label < 0:
        problem = f"label {label!r} is not a non-negative integer"
    elif score is not None and not isinstance(score, float):
        problem = f"score {score!r} is not a number"
    if problem is not None:
        raise DripStoreError(f"{where}: sample {row_id} is damaged or was edited by hand: {problem}")
    if not data:
        return torch.empty(dims, dtype=torch_dtype)
    return torch.frombuffer(bytearray(data), dtype=torch_dtype).reshape(dims)
