"""Hostile input, generated: every call returns the right result or raises a DripError naming
the argument and what was expected; nothing else escapes, and a call that raises changes no
counter and no stored row."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import calibrated_digits
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from drip.errors import DripError, DripInputError, DripThresholdsError
from drip.filter import DripFilter
from drip.store import SampleStore
from drip.thresholds import Thresholds

SETTINGS = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

MODEL, SCORER, THRESHOLDS = calibrated_digits(held_out=200, q_high=0.3, q_low=0.1, min_class_points=5)


def names(err: DripError, argument: str) -> bool:
    """The message starts with the argument (``x:``, ``y[3]:``, ``sample 2: label:``...) and says
    what was expected."""
    text = str(err)
    return (
        text.startswith((f"{argument}:", f"{argument}[")) or f": {argument}:" in text
    ) and "expected" in text


# -- x and y in every form a caller might pass ---------------------------------------------

X_FORMS = [
    "tensor",
    "float16",
    "bfloat16",
    "float64",
    "channels_last",
    "transposed",
    "numpy",
    "reversed",
    "list",
]
X_FAULTS = ["int", "bool", "complex", "nan", "inf", "overflow64", "rank", "size", "ragged", "text", "sparse"]
Y_FORMS = ["list", "int64", "int32", "uint8", "int8", "numpy"]
# Names of their own: a y fault named like an x fault would be taken for the x one.
Y_FAULTS = ["range", "negative", "float", "y-bool", "count", "matrix", "y-text", "huge"]


@st.composite
def batches(draw: st.DrawFn) -> tuple[Any, Any, torch.Tensor, torch.Tensor, str | None]:
    """(x, y, the same batch as float32 and int64, the argument expected to be refused or None)."""
    size = draw(st.integers(0, 4))
    values = draw(hnp.arrays(np.float32, (size, 1, 8, 8), elements=st.floats(-100, 100, width=32)))
    base = torch.from_numpy(values)
    labels = draw(st.lists(st.integers(0, 9), min_size=size, max_size=size))
    form = draw(st.sampled_from(X_FORMS))
    reference = base
    if form in ("float16", "bfloat16", "float64"):
        x: Any = base.to(getattr(torch, form))
        reference = x.float()
    elif form == "channels_last":
        x = base.to(memory_format=torch.channels_last)
    elif form == "transposed":
        x = base.transpose(2, 3).contiguous().transpose(2, 3)
    elif form == "numpy":
        x = values.astype(draw(st.sampled_from(["<f4", ">f4", "<f8"])))
    elif form == "reversed":
        x = np.ascontiguousarray(values[::-1])[::-1]
    else:
        x = values.tolist()
    y: Any = labels
    y_form = draw(st.sampled_from(Y_FORMS))
    if y_form == "numpy":
        y = np.array(labels, dtype=np.int64)
    elif y_form != "list":
        y = torch.tensor(labels, dtype=getattr(torch, y_form))
    fault = draw(st.sampled_from([None, None, None, *X_FAULTS, *Y_FAULTS]))
    bad: str | None = "x" if fault in X_FAULTS else "y" if fault in Y_FAULTS else None
    if size == 0 and fault in (
        "nan",
        "inf",
        "overflow64",
        "range",
        "negative",
        "huge",
        "float",
        "y-bool",
        "y-text",
    ):
        fault = bad = None  # no sample to spoil, no label to be wrong
    if fault in ("int", "bool", "complex"):
        x = base.to({"int": torch.int32, "bool": torch.bool, "complex": torch.complex64}[fault])
    elif fault in ("nan", "inf", "overflow64"):
        x = base.double() if fault == "overflow64" else base.clone()
        where = (draw(st.integers(0, size - 1)), 0, draw(st.integers(0, 7)), draw(st.integers(0, 7)))
        x[where] = {"nan": math.nan, "inf": -math.inf, "overflow64": 1e39}[fault]
    elif fault == "rank":
        x = base.reshape(size, 8, 8)
    elif fault == "size":
        x = torch.zeros(size, 1, 8, draw(st.sampled_from([1, 7, 9])))
    elif fault == "ragged":
        x = [[[[1.0] * 8] * 8], [[[1.0] * 7] * 8]]
    elif fault == "text":
        x = draw(st.sampled_from(["pixels", None, {"x": 1}, object()]))
    elif fault == "sparse":
        x = base.to_sparse()
    elif fault in ("range", "negative", "huge"):
        broken = list(labels)
        broken[draw(st.integers(0, size - 1))] = {"range": 10, "negative": -1, "huge": 2**70}[fault]
        y = broken
    elif fault == "float":
        y = [float(label) for label in labels]
    elif fault == "y-bool":
        y = torch.ones(size, dtype=torch.bool)
    elif fault == "count":
        y = [*labels, 0] if draw(st.booleans()) or not labels else labels[:-1]
    elif fault == "matrix":
        y = torch.tensor(labels).reshape(-1, 1).repeat(1, 2)
    elif fault == "y-text":
        y = ["three"] * size
    return x, y, reference, torch.tensor(labels, dtype=torch.int64), bad


@settings(SETTINGS, max_examples=250)
@given(batch=batches())
def test_scorer_gives_the_canonical_scores_or_names_the_bad_argument(batch):
    x, y, reference_x, reference_y, bad = batch
    try:
        scores = SCORER(x, y)
    except DripError as err:
        assert isinstance(err, DripInputError) and bad is not None and names(err, bad), (bad, str(err))
        return
    assert bad is None
    assert torch.allclose(scores, SCORER(reference_x, reference_y), rtol=1e-4, atol=1e-6)


def filter_state(drip_filter: DripFilter) -> tuple:
    rows = [(s.id, s.label, s.score, s.source, s.x.numpy().tobytes()) for s in drip_filter.store]
    return repr(drip_filter.counters), rows


@settings(SETTINGS, max_examples=60)
@given(batch=batches(), sources=st.sampled_from(["ids", None, "text", "short"]))
def test_filter_decides_every_sample_or_raises_and_changes_nothing(tmp_path_factory, batch, sources):
    x, y, reference_x, reference_y, bad = batch
    count = len(reference_y)
    source_list: Any = {
        "ids": [f"s{i}" for i in range(count)],
        None: None,
        "text": "abc",
        "short": ["s0"] * (count + 1),
    }[sources]
    acceptable = {bad} | ({"sources"} if sources in ("text", "short") else set())
    with SampleStore(tmp_path_factory.mktemp("filter") / "kept.sqlite", durable=False) as store:
        drip_filter = DripFilter(SCORER, THRESHOLDS, store)
        drip_filter.offer_batch(torch.rand(3, 1, 8, 8), [1, 2, 3], sources=["a", "b", "c"])
        before = filter_state(drip_filter)
        try:
            decisions = drip_filter.offer_batch(x, y, sources=source_list)
        except DripError as err:
            assert isinstance(err, DripInputError), str(err)
            assert any(field is not None and names(err, field) for field in acceptable), (
                acceptable,
                str(err),
            )
            assert filter_state(drip_filter) == before
            return
        assert acceptable == {None} and len(decisions) == count
        expected = THRESHOLDS.keep(SCORER(reference_x, reference_y), reference_y).tolist()
        assert [d.kept for d in decisions] == expected
        assert sum(drip_filter.counters.seen) == 3 + count and len(store) == len(before[1]) + sum(expected)


@settings(max_examples=150, deadline=None)
@given(
    values=hnp.arrays(
        np.float32, (2, 1, 8, 8), elements=st.floats(width=32, allow_nan=False, allow_infinity=False)
    )
)
def test_scores_of_any_finite_input_are_finite_or_refused(values):
    try:
        scores = SCORER(values, [3, 7])
    except DripInputError as err:
        assert names(err, "x") and "non-finite score" in str(err)
        return
    assert torch.isfinite(scores).all()  # and signed: the default net score may be negative


def test_overflowing_input_is_refused_not_scored_nan():
    with pytest.raises(DripInputError, match="non-finite score"):
        SCORER(torch.full((1, 1, 8, 8), -3e38), [3])


@SETTINGS
@given(
    label=st.integers(0, 9),
    form=st.sampled_from(["int", "0-d", "0-d uint8", "0-d int8", "numpy", "1-element"]),
)
def test_offer_takes_any_single_label(label, form):
    y = {
        "int": label,
        "0-d": torch.tensor(label),
        "0-d uint8": torch.tensor(label, dtype=torch.uint8),
        "0-d int8": torch.tensor(label, dtype=torch.int8),
        "numpy": np.int16(label),
        "1-element": [label],
    }[form]
    x = torch.rand(1, 8, 8)
    decision = DripFilter(SCORER, THRESHOLDS).offer(x, y)
    assert decision.label == label and decision.score == pytest.approx(float(SCORER(x[None], [label])[0]))


# -- thresholds ----------------------------------------------------------------------------


@st.composite
def scores_and_labels(draw: st.DrawFn) -> tuple[Any, Any, str | None]:
    count = draw(st.integers(0, 6))
    scores = draw(st.lists(st.floats(allow_nan=False), min_size=count, max_size=count))
    labels = draw(st.lists(st.integers(0, 9), min_size=count, max_size=count))
    fault = draw(
        st.sampled_from([None, None, "nan", "count", "range", "float labels", "matrix", "complex", "text"])
    )
    if fault in ("nan", "range", "float labels") and not count:
        fault = None
    if fault == "nan":
        scores[0] = math.nan
    elif fault == "count":
        labels = [*labels, 1]
    elif fault == "range":
        labels[-1] = draw(st.sampled_from([10, -1]))
    elif fault == "float labels":
        labels = [float(v) for v in labels]
    elif fault == "matrix":
        scores = [scores]
    elif fault == "complex":
        scores = torch.tensor(scores, dtype=torch.complex64)
    elif fault == "text":
        scores = "high"
    form = draw(st.sampled_from(["list", "tensor", "numpy"]))
    if form != "list" and fault in (None, "nan", "count", "range", "float labels"):
        scores = (
            torch.tensor(scores, dtype=torch.float64)
            if form == "tensor"
            else np.array(scores, dtype=np.float64)
        )
        labels = torch.tensor(labels) if form == "tensor" else np.array(labels)
    bad = {None: None, "count": "labels", "range": "labels", "float labels": "labels"}.get(fault, "scores")
    return scores, labels, bad


@SETTINGS
@given(case=scores_and_labels())
def test_keep_is_the_band_check_or_names_the_bad_argument(case):
    scores, labels, bad = case
    try:
        kept = THRESHOLDS.keep(scores, labels)
    except DripError as err:
        assert isinstance(err, DripInputError) and bad is not None and names(err, bad), (bad, str(err))
        return
    assert bad is None
    expected = [
        THRESHOLDS.low[int(c)] <= float(s) <= THRESHOLDS.high[int(c)]
        for s, c in zip(np.asarray(scores), np.asarray(labels))
    ]
    assert kept.tolist() == expected


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)
FIELDS = [
    "format",
    "version",
    "low",
    "high",
    "statistic",
    "layer",
    "model_fingerprint",
    "q_low",
    "q_high",
    "counts",
    "pooled",
    "target",
    "cam",
    "metadata",
]


@SETTINGS
@given(field=st.sampled_from(FIELDS), value=JSON | st.integers(10**300, 10**400), drop=st.booleans())
def test_hand_edited_thresholds_load_or_are_a_thresholds_error(tmp_path_factory, field, value, drop):
    data = THRESHOLDS.to_dict()
    if drop:
        del data[field]
    else:
        data[field] = value
    path = tmp_path_factory.mktemp("t") / "t.json"
    text = json.dumps(data)
    path.write_text(text)
    try:
        loaded = Thresholds.load(path)
    except DripThresholdsError as err:
        assert str(err).startswith(str(path))
    else:
        assert Thresholds.from_dict(loaded.to_dict()) == loaded
    assert path.read_text() == text


@SETTINGS
@given(
    cut=st.integers(0, 2000), flips=st.lists(st.tuples(st.integers(0, 2000), st.integers(0, 255)), max_size=3)
)
def test_truncated_or_damaged_thresholds_files_are_thresholds_errors(tmp_path_factory, cut, flips):
    data = bytearray(json.dumps(THRESHOLDS.to_dict()).encode())
    for where, byte in flips:
        data[where % len(data)] = byte
    data = data[: cut % (len(data) + 1)]
    path = tmp_path_factory.mktemp("t") / "t.json"
    path.write_bytes(bytes(data))
    try:
        loaded = Thresholds.load(path)
    except DripThresholdsError as err:
        assert str(err).startswith(str(path))
    else:  # a flip inside a number or a name can leave a valid file
        assert Thresholds.from_dict(loaded.to_dict()) == loaded
    assert path.read_bytes() == bytes(data)


# -- the store -----------------------------------------------------------------------------

STORABLE = ["bool", "uint8", "int8", "int16", "int32", "int64", "float16", "bfloat16", "float32", "float64"]


INT_DTYPES = [torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64]


def raw(tensor: torch.Tensor) -> bytes:
    """A tensor's bytes, whatever its dtype (numpy has no bfloat16)."""
    return tensor.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b""


def as_float(value: Any) -> float:
    try:
        return float(value)
    except OverflowError:
        return math.inf


@st.composite
def rows(draw: st.DrawFn) -> tuple[Any, Any, Any, Any, set[str], tuple]:
    """(x, label, score, source, the fields a store must refuse, what a read must return)."""
    shape = tuple(draw(st.lists(st.integers(0, 3), max_size=3)))
    dtype = draw(st.sampled_from([*STORABLE, "complex64", "sparse"]))
    base = torch.from_numpy(draw(hnp.arrays(np.float64, shape, elements=st.floats(-300, 300))))
    x: Any = base.to_sparse() if dtype == "sparse" else base.to(getattr(torch, dtype))
    bad = {"x"} if dtype in ("complex64", "sparse") else set()

    label_kind = draw(st.sampled_from(["int", "numpy", "tensor", "other"]))
    if label_kind == "int":
        label = draw(st.integers(-3, 2**64 + 3))
    elif label_kind == "numpy":
        label = draw(st.sampled_from([np.int8, np.int64, np.uint64]))(draw(st.integers(0, 127)))
        label = -label if isinstance(label, np.int8) and draw(st.booleans()) else label
    elif label_kind == "tensor":
        label = torch.tensor(draw(st.integers(0, 127)), dtype=draw(st.sampled_from(INT_DTYPES)))
    else:
        label = draw(
            st.sampled_from([True, 1.5, "3", None, torch.tensor(2.0), torch.tensor([1, 2]), np.float64(2)])
        )
    if label_kind == "other" or not 0 <= int(label) < 2**63:
        bad.add("label")

    score_kind = draw(st.sampled_from(["none", "float", "int", "numpy", "tensor", "other"]))
    if score_kind == "none":
        score = None
    elif score_kind == "float":
        score = draw(st.floats())
    elif score_kind == "int":
        score = draw(st.integers(-(10**400), 10**400))
    elif score_kind == "numpy":
        score = draw(st.sampled_from([np.float32, np.float64, np.int16]))(draw(st.integers(-5, 5)) / 4)
    elif score_kind == "tensor":
        score = torch.tensor(draw(st.floats(-1, 1)))
    else:
        score = draw(st.sampled_from([True, "0.5", 1j, torch.tensor([0.1, 0.2])]))
    if score_kind == "other" or (score is not None and not math.isfinite(as_float(score))):
        bad.add("score")

    source = draw(st.none() | st.text(max_size=6) | st.sampled_from([3, b"id", "\udc80"]))
    if source is not None and (not isinstance(source, str) or source == "\udc80"):
        bad.add("source")
    expected = (raw(x) if not bad else None, x.dtype, tuple(x.shape))
    return x, label, score, source, bad, expected


@settings(SETTINGS, max_examples=100)
@given(row=rows())
def test_store_keeps_any_valid_row_exactly_and_refuses_the_rest_unchanged(tmp_path_factory, row):
    x, label, score, source, bad, (data, dtype, shape) = row
    assume(source != "kept")
    with SampleStore(tmp_path_factory.mktemp("store") / "s.sqlite", durable=False) as store:
        store.add(torch.ones(2), 1, 0.5, source="kept")
        before = [(s.id, s.x.tolist()) for s in store]
        try:
            row_id = store.add(x, label, score, source)
        except DripError as err:
            assert isinstance(err, DripInputError) and any(names(err, field) for field in bad), (
                bad,
                str(err),
            )
            assert [(s.id, s.x.tolist()) for s in store] == before
            return
        assert not bad
        stored = {s.id: s for s in store}[row_id]
        assert raw(stored.x) == data and (stored.x.dtype, tuple(stored.x.shape)) == (
            dtype,
            shape,
        )
        assert stored.label == int(label) and stored.source == source
        assert stored.score == (None if score is None else float(score))


@pytest.mark.parametrize("path_kind", ["text", "other sqlite", "empty folder"])
def test_store_errors_name_the_file(tmp_path, path_kind):
    path = tmp_path / "s.sqlite"
    if path_kind == "text":
        path.write_text("not a database, " * 300)
    elif path_kind == "other sqlite":
        import sqlite3

        sqlite3.connect(path).execute("CREATE TABLE t (a)").connection.commit()
    else:
        path.mkdir()
    before = path.read_bytes() if path.is_file() else None
    with pytest.raises(DripError) as raised:
        SampleStore(path)
    assert str(path) in str(raised.value)
    assert (path.read_bytes() if path.is_file() else None) == before
    assert Path(f"{path}-wal").exists() is False
