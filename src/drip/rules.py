"""Selection rules: how the held-out scores of the deployed model become each class's upper cut.

A band keeps a sample of class c when ``low_c <= score <= high_c``. The rule decides *where the
storage goes*: which classes give up how much of their stream for a target saving ``q_high``.

* ``per-class`` (the paper's): ``high_c`` is the (1 - q_high) quantile of class c's scores, so
  every class loses the same share, whatever its difficulty.
* ``pooled``: one cut for all classes, the (1 - q_high) quantile of all scores pooled. The score
  is one scale (evidence for the label over its strongest rival), so the cut keeps the samples
  the model finds hardest wherever they are: most of a hard class, little of an easy one.
* ``coverage``: the pooled cut, with a floor per class (coverage, as in CCS, Zheng et al. ICLR
  2023, applied to classes): no class keeps less than ``COVERAGE_SHARE`` of an equal share of
  the kept samples, ``floor_c = min(1, COVERAGE_SHARE * (1 - q_high) / (C * pi_c))`` of its own
  samples, ``pi_c`` its frequency in the calibration data and C the number of classes that data
  holds (a device's calibration reserve after a drift may hold a few of them: an equal share is
  one of those few, not one of every class the model knows). So an easy class is never starved, and
  a rare class, whose equal share is most of it, keeps all or most of its samples. The pooled cut
  ``h`` is then lowered until the floors and the cut together keep the target share of the
  calibration samples: ``high_c = max(h, floor quantile of class c)``.

A class's floor comes from its own scores, however few: pooled scores say nothing about where a
class's lowest share lies. Every rule yields plain per-class bands, so every path that applies
bands (``DripFilter``, the ONNX graph's ``keep``, ``drip.parallel``) honours it unchanged. A
class with fewer than ``min_class_points`` calibration scores takes its other quantiles from all
scores pooled, as per-class quantiles of a handful of points miss the intended share badly; a
lower cut needs at least 1 / q_low scores (``lower_cut``), and a class with no calibration score
gets none (after a drift it is a class the model has not learnt: all of it scores low).
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np

Rule = Literal["per-class", "pooled", "coverage"]
RULES: tuple[str, ...] = ("per-class", "pooled", "coverage")
DEFAULT_RULE: Rule = "coverage"
# The default lower cut: below the 1st percentile of the class's clean held-out scores, a sample
# contradicts its label more than 99 of 100 clean samples of its class do. On MNIST with 20% of
# the labels flipped that is 99.5% of the flipped samples and 1.0% of the clean ones (0.5%:
# 98.7% and 0.5%; 5%: 100% and 5%), so a store no longer fills up with flipped labels, at the
# price of 1% of a clean stream.
DEFAULT_Q_LOW = 0.01
# The coverage floor: half an equal share of the store. At q_high 0.5 over 10 balanced classes
# that is 25% of each class; a class 4x rarer than the average keeps everything.
COVERAGE_SHARE = 0.5


def lower_cut(values: np.ndarray, q_low: float) -> float:
    """The q_low quantile of ``values`` as a lower cut, or ``-inf`` (no cut) when there are fewer
    than 1 / q_low of them: below that the quantile lies outside the data, between the lowest
    points, and cuts wherever they happen to fall (1% of 50 digits moved it across 7% of a stream)."""
    if q_low == 0 or values.size * q_low < 1 - 1e-9:
        return -math.inf
    return quantile(values, q_low)


def quantile(values: np.ndarray, q: float) -> float:
    """The q quantile (linear interpolation) in float64."""
    return float(np.quantile(values.astype(np.float64), q))


def coverage_floors(counts: np.ndarray, q_high: float) -> np.ndarray:
    """Per class, the least fraction of its samples the ``coverage`` rule keeps (1 for a class
    ``counts`` has none of)."""
    total = counts.sum()
    share = COVERAGE_SHARE * (1 - q_high) * total / max(int(np.count_nonzero(counts)), 1)
    with np.errstate(divide="ignore"):
        return np.minimum(1.0, share / counts.astype(np.float64))


def upper_cuts(
    values: np.ndarray,
    classes: np.ndarray,
    num_classes: int,
    *,
    q_high: float,
    rule: str,
    min_class_points: int,
) -> list[float]:
    """Each class's upper cut under ``rule`` (``+inf`` when ``q_high`` is 0: no cut).

    ``values: (N,)`` finite held-out scores, ``classes: (N,)`` their labels in ``[0, num_classes)``.
    """
    if q_high == 0:
        return [math.inf] * num_classes
    members = [values[classes == c] for c in range(num_classes)]
    if rule == "per-class":
        return [quantile(own if own.size >= min_class_points else values, 1 - q_high) for own in members]
    if rule == "pooled":
        return [quantile(values, 1 - q_high)] * num_classes
    if rule != "coverage":
        raise ValueError(f"rule: expected one of {RULES}, got {rule!r}")
    counts = np.array([own.size for own in members])
    floors = coverage_floors(counts, q_high)
    # A floor is about the class itself: taken from its own scores, however few (pooled scores
    # would put it anywhere in the class); a class with none keeps everything.
    floor_cuts = np.array([math.inf if f >= 1 else quantile(own, f) for f, own in zip(floors, members)])
    cut = _lowered_cut(members, floor_cuts, 1 - q_high)
    return [float(max(cut, f)) for f in floor_cuts]


def _lowered_cut(members: list[np.ndarray], floor_cuts: np.ndarray, keep_share: float) -> float:
    """The one cut ``h`` at which ``max(h, floor_cut_c)`` keeps at most ``keep_share`` of all
    samples, as high as it can be: the highest calibration score that does so (``-inf`` when the
    floors alone keep more)."""
    ordered = [np.sort(own) for own in members]
    floor_kept = [int(np.searchsorted(own, cut, side="right")) for own, cut in zip(ordered, floor_cuts)]
    target = keep_share * sum(own.size for own in ordered)

    def kept(h: float) -> int:
        return sum(
            max(int(np.searchsorted(own, h, side="right")), floor) for own, floor in zip(ordered, floor_kept)
        )

    values = np.sort(np.concatenate(ordered))
    if kept(float(values[0])) > target:
        return -math.inf
    # kept(h) only grows with h: bisect for the last calibration score within the target.
    low, high = 0, values.size - 1
    while low < high:
        middle = (low + high + 1) // 2
        if kept(float(values[middle])) <= target:
            low = middle
        else:
            high = middle - 1
    return float(values[low])
