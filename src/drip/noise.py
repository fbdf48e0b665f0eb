"""Corrupted streams: symmetric label flips or additive Gaussian noise on a fraction of the samples,
and how well a selection's dropped samples match the corrupted ones.

The experiment corrupts the stream S only (D0 and the test set stay clean) and reports, per arm,
the precision and recall with which what the arm dropped is what was corrupted.
"""

from __future__ import annotations

from typing import Literal

import torch

from .data.base import LabelledData

Noise = Literal["none", "label", "gaussian"]


def corrupt(
    stream: LabelledData, noise: Noise, rate: float, std: float, generator: torch.Generator
) -> tuple[LabelledData, torch.Tensor]:
    """A copy of ``stream`` with ``rate`` of its samples corrupted, and the corrupted mask.

    ``label``: the label moves to one of the other classes, uniformly (symmetric flips).
    ``gaussian``: the input gets additive Gaussian noise of ``std`` times the stream's pixel std.
    """
    corrupted = torch.zeros(len(stream), dtype=torch.bool)
    if noise == "none" or rate == 0:
        return stream, corrupted
    chosen = torch.randperm(len(stream), generator=generator)[: round(rate * len(stream))]
    corrupted[chosen] = True
    x, y = stream.x.clone(), stream.y.clone()
    if noise == "label":
        shift = torch.randint(1, stream.num_classes, (len(chosen),), generator=generator)
        y[chosen] = (y[chosen] + shift) % stream.num_classes
    else:
        scale = std * float(stream.x.std())
        x[chosen] += scale * torch.randn(x[chosen].shape, generator=generator)
    return LabelledData(stream.name, x, y, stream.num_classes, stream.class_names), corrupted


def noise_stats(kept: torch.Tensor, corrupted: torch.Tensor) -> dict[str, float | None]:
    """Precision and recall with which the dropped samples are the corrupted ones."""
    dropped = ~kept
    hits = int((dropped & corrupted).sum())
    return {
        "noise_precision": hits / int(dropped.sum()) if dropped.any() else None,
        "noise_recall": hits / int(corrupted.sum()) if corrupted.any() else None,
    }
