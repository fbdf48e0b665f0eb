"""Selection rules: where each rule puts the upper cuts, and that no class is starved under coverage."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from drip.errors import DripInputError
from drip.rules import COVERAGE_SHARE, RULES, coverage_floors
from drip.thresholds import Thresholds

# Class 0 easy (scores 10..11), class 1 hard (0..1), 100 held-out scores each.
EASY_AND_HARD = (np.concatenate([np.linspace(10, 11, 100), np.linspace(0, 1, 100)]), np.repeat([0, 1], 100))


def kept_per_class(t: Thresholds, scores: np.ndarray, labels: np.ndarray) -> list[int]:
    keep = t.keep(torch.tensor(scores), torch.tensor(labels))
    return [int(keep[torch.tensor(labels) == c].sum()) for c in range(t.num_classes)]


def test_per_class_drops_the_same_share_of_each_class():
    t = Thresholds.from_scores(*EASY_AND_HARD, 2, q_high=0.5, rule="per-class")
    assert kept_per_class(t, *EASY_AND_HARD) == [50, 50]


def test_pooled_spends_the_storage_on_the_hard_class():
    t = Thresholds.from_scores(*EASY_AND_HARD, 2, q_high=0.5, rule="pooled")
    assert t.high[0] == t.high[1] and t.rule == "pooled"
    assert kept_per_class(t, *EASY_AND_HARD) == [0, 100]


def test_coverage_keeps_the_floor_of_the_easy_class_and_the_hardest_of_the_rest():
    t = Thresholds.from_scores(*EASY_AND_HARD, 2, q_high=0.5, rule="coverage")
    # The floor: half an equal share of the 100 kept samples, 25 of the easy class's 100.
    assert COVERAGE_SHARE * 0.5 * 200 / 2 == 25
    easy, hard = kept_per_class(t, *EASY_AND_HARD)
    assert easy == 25 and hard == 75  # the lowest-scoring 75 of the hard class: the pooled cut
    assert t.high[1] == pytest.approx(np.linspace(0, 1, 100)[74])


def test_coverage_keeps_all_of_a_rare_class():
    rng = np.random.default_rng(0)
    scores = np.concatenate([rng.normal(0, 1, 500), rng.normal(5, 1, 10)])  # class 1: rare and easy
    labels = np.repeat([0, 1], [500, 10])
    assert coverage_floors(np.array([500, 10]), 0.5)[1] == 1.0
    for rule, rare_kept in (("coverage", 10), ("pooled", 0)):
        t = Thresholds.from_scores(scores, labels, 2, q_high=0.5, rule=rule)
        assert kept_per_class(t, scores, labels)[1] == rare_kept
    assert Thresholds.from_scores(scores, labels, 2, q_high=0.5, rule="coverage").high[1] == math.inf


def test_a_class_without_calibration_points_keeps_everything_under_coverage():
    t = Thresholds.from_scores(*EASY_AND_HARD, 3, q_high=0.5, rule="coverage")
    assert t.high[2] == math.inf and t.counts[2] == 0


@pytest.mark.parametrize("num_classes", [2, 3, 12])
def test_the_coverage_floor_is_an_equal_share_among_the_classes_calibration_holds(num_classes):
    # A device's calibration reserve after a drift holds a few of the classes the model knows: the
    # easy class still keeps half an equal share of the two present (25 of its 100); an equal share
    # of all 12 kept 5 of them (3 classes: 17).
    t = Thresholds.from_scores(*EASY_AND_HARD, num_classes, q_high=0.5, rule="coverage")
    assert kept_per_class(t, *EASY_AND_HARD)[:2] == [25, 75]


def test_unknown_rule_is_refused():
    with pytest.raises(DripInputError, match="rule"):
        Thresholds.from_scores(*EASY_AND_HARD, 2, q_high=0.5, rule="greedy")


@settings(max_examples=80, deadline=None)
@given(
    scores=st.lists(st.floats(-1e3, 1e3, allow_nan=False), min_size=1, max_size=300, unique=True),
    q_high=st.floats(0.05, 0.9),
    classes=st.integers(1, 5),
    skew=st.integers(1, 6),
    rule=st.sampled_from(RULES),
)
def test_every_rule_keeps_about_its_share_and_coverage_starves_no_class(scores, q_high, classes, skew, rule):
    # Class c holds about skew^-c of the samples: long tails too.
    weights = np.array([float(skew) ** -c for c in range(classes)])
    labels = np.random.default_rng(len(scores)).choice(classes, len(scores), p=weights / weights.sum())
    values = np.array(scores)
    t = Thresholds.from_scores(values, labels, classes, q_high=q_high, rule=rule, min_class_points=1)
    kept = kept_per_class(t, values, labels)
    counts = np.bincount(labels, minlength=classes)
    if rule != "coverage":
        # A quantile cut keeps its share up to one sample per cut (interpolation).
        cuts = classes if rule == "per-class" else 1
        assert abs(sum(kept) - (1 - q_high) * len(values)) <= cuts + 1
        return
    floors = coverage_floors(counts, q_high)
    for c in range(classes):
        assert kept[c] >= floors[c] * counts[c] - 1  # the floor, up to quantile interpolation
    # Above the floors the cut is as high as the target share allows, and never above it.
    assert sum(kept) <= max((1 - q_high) * len(values), sum(np.ceil(floors * counts))) + classes


def test_a_class_with_few_calibration_points_keeps_its_floor_of_them():
    # 5 points per class, too few for a per-class quantile (30): the floor still comes from the
    # class's own points, so the easy class keeps its 25% of them, not whatever a pooled cut leaves.
    scores = np.concatenate([np.linspace(10, 11, 5), np.linspace(0, 1, 5)])
    labels = np.repeat([0, 1], 5)
    t = Thresholds.from_scores(scores, labels, 2, q_high=0.5, rule="coverage", min_class_points=30)
    assert t.pooled == (True, True) and t.kept[0] >= 1
    assert t.high[0] == pytest.approx(np.quantile(np.linspace(10, 11, 5), 0.25))


def test_a_lower_cut_needs_enough_points_for_its_quantile():
    values = np.arange(300, dtype=float)
    labels = np.repeat([0, 1, 2], 100)
    with_cut = Thresholds.from_scores(values, labels, 3, q_high=0.2, q_low=0.01, min_class_points=30)
    assert all(low > -math.inf for low in with_cut.low)  # 100 points: the 1% quantile lies in the data
    few = Thresholds.from_scores(values[:150], labels[:150], 3, q_high=0.2, q_low=0.01, min_class_points=30)
    assert few.counts == (100, 50, 0)
    assert few.low[0] > -math.inf  # 100 points
    assert few.low[1] == -math.inf  # 50 own points: their 1% quantile lies below the lowest
    assert few.low[2] == -math.inf  # none: nothing says what is unusual for the class
