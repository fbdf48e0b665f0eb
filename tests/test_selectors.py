"""Selectors: informativeness directions, exact counts, the reservoir's balance, the band rule."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from drip.selectors import (
    INFORMATIVENESS,
    band_keep,
    class_balanced_reservoir,
    el2n_values,
    loss_values,
    margin_values,
    random_count,
    top_count,
)


def test_informativeness_values_by_hand():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 3.0, 1.0]])
    labels = torch.tensor([0, 1, 0])
    probs = torch.softmax(logits.double(), 1)
    assert torch.allclose(loss_values(logits, labels), -torch.log(probs[torch.arange(3), labels]))
    assert margin_values(logits, labels).tolist() == [2.0, 0.0, -3.0]
    assert INFORMATIVENESS["entropy"](logits, labels)[1] == pytest.approx(math.log(3))
    onehot = torch.eye(3, dtype=torch.float64)[labels]
    assert torch.allclose(el2n_values(logits, labels), (probs - onehot).norm(dim=1))
    # Every informativeness ranks the confident, correct sample 0 below the wrong sample 2.
    for name, f in INFORMATIVENESS.items():
        values = f(logits, labels)
        if name != "entropy":
            assert values[0] < values[2], name


def test_top_count_and_random_count_are_exact():
    priority = torch.tensor([0.5, 2.0, 2.0, -1.0, 3.0])
    assert top_count(priority, 3).tolist() == [1, 2, 4]
    assert top_count(priority, 2).tolist() == [1, 4]  # ties go to the earlier sample
    drawn = random_count(100, 37, torch.Generator().manual_seed(0))
    assert len(drawn) == 37 == len(set(drawn.tolist()))


@settings(max_examples=40, deadline=None)
@given(
    labels=st.lists(st.integers(0, 4), min_size=0, max_size=300),
    count=st.integers(0, 120),
    seed=st.integers(0, 1000),
)
def test_class_balanced_reservoir_holds_exactly_count_and_balances(labels, count, seed):
    labels = torch.tensor(labels, dtype=torch.int64)
    kept = class_balanced_reservoir(labels, count, torch.Generator().manual_seed(seed))
    assert len(kept) == min(count, len(labels))
    assert len(set(kept.tolist())) == len(kept)
    if len(labels) > count > 0:
        # A class is never cut below the size of the smaller of (its own stream count, a fair share).
        stored = torch.bincount(labels[kept], minlength=5)
        seen = torch.bincount(labels, minlength=5)
        largest = int(stored.max())
        for c in range(5):
            assert stored[c] == seen[c] or stored[c] >= largest - 1


def test_band_keep_applies_the_quantile_band_per_class():
    calibration = torch.arange(100, dtype=torch.float64)
    calibration_labels = torch.zeros(100, dtype=torch.int64)
    values = torch.tensor([5.0, 50.0, 75.0, 95.0])
    keep = band_keep(
        values, torch.zeros(4, dtype=torch.int64), calibration, calibration_labels, 1, q_high=0.2, q_low=0.1
    )
    assert keep.tolist() == [False, True, True, False]
