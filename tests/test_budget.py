"""Adaptive thresholds under a byte budget: the controller's rule by hand, its behaviour on hand-made
score streams (stationary, drifting, badly calibrated), its state, and the store's budget held for
any stream."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from drip.budget import BudgetedFilter, BudgetedThresholds, BudgetState, stream_with_budget, water_fill
from drip.errors import DripInputError, DripModelMismatchError, DripStoreError
from drip.filter import DripFilter
from drip.score import DripScorer
from drip.store import SampleStore
from drip.thresholds import Thresholds, model_fingerprint

CLASSES = 4
SAMPLE_BYTES = 4  # one float32


def passthrough_scorer(classes: int = CLASSES) -> DripScorer:
    """A scorer whose DRIP score is the input itself: x (1, 1) >= 0 through ReLU, GAP and a linear
    head of ones, so the label's Grad-CAM map is x (closed form; the label target, as the margin of
    equal logits is 0). Hand-made scores, real filter."""
    model = nn.Sequential(
        nn.Identity(), nn.ReLU(), nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(1, classes)
    )
    with torch.no_grad():
        model[4].weight.fill_(1.0)
        model[4].bias.zero_()
    return DripScorer(model.eval(), "1", target="label", cam="gradcam", input_shape=(1, 1))


def band(q_high: float = 0.4, q_low: float = 0.0, classes: int = CLASSES) -> Thresholds:
    """Bands calibrated on uniform [0, 1) scores, all classes alike (for ``passthrough_scorer``)."""
    generator = torch.Generator().manual_seed(99)
    return Thresholds.from_scores(
        torch.rand(100 * classes, generator=generator),
        torch.arange(100 * classes) % classes,
        classes,
        q_high=q_high,
        q_low=q_low,
        target="label",
        cam="gradcam",
        rule="per-class",
    )


def uniform_stream(
    n: int, labels: torch.Tensor | None = None, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` scores uniform in [0, 1) as inputs (n, 1, 1), labels uniform over the classes."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 1, generator=generator)
    y = torch.randint(0, CLASSES, (n,), generator=generator) if labels is None else labels
    return x, y


def fixed_run(path, thresholds, x, y, capacity_bytes, when_full="reject") -> torch.Tensor:
    """The calibrated (fixed) bands into a store of the same budget; which samples it holds."""
    with SampleStore(path, capacity_bytes=capacity_bytes, when_full=when_full, durable=False) as store:
        drip = DripFilter(passthrough_scorer(), thresholds, store)
        for start in range(0, len(x), 64):
            index = range(start, min(start + 64, len(x)))
            drip.offer_batch(
                x[index.start : index.stop], y[index.start : index.stop], sources=[f"s:{i}" for i in index]
            )
        held = torch.zeros(len(x), dtype=torch.bool)
        held[[int(s.source.split(":")[1]) for s in store]] = True
    return held


def budget_run(path, thresholds, x, y, capacity_bytes, **options):
    with SampleStore(path, capacity_bytes=capacity_bytes, when_full="evict", durable=False) as store:
        run = stream_with_budget(passthrough_scorer(), thresholds, x, y, store, **options)
        return run, store.bytes_used, store.class_counts()


# -- the rule, by hand ---------------------------------------------------------------------


def test_water_fill_shares_equally_and_gives_what_a_class_cannot_use_to_the_others():
    assert water_fill(10, [5, 5]) == [5, 5]
    assert water_fill(10, [1, 8, 8]) == [1, 4.5, 4.5]
    assert water_fill(10, [1, 2, 3]) == [1, 2, 3]  # not enough supply: every class gets all of its
    assert water_fill(0, [3, 3]) == [0, 0]


def test_water_fill_in_proportion_to_weights():
    assert water_fill(12, [12, 12], [1, 3]) == [3, 9]
    assert water_fill(12, [1, 12, 12], [4, 1, 1]) == [1, 5.5, 5.5]  # class 0 capped, the rest shared
    assert water_fill(12, [5, 12], [0, 1]) == [0, 12]  # a class of weight 0 gets nothing
    assert water_fill(12, [5, 5], [1, 1]) == water_fill(12, [5, 5])


@given(
    capacity=st.floats(0, 1e6),
    pairs=st.lists(
        st.tuples(st.floats(0, 1e6), st.one_of(st.just(0.0), st.floats(1e-6, 1e3))), min_size=1, max_size=12
    ),
)
def test_weighted_water_fill_never_exceeds_supply_and_is_proportional_where_it_binds(capacity, pairs):
    supply, weights = [p[0] for p in pairs], [p[1] for p in pairs]
    shares = water_fill(capacity, supply, weights)
    usable = sum(c for c, w in pairs if w > 0)
    assert sum(shares) == pytest.approx(min(capacity, usable), rel=1e-9, abs=1e-6)
    assert all(0 <= s <= c * (1 + 1e-12) for s, c in zip(shares, supply))
    ratios = [s / w for s, c, w in zip(shares, supply, weights) if w > 1e-9 and s < c * (1 - 1e-9)]
    if ratios:  # the classes short of their supply all got the same share per unit of weight
        assert max(ratios) - min(ratios) <= 1e-6 * max(1.0, max(ratios))


@given(capacity=st.floats(0, 1e6), supply=st.lists(st.floats(0, 1e6), min_size=1, max_size=12))
def test_water_fill_never_exceeds_supply_or_capacity_and_is_equal_where_it_binds(capacity, supply):
    shares = water_fill(capacity, supply)
    assert sum(shares) == pytest.approx(min(capacity, sum(supply)), rel=1e-9, abs=1e-6)
    assert all(0 <= s <= c * (1 + 1e-12) for s, c in zip(shares, supply))
    unsaturated = [s for s, c in zip(shares, supply) if s < c * (1 - 1e-9)]
    if unsaturated:  # the classes that got less than they could use all got the top share
        assert max(unsaturated) - min(unsaturated) <= 1e-6 * max(1.0, max(unsaturated))
        assert max(shares) <= max(unsaturated) * (1 + 1e-9) + 1e-9


def test_bands_follow_the_remaining_share_and_the_recent_scores_by_hand():
    thresholds = dataclasses.replace(band(classes=2), low=(-math.inf, 20.5), high=(math.inf, math.inf))
    budget = BudgetedThresholds(thresholds, capacity_bytes=400, expected_length=1000)
    scores = np.arange(1, 101, dtype=np.float32)  # both classes saw 1, 2, ..., 100
    budget.state = BudgetState(200, 800, (100, 100), (0.5, 0.5), (scores, scores))
    bands = budget.bands({0: 40}, {0: 9.0})
    # 800 samples to come, half of each class: 1600 bytes each, of which class 1 can keep the 80%
    # above its lower cut 20.5. Shares of 400: 200 each. Class 0 holds 40 bytes: it keeps 160 of
    # 1600 (rate 0.1), its cut the 0.1 quantile of 1..100, 1 + 0.1 * 99 = 10.9. Class 1 keeps 200
    # of 1600 (0.125) above the 20% below its lower cut: up to the 0.325 quantile, 1 + 0.325 * 99.
    assert bands.shares == pytest.approx((200, 200))
    assert bands.rates == pytest.approx((0.1, 0.125))
    assert bands.high == pytest.approx((10.9, 1 + 0.325 * 99))
    assert bands.low == (-math.inf, 20.5)
    assert bands.positions([10.0, 11.0, 20.0, 25.0, 40.0], [0, 0, 1, 1, 1]) == [0, 1, -1, 0, 1]


def test_a_class_at_its_share_keeps_only_what_replaces_and_a_short_one_keeps_everything():
    budget = BudgetedThresholds(band(classes=2), capacity_bytes=400, expected_length=1000)
    scores = np.arange(1, 101, dtype=np.float32)
    budget.state = BudgetState(990, 3960, (495, 495), (0.5, 0.5), (scores, scores))
    # 10 samples to come (20 bytes per class): class 1 can reach 60 bytes, class 0 gets the rest.
    bands = budget.bands({0: 340, 1: 40}, {0: 10.0, 1: 5.0})
    assert bands.shares == pytest.approx((340, 60)) and bands.rates == (0.0, 1.0)
    assert bands.high == (-math.inf, math.inf)
    # Class 0 holds a sample (90) above the cut of its whole-stream rate, 340 of 495 * 4 + 20
    # bytes (0.17: 1 + 0.17 * 99 = 17.83): it keeps what scores below 90, and the store evicts
    # its highest score for each; a top of 17 is below that cut, so class 0 keeps nothing.
    bands = budget.bands({0: 340, 1: 40}, {0: 90.0, 1: 5.0})
    assert bands.high[0] == 90.0 and bands.rates[0] == pytest.approx(0.9)
    assert budget.bands({0: 340, 1: 40}, {0: 17.0, 1: 5.0}).high[0] == -math.inf


def test_few_recent_scores_use_the_pooled_ones_then_the_calibrated_band():
    thresholds = band(classes=2)
    budget = BudgetedThresholds(thresholds, capacity_bytes=960, expected_length=1000, min_class_points=30)
    two = np.array([0.1, 0.2], dtype=np.float32)
    budget.state = BudgetState(2, 8, (2, 0), (0.5, 0.5), (two, np.empty(0, dtype=np.float32)))
    first = budget.bands({}, {})
    assert first.high == thresholds.high and all(math.isnan(r) for r in first.rates)
    pooled = np.arange(40, dtype=np.float32)
    budget.state = BudgetState(40, 160, (40, 0), (0.5, 0.5), (pooled, np.empty(0, dtype=np.float32)))
    bands = budget.bands({}, {})
    assert bands.rates == pytest.approx((0.25, 0.25))  # 480 of 960 / 2 * 4 bytes each
    assert bands.high == pytest.approx((0.25 * 39, 0.25 * 39))


# -- behaviour on hand-made streams ----------------------------------------------------------


def test_a_stationary_stream_ends_at_the_budget_balanced_with_the_low_scores(tmp_path):
    x, y = uniform_stream(4000)
    capacity = 1200 * SAMPLE_BYTES  # 30% of the stream
    run, used, counts = budget_run(tmp_path / "a.sqlite", band(), x, y, capacity)
    assert capacity - 8 * SAMPLE_BYTES <= used <= capacity
    # Within 2% of the equal share (300): a batch's bands are fixed, so the last batches overshoot.
    assert max(counts.values()) - min(counts.values()) <= 6
    # Keeping 30% from the bottom of uniform scores: a mean near 0.15, not 0.5 (random) or 0.3
    # (the calibrated band, which keeps everything below 0.6).
    assert float(x.flatten()[run.kept].mean()) == pytest.approx(0.15, abs=0.03)
    # Spread over the stream, not the first 30% of it.
    assert 0.4 < float(run.kept[2000:].sum()) / float(run.kept.sum()) < 0.6
    assert all(b <= capacity for b in run.trace.bytes_used)
    assert run.trace.seen[:2] == [0, 64] and len(run.trace.high) == math.ceil(4000 / 64)


def test_when_classes_arrive_late_the_store_still_ends_balanced(tmp_path):
    # Classes 2 and 3 appear only in the second half.
    generator = torch.Generator().manual_seed(1)
    y = torch.cat(
        [torch.randint(0, 2, (2000,), generator=generator), torch.randint(0, 4, (2000,), generator=generator)]
    )
    x, _ = uniform_stream(4000, y)
    capacity = 1200 * SAMPLE_BYTES
    _, used, counts = budget_run(tmp_path / "a.sqlite", band(), x, y, capacity)
    assert used == capacity and max(counts.values()) - min(counts.values()) <= 3
    # The calibrated bands fill the store from the first half: classes 2 and 3 get nothing.
    fixed = fixed_run(tmp_path / "f.sqlite", band(), x, y, capacity)
    assert int(fixed.sum()) == 1200 and set(y[fixed].tolist()) == {0, 1}


def test_a_badly_calibrated_band_does_not_lock_the_store(tmp_path):
    # Calibrated to keep everything (q_high 0): fixed bands fill a 20% store with the stream's
    # first 20% and refuse the rest; the budget spreads it over the stream.
    x, y = uniform_stream(3000, seed=2)
    keep_all = band(q_high=0.0)
    capacity = 600 * SAMPLE_BYTES
    fixed = fixed_run(tmp_path / "f.sqlite", keep_all, x, y, capacity)
    assert fixed.nonzero().max() < 600
    run, used, _ = budget_run(tmp_path / "a.sqlite", keep_all, x, y, capacity)
    assert used >= capacity - 8 * SAMPLE_BYTES and int(run.kept[1500:].sum()) > 250


def test_warm_up_overshoot_is_evicted_by_score(tmp_path):
    # A tiny budget (2%) and small batches: the calibrated band decides the first batches (fewer
    # than 30 scores yet) and admits far more than 2% of them; by the end they have been replaced.
    x, y = uniform_stream(3000, seed=3)
    capacity = 60 * SAMPLE_BYTES
    run, used, counts = budget_run(tmp_path / "a.sqlite", band(), x, y, capacity, batch_size=8)
    assert run.trace.high[0] == band().high and run.trace.bytes_used[2] > 0.2 * capacity
    assert used == capacity and max(counts.values()) - min(counts.values()) <= 1
    assert float(x.flatten()[run.kept].max()) < 0.15


def test_unknown_length_assumes_as_long_again_and_stays_within_budget(tmp_path):
    x, y = uniform_stream(3000, seed=4)
    capacity = 900 * SAMPLE_BYTES
    with SampleStore(
        tmp_path / "a.sqlite", capacity_bytes=capacity, when_full="evict", durable=False
    ) as store:
        drip = BudgetedFilter(passthrough_scorer(), band(), store, expected_length=None)
        for start in range(0, 3000, 64):
            drip.offer_batch(x[start : start + 64], y[start : start + 64])
            assert store.bytes_used <= capacity
        # Half of what is left at every doubling of the stream: well filled, not past it.
        assert 0.8 * capacity <= store.bytes_used <= capacity


# -- state and bad input ---------------------------------------------------------------------


def test_state_round_trips_exactly_and_is_refused_for_other_thresholds(tmp_path):
    x, y = uniform_stream(300, seed=5)
    scorer = passthrough_scorer()
    thresholds = dataclasses.replace(band(), model_fingerprint=model_fingerprint(scorer.model))
    with SampleStore(tmp_path / "a.sqlite", capacity_bytes=400, when_full="evict") as store:
        drip = BudgetedFilter(scorer, thresholds, store, 300)
        drip.offer_batch(x[:200], y[:200])
        saved = store.checkpoint("budget")
        again = BudgetedFilter(scorer, thresholds, store, 300)
        state, restored = drip.budget.state, again.budget.state
        assert dataclasses.astuple(state)[:4] == dataclasses.astuple(restored)[:4]
        assert all(np.array_equal(a, b) for a, b in zip(state.windows, restored.windows))
        assert again.budget.to_json() == saved
        assert again.budget.bands({}, {}) == drip.budget.bands({}, {})
        other = dataclasses.replace(thresholds, model_fingerprint="f" * 64)
        with pytest.raises(DripModelMismatchError, match="budget state"):
            BudgetedFilter(scorer, other, store, 300, allow_model_mismatch=True)
        with pytest.raises(DripModelMismatchError, match="has 4 classes, the thresholds 3"):
            BudgetedFilter(passthrough_scorer(3), band(classes=3), store, 300)
        store.add_batch([], [], checkpoint=("budget", saved[:40]))
        with pytest.raises(DripStoreError, match="budget state is damaged"):
            BudgetedFilter(passthrough_scorer(), band(), store, 300)


def test_bad_input_changes_neither_the_state_nor_the_store(tmp_path):
    x, y = uniform_stream(100, seed=6)
    with SampleStore(tmp_path / "a.sqlite", capacity_bytes=200, when_full="evict") as store:
        drip = BudgetedFilter(passthrough_scorer(), band(), store, 100)
        drip.offer_batch(x[:50], y[:50])
        before = (drip.budget.to_json(), [s.id for s in store], store.checkpoint("budget"), drip.bands)
        bad = x[50:60].clone()
        bad[3] = math.nan
        for xs, ys, match in (
            (bad, y[50:60], "NaN"),
            (x[50:60], y[50:59], "labels"),
            (x[50:60], y[50:60] + 9, "label"),
        ):
            with pytest.raises(DripInputError, match=match):
                drip.offer_batch(xs, ys)
        assert (
            drip.budget.to_json(),
            [s.id for s in store],
            store.checkpoint("budget"),
            drip.bands,
        ) == before


def test_a_budget_needs_a_store_with_a_byte_capacity(tmp_path):
    with (
        SampleStore(tmp_path / "a.sqlite", capacity_count=10) as store,
        pytest.raises(DripInputError, match="capacity_bytes"),
    ):
        BudgetedFilter(passthrough_scorer(), band(), store)
    with pytest.raises(DripInputError, match="expected_length"):
        BudgetedThresholds(band(), 100, expected_length=-1)
    with pytest.raises(DripInputError, match="window"):
        BudgetedThresholds(band(), 100, window=0)


# -- for any stream, the store holds its budget ----------------------------------------------


@settings(max_examples=40, deadline=None)
@given(
    labels=st.lists(st.integers(0, CLASSES - 1), min_size=1, max_size=300),
    capacity=st.integers(0, 400),
    expected=st.none() | st.integers(0, 600),
    batch=st.integers(1, 70),
    when_full=st.sampled_from(["evict", "reject"]),
    seed=st.integers(0, 2**16),
    data=st.data(),
)
def test_for_any_stream_the_store_never_exceeds_its_budget(
    tmp_path_factory, labels, capacity, expected, batch, when_full, seed, data
):
    generator = torch.Generator().manual_seed(seed)
    # Scores with ties and a skew that changes over the stream.
    x = (torch.randint(0, 5, (len(labels), 1, 1), generator=generator).float() / 4) * torch.linspace(
        0.2, 1, len(labels)
    ).reshape(-1, 1, 1)
    y = torch.tensor(labels)
    thresholds = band(
        q_high=data.draw(st.sampled_from([0.0, 0.4, 0.9])), q_low=data.draw(st.sampled_from([0.0, 0.05]))
    )
    path = tmp_path_factory.mktemp("budget") / "s.sqlite"
    with SampleStore(path, capacity_bytes=capacity, when_full=when_full, durable=False) as store:
        drip = BudgetedFilter(
            passthrough_scorer(), thresholds, store, expected, window=data.draw(st.integers(1, 50))
        )
        for start in range(0, len(labels), batch):
            decisions = drip.offer_batch(x[start : start + batch], y[start : start + batch])
            assert store.bytes_used <= capacity
            held = {s.id for s in store}
            assert all(d.sample_id in held for d in decisions if d.kept)
        assert drip.budget.state.seen == len(labels) == sum(drip.counters.seen)


@pytest.mark.parametrize("rule", ["per-class", "pooled", "coverage"])
def test_the_budget_shares_the_store_as_the_rule_shares_the_stream(tmp_path, rule):
    # Class 0 easy (scores in [0.5, 1)), class 1 hard ([0, 0.5)); the store holds 30% of 4000.
    generator = torch.Generator().manual_seed(5)
    labels = torch.arange(4000) % 2
    scores = (torch.rand(4000, generator=generator) + 1 - labels) / 2
    calibration = (torch.rand(400, generator=generator) + 1 - torch.arange(400) % 2) / 2
    thresholds = Thresholds.from_scores(
        calibration, torch.arange(400) % 2, 2, q_high=0.5, target="label", cam="gradcam", rule=rule
    )
    capacity = 1200 * SAMPLE_BYTES
    with SampleStore(
        tmp_path / "s.sqlite", capacity_bytes=capacity, when_full="evict", durable=False
    ) as store:
        stream_with_budget(passthrough_scorer(2), thresholds, scores.reshape(-1, 1, 1), labels, store)
        used, counts = store.bytes_used, store.class_counts()
    assert used <= capacity
    easy, hard = counts.get(0, 0), counts.get(1, 0)
    if rule == "per-class":  # a class-balanced store
        assert abs(easy - hard) <= 0.05 * (easy + hard)
    elif rule == "pooled":  # the easy class keeps nothing at calibration: the hard one gets the store
        assert easy <= 0.02 * (easy + hard)
    else:  # the floor: half an equal share of the calibrated keep, 25% of the easy class's samples
        assert thresholds.keep_rates()[0] == pytest.approx(0.25, abs=0.01)
        assert 0.15 * (easy + hard) <= easy <= 0.35 * (easy + hard)
