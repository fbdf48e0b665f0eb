"""SampleStore under faults: eviction that changes its mind, hostile values, damaged or foreign
files, a full disk, read-only paths. Every fault is a DripStoreError or DripInputError, and the
store (and the file) is left as it was."""

from __future__ import annotations

import math
import multiprocessing
import os
import shutil
import sqlite3
import tempfile
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import snapshot

from drip.errors import DripStoreError
from drip.filter import DripFilter
from drip.models import digits_cnn
from drip.score import DripScorer
from drip.store import SampleStore
from drip.thresholds import Thresholds


def keep_everything() -> tuple[DripScorer, Thresholds]:
    """A digits scorer and bands that keep every sample (so every offer writes)."""
    torch.manual_seed(0)
    return DripScorer(digits_cnn().eval()), Thresholds((-math.inf,) * 10, (math.inf,) * 10, layer="relu3")


def edited_copy(tmp_path: Path, sql: str) -> Path:
    """A small drip store, then ``sql`` run on it with plain sqlite3 (a hand edit)."""
    path = tmp_path / "edited.sqlite"
    with SampleStore(path) as store:
        store.add_batch(torch.rand(3, 2, 2), [0, 1, 2], [0.1, 0.2, 0.3])
    conn = sqlite3.connect(path)
    conn.executescript(sql)
    conn.commit()
    conn.close()
    return path


# -- eviction ------------------------------------------------------------------------------


def test_refused_newcomer_keeps_what_was_evicted_for_it(tmp_path):
    # Class 0: a (0.9), b (0.1); class 1: c (0.5); 12 of 12 bytes used. An 8-byte newcomer of
    # class 1 (0.95) first evicts a (classes tie at 2, lowest label), then is itself the most
    # redundant of the largest class, class 1, and is refused: a must come back.
    with SampleStore(tmp_path / "s.sqlite", capacity_bytes=12, when_full="evict") as store:
        store.add_batch(torch.zeros(3, 1), [0, 0, 1], [0.9, 0.1, 0.5], ["a", "b", "c"])
        before = snapshot(store)
        assert store.add(torch.zeros(2), 1, 0.95, source="new") is None
        assert snapshot(store) == before


def test_sample_evicted_by_its_own_batch_is_reported_not_held(tmp_path):
    with SampleStore(tmp_path / "s.sqlite", capacity_count=1, when_full="evict") as store:
        ids = store.add_batch(torch.zeros(2, 1), [0, 0], [0.9, 0.1], ["first", "second"])
        held = [s.id for s in store]
        assert ids == [None, held[0]] and [s.source for s in store] == ["second"]


def test_filter_reports_sample_evicted_in_its_batch_as_store_full(tmp_path):
    scorer, wide = keep_everything()
    with SampleStore(tmp_path / "s.sqlite", capacity_count=1, when_full="evict") as store:
        drip_filter = DripFilter(scorer, wide, store, allow_model_mismatch=True)
        decisions = drip_filter.offer_batch(torch.rand(2, 1, 8, 8), [3, 3])
        held = {s.id for s in store}
        kept = [d for d in decisions if d.kept]
        assert {d.sample_id for d in kept} == held and len(kept) == sum(drip_filter.counters.kept) == 1


# -- hostile values ------------------------------------------------------------------------


def test_numpy_and_tensor_scalars_are_accepted_as_numbers(tmp_path):
    with SampleStore(tmp_path / "s.sqlite") as store:
        store.add(np.arange(4.0)[::-1], np.int8(3), np.float32(0.5), source="reversed")
        store.add(np.arange(4.0).astype(">f4"), torch.tensor(4, dtype=torch.uint8), torch.tensor(0.25))
        rows = list(store)
    assert rows[0].x.tolist() == [3.0, 2.0, 1.0, 0.0] and (rows[0].label, rows[0].score) == (3, 0.5)
    assert rows[1].x.tolist() == [0.0, 1.0, 2.0, 3.0] and (rows[1].label, rows[1].score) == (4, 0.25)


# -- damaged and foreign files -------------------------------------------------------------


@pytest.mark.parametrize(
    ("sql", "match"),
    [
        ("UPDATE meta SET value = 'abc' WHERE key = 'schema_version'", "schema_version"),
        ("DELETE FROM meta WHERE key = 'schema_version'", "schema_version"),
        ("DROP TABLE usage", "missing"),
    ],
)
def test_hand_edited_store_is_refused_at_open_and_untouched(tmp_path, sql, match):
    path = edited_copy(tmp_path, sql)
    before = path.read_bytes()
    with pytest.raises(DripStoreError, match=match):
        SampleStore(path)
    assert path.read_bytes() == before


@pytest.mark.parametrize(
    ("sql", "match"),
    [
        ("UPDATE samples SET shape = '[3, 3]' WHERE id = 2", "sample 2 .*needs 36 bytes"),
        ("UPDATE samples SET shape = '[3,' WHERE id = 2", "sample 2 .*shape"),
        ("UPDATE samples SET dtype = 'qint8' WHERE id = 2", "sample 2 .*dtype 'qint8'"),
        ("UPDATE samples SET data = 'text' WHERE id = 2", "sample 2 .*str"),
        ("UPDATE samples SET label = 'x' WHERE id = 2", "sample 2 .*label 'x'"),
    ],
)
def test_damaged_rows_are_store_errors_when_read(tmp_path, sql, match):
    with SampleStore(edited_copy(tmp_path, sql)) as store, pytest.raises(DripStoreError, match=match):
        store.as_dataset()


def test_newer_schema_and_foreign_database_leave_the_file_untouched(tmp_path):
    newer = edited_copy(tmp_path, "UPDATE meta SET value = '2' WHERE key = 'schema_version'")
    before = newer.read_bytes()
    with pytest.raises(DripStoreError, match="schema version 2 is newer"):
        SampleStore(newer)
    assert newer.read_bytes() == before and not Path(f"{newer}-wal").exists()


@pytest.mark.parametrize("keep", [0.3, 0.6])
def test_truncated_store_is_reported_corrupt_and_untouched(tmp_path, keep):
    path = tmp_path / "s.sqlite"
    with SampleStore(path) as store:
        store.add_batch(torch.rand(60, 1, 8, 8), [i % 10 for i in range(60)])
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(DripStoreError, match="corrupt or truncated"):
        SampleStore(path)
    assert path.read_bytes() == data[: int(len(data) * keep)]


def test_folder_or_missing_folder_is_named(tmp_path):
    with pytest.raises(DripStoreError, match="expected a store file, got the folder"):
        SampleStore(tmp_path)
    with pytest.raises(DripStoreError, match=r"folder .*absent does not exist"):
        SampleStore(tmp_path / "absent" / "s.sqlite")


# -- disk full -----------------------------------------------------------------------------


def fill_disk(store: SampleStore) -> None:
    """Simulate a full disk: the file may not grow by a single page."""
    pages = store._conn.execute("PRAGMA page_count").fetchone()[0]
    store._conn.execute(f"PRAGMA max_page_count = {pages}")


def test_disk_full_is_a_store_error_and_stores_nothing(tmp_path):
    with SampleStore(tmp_path / "s.sqlite") as store:
        store.add(torch.ones(4), 1, 0.5, source="before")
        before = snapshot(store)
        fill_disk(store)
        with pytest.raises(DripStoreError, match="disk full"):
            store.add_batch(torch.rand(4, 4096), [0, 1, 2, 3], sources=["a", "b", "c", "d"])
        assert snapshot(store) == before
        store._conn.execute("PRAGMA max_page_count = 1073741823")
        assert store.add(torch.rand(4096), 0, source="a") is not None


def test_filter_changes_no_counter_when_the_store_fails_mid_batch(tmp_path):
    scorer, wide = keep_everything()
    with SampleStore(tmp_path / "s.sqlite") as store:
        drip_filter = DripFilter(scorer, wide, store, allow_model_mismatch=True)
        drip_filter.offer_batch(torch.rand(3, 1, 8, 8), [0, 1, 2])
        counters, before = repr(drip_filter.counters), snapshot(store)
        fill_disk(store)
        with pytest.raises(DripStoreError, match="disk full"):
            drip_filter.offer_batch(torch.rand(200, 1, 8, 8), torch.arange(200) % 10)
        assert repr(drip_filter.counters) == counters and snapshot(store) == before


# -- read-only paths -----------------------------------------------------------------------


def run_unprivileged(call: Callable[[], object]) -> str:
    """Run ``call`` where file permissions apply (root ignores them: a child as 'nobody'); the
    name and message of what it raised, or "" if nothing."""
    if os.geteuid() != 0:
        try:
            call()
        except Exception as err:
            return f"{type(err).__name__}: {err}"
        return ""
    reader, writer = multiprocessing.Pipe(duplex=False)

    def child() -> None:
        os.setgid(65534)
        os.setuid(65534)
        try:
            call()
            writer.send("")
        except Exception as err:
            writer.send(f"{type(err).__name__}: {err}\n{traceback.format_exc()}")

    process = multiprocessing.get_context("fork").Process(target=child)
    process.start()
    process.join(60)
    assert process.exitcode == 0, f"child exit code {process.exitcode}"
    return reader.recv()


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A folder the unprivileged child can reach (pytest's tmp_path is private to its user)."""
    folder = Path(tempfile.mkdtemp(prefix="drip-ro-"))
    folder.chmod(0o777)
    yield folder
    for path in [folder, *folder.rglob("*")]:
        path.chmod(0o777)
    shutil.rmtree(folder)


def read_only(path: Path) -> None:
    path.chmod(0o555 if path.is_dir() else 0o444)


def test_read_only_file_refuses_writes_clearly_and_keeps_its_rows(shared_dir):
    path = shared_dir / "s.sqlite"
    with SampleStore(path) as store:
        store.add(torch.ones(2), 1, 0.5, source="kept")
    read_only(path)
    before = path.read_bytes()

    def write() -> None:
        with SampleStore(path) as store:
            assert [s.source for s in store] == ["kept"]
            store.add(torch.ones(2), 2, 0.1, source="new")

    outcome = run_unprivileged(write)
    assert outcome.startswith("DripStoreError") and "read-only" in outcome, outcome
    assert path.read_bytes() == before


def test_read_only_folder_is_named_not_called_foreign(shared_dir):
    folder = shared_dir / "ro"
    folder.mkdir()
    with SampleStore(folder / "old.sqlite") as store:
        store.add(torch.ones(2), 1)
    read_only(folder / "old.sqlite")
    read_only(folder)
    for name in ("old.sqlite", "new.sqlite"):
        outcome = run_unprivileged(lambda name=name: SampleStore(folder / name))
        assert outcome.startswith("DripStoreError"), outcome
        assert "not a drip store" not in outcome and ("read-only" in outcome or "permission" in outcome), (
            outcome
        )
