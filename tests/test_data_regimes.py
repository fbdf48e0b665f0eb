"""Harder regimes: graded class difficulty and long-tailed class sizes, as documented."""

from __future__ import annotations

from itertools import pairwise

import torch

from drip.data import load_digits
from drip.data.regimes import graded_difficulty, long_tailed


def test_graded_difficulty_leaves_the_first_class_and_corrupts_later_classes_more():
    data = load_digits()
    graded = graded_difficulty(data)
    change = [float((graded.x - data.x)[data.y == c].abs().mean()) for c in range(10)]
    assert change[0] == 0.0 and torch.equal(graded.y, data.y)
    assert all(a < b for a, b in pairwise(change))
    assert torch.equal(graded_difficulty(data).x, graded.x)  # a data set: the same every time
    assert not torch.equal(graded_difficulty(data, seed=1).x, graded.x)


def test_the_hardest_class_is_occluded_over_half_of_each_side():
    data = load_digits()
    graded = graded_difficulty(data)
    last = (data.y == 9).nonzero().flatten()[0]
    occluded = graded.x[last, 0] == float(data.x.mean())
    assert int(occluded.sum()) == 4 * 4  # digits are 8x8: a 4x4 patch


def test_long_tailed_keeps_ratio_to_the_power_of_the_class_level():
    data = load_digits()
    tail = long_tailed(data, 10.0, torch.Generator().manual_seed(0))
    before, after = torch.bincount(data.y), torch.bincount(tail.y)
    assert int(after[0]) == int(before[0])
    assert abs(int(after[9]) - round(int(before[9]) / 10)) <= 1
    assert all(a >= b for a, b in pairwise((after / before).tolist()))
