"""SampleStore: rows survive reopening byte for byte, capacity holds, bad input changes nothing."""

from __future__ import annotations

import math
import os
import sqlite3
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import snapshot
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drip.errors import DripInputError, DripStoreError
from drip.store import SampleStore
from drip.store.rows import _encode, _encode_batch


def test_reopen_keeps_every_row_byte_for_byte(tmp_path):
    path = tmp_path / "kept.sqlite"
    samples = [
        torch.randn(1, 8, 8),
        torch.randn(3, 4).double(),
        torch.randint(0, 255, (2, 2), dtype=torch.uint8),
        torch.randn(5).to(torch.bfloat16),
        torch.zeros(0, 3),
        torch.tensor([True, False]),
    ]
    with SampleStore(path) as store:
        ids = [store.add(x, label=i, score=0.5 * i, source=f"s{i}") for i, x in enumerate(samples)]
        assert ids == sorted(ids) and None not in ids
    with SampleStore(path) as store:
        rows = list(store)
        assert len(store) == len(samples)
        for row, x, i in zip(rows, samples, range(len(samples))):
            assert row.x.dtype == x.dtype and row.x.shape == x.shape
            assert torch.equal(row.x, x)
            assert (row.label, row.score, row.source) == (i, 0.5 * i, f"s{i}")
        assert store.bytes_used == sum(x.numel() * x.element_size() for x in samples)


def test_as_dataset_for_retraining(tmp_path):
    with SampleStore(tmp_path / "s.sqlite") as store:
        xs = torch.randn(5, 1, 8, 8)
        store.add_batch(xs, [3, 1, 4, 1, 5], [0.1, 0.2, 0.3, 0.4, 0.5])
        dataset = store.as_dataset()
        assert len(dataset) == 5
        x, y = dataset[2]
        assert torch.equal(x, xs[2]) and int(y) == 4
        assert store.class_counts() == {1: 2, 3: 1, 4: 1, 5: 1}


def test_same_source_is_stored_once(tmp_path):
    with SampleStore(tmp_path / "s.sqlite") as store:
        first = store.add(torch.ones(2), 0, 0.1, source="stream:7")
        again = store.add(torch.ones(2), 0, 0.1, source="stream:7")
        assert first == again and len(store) == 1


def test_batch_ids_are_the_rows_ids_and_never_reused(tmp_path):
    # Without capacity a batch is inserted in one statement with ids given by hand: they must be
    # the ids the rows get, duplicates (stored or within the batch) must map to the first row, and
    # an id once handed out must never come back, also after the newest row was evicted.
    path = tmp_path / "s.sqlite"
    with SampleStore(path, capacity_count=2, when_full="evict") as store:
        store.add_batch(torch.zeros(2, 3), [0, 0], [0.1, 0.2])
        store.add(torch.zeros(3), 0, 0.9)  # refused: it would be the one evicted
        newest = store.add(torch.ones(3), 1, 0.5)  # evicts id 2, the highest score of class 0
        assert newest == 3 and [row.id for row in store] == [1, 3]
    with SampleStore(path) as store:
        store._conn.execute("DELETE FROM samples WHERE id = 3")  # the newest row gone as well
        xs = torch.arange(12.0).reshape(4, 3)
        ids = store.add_batch(xs, [2, 3, 2, 4], [0.3, 0.4, 0.3, 0.6], ["a", "b", "a", None])
        assert ids == [4, 5, 4, 6]
        rows = {row.id: row for row in store}
        assert sorted(rows) == [1, 4, 5, 6]
        for row_id, index in ((4, 0), (5, 1), (6, 3)):  # xs[2] repeats source "a": not stored
            assert torch.equal(rows[row_id].x, xs[index]) and rows[row_id].label == [2, 3, 2, 4][index]
        assert store.add_batch(xs[:2], [7, 7], None, ["b", "c"]) == [5, 7]
        assert store.class_counts() == {0: 1, 2: 1, 3: 1, 4: 1, 7: 1}


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda s: s.add(torch.ones(2), -1), "label"),
        (lambda s: s.add(torch.ones(2), 1.5), "label"),
        (lambda s: s.add(torch.ones(2), True), "label"),
        (lambda s: s.add(torch.ones(2), 1, float("nan")), "score"),
        (lambda s: s.add(torch.ones(2), 1, float("inf")), "score"),
        (lambda s: s.add(torch.ones(2), 1, "high"), "score"),
        (lambda s: s.add(torch.ones(2, dtype=torch.complex64), 1), "cannot be stored"),
        (lambda s: s.add("not a tensor", 1), "expected a tensor"),
        (lambda s: s.add(torch.ones(2), 1, 0.0, source=3), "source"),
        (lambda s: s.add_batch([torch.ones(2), torch.ones(2)], [1, -2]), "sample 1: label"),
        (lambda s: s.add_batch([torch.ones(2)], [1, 2]), "1 samples, 2 labels"),
        (lambda s: s.add(torch.ones(2), torch.tensor(1.0)), "label"),
        (lambda s: s.add(torch.ones(2), 2**64), "label"),
        (lambda s: s.add(torch.ones(2), np.uint64(2**64 - 1)), "label"),
        (lambda s: s.add(torch.ones(2), 1, 10**400), "score"),
        (lambda s: s.add(torch.ones(2), 1, 1.0 + 0j), "score"),
        (lambda s: s.add(torch.ones(2), 1, 0.5, "\udc80"), "source"),
        (lambda s: s.add_batch(3, [1]), "xs"),
        (lambda s: s.add_batch(iter([torch.ones(1)]), [1]), "xs"),
        (lambda s: s.add_batch([torch.ones(1)], "1"), "labels"),
        (lambda s: s.add_batch([torch.ones(1)], [1], sources="a"), "sources"),
        (lambda s: s.add(torch.ones(2).to_sparse(), 1), "sparse"),
        (lambda s: s.add(torch.quantize_per_tensor(torch.ones(2), 0.1, 0, torch.qint8), 1), "quantized"),
        (lambda s: s.add(torch.ones(2, dtype=torch.float8_e4m3fn), 1), "cannot be stored"),
        (lambda s: s.add_batch([], [], checkpoint=("name", 3)), "checkpoint"),
        (lambda s: s.add_batch([], [], checkpoint=[("a", "1"), ("b",)]), "checkpoint"),
        (lambda s: s.add_batch([], [], checkpoint=(("a", "1"), ("b", "2"))), "checkpoint"),
    ],
)
@pytest.mark.filterwarnings("ignore:torch.quantize_per_tensor")
def test_bad_input_leaves_the_store_unchanged(tmp_path, call, match):
    with SampleStore(tmp_path / "s.sqlite") as store:
        store.add(torch.arange(3.0), 2, 0.7, source="a")
        before = snapshot(store)
        with pytest.raises(DripInputError, match=match):
            call(store)
        assert snapshot(store) == before and len(store) == 1


def test_not_a_store_and_newer_schema_are_refused_untouched(tmp_path):
    text = tmp_path / "notes.sqlite"
    text.write_bytes(b"just some text, not a database" * 100)
    with pytest.raises(DripStoreError, match="not a drip store"):
        SampleStore(text)
    assert text.read_bytes() == b"just some text, not a database" * 100

    other = tmp_path / "other.sqlite"
    conn = sqlite3.connect(other)
    conn.execute("CREATE TABLE t (a)")
    conn.commit()
    conn.close()
    before = other.read_bytes()
    with pytest.raises(DripStoreError, match="not a drip store"):
        SampleStore(other)
    assert other.read_bytes() == before

    newer = tmp_path / "newer.sqlite"
    SampleStore(newer).close()
    conn = sqlite3.connect(newer)
    conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    conn.commit()
    conn.close()
    with pytest.raises(DripStoreError, match="newer"):
        SampleStore(newer)


def assert_refused_untouched(folder: Path, content: bytes, read_only: bool = False) -> None:
    """``SampleStore`` on a file holding ``content`` is refused naming the file, which stays as it
    was, with no -wal / -shm beside it."""
    path = folder / "s.sqlite"
    path.write_bytes(content)
    with pytest.raises(DripStoreError, match="not a drip store") as raised:
        SampleStore(path, read_only=read_only)
    assert str(path) in str(raised.value)
    assert path.read_bytes() == content
    assert sorted(p.name for p in folder.iterdir()) == ["s.sqlite"]


# SQLite took a file shorter than its 100-byte header for an empty database and wrote a store
# over it (a 1-byte file became a 32 KB store).
@settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(content=st.binary(min_size=1, max_size=99), read_only=st.booleans())
def test_a_file_shorter_than_an_sqlite_header_is_refused_untouched(tmp_path_factory, content, read_only):
    assert_refused_untouched(tmp_path_factory.mktemp("short"), content, read_only)


@settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    content=st.one_of(
        st.binary(min_size=100, max_size=5000).filter(lambda b: not b.startswith(b"SQLite format 3")),
        st.binary(min_size=84, max_size=5000).map(lambda tail: b"SQLite format 3\x00" + tail),
        # ... and one that says WAL mode (bytes 18 and 19), which SQLite opens with -wal and -shm
        st.binary(min_size=84, max_size=5000).map(
            lambda tail: b"SQLite format 3\x00" + tail[:2] + b"\x02\x02" + tail[4:]
        ),
    )
)
def test_junk_and_damaged_sqlite_headers_are_refused_untouched(tmp_path_factory, content):
    assert_refused_untouched(tmp_path_factory.mktemp("junk"), content)


@pytest.mark.parametrize("content", [b"\x00", b"x", b"\n"])
def test_one_byte_file_is_refused_and_says_what_it_found(tmp_path, content):
    path = tmp_path / "s.sqlite"
    path.write_bytes(content)
    with pytest.raises(DripStoreError, match=r"a 1-byte file .*shorter than any SQLite file"):
        SampleStore(path)
    assert path.read_bytes() == content


def test_an_empty_file_becomes_a_store(tmp_path):
    path = tmp_path / "s.sqlite"
    path.touch()
    with SampleStore(path) as store:
        store.add(torch.arange(3.0), 1)
    with SampleStore(path, read_only=True) as store:
        assert len(store) == 1


def test_reopening_above_capacity_is_refused_and_removes_nothing(tmp_path):
    path = tmp_path / "s.sqlite"
    with SampleStore(path) as store:
        store.add_batch(torch.ones(4, 2), [0, 1, 2, 3])
    with pytest.raises(DripStoreError, match="above the capacity"):
        SampleStore(path, capacity_count=2)
    with SampleStore(path) as store:
        assert len(store) == 4


def test_evict_removes_highest_score_of_largest_class(tmp_path):
    with SampleStore(tmp_path / "s.sqlite", capacity_count=4, when_full="evict") as store:
        store.add_batch(torch.zeros(4, 1), [0, 0, 0, 1], [0.1, 0.9, 0.5, 0.3], ["a", "b", "c", "d"])
        assert store.add(torch.zeros(1), 1, 0.2, source="e") is not None
        assert sorted(s.source for s in store) == ["a", "c", "d", "e"]  # "b": class 0, score 0.9
        # The newcomer is itself the most redundant sample of the largest class: refused.
        assert store.add(torch.zeros(1), 0, 5.0, source="f") is None
        assert len(store) == 4


def test_rescore_replaces_every_score_and_the_next_eviction_follows_them(tmp_path):
    with SampleStore(tmp_path / "s.sqlite", capacity_count=3, when_full="evict") as store:
        ids = store.add_batch(torch.zeros(3, 1), [0, 0, 0], [0.9, 0.5, 0.1], ["a", "b", "c"])
        store.rescore(dict(zip(ids, [0.1, 0.5, 0.9])), checkpoint=("rescored", "1"))
        assert [s.score for s in store] == [0.1, 0.5, 0.9]
        assert store.checkpoint("rescored") == "1"
        store.add(torch.zeros(1), 0, 0.3, source="d")  # evicts "c", no longer "a"
        assert sorted(s.source for s in store) == ["a", "b", "d"]


@pytest.mark.parametrize(
    ("scores", "match"),
    [
        ({1: 0.2}, "missing ids \\[2\\]"),
        ({1: 0.2, 2: 0.3, 7: 0.1}, "unknown ids \\[7\\]"),
        ({1: 0.2, 2: math.nan}, "sample 2: expected a finite score"),
        ({1: 0.2, "2": 0.3}, "row ids must be integers"),
    ],
)
def test_rescore_refuses_a_partial_or_bad_mapping_and_changes_nothing(tmp_path, scores, match):
    with SampleStore(tmp_path / "s.sqlite") as store:
        store.add_batch(torch.zeros(2, 1), [0, 1], [0.5, 0.6])
        before = snapshot(store)
        with pytest.raises(DripInputError, match=match):
            store.rescore(scores, checkpoint=("rescored", "1"))
        assert snapshot(store) == before
        assert store.checkpoint("rescored") is None


def test_reject_when_full_and_too_large(tmp_path):
    with SampleStore(tmp_path / "s.sqlite", capacity_bytes=40) as store:
        assert store.add(torch.zeros(20), 0) is None  # 80 bytes: never fits
        assert store.add(torch.zeros(8), 0) is not None  # 32 bytes
        assert store.add(torch.zeros(8), 1) is None  # would make 64
        assert store.add(torch.zeros(2), 1) is not None  # 40 exactly
        assert store.bytes_used == 40


sizes = st.integers(0, 12)
adds = st.lists(
    st.tuples(sizes, st.integers(0, 3), st.floats(0, 1, allow_nan=False)), min_size=1, max_size=40
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    batches=st.lists(adds, min_size=1, max_size=4),
    capacity_bytes=st.one_of(st.none(), st.integers(0, 200)),
    capacity_count=st.one_of(st.none(), st.integers(0, 15)),
    when_full=st.sampled_from(["reject", "evict"]),
)
def test_capacity_is_never_exceeded(tmp_path_factory, batches, capacity_bytes, capacity_count, when_full):
    path = tmp_path_factory.mktemp("cap") / "s.sqlite"
    with SampleStore(path, capacity_bytes, capacity_count, when_full) as store:
        for batch in batches:
            xs = [torch.zeros(n) for n, _, _ in batch]
            ids = store.add_batch(xs, [c for _, c, _ in batch], [s for _, _, s in batch])
            assert len(ids) == len(batch)
            rows = list(store)
            used = sum(r.x.numel() * 4 for r in rows)
            assert used == store.bytes_used and len(rows) == len(store)
            assert capacity_bytes is None or used <= capacity_bytes
            assert capacity_count is None or len(rows) <= capacity_count
    with SampleStore(path) as reopened:
        assert len(reopened) == len(rows)


def test_read_only_handle_reads_and_refuses_writes(tmp_path):
    path = tmp_path / "kept.sqlite"
    with SampleStore(path) as store:
        store.add(torch.ones(3), 1, 0.5, source="a")
    before = path.read_bytes()
    with SampleStore(path, read_only=True) as reader:
        assert [(r.source, r.x.tolist()) for r in reader] == [("a", [1.0, 1.0, 1.0])]
        with pytest.raises(DripStoreError, match="read-only"):
            reader.add(torch.ones(3), 2)
    assert path.read_bytes() == before
    with pytest.raises(DripStoreError, match="cannot open"):
        SampleStore(tmp_path / "absent.sqlite", read_only=True)


@given(
    rows=st.lists(
        st.tuples(
            st.one_of(st.integers(0, 2**63 - 1), st.just(np.int64(3)), st.just(torch.tensor(2))),
            st.one_of(st.none(), st.floats(allow_nan=False, allow_infinity=False), st.integers(-5, 5)),
            st.one_of(st.none(), st.text(max_size=5)),
        ),
        min_size=1,
        max_size=6,
    ),
    dtype=st.sampled_from([torch.float32, torch.float64, torch.bfloat16, torch.int16, torch.bool]),
    sample_shape=st.sampled_from([(3,), (2, 2), (0,)]),
    transposed=st.booleans(),
)
@settings(max_examples=100, deadline=None)
def test_batch_encoding_equals_encoding_each_row(rows, dtype, sample_shape, transposed):
    # A batch tensor is copied once and sliced into rows: each row must be what encoding that
    # sample alone gives (bytes, shape, dtype, and the checked label, score and id, types included).
    labels, scores, sources = (list(column) for column in zip(*rows))
    xs = torch.arange(len(rows) * math.prod(sample_shape)).reshape(len(rows), *sample_shape).to(dtype)
    if transposed and sample_shape == (2, 2):
        xs = xs.transpose(1, 2)  # not contiguous
    expected = [_encode(x, *row, where="") for x, row in zip(xs, rows)]
    got = _encode_batch(xs, labels, scores, sources)
    assert got == expected
    assert [[type(v) for v in row] for row in got] == [[type(v) for v in row] for row in expected]


def test_several_checkpoints_commit_with_the_batch_and_class_bytes_count_payload(tmp_path):
    with SampleStore(tmp_path / "s.sqlite") as store:
        store.add_batch(
            [torch.ones(3), torch.ones(2, dtype=torch.float64), torch.ones(5, dtype=torch.uint8)],
            [0, 0, 2],
            checkpoint=[("reader", "7"), ("budget", '{"seen": 3}')],
        )
        assert (store.checkpoint("reader"), store.checkpoint("budget")) == ("7", '{"seen": 3}')
        assert store.class_bytes() == {0: 3 * 4 + 2 * 8, 2: 5}
        store.add_batch([], [], checkpoint=[("reader", "8")])
        assert (store.checkpoint("reader"), store.checkpoint("budget")) == ("8", '{"seen": 3}')
        assert store.top_scores() == {}
        store.add_batch([torch.ones(1)] * 4, [0, 0, 1, 3], [0.2, 0.7, 0.1, None])
        assert store.top_scores() == {0: 0.7, 1: 0.1}


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes here")
def test_a_path_that_is_not_a_regular_file_is_refused(tmp_path):
    pipe = tmp_path / "s.sqlite"
    os.mkfifo(pipe)
    with pytest.raises(DripStoreError, match=r"s\.sqlite: not a drip store: not a regular file"):
        SampleStore(pipe)
