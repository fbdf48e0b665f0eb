"""The Training Phase: the split, the paired test, the search that stops, what it deploys, the cheap mode."""

from __future__ import annotations

import math

import pytest
import torch

from drip.calibrate import BandTrial, calibrate, choose_q_high, training_phase
from drip.cam import target_logit_gradient
from drip.data import load_digits, stratified_split
from drip.errors import DripInputError
from drip.models import digits_cnn
from drip.score import DripScorer, score_in_batches
from drip.thresholds import model_fingerprint
from drip.train import TrainConfig, parked_outputs


def trial(q: float, only_reference: int, only_candidate: int, validation: int = 1000) -> BandTrial:
    return BandTrial(q, 50, 100, 0.9, only_reference, only_candidate, validation)


def test_paired_shortfall_and_its_standard_error_by_hand():
    # 30 W samples only the reference gets right, 10 only the candidate: shortfall 20 / 1000.
    t = trial(0.5, 30, 10)
    assert t.shortfall == pytest.approx(0.02)
    # McNemar: sqrt(b + c - (b - c)^2 / n) / n = sqrt(40 - 0.4) / 1000
    assert t.standard_error == pytest.approx((40 - 400 / 1000) ** 0.5 / 1000)
    # 0.02 is 3.18 standard errors: significantly worse at 95% (z = 1.645) and 99.9% (3.09),
    # not at 99.99% (3.72).
    assert not t.passes(0.95) and not t.passes(0.999) and t.passes(0.9999)
    assert trial(0.5, 12, 10).passes()  # 2 more errors in 1000 is noise
    assert trial(0.5, 0, 5).passes()  # better than the reference
    assert trial(0.5, 0, 0).passes()  # the same predictions


def test_choose_takes_the_first_trial_that_passes_else_keeps_everything():
    trials = [trial(0.5, 40, 5), trial(0.4, 12, 10), trial(0.3, 0, 0)]
    assert choose_q_high(trials) == 0.4
    assert choose_q_high([trial(0.5, 40, 5)]) == 0.0  # nothing is safe: keep everything


@pytest.fixture(scope="module")
def d0():
    data = load_digits()
    index, _ = stratified_split(data.y, (0.5, 0.5), 0)
    return data.subset(index)


@pytest.fixture(scope="module")
def searched(d0):
    return training_phase(d0, digits_cnn, TrainConfig(steps=60), seed=0, progress=False)


def test_search_tries_largest_saving_first_and_stops_at_the_first_pass(searched, d0):
    phase = searched
    assert phase.sizes["d0_train"] + phase.sizes["proxy"] + phase.sizes["validation"] == len(d0)
    tried = [t.q_high for t in phase.trials]
    assert tried == [0.5, 0.4, 0.3, 0.2][: len(tried)]
    assert all(not t.passes() for t in phase.trials[:-1])  # it went on only after a failure
    assert phase.q_high == choose_q_high(phase.trials)
    assert phase.trainings == 2 + len(tried)  # probe, reference, the candidates it tried
    for t in phase.trials:
        assert t.validation == phase.sizes["validation"]
        assert t.kept == pytest.approx((1 - t.q_high) * t.proxy, abs=0.05 * t.proxy)


def test_a_candidate_of_the_default_search_trains_mostly_on_what_its_band_selected(searched):
    # As the deployed model will: the stream is several times D0, so most of its retraining set is
    # the band's selection; a trial that dilutes it in D0_train barely sees the rule (graded MNIST).
    first = searched.trials[0]
    assert first.kept / (searched.sizes["d0_train"] + first.kept) > 0.6


def test_the_search_sizes_the_upper_cut_only_and_the_lower_cut_reaches_the_thresholds(searched, d0):
    # D0 is clean: a lower cut on P would only drop its hardest clean samples.
    strict = training_phase(d0, digits_cnn, TrainConfig(steps=60), q_low=0.2, seed=0, progress=False)
    assert [t.kept for t in strict.trials] == [t.kept for t in searched.trials][: len(strict.trials)]
    assert strict.thresholds.q_low == 0.2 and all(low > -math.inf for low in strict.thresholds.low)
    assert "detectable" in strict.summary()["trials"][0]


def test_search_deploys_the_reference_calibrated_on_w(searched):
    phase = searched
    assert phase.thresholds.model_fingerprint == model_fingerprint(phase.model)
    assert phase.thresholds.q_high == phase.q_high and phase.thresholds.target == "margin"
    # W is the calibration set: the deployed model never trained on it, and its scores are the bands'.
    assert len(phase.calibration) == phase.sizes["validation"] == sum(phase.thresholds.counts)
    scores, _ = score_in_batches(phase.scorer, phase.calibration.x, phase.calibration.y)
    assert torch.allclose(scores, phase.calibration_scores)
    recorded = phase.thresholds.metadata["training_phase"]
    assert recorded["trainings"] == phase.trainings and len(recorded["trials"]) == len(phase.trials)
    # Its accuracy on W is the reference the candidates were compared with.
    correct = phase.model(phase.calibration.x).argmax(1) == phase.calibration.y
    assert float(correct.float().mean()) == pytest.approx(phase.reference_accuracy)


def test_cheap_mode_uses_given_q_high_and_no_search(d0):
    phase = training_phase(d0, digits_cnn, TrainConfig(steps=30), q_high=0.35, seed=1, progress=False)
    assert phase.q_high == 0.35 and phase.trials == [] and phase.reference_accuracy is None
    assert phase.trainings == 1
    assert phase.sizes["calibration"] == pytest.approx(0.2 * len(d0), abs=10)
    assert phase.sizes["scorer_train"] + phase.sizes["calibration"] == len(d0)


def test_the_training_phase_parks_the_classes_d0_lacks(d0):
    """A device that ships knowing its first classes: the outputs of the others were never
    trained, and unparked they were the margin's rival of most calibration samples."""
    first = d0.subset((d0.y < 4).nonzero().flatten())
    phase = training_phase(first, digits_cnn, TrainConfig(steps=30), q_high=0.35, seed=1, progress=False)
    assert parked_outputs(phase.scorer.model).nonzero().flatten().tolist() == [4, 5, 6, 7, 8, 9]
    logits = phase.calibration_logits
    rivals = target_logit_gradient("margin", logits, phase.calibration.y).argmin(1)  # the scorer's
    assert int(rivals.max()) <= 3


def test_bad_search_settings_are_refused(d0):
    with pytest.raises(DripInputError, match="confidence"):
        training_phase(d0, digits_cnn, TrainConfig(steps=1), confidence=1.2, progress=False)
    with pytest.raises(DripInputError, match="candidates"):
        training_phase(d0, digits_cnn, TrainConfig(steps=1), candidates=(), progress=False)


def test_calibrate_a_trained_model_on_held_out_data():
    torch.manual_seed(0)
    # The label target: an untrained model's margin maps are often empty (score 0), and ties
    # cannot be split by a quantile.
    scorer = DripScorer(digits_cnn().eval(), target="label")
    x, y = torch.rand(400, 1, 8, 8), torch.arange(400) % 10
    thresholds = calibrate(scorer, x, y, q_high=0.25)
    assert thresholds.layer == "relu3" and thresholds.statistic == "net"
    kept = thresholds.keep(scorer(x, y), y).float().mean()
    assert float(kept) == pytest.approx(0.75, abs=0.03)
