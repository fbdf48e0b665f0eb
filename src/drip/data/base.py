"""The one shape every data set loads into, and the stratified split every protocol uses."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import DripInputError


@dataclass(frozen=True)
class LabelledData:
    """Samples ``x: (N, *input_shape)`` (float32) with labels ``y: (N,)`` (int64)."""

    name: str
    x: torch.Tensor
    y: torch.Tensor
    num_classes: int
    class_names: tuple[str, ...]

    def __post_init__(self) -> None:
        if len(self.x) != len(self.y):
            raise DripInputError(f"{self.name}: {len(self.x)} samples but {len(self.y)} labels")

    def __len__(self) -> int:
        return len(self.y)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])

    def subset(self, index: np.ndarray | torch.Tensor | Sequence[int]) -> LabelledData:
        """The samples at ``index``, in that order."""
        index = torch.as_tensor(np.asarray(index, dtype=np.int64))
        return LabelledData(self.name, self.x[index], self.y[index], self.num_classes, self.class_names)


@dataclass(frozen=True)
class DataSplits:
    """A data set's training data and its official test split (None where it has none)."""

    train: LabelledData
    test: LabelledData | None


def stratified_split(
    labels: torch.Tensor | np.ndarray, fractions: Sequence[float], seed: int
) -> list[np.ndarray]:
    """Split indices into parts of the given fractions with each class in the same proportions.

    Per class, the counts are rounded by largest remainder so every index lands in exactly one
    part; each part's indices are sorted.
    """
    fractions = np.asarray(fractions, dtype=np.float64)
    if fractions.ndim != 1 or len(fractions) < 2 or (fractions < 0).any() or abs(fractions.sum() - 1) > 1e-9:
        raise DripInputError(
            f"fractions: expected two or more non-negative numbers summing to 1, got {fractions.tolist()}"
        )
    labels = np.asarray(labels).reshape(-1)
    rng = np.random.default_rng(seed)
    parts: list[list[np.ndarray]] = [[] for _ in fractions]
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        exact = fractions * len(members)
        counts = np.floor(exact).astype(int)
        leftover = len(members) - counts.sum()
        counts[np.argsort(-(exact - counts), kind="stable")[:leftover]] += 1
        for part, piece in zip(parts, np.split(members, np.cumsum(counts)[:-1])):
            part.append(piece)
    return [np.sort(np.concatenate(part)) if part else np.empty(0, dtype=np.int64) for part in parts]
