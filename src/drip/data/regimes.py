"""Harder regimes made from any data set: classes of graded difficulty, and long-tailed class sizes.

MNIST and digits have classes of about equal difficulty, so they cannot show whether a selection
rule spends storage where the classes are hard; real streams are also rarely balanced. Both
regimes are documented rules over the data set's own samples, so anyone can rebuild them:

* ``graded_difficulty``: classes in confusable pairs of graded strength. Class c < C // 2 is
  paired with c + C // 2; pair k blends each image of either class with a random image of the
  other, ``x = (1 - w_k) x + w_k x_partner``, ``w_k = 0.45 k / (C // 2 - 1)``: pair 0 is left as it
  is, the last pair is 55:45 mixtures of its two classes. Both classes of a pair are treated
  alike, so the corruption itself says nothing about the label (a class-dependent noise level or
  patch size would: a model learns the corruption, and the set gets easier, not harder); what is
  left to learn is which of two superimposed classes dominates. The partners are drawn by
  ``seed``: the regime is a data set, the same in every experiment seed.
* ``long_tailed``: class c keeps ``ratio ** (-c / (C - 1))`` of its samples (class 0 all, the last
  class ``1 / ratio``), a random subset drawn by ``generator``.
"""

from __future__ import annotations

from typing import Literal

import torch

from ..errors import DripInputError
from .base import LabelledData

Difficulty = Literal["none", "graded"]
DIFFICULTIES: tuple[str, ...] = ("none", "graded")


def _levels(num_classes: int) -> torch.Tensor:
    return torch.arange(num_classes, dtype=torch.float32) / max(num_classes - 1, 1)


HARDEST_BLEND = 0.45


def partner_classes(num_classes: int) -> tuple[list[int], list[float]]:
    """Each class's partner (itself when unpaired) and the weight its partner's image gets."""
    half = num_classes // 2
    partner, weight = list(range(num_classes)), [0.0] * num_classes
    for k in range(half):
        w = HARDEST_BLEND * k / max(half - 1, 1)
        partner[k], partner[k + half] = k + half, k
        weight[k] = weight[k + half] = w
    return partner, weight


def graded_difficulty(data: LabelledData, seed: int = 0) -> LabelledData:
    """A copy of ``data`` whose classes are blended in pairs of graded strength (see the module)."""
    generator = torch.Generator().manual_seed(seed)
    partner, weight = partner_classes(data.num_classes)
    x = data.x.clone()
    for c in range(data.num_classes):
        own = (data.y == c).nonzero().flatten()
        others = (data.y == partner[c]).nonzero().flatten()
        if weight[c] == 0 or len(own) == 0 or len(others) == 0:
            continue
        picks = others[torch.randint(len(others), (len(own),), generator=generator)]
        x[own] = ((1 - weight[c]) * data.x[own].float() + weight[c] * data.x[picks].float()).to(data.x.dtype)
    return LabelledData(f"{data.name}-graded", x, data.y, data.num_classes, data.class_names)


def with_difficulty(
    difficulty: str, pool: LabelledData, test: LabelledData | None
) -> tuple[LabelledData, LabelledData | None]:
    """``pool`` and ``test`` under ``difficulty`` (``graded``: each blended with its own partner
    draw, so that no test image is a training image's blend)."""
    if difficulty not in DIFFICULTIES:
        raise DripInputError(f"difficulty: expected one of {DIFFICULTIES}, got {difficulty!r}")
    if difficulty == "none":
        return pool, test
    return graded_difficulty(pool, seed=0), None if test is None else graded_difficulty(test, seed=1)


def long_tailed(data: LabelledData, ratio: float, generator: torch.Generator) -> LabelledData:
    """A subset of ``data`` whose class c keeps ``ratio ** (-c / (C - 1))`` of its samples."""
    keep_share = ratio ** -_levels(data.num_classes)
    kept = []
    for c in range(data.num_classes):
        members = (data.y == c).nonzero().flatten()
        chosen = members[torch.randperm(len(members), generator=generator)]
        kept.append(chosen[: max(1, round(float(keep_share[c]) * len(members)))] if len(members) else chosen)
    return data.subset(torch.sort(torch.cat(kept)).values)
