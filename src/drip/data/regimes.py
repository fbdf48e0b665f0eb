"""Harder regimes made from any data set: classes of graded difficulty, and long-tailed class sizes.

MNIST and digits have classes of about equal difficulty, so they cannot show whether a selection
rule spends storage where the classes are hard; real streams are also rarely balanced. Both
regimes are documented rules over the data set's own samples, so anyone can rebuild them:

* ``graded_difficulty``: class c of C gets the level ``l_c = c / (C - 1)`` (class 0 untouched, the
  last class hardest). Each sample of the class gets additive Gaussian noise of ``l_c`` times the
  data's pixel std and a mean-valued occluding patch covering ``l_c / 2`` of each of its last two
  dimensions (the last one for 1-D inputs such as MFCC frames), at a random place. The draw is
  fixed by ``seed``: the regime is a data set, the same in every experiment seed.
* ``long_tailed``: class c keeps ``ratio ** (-c / (C - 1))`` of its samples (class 0 all, the last
  class ``1 / ratio``), a random subset drawn by ``generator``.
"""

from __future__ import annotations

import torch

from .base import LabelledData


def _levels(num_classes: int) -> torch.Tensor:
    return torch.arange(num_classes, dtype=torch.float32) / max(num_classes - 1, 1)


def graded_difficulty(data: LabelledData, seed: int = 0) -> LabelledData:
    """A copy of ``data`` whose class c is corrupted at level c / (C - 1) (see the module)."""
    generator = torch.Generator().manual_seed(seed)
    level = _levels(data.num_classes)[data.y]
    x = data.x.clone().float()
    noise = torch.randn(x.shape, generator=generator)
    x += (level * float(data.x.std())).reshape(-1, *[1] * (x.dim() - 1)) * noise
    spatial = x.shape[-2:] if x.dim() >= 3 else x.shape[-1:]
    fill = float(data.x.mean())
    corners = [torch.rand(len(x), generator=generator) for _ in spatial]
    for i, strength in enumerate(level.tolist()):
        window = []
        for size, corner in zip(spatial, corners):
            side = round(strength / 2 * size)
            start = int(corner[i] * (size - side + 1))
            window.append(slice(start, start + side))
        x[(i, Ellipsis, *window)] = fill
    return LabelledData(f"{data.name}-graded", x.to(data.x.dtype), data.y, data.num_classes, data.class_names)


def long_tailed(data: LabelledData, ratio: float, generator: torch.Generator) -> LabelledData:
    """A subset of ``data`` whose class c keeps ``ratio ** (-c / (C - 1))`` of its samples."""
    keep_share = ratio ** -_levels(data.num_classes)
    kept = []
    for c in range(data.num_classes):
        members = (data.y == c).nonzero().flatten()
        chosen = members[torch.randperm(len(members), generator=generator)]
        kept.append(chosen[: max(1, round(float(keep_share[c]) * len(members)))] if len(members) else chosen)
    return data.subset(torch.sort(torch.cat(kept)).values)
