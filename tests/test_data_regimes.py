"""Harder regimes: classes blended in pairs of graded strength, and long-tailed class sizes."""

from __future__ import annotations

from itertools import pairwise

import pytest
import torch

from drip.cli.common import DIFFICULTY_NAMES
from drip.data import load_digits
from drip.data.regimes import DIFFICULTIES, graded_difficulty, long_tailed, partner_classes, with_difficulty
from drip.errors import DripInputError


def test_classes_pair_up_with_graded_blend_weights():
    partner, weight = partner_classes(10)
    assert partner == [5, 6, 7, 8, 9, 0, 1, 2, 3, 4]
    assert weight == [0.45 * k / 4 for k in range(5)] * 2
    assert partner_classes(3) == ([1, 0, 2], [0.0, 0.0, 0.0])  # one pair of weight 0, one unpaired


def test_graded_difficulty_blends_each_image_with_one_of_its_partner_class():
    data = load_digits()
    graded = graded_difficulty(data)
    assert torch.equal(graded.y, data.y)
    change = [float((graded.x - data.x)[data.y == c].abs().mean()) for c in range(5)]
    assert change[0] == 0.0 and all(a < b for a, b in pairwise(change))
    # An image of class 4 is 0.55 of itself and 0.45 of some image of class 9.
    i = int((data.y == 4).nonzero()[0])
    partner = (graded.x[i] - 0.55 * data.x[i]) / 0.45
    nines = data.x[data.y == 9]
    assert float((nines - partner).abs().flatten(1).amax(1).min()) < 1e-4
    assert torch.equal(graded_difficulty(data).x, graded.x)  # a data set: the same every time
    assert not torch.equal(graded_difficulty(data, seed=1).x, graded.x)


def test_long_tailed_keeps_ratio_to_the_power_of_the_class_level():
    data = load_digits()
    tail = long_tailed(data, 10.0, torch.Generator().manual_seed(0))
    before, after = torch.bincount(data.y), torch.bincount(tail.y)
    assert int(after[0]) == int(before[0])
    assert abs(int(after[9]) - round(int(before[9]) / 10)) <= 1
    assert all(a >= b for a, b in pairwise((after / before).tolist()))


def test_with_difficulty_blends_pool_and_test_with_their_own_draws_or_leaves_them():
    data = load_digits()
    pool, test = data.subset(range(900)), data.subset(range(900, 1797))
    assert with_difficulty("none", pool, test) == (pool, test)
    graded_pool, graded_test = with_difficulty("graded", pool, test)
    assert torch.equal(graded_pool.x, graded_difficulty(pool, seed=0).x)
    assert torch.equal(graded_test.x, graded_difficulty(test, seed=1).x)
    assert with_difficulty("graded", pool, None)[1] is None
    with pytest.raises(DripInputError, match="difficulty"):
        with_difficulty("hard", pool, test)


def test_the_cli_offers_exactly_the_library_difficulties():
    assert DIFFICULTY_NAMES == DIFFICULTIES
