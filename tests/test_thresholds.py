"""Thresholds: quantile bands, pooled fallback, JSON round trip, model fingerprint."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from drip.errors import DripInputError, DripModelMismatchError, DripThresholdsError
from drip.models import digits_cnn
from drip.thresholds import Thresholds, model_fingerprint


def test_per_class_quantiles_and_pooled_fallback():
    rng = np.random.default_rng(0)
    scores = np.concatenate([rng.uniform(0, 1, 100), rng.uniform(10, 11, 100), [50.0, 60.0]])
    labels = np.array([0] * 100 + [1] * 100 + [2, 2])
    t = Thresholds.from_scores(scores, labels, 3, q_high=0.3, min_class_points=30, rule="per-class")
    assert t.high[0] == pytest.approx(np.quantile(scores[:100], 0.7))
    assert t.high[1] == pytest.approx(np.quantile(scores[100:200], 0.7))
    assert t.high[2] == pytest.approx(np.quantile(scores, 0.7))  # 2 points: pooled
    assert t.pooled == (False, False, True)
    assert t.counts == (100, 100, 2)
    assert t.low == (-math.inf,) * 3  # q_low = 0: no lower cut
    kept = t.keep(torch.tensor(scores), torch.tensor(labels))
    assert kept[:100].float().mean() == pytest.approx(0.7, abs=0.011)
    assert kept[100:200].float().mean() == pytest.approx(0.7, abs=0.011)


@pytest.mark.parametrize("rule", ["per-class", "pooled", "coverage"])
def test_a_class_never_seen_in_calibration_has_no_lower_cut(rule):
    # After a drift a new class scores below every learnt one: a pooled lower cut dropped all of it.
    rng = np.random.default_rng(1)
    scores = rng.normal(5, 1, 400)
    labels = np.repeat([0, 1], 200)
    t = Thresholds.from_scores(scores, labels, 3, q_high=0.4, q_low=0.05, rule=rule)
    assert t.low[2] == -math.inf and t.low[0] > -math.inf and t.counts[2] == 0
    newcomers = torch.tensor(rng.normal(-20, 1, 50))
    assert t.keep(newcomers, torch.full((50,), 2)).all()


def test_lower_cut_and_positions():
    t = Thresholds(low=(1.0, -math.inf), high=(2.0, 3.0))
    position = t.position(torch.tensor([0.5, 1.0, 2.0, 2.5, -100.0, 3.5]), torch.tensor([0, 0, 0, 0, 1, 1]))
    assert position.tolist() == [-1, 0, 0, 1, 0, 1]


@settings(max_examples=60, deadline=None)
@given(
    scores=st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=1, max_size=300),
    q_high=st.floats(0, 0.95),
    q_low=st.floats(0, 0.95),
    classes=st.integers(1, 5),
    min_points=st.integers(1, 40),
)
def test_bands_are_ordered_and_keep_about_the_asked_fraction(scores, q_high, q_low, classes, min_points):
    if q_low + q_high >= 1:
        with pytest.raises(DripInputError):
            Thresholds.from_scores(scores, [0] * len(scores), classes, q_high=q_high, q_low=q_low)
        return
    labels = [i % classes for i in range(len(scores))]
    t = Thresholds.from_scores(
        scores, labels, classes, q_high=q_high, q_low=q_low, min_class_points=min_points, rule="per-class"
    )
    assert all(lo <= hi for lo, hi in zip(t.low, t.high))
    kept = t.keep(torch.tensor(scores, dtype=torch.float64), torch.tensor(labels))
    if not any(t.pooled) and len(set(scores)) == len(scores):
        # Per class, at least the middle of the band is kept (quantile interpolation can keep more).
        for c in range(classes):
            own = kept[torch.tensor(labels) == c]
            assert float(own.float().mean()) >= 1 - q_high - q_low - 2 / len(own) - 1e-9


def test_json_round_trip(tmp_path):
    model = digits_cnn()
    t = Thresholds(
        low=(-math.inf, 0.5),
        high=(1.5, math.inf),
        statistic="mean",
        layer="relu3",
        model_fingerprint=model_fingerprint(model),
        q_low=0.1,
        q_high=0.3,
        counts=(40, 41),
        pooled=(False, True),
        metadata={"trials": [{"q_high": 0.3, "val_accuracy": 0.9}]},
        rule="coverage",
        kept=(30, 12),
        input_shape=(1, 8, 8),
    )
    path = tmp_path / "t.json"
    t.save(path)
    data = json.loads(path.read_text())
    assert data["format"] == "drip-thresholds" and data["version"] == 1
    assert data["low"][0] is None and data["high"][1] is None and data["rule"] == "coverage"
    assert Thresholds.load(path) == t


def test_a_file_written_before_rules_loads_as_per_class(tmp_path):
    path = tmp_path / "old.json"
    path.write_text('{"format": "drip-thresholds", "version": 1, "low": [null], "high": [1.0]}')
    old = Thresholds.load(path)
    assert old.rule == "per-class" and old.kept == () and old.input_shape == ()
    assert old.keep_rates() is None


def test_wrong_model_is_refused_unless_overridden():
    torch.manual_seed(0)
    calibrated, other = digits_cnn(), digits_cnn()
    t = Thresholds(low=(-math.inf,) * 10, high=(1.0,) * 10, model_fingerprint=model_fingerprint(calibrated))
    t.check_model(calibrated)
    with pytest.raises(DripModelMismatchError, match="recalibrate"):
        t.check_model(other)
    t.check_model(other, allow_mismatch=True)


def test_fingerprint_tracks_weights():
    model = digits_cnn()
    before = model_fingerprint(model)
    assert model_fingerprint(model) == before
    with torch.no_grad():
        model.fc.bias[0] += 1e-6
    assert model_fingerprint(model) != before


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("{not json", "not valid JSON"),
        ('{"format": "something-else"}', "not a drip thresholds file"),
        ('{"format": "drip-thresholds", "version": 99, "low": [], "high": []}', "version 99"),
        (
            '{"format": "drip-thresholds", "version": 1, "low": [0.0], "high": [null, 1.0]}',
            "one value per class",
        ),
        (
            '{"format": "drip-thresholds", "version": 1, "low": [2.0], "high": [1.0]}',
            "invalid band",
        ),
        ('{"format": "drip-thresholds", "version": 1, "low": ["a"], "high": [1.0]}', "malformed"),
        ('{"format": "drip-thresholds", "version": 1, "high": [1.0]}', "malformed"),
        # Settings no scorer knows are refused at load, not by the filter later.
        (
            '{"format": "drip-thresholds", "version": 1, "low": [null], "high": [1.0], "target": "x"}',
            "target",
        ),
        ('{"format": "drip-thresholds", "version": 1, "low": [null], "high": [1.0], "cam": "gcam"}', "cam"),
        (
            '{"format": "drip-thresholds", "version": 1, "low": [null], "high": [1.0], "statistic": "m"}',
            "statistic",
        ),
        ('{"format": "drip-thresholds", "version": 1, "low": [null], "high": [1.0], "rule": "any"}', "rule"),
        ("[1, 2]", "not a drip thresholds file"),
    ],
)
def test_corrupt_files_are_clear_errors_and_left_untouched(tmp_path, content, match):
    path = tmp_path / "t.json"
    path.write_text(content)
    with pytest.raises(DripThresholdsError, match=match):
        Thresholds.load(path)
    assert path.read_text() == content


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(DripThresholdsError, match="cannot read"):
        Thresholds.load(tmp_path / "absent.json")
