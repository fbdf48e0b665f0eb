"""What a map explains: the targets as functions of the logits, their gradient dt/dz, and their linear form.

The **target** t is a function of the logits z for each sample's class y: ``"class"`` is z_y
(Grad-CAM as published); ``"margin"`` is z_y - max_{j != y} z_j, how far the class wins over its
strongest rival (the difference of the two classes' maps); ``"logprob"`` is log softmax(z)_y, the
map of the negative cross-entropy. Every route only needs the target's gradient with respect to
the logits, dt/dz (a one-hot row for ``"class"``): the chain rule through the head is the same
linear map for every target, so every route serves every target.

A few samples' class and margin targets are taken in Python (at batch 1 each tensor op costs
microseconds); more in tensor ops. Both give the same bits: a sample's score must not depend on
the route.
"""

from __future__ import annotations

import itertools
import math
from typing import Literal

import torch

from ..errors import DripInputError, DripModelError

CamTarget = Literal["class", "margin", "logprob"]
CAM_TARGETS: tuple[str, ...] = ("class", "margin", "logprob")

# Up to this many logits (a batch of a few samples) the margin's rivals are found in Python: at
# batch 1 each tensor op costs 4-8 us, and target_logit_gradient's six cost more than the map.
_PYTHON_MARGIN_LOGITS = 128


def _in_python(logits: int) -> bool:
    """Whether ``logits`` logits (a batch's) are few enough for Python's route."""
    return logits <= _PYTHON_MARGIN_LOGITS


def _check_has_rivals(target: str, logits: torch.Tensor) -> None:
    if logits.shape[1] < 2:
        raise DripModelError(f"target {target!r} compares classes, but the model has {logits.shape[1]}")


def _rival(row: list[float], label: int) -> int:
    """The strongest class other than ``label`` in one sample's logits (the first on ties, as
    ``argmax``)."""
    others = row.copy()
    others[label] = -math.inf
    return others.index(max(others))


def _margin_coefficients(
    logits: torch.Tensor, classes: torch.Tensor, scale: float, like: torch.Tensor
) -> torch.Tensor:
    """``scale`` x ``target_logit_gradient("margin", ...)`` for a few samples, on ``like``'s
    device and dtype: +scale at y, -scale at the strongest rival (the first on ties, as ``argmax``)."""
    _check_has_rivals("margin", logits)
    coefficients = []
    for row, label in zip(logits.tolist(), classes.tolist()):
        rival = _rival(row, label)
        coefficient = [0.0] * len(row)
        coefficient[label], coefficient[rival] = scale, -scale
        coefficients.append(coefficient)
    return torch.tensor(coefficients, dtype=like.dtype, device=like.device).reshape(logits.shape)


def _few_target_means(
    target: str, logits: torch.Tensor, classes: torch.Tensor, offsets: torch.Tensor | None, positions: int
) -> torch.Tensor:
    """``_target_values`` of a few samples' logits as a tensor. ``offsets``: (C,) for every
    sample, (B, C) per sample, or None."""
    if target == "margin":
        _check_has_rivals(target, logits)
    if offsets is None:
        offset_rows = None
    else:
        offset_rows = offsets.tolist() if offsets.dim() == 2 else [offsets.tolist()] * len(logits)
    return logits.new_tensor(
        _target_values(target, logits.tolist(), classes.tolist(), offset_rows, positions)
    )


def _target_values(
    target: str,
    rows: list[list[float]],
    labels: list[int],
    offset_rows: list[list[float]] | None,
    positions: int,
) -> list[float]:
    """The ``"class"`` or ``"margin"`` target of ``rows - offset_rows`` over ``positions``, in
    Python's float64: (z_y - o_y), or that minus (z_r - o_r) with r the strongest rival of z (the
    first on ties). Each value is rounded once, where it becomes a tensor."""
    zero = [0.0] * (len(rows[0]) if rows else 0)
    values = []
    for row, label, offset in zip(rows, labels, offset_rows or itertools.repeat(zero)):
        value = row[label] - offset[label]
        if target == "margin":
            rival = _rival(row, label)
            value -= row[rival] - offset[rival]
        values.append(value / positions)
    return values


def target_logit_gradient(target: str, logits: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """dt/dz ``(B, C)``: the gradient of each sample's target with respect to its logits.

    ``"class"``: the one-hot row of y. ``"margin"``: +1 at y, -1 at the strongest rival
    argmax_{j != y} z_j (the first on ties). ``"logprob"``: one_hot(y) - softmax(z).
    """
    one_hot = torch.zeros_like(logits).scatter_(1, classes[:, None], 1.0)
    if target == "class":
        return one_hot
    _check_has_rivals(target, logits)
    if target == "margin":
        rivals = logits.masked_fill(one_hot.bool(), -math.inf).argmax(1)
        return one_hot.scatter_(1, rivals[:, None], -1.0)
    if target == "logprob":
        return one_hot.sub_(torch.softmax(logits, 1))
    raise DripInputError(f"target: expected one of {CAM_TARGETS}, got {target!r}")


def target_means(
    target: str, logits: torch.Tensor, classes: torch.Tensor, offsets: torch.Tensor | None, positions: int
) -> torch.Tensor:
    """dt/dz . (logits - offsets) / positions per sample, in tensor ops: in float64, rounded once
    to the logits' dtype (the signed map's mean, ``LayerGradCam.map_means``; the ONNX export
    traces it)."""
    centred = logits.double() if offsets is None else logits.double() - offsets.double()
    coefficients = target_logit_gradient(target, logits, classes).double()
    return ((coefficients * centred).sum(1) / positions).to(logits.dtype)


def _target_means(
    target: str, logits: torch.Tensor, classes: torch.Tensor, offsets: torch.Tensor | None, positions: int
) -> torch.Tensor:
    """The target's linear form of ``logits - offsets`` per sample, divided by ``positions``.

    In float64, rounded once to the logits' dtype, so that Python's route for a few samples
    and the tensors' route give the same bits: a sample's score must not depend on the route.
    """
    if target != "logprob" and logits.numel() <= _PYTHON_MARGIN_LOGITS:
        return _few_target_means(target, logits, classes, offsets, positions)
    return target_means(target, logits, classes, offsets, positions)


def _head_rows(
    target: str, weight: torch.Tensor, logits: torch.Tensor, classes: torch.Tensor, scale: float = 1.0
) -> torch.Tensor:
    """``scale`` (dt/dz) @ ``weight``: the target's gradient at the input of the last linear layer."""
    if target == "class":  # one row per sample: a gather, not a matrix product
        rows = weight.index_select(0, classes)
    elif target == "margin" and logits.numel() <= _PYTHON_MARGIN_LOGITS:
        return _margin_coefficients(logits, classes, scale, weight) @ weight
    else:
        rows = target_logit_gradient(target, logits, classes) @ weight
    return rows if scale == 1.0 else rows.mul_(scale)
