"""The Training Phase: the split, the scorer it deploys, the band search rule, the cheap mode."""

from __future__ import annotations

import pytest
import torch

from drip.calibrate import BandTrial, calibrate, choose_q_high, training_phase
from drip.data import load_digits, stratified_split
from drip.models import digits_cnn
from drip.score import DripScorer
from drip.thresholds import model_fingerprint
from drip.train import TrainConfig


def test_choose_largest_q_high_within_tolerance():
    trials = [
        BandTrial(0.2, 80, 100, 0.95),
        BandTrial(0.3, 70, 100, 0.946),
        BandTrial(0.4, 60, 100, 0.93),
        BandTrial(0.5, 50, 100, 0.944),
    ]
    assert choose_q_high(trials, 0.95, 0.005) == 0.3  # 0.5 is off by 0.6 pp, 0.4 by 2 pp
    assert choose_q_high(trials, 0.95, 0.01) == 0.5
    assert choose_q_high(trials, 0.99, 0.005) == 0.0  # nothing is safe: keep everything


@pytest.fixture(scope="module")
def d0():
    data = load_digits()
    index, _ = stratified_split(data.y, (0.5, 0.5), 0)
    return data.subset(index)


def test_search_mode_deploys_the_d0_train_model_with_matching_thresholds(d0):
    phase = training_phase(d0, digits_cnn, TrainConfig(steps=40), seed=0, progress=False)
    assert phase.sizes["d0_train"] + phase.sizes["proxy"] + phase.sizes["validation"] == len(d0)
    assert phase.sizes["proxy"] == pytest.approx(0.2 * len(d0), abs=10)
    assert [t.q_high for t in phase.trials] == [0.2, 0.3, 0.4, 0.5]
    assert phase.q_high == choose_q_high(phase.trials, phase.reference_accuracy, 0.005)
    assert phase.thresholds.model_fingerprint == model_fingerprint(phase.model)
    assert phase.thresholds.q_high == phase.q_high
    assert phase.cost_ratio > 4  # scorer + reference + four candidates
    assert sum(phase.thresholds.counts) == phase.sizes["proxy"]
    # More aggressive bands keep less of P.
    kept = [t.kept for t in phase.trials]
    assert kept == sorted(kept, reverse=True)


def test_cheap_mode_uses_given_q_high_and_no_search(d0):
    phase = training_phase(d0, digits_cnn, TrainConfig(steps=30), q_high=0.35, seed=1, progress=False)
    assert phase.q_high == 0.35 and phase.trials == [] and phase.reference_accuracy is None
    assert phase.sizes["validation"] == 0
    assert phase.sizes["proxy"] == pytest.approx(0.4 * len(d0), abs=10)


def test_calibrate_a_trained_model_on_held_out_data():
    torch.manual_seed(0)
    scorer = DripScorer(digits_cnn().eval())
    x, y = torch.rand(400, 1, 8, 8), torch.arange(400) % 10
    thresholds = calibrate(scorer, x, y, q_high=0.25)
    assert thresholds.layer == "relu3" and thresholds.statistic == "mean"
    kept = thresholds.keep(scorer(x, y), y).float().mean()
    assert float(kept) == pytest.approx(0.75, abs=0.03)
