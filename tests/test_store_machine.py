"""SampleStore against a model of its specification, step by step (a hypothesis state machine):
adds, batches with repeated sources, bad input, a full disk and reopening, under every capacity
and both ``when_full`` policies. The store never exceeds a capacity, evicts exactly what the
policy names, and a failed call changes nothing."""

from __future__ import annotations

import copy
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from drip.errors import DripInputError, DripStoreError
from drip.store import SampleStore


@dataclass
class Row:
    id: int
    label: int
    score: float | None
    source: str | None
    data: bytes

    @property
    def nbytes(self) -> int:
        return len(self.data)


class Model:
    """The store's specification in plain Python: what it holds after each batch."""

    def __init__(self, capacity_bytes: int | None, capacity_count: int | None, when_full: str) -> None:
        self.capacity_bytes, self.capacity_count, self.when_full = capacity_bytes, capacity_count, when_full
        self.rows: list[Row] = []
        self.next_id = 1

    def fits(self, rows: list[Row], nbytes: int) -> bool:
        if self.capacity_count is not None and len(rows) + 1 > self.capacity_count:
            return False
        return self.capacity_bytes is None or sum(r.nbytes for r in rows) + nbytes <= self.capacity_bytes

    def victim(self, rows: list[Row], new: Row) -> Row | None:
        """The highest-score row (unscored last, then the oldest) of the largest class counting the
        newcomer (ties: lowest label); None when there is none or the newcomer is that row."""
        counts: dict[int, int] = {}
        for r in [*rows, new]:
            counts[r.label] = counts.get(r.label, 0) + 1
        label = min(c for c, n in counts.items() if n == max(counts.values()))
        held = [r for r in rows if r.label == label]
        if not held:
            return None
        top = min(held, key=lambda r: (r.score is None, -(r.score or 0.0), r.id))
        newcomer_is_top = top.score is None or (new.score is not None and new.score >= top.score)
        return None if label == new.label and newcomer_is_top else top

    def add_batch(self, batch: list[tuple[int, float | None, str | None, bytes]]) -> list[bool]:
        """Per sample: is it held once the batch is in?"""
        ids: list[int | None] = []
        evicted: set[int] = set()
        for label, score, source, data in batch:
            known = [r for r in self.rows if source is not None and r.source == source]
            if known:
                ids.append(known[0].id)
                continue
            new = Row(self.next_id, label, score, source, data)
            rows = list(self.rows)
            if self.capacity_bytes is not None and new.nbytes > self.capacity_bytes:
                rows = None
            while rows is not None and not self.fits(rows, new.nbytes):
                victim = self.victim(rows, new) if self.when_full == "evict" else None
                rows = None if victim is None else [r for r in rows if r is not victim]
            if rows is None:
                ids.append(None)
                continue
            evicted |= {r.id for r in self.rows} - {r.id for r in rows}
            self.rows = [*rows, new]
            self.next_id += 1
            ids.append(new.id)
        return [i is not None and i not in evicted for i in ids]


SAMPLES = st.tuples(
    st.integers(0, 5),  # floats in the tensor: 0 to 20 bytes
    st.integers(0, 3),  # label
    st.none() | st.sampled_from([0.1, 0.5, 0.9]) | st.floats(0, 1),  # score: ties are likely
    st.none() | st.sampled_from([f"s{i}" for i in range(6)]),  # source: repeats are likely
)


class StoreMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.folder = Path(tempfile.mkdtemp(prefix="drip-machine-"))
        self.path = self.folder / "s.sqlite"
        self.counter = 0

    @initialize(
        capacity_bytes=st.none() | st.integers(0, 80),
        capacity_count=st.none() | st.integers(0, 8),
        when_full=st.sampled_from(["reject", "evict"]),
    )
    def open(self, capacity_bytes: int | None, capacity_count: int | None, when_full: str) -> None:
        self.store = SampleStore(self.path, capacity_bytes, capacity_count, when_full, durable=False)
        self.model = Model(capacity_bytes, capacity_count, when_full)

    def tensor(self, floats: int) -> torch.Tensor:
        self.counter += 1
        return torch.arange(floats, dtype=torch.float32) + 100 * self.counter

    @rule(batch=st.lists(SAMPLES, max_size=4))
    def add_batch(self, batch: list) -> None:
        xs = [self.tensor(n) for n, _, _, _ in batch]
        ids = self.store.add_batch(xs, [b[1] for b in batch], [b[2] for b in batch], [b[3] for b in batch])
        spec = [
            (label, score, source, x.numpy().tobytes()) for x, (_, label, score, source) in zip(xs, batch)
        ]
        assert [i is not None for i in ids] == self.model.add_batch(spec)
        held = {s.id for s in self.store}
        assert all(i in held for i in ids if i is not None)

    @rule(sample=SAMPLES, field=st.sampled_from(["label", "score", "source", "x"]))
    def add_bad(self, sample: tuple, field: str) -> None:
        floats, label, score, source = sample
        x = self.tensor(floats)
        bad = {"label": -1, "score": float("nan"), "source": 7, "x": x.to(torch.complex64)}[field]
        args = {"x": x, "label": label, "score": score, "source": source, field: bad}
        with pytest.raises(DripInputError, match=field):
            self.store.add(args["x"], args["label"], args["score"], args["source"])

    @rule(sample=SAMPLES)
    def add_to_a_full_disk(self, sample: tuple) -> None:
        floats, label, score, source = sample
        conn = self.store._conn
        conn.execute(f"PRAGMA max_page_count = {conn.execute('PRAGMA page_count').fetchone()[0]}")
        x = torch.zeros(floats + 2000)  # 8 kB: more than any free space in a page
        spec = [(label, score, source, x.numpy().tobytes())]
        try:
            self.store.add(x, label, score, source)
        except DripStoreError as err:
            # Only a sample the store would hold needs room; the failed add changed nothing.
            assert "disk full" in str(err) and copy.deepcopy(self.model).add_batch(spec) == [True]
        else:  # nothing to write, or room left by deleted rows
            self.model.add_batch(spec)
        conn.execute("PRAGMA max_page_count = 1073741823")

    @rule()
    def reopen(self) -> None:
        self.store.close()
        model = self.model
        self.store = SampleStore(
            self.path, model.capacity_bytes, model.capacity_count, model.when_full, durable=False
        )

    @precondition(lambda self: self.model.capacity_count is not None and len(self.model.rows) > 0)
    @rule()
    def reopen_with_less_room(self) -> None:
        with pytest.raises(DripStoreError, match="above the capacity"):
            SampleStore(self.path, capacity_count=len(self.model.rows) - 1)

    @invariant()
    def holds_what_the_model_holds(self) -> None:
        rows = [(s.id, s.label, s.score, s.source, s.x.numpy().tobytes()) for s in self.store]
        assert rows == [(r.id, r.label, r.score, r.source, r.data) for r in self.model.rows]
        count, used = len(self.store), self.store.bytes_used
        assert (count, used) == (len(rows), sum(len(r[4]) for r in rows))
        assert self.model.capacity_count is None or count <= self.model.capacity_count
        assert self.model.capacity_bytes is None or used <= self.model.capacity_bytes
        expected_counts: dict[int, int] = {}
        for r in self.model.rows:
            expected_counts[r.label] = expected_counts.get(r.label, 0) + 1
        assert self.store.class_counts() == expected_counts

    def teardown(self) -> None:
        if hasattr(self, "store"):
            self.store.close()
        shutil.rmtree(self.folder)


StoreMachine.TestCase.settings = settings(max_examples=60, stateful_step_count=25, deadline=None)
test_store_against_its_model = StoreMachine.TestCase


@settings(max_examples=50, deadline=None)
@given(
    classes=st.integers(2, 5),
    rounds=st.integers(1, 8),
    capacity=st.integers(1, 12),
    by_bytes=st.booleans(),
    data=st.data(),
)
def test_evicting_a_balanced_stream_keeps_classes_within_one(
    tmp_path_factory, classes, rounds, capacity, by_bytes, data
):
    limits = {"capacity_bytes": capacity * 16} if by_bytes else {"capacity_count": capacity}
    path = tmp_path_factory.mktemp("balanced") / "s.sqlite"
    with SampleStore(path, when_full="evict", durable=False, **limits) as store:
        for _ in range(rounds):
            # Balanced: every round brings each class once, in any order.
            for label in data.draw(st.permutations(range(classes))):
                store.add(torch.zeros(4), label, data.draw(st.none() | st.floats(0, 1)))
                counts = [store.class_counts().get(c, 0) for c in range(classes)]
                assert max(counts) - min(counts) <= 1, counts
