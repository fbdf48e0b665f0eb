"""DripFilter: decisions follow the bands; bad input raises and changes no counter, no row."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from conftest import calibrated_digits, mlp_head_model
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drip.errors import DripInputError, DripModelMismatchError
from drip.filter import DripFilter
from drip.models import digits_cnn
from drip.score import DripScorer
from drip.store import SampleStore
from drip.thresholds import Thresholds, model_fingerprint


@pytest.fixture
def setup(tmp_path):
    _, scorer, thresholds = calibrated_digits(held_out=200, q_high=0.3, q_low=0.1, min_class_points=5)
    store = SampleStore(tmp_path / "kept.sqlite")
    yield scorer, thresholds, store
    store.close()


def state(drip_filter: DripFilter) -> tuple:
    counters = dataclasses.astuple(drip_filter.counters)
    rows = [(s.id, s.label, s.score, s.x.tolist()) for s in drip_filter.store]
    return counters, rows


def test_decisions_follow_the_bands_and_kept_samples_are_stored(setup):
    scorer, thresholds, store = setup
    drip_filter = DripFilter(scorer, thresholds, store)
    x, y = torch.rand(50, 1, 8, 8), torch.arange(50) % 10
    decisions = drip_filter.offer_batch(x, y)
    scores = scorer(x, y)
    for d, s, label in zip(decisions, scores.tolist(), y.tolist()):
        inside = thresholds.low[label] <= s <= thresholds.high[label]
        assert d.kept == inside and d.score == pytest.approx(s) and d.label == label
        expected = "kept" if inside else ("above_high" if s > thresholds.high[label] else "below_low")
        assert d.reason == expected
    kept = [d for d in decisions if d.kept]
    assert len(store) == len(kept) == sum(drip_filter.counters.kept)
    assert sum(drip_filter.counters.seen) == 50
    stored = {s.id: s for s in store}
    for d, xi in zip(decisions, x):
        if d.kept:
            assert torch.equal(stored[d.sample_id].x, xi)


def test_offer_one_equals_offer_batch(setup):
    scorer, thresholds, _ = setup
    x, y = torch.rand(12, 1, 8, 8), torch.arange(12) % 10
    batch = DripFilter(scorer, thresholds).offer_batch(x, y)
    one_by_one = DripFilter(scorer, thresholds)
    single = [one_by_one.offer(x[i], int(y[i])) for i in range(12)]
    assert [d.kept for d in single] == [d.kept for d in batch]
    assert [d.score for d in single] == pytest.approx([d.score for d in batch], abs=1e-6)


def test_full_store_is_reported_not_counted_as_kept(tmp_path, setup):
    scorer, thresholds, _ = setup
    wide = dataclasses.replace(thresholds, low=(-math.inf,) * 10, high=(math.inf,) * 10)
    with SampleStore(tmp_path / "small.sqlite", capacity_count=3) as store:
        drip_filter = DripFilter(scorer, wide, store)
        decisions = drip_filter.offer_batch(torch.rand(5, 1, 8, 8), [0, 1, 2, 3, 4])
    assert [d.reason for d in decisions] == ["kept"] * 3 + ["store_full"] * 2
    assert sum(drip_filter.counters.kept) == 3 and sum(drip_filter.counters.rejected) == 2


@pytest.mark.parametrize(
    ("x", "y", "match"),
    [
        (torch.rand(3, 1, 8, 7), [0, 1, 2], "shape"),
        (torch.rand(3, 8, 8), [0, 1, 2], "shape"),
        (torch.randint(0, 9, (3, 1, 8, 8)), [0, 1, 2], "floating-point"),
        (torch.rand(3, 1, 8, 8).half().bool(), [0, 1, 2], "floating-point"),
        (torch.tensor([[[[float("nan")] * 8] * 8]] * 3), [0, 1, 2], "NaN"),
        (
            torch.rand(3, 1, 8, 8).index_fill_(0, torch.tensor([1]), float("-inf")),
            [0, 1, 2],
            r"samples \[1\]",
        ),
        (torch.rand(3, 1, 8, 8), [0, 1, 10], "out of range"),
        (torch.rand(3, 1, 8, 8), [0, -1, 2], "out of range"),
        (torch.rand(3, 1, 8, 8), [0, 1], "2 labels for 3 samples"),
        (torch.rand(3, 1, 8, 8), [0.0, 1.0, 2.0], "integer"),
        (torch.rand(3, 1, 8, 8) * 1e38 * 10, [0, 1, 2], "NaN or infinite"),
        (torch.rand(3, 1, 8, 8).double() * 1e300, [0, 1, 2], "NaN or infinite"),
    ],
)
def test_bad_batches_raise_and_change_nothing(setup, x, y, match):
    scorer, thresholds, store = setup
    drip_filter = DripFilter(scorer, thresholds, store)
    drip_filter.offer_batch(torch.rand(10, 1, 8, 8), torch.arange(10))
    before = state(drip_filter)
    with pytest.raises(DripInputError, match=match):
        drip_filter.offer_batch(x, y)
    assert state(drip_filter) == before


@pytest.mark.parametrize(
    ("x", "y", "match"),
    [
        (torch.rand(1, 8, 8), [0, 1], "one label"),
        (torch.rand(2, 1, 8, 8), 0, r"expected shape \(B, 1, 8, 8\)"),
        (torch.tensor(1.0), 0, "scalar"),
        (torch.rand(1, 8, 8), 11, "out of range"),
    ],
)
def test_bad_single_offers_raise_and_change_nothing(setup, x, y, match):
    scorer, thresholds, store = setup
    drip_filter = DripFilter(scorer, thresholds, store)
    before = state(drip_filter)
    with pytest.raises(DripInputError, match=match):
        drip_filter.offer(x, y)
    assert state(drip_filter) == before


# Ids the store refuses: not a string, or a string UTF-8 cannot encode (a lone surrogate).
bad_sources = st.one_of(
    st.binary(max_size=8),
    st.integers(),
    st.floats(allow_nan=False),
    st.lists(st.text(max_size=3), max_size=2),
    st.just("\udc80"),
    st.text(max_size=3).map(lambda t: t + "\ud800"),
)


def bands(thresholds: Thresholds, keep: bool) -> Thresholds:
    """``thresholds`` with bands that keep every sample, or none (a band above every score)."""
    low, high = (-math.inf, math.inf) if keep else (1e30, 1e30)
    return dataclasses.replace(thresholds, low=(low,) * 10, high=(high,) * 10)


# A bad id was refused only when its sample was kept (by the store), and went through when it
# was dropped: it must be refused before any decision, whichever the band.
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(bad=bad_sources, index=st.integers(0, 2), keep=st.booleans())
def test_a_bad_source_is_refused_before_deciding_and_changes_nothing(tmp_path_factory, bad, index, keep):
    _, scorer, thresholds = calibrated_digits(held_out=200, q_high=0.3, q_low=0.1, min_class_points=5)
    with SampleStore(tmp_path_factory.mktemp("src") / "kept.sqlite", durable=False) as store:
        drip_filter = DripFilter(scorer, bands(thresholds, keep), store)
        drip_filter.offer_batch(torch.rand(2, 1, 8, 8), [1, 2], sources=["a", "b"])
        before = state(drip_filter)
        sources = ["c", None, "d"]
        sources[index] = bad
        with pytest.raises(DripInputError, match=rf"^sources\[{index}\]: expected .*, got ") as raised:
            drip_filter.offer_batch(torch.rand(3, 1, 8, 8), [3, 4, 5], sources=sources)
        assert repr(bad) in str(raised.value)
        assert state(drip_filter) == before
        with pytest.raises(DripInputError, match=r"^source: expected .*, got ") as raised:
            drip_filter.offer(torch.rand(1, 8, 8), 3, source=bad)
        assert repr(bad) in str(raised.value)
        assert state(drip_filter) == before


@pytest.mark.parametrize("keep", [False, True])
@pytest.mark.parametrize("bad", [b"id", 7])
def test_bytes_or_int_source_is_refused_whether_kept_or_dropped(setup, keep, bad):
    scorer, thresholds, store = setup
    drip_filter = DripFilter(scorer, bands(thresholds, keep), store)
    before = state(drip_filter)
    with pytest.raises(DripInputError, match=rf"source: expected a string or None, got {type(bad).__name__}"):
        drip_filter.offer(torch.rand(1, 8, 8), 3, source=bad)
    with pytest.raises(DripInputError, match=r"sources\[1\]: expected a string or None"):
        drip_filter.offer_batch(torch.rand(2, 1, 8, 8), [3, 4], sources=["a", bad])
    with pytest.raises(DripInputError, match=r"sources\[0\]: expected a string or None"):
        drip_filter.decide_scored(torch.rand(1, 1, 8, 8), [0.5], [3], sources=[bad])
    assert state(drip_filter) == before


def test_thresholds_of_another_model_or_setup_are_refused(setup):
    scorer, thresholds, store = setup
    torch.manual_seed(1)
    other = DripScorer(digits_cnn().eval())
    with pytest.raises(DripModelMismatchError, match="calibrated on model"):
        DripFilter(other, thresholds, store)
    DripFilter(other, thresholds, store, allow_model_mismatch=True)
    with pytest.raises(DripModelMismatchError, match="statistic"):
        DripFilter(DripScorer(scorer.model, statistic="max"), thresholds, store)
    with pytest.raises(DripModelMismatchError, match="target 'margin', the scorer uses 'label'"):
        DripFilter(DripScorer(scorer.model, target="label"), thresholds, store)
    with pytest.raises(DripModelMismatchError, match="cam 'xgradcam', the scorer uses 'gradcam'"):
        DripFilter(DripScorer(scorer.model, cam="gradcam"), thresholds, store)


def test_empty_batch_decides_nothing(setup):
    scorer, thresholds, store = setup
    drip_filter = DripFilter(scorer, thresholds, store)
    assert drip_filter.offer_batch(torch.rand(0, 1, 8, 8), []) == []
    assert sum(drip_filter.counters.seen) == 0


def test_labels_beyond_the_bands_are_refused_when_the_model_names_no_class_count(tmp_path):
    # A Sequential with an MLP head declares no class count; the bands' count bounds the labels.
    torch.manual_seed(0)
    model = mlp_head_model()
    scorer = DripScorer(model, "4")
    assert scorer.num_classes is None
    unbounded = (-math.inf,) * 3, (math.inf,) * 3
    thresholds = Thresholds(*unbounded, model_fingerprint=model_fingerprint(model))
    with SampleStore(tmp_path / "kept.sqlite") as store:
        drip_filter = DripFilter(scorer, thresholds, store)
        with pytest.raises(DripInputError, match=r"label 3 is out of range, expected \[0, 3\)"):
            drip_filter.offer_batch(torch.rand(2, 1, 8, 8), [0, 3])
        assert sum(drip_filter.counters.seen) == 0 and len(store) == 0
        assert [d.kept for d in drip_filter.offer_batch(torch.rand(2, 1, 8, 8), [0, 2])] == [True, True]
