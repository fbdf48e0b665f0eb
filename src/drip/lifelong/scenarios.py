"""How a device's stream is cut into rounds, and how its inputs drift from round to round.

A device runs for R rounds; each round it receives the samples of one part of the stream. Every
sample of the stream lands in exactly one round. The scenarios are documented rules over the
stream's own samples, drawn with the caller's ``generator``, so anyone can rebuild them:

* ``none``: a random permutation of the stream cut into R near-equal consecutive rounds (the
  earlier rounds take the extra sample, as ``np.array_split`` does).
* ``class-incremental``: the C classes, in a random order, are cut into
  ``G = max(1, min(R // 2, C))`` near-equal groups, and the rounds into G near-equal consecutive
  blocks; group g's samples, shuffled, are spread near-equally over block g's rounds. With R = 10
  and C = 10, the first two classes fill rounds 0-1, the next two rounds 2-3, and so on; with
  R = 1, one group: a shuffled stream, as under ``none``. A round is empty when its group has
  fewer samples than its block has rounds.
* ``class-mix``: the class proportions rotate: each sample of class c lands in round r with
  probability proportional to ``w_c(r) = exp(kappa * cos(2 pi (r / R - c / C)))``,
  ``kappa = CLASS_MIX_KAPPA``. Class c is most frequent around round ``c R / C``, and every class
  has a share of every round (at kappa = 2, no round's weight is below ``e^-4`` of the peak's).
  The rounds are drawn class by class, then each round's arrival order is a random permutation;
  on a small stream a round can be empty.
* ``domain``: rounds as in ``none``; round r's inputs are shifted with severity
  ``r / (R - 1)`` (0 when R = 1; ``round_severity``) by ``shift_inputs``: contrast shrinks and
  Gaussian noise grows, ``x' = m + (x - m) (1 - s / 2) + (s / 2) scale N(0, 1)``, m each sample's
  own mean over its non-batch dimensions. ``scale`` is the data set's standard deviation,
  ``float(initial.x.std())`` over the data the device starts from, so the noise is in the data's
  own units whatever its rank (images (1, 28, 28), MFCCs (C, T)).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from ..data.base import LabelledData
from ..errors import DripInputError

SCENARIOS = ("none", "class-incremental", "class-mix", "domain")

# How strongly class-mix favours each class's own rounds; 0 would be "none".
CLASS_MIX_KAPPA = 2.0


def _check_rounds(rounds: object, scenario: object) -> None:
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise DripInputError(f"rounds: expected an integer >= 1, got {rounds!r}")
    if scenario not in SCENARIOS:
        raise DripInputError(f"scenario: expected one of {SCENARIOS}, got {scenario!r}")


def split_rounds(
    stream: LabelledData, rounds: int, scenario: str, generator: torch.Generator
) -> list[np.ndarray]:
    """Per round, the indices of ``stream`` that arrive in it, in arrival order (see the module)."""
    _check_rounds(rounds, scenario)
    if rounds > len(stream):
        raise DripInputError(f"rounds: {rounds} rounds but the stream has only {len(stream)} samples")
    labels = stream.y.numpy()
    if len(labels) and (labels.min() < 0 or labels.max() >= stream.num_classes):
        raise DripInputError(
            f"{stream.name}: labels must lie in [0, {stream.num_classes}), "
            f"found {int(labels.min())}..{int(labels.max())}"
        )
    if scenario == "class-incremental":
        return _class_incremental(labels, stream.num_classes, rounds, generator)
    if scenario == "class-mix":
        return _class_mix(labels, stream.num_classes, rounds, generator)
    return np.array_split(torch.randperm(len(labels), generator=generator).numpy(), rounds)


def _class_incremental(
    labels: np.ndarray, num_classes: int, rounds: int, generator: torch.Generator
) -> list[np.ndarray]:
    groups = max(1, min(rounds // 2, num_classes))
    class_groups = np.array_split(torch.randperm(num_classes, generator=generator).numpy(), groups)
    blocks = np.array_split(np.arange(rounds), groups)
    parts: list[np.ndarray] = []
    for classes, block in zip(class_groups, blocks):
        members = np.flatnonzero(np.isin(labels, classes))
        members = members[torch.randperm(len(members), generator=generator).numpy()]
        parts.extend(np.array_split(members, len(block)))
    return parts


def class_mix_weights(num_classes: int, rounds: int) -> np.ndarray:
    """``w_c(r)`` of the class-mix rule (C, R), unnormalised."""
    phase = np.arange(rounds)[None, :] / rounds - np.arange(num_classes)[:, None] / num_classes
    return np.exp(CLASS_MIX_KAPPA * np.cos(2 * np.pi * phase))


def _class_mix(
    labels: np.ndarray, num_classes: int, rounds: int, generator: torch.Generator
) -> list[np.ndarray]:
    weights = torch.from_numpy(class_mix_weights(num_classes, rounds))
    assigned = np.empty(len(labels), dtype=np.int64)
    for c in range(num_classes):
        members = np.flatnonzero(labels == c)
        if len(members):
            drawn = torch.multinomial(weights[c], len(members), replacement=True, generator=generator)
            assigned[members] = drawn.numpy()
    order = np.argsort(assigned, kind="stable")
    by_round = np.split(order, np.cumsum(np.bincount(assigned, minlength=rounds))[:-1])
    return [part[torch.randperm(len(part), generator=generator).numpy()] for part in by_round]


def classes_by_round(labels: torch.Tensor | np.ndarray, parts: Sequence[np.ndarray]) -> list[list[int]]:
    """Per round, the sorted classes that have arrived in it or any earlier round (to evaluate a
    class-incremental device on the classes it has seen so far)."""
    labels = np.asarray(labels).reshape(-1)
    seen: set[int] = set()
    arrived = []
    for part in parts:
        seen.update(np.unique(labels[np.asarray(part, dtype=np.int64)]).tolist())
        arrived.append(sorted(seen))
    return arrived


def round_severity(round_index: int, rounds: int, scenario: str) -> float:
    """The input shift of round ``round_index``: ``r / (R - 1)`` under ``domain``, else 0."""
    _check_rounds(rounds, scenario)
    if isinstance(round_index, bool) or not isinstance(round_index, int) or not 0 <= round_index < rounds:
        raise DripInputError(f"round_index: expected an integer in [0, {rounds}), got {round_index!r}")
    if scenario != "domain" or rounds == 1:
        return 0.0
    return round_index / (rounds - 1)


def shift_inputs(x: torch.Tensor, severity: float, generator: torch.Generator, scale: float) -> torch.Tensor:
    """The domain scenario's input shift of ``x: (N, ...)`` at ``severity`` in [0, 1] (see the module).

    Severity 0 returns an unchanged copy without drawing; otherwise the noise, one draw per input
    value, comes from ``generator``, so a test set is shifted the same way every time.
    """
    if not isinstance(severity, (int, float)) or isinstance(severity, bool) or not 0 <= severity <= 1:
        raise DripInputError(f"severity: expected a number in [0, 1], got {severity!r}")
    if not isinstance(scale, (int, float)) or isinstance(scale, bool) or not 0 <= scale < math.inf:
        raise DripInputError(f"scale: expected a finite number >= 0, got {scale!r}")
    if x.ndim < 2 or not x.is_floating_point():
        raise DripInputError(
            f"x: expected a float tensor (N, ...) of rank >= 2, got {x.dtype} {tuple(x.shape)}"
        )
    if severity == 0:
        return x.clone()
    mean = x.mean(dim=tuple(range(1, x.ndim)), keepdim=True)
    noise = torch.randn(x.shape, generator=generator, dtype=x.dtype)
    return mean + (x - mean) * (1 - 0.5 * severity) + (0.5 * severity * scale) * noise
