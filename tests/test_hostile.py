"""Hostile input, driven by hypothesis: every call returns a correct result or raises a DripError
naming the argument, and a call that raises changes no counter and no stored row."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drip.errors import DripError
from drip.filter import DripFilter
from drip.models import digits_cnn
from drip.score import DripScorer
from drip.store import SampleStore
from drip.thresholds import Thresholds, model_fingerprint

DTYPES = [
    torch.float16,
    torch.bfloat16,
    torch.float32,
    torch.float64,
    torch.int8,
    torch.uint8,
    torch.int64,
    torch.bool,
    torch.complex64,
]
SPECIAL = [0.0, 1.0, -1.0, 1e30, -1e30, 3e38, 1e300, float("nan"), float("inf"), -float("inf"), 65504.0]


@st.composite
def tensors(draw, shape=None):
    """Any shape and dtype, with special values, sometimes non-contiguous or channels-last."""
    if shape is None:
        shape = draw(
            st.one_of(
                st.just((draw(st.integers(0, 5)), 1, 8, 8)),
                st.lists(st.integers(0, 9), min_size=0, max_size=4).map(tuple),
            )
        )
    dtype = draw(st.sampled_from(DTYPES))
    values = (
        torch.rand(shape, dtype=torch.float64)
        if math.prod(shape)
        else torch.empty(shape, dtype=torch.float64)
    )
    if math.prod(shape) and draw(st.booleans()):
        values.view(-1)[draw(st.integers(0, math.prod(shape) - 1))] = draw(st.sampled_from(SPECIAL))
    if dtype.is_complex:
        tensor = values.to(dtype)
    elif dtype == torch.bool:
        tensor = values > 0.5
    elif not dtype.is_floating_point:
        tensor = values.nan_to_num(0, 0, 0).clamp(0, 100).to(dtype)
    else:
        tensor = values.to(dtype)
    layout = draw(st.sampled_from(["plain", "transposed", "channels_last", "numpy", "list"]))
    if layout == "transposed" and tensor.dim() >= 2:
        tensor = tensor.transpose(-1, -2).contiguous().transpose(-1, -2)
    elif layout == "channels_last" and tensor.dim() == 4 and not dtype.is_complex:
        tensor = tensor.contiguous(memory_format=torch.channels_last)
    elif layout == "numpy" and dtype not in (torch.bfloat16,):
        return tensor.numpy()
    elif layout == "list":
        return tensor.tolist()
    return tensor


labels = st.one_of(
    st.integers(-3, 12),
    st.lists(st.integers(-2, 12), max_size=6),
    st.lists(st.floats(0, 9), max_size=4),
    st.lists(st.booleans(), max_size=4),
    st.text(max_size=3),
    st.none(),
    st.lists(st.integers(0, 9), min_size=0, max_size=6).map(lambda v: np.array(v, dtype=np.uint8)),
    st.lists(st.integers(0, 9), min_size=0, max_size=6).map(lambda v: torch.tensor(v, dtype=torch.int8)),
    st.integers(0, 9).map(torch.tensor),
)


@pytest.fixture(scope="module")
def device_path():
    torch.manual_seed(0)
    model = digits_cnn().eval()
    scorer = DripScorer(model)
    x, y = torch.rand(100, 1, 8, 8), torch.arange(100) % 10
    thresholds = Thresholds.from_scores(
        scorer(x, y),
        y,
        10,
        q_high=0.3,
        q_low=0.1,
        min_class_points=5,
        statistic="mean",
        layer="relu3",
        model_fingerprint=model_fingerprint(model),
    )
    return scorer, thresholds


def raw_bytes(tensor: torch.Tensor) -> torch.Tensor:
    if not tensor.numel():
        return torch.empty(0, dtype=torch.uint8)
    return tensor.contiguous().reshape(-1).view(torch.uint8)


def expect_result_or_drip_error(call):
    try:
        return call(), None
    except DripError as err:
        assert str(err) and ":" in str(err)  # names the argument, then the problem
        return None, err


@settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(x=tensors(), y=labels)
def test_scorer_returns_scores_or_a_drip_error(device_path, x, y):
    scorer, _ = device_path
    scores, err = expect_result_or_drip_error(lambda: scorer(x, y))
    if err is None:
        assert scores.dim() == 1 and torch.isfinite(scores).all() and (scores >= 0).all()
        assert len(scores) == len(torch.as_tensor(x))


@settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batches=st.lists(st.tuples(tensors(), labels), min_size=1, max_size=4))
def test_filter_keeps_state_unchanged_when_it_raises(device_path, tmp_path_factory, batches):
    scorer, thresholds = device_path
    with SampleStore(tmp_path_factory.mktemp("hostile") / "kept.sqlite") as store:
        drip_filter = DripFilter(scorer, thresholds, store)
        for x, y in batches:
            before = (dataclasses.astuple(drip_filter.counters), [(r.id, r.x.tolist()) for r in store])
            decisions, err = expect_result_or_drip_error(lambda x=x, y=y: drip_filter.offer_batch(x, y))
            after = (dataclasses.astuple(drip_filter.counters), [(r.id, r.x.tolist()) for r in store])
            if err is not None:
                assert after == before
            else:
                assert len(decisions) == len(torch.as_tensor(x))
                assert len(store) == len(before[1]) + sum(d.kept for d in decisions)
            _, err = expect_result_or_drip_error(lambda x=x, y=y: drip_filter.offer(x, y))
            if err is not None:
                assert (
                    dataclasses.astuple(drip_filter.counters),
                    [(r.id, r.x.tolist()) for r in store],
                ) == after


@settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(scores=tensors(shape=(4,)), y=labels)
def test_thresholds_keep_returns_a_mask_or_a_drip_error(device_path, scores, y):
    _, thresholds = device_path
    kept, err = expect_result_or_drip_error(lambda: thresholds.keep(scores, y))
    if err is None:
        assert kept.dtype == torch.bool and kept.shape == (4,)


@settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    x=tensors(),
    label=labels,
    score=st.one_of(
        st.none(), st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=2), st.booleans()
    ),
)
def test_store_add_stores_exactly_or_changes_nothing(tmp_path_factory, x, label, score):
    with SampleStore(tmp_path_factory.mktemp("hostile") / "kept.sqlite") as store:
        store.add(torch.ones(2), 0, 0.5)
        before = [(r.id, r.x.tolist()) for r in store]
        row_id, err = expect_result_or_drip_error(lambda: store.add(x, label, score))
        rows = list(store)
        if err is not None:
            assert [(r.id, r.x.tolist()) for r in rows] == before
        else:
            stored = rows[-1]
            expected = torch.as_tensor(x)
            assert (
                stored.id == row_id and stored.x.dtype == expected.dtype and stored.x.shape == expected.shape
            )
            assert torch.equal(raw_bytes(stored.x), raw_bytes(expected))  # byte for byte, NaN too
