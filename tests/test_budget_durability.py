"""A budgeted stream killed at any moment resumes with the same thresholds: after a real SIGKILL
of a forked child (after any SQL statement, or at a random moment of ``drip filter --adaptive``),
rerunning the stream ends in the store, and the thresholds' state, of an uninterrupted run."""

from __future__ import annotations

import random
import signal
import time
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_budget import CLASSES, SAMPLE_BYTES, band, passthrough_scorer
from test_durability import KillAfter, check_sqlite, make_stream, progress, rows, run_child

from drip.budget import stream_with_budget
from drip.score import DripScorer
from drip.store import SampleStore

SCORER = passthrough_scorer()  # built before any fork, shared by parent and children


def budgeted(path: Path, x: torch.Tensor, y: torch.Tensor, capacity: int, batch: int, kill_after: int = 0):
    """Stream into the store at ``path``; with ``kill_after``, SIGKILL the process after that many
    SQL statements. What the store and the thresholds' state hold at the end."""
    store = SampleStore(path, capacity_bytes=capacity, when_full="evict")
    if kill_after:
        store._conn = KillAfter(store._conn, kill_after)
    stream_with_budget(SCORER, band(q_high=0.3), x, y, store, batch_size=batch)
    store.close()
    with SampleStore(path) as reopened:
        return rows(path), reopened.checkpoint("budget"), reopened.checkpoint("stream_with_budget:stream")


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    count=st.integers(1, 160),
    batch=st.integers(1, 40),
    fraction=st.floats(0, 0.6),
    kill_after=st.integers(1, 250),
    seed=st.integers(0, 2**16),
)
def test_a_stream_killed_after_any_statement_resumes_into_the_uninterrupted_store(
    tmp_path_factory, count, batch, fraction, kill_after, seed
):
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(count, 1, 1, generator=generator)
    y = torch.randint(0, CLASSES, (count,), generator=generator)
    capacity = int(fraction * count) * SAMPLE_BYTES
    folder = tmp_path_factory.mktemp("killed")
    expected = budgeted(folder / "uninterrupted.sqlite", x, y, capacity, batch)
    path = folder / "resumed.sqlite"
    code = run_child(lambda: budgeted(path, x, y, capacity, batch, kill_after))
    assert code in (0, -signal.SIGKILL)
    check_sqlite(path)
    assert budgeted(path, x, y, capacity, batch) == expected


def adaptive_argv(folder: Path, store: str) -> list[str]:
    return [
        "filter",
        *("--model", str(folder / "model.pt"), "--thresholds", str(folder / "t.json")),
        *("--stream", str(folder / "stream.pt"), "--store", str(folder / store)),
        *("--capacity-bytes", str(60 * 64 * 4), "--adaptive", "--batch-size", "7", "--quiet"),
    ]


@pytest.fixture
def cli_files(tmp_path: Path) -> Path:
    scorer, thresholds, x, y = make_stream(400, seed=9)
    torch.save(scorer.model, tmp_path / "model.pt")
    thresholds.save(tmp_path / "t.json")
    torch.save({"x": x, "y": y}, tmp_path / "stream.pt")
    return tmp_path


def test_drip_filter_adaptive_rerun_after_sigkill_ends_in_the_uninterrupted_store(cli_files, capsys):
    from drip.cli import main

    assert main(adaptive_argv(cli_files, "uninterrupted.sqlite")) == 0
    assert "adaptive bands: the store holds" in capsys.readouterr().out
    with SampleStore(cli_files / "uninterrupted.sqlite") as store:
        expected = rows(cli_files / "uninterrupted.sqlite"), store.checkpoint("budget")
        assert 0.9 * 60 * 64 * 4 <= store.bytes_used <= 60 * 64 * 4  # 60 digits of 8 x 8 float32
    chooser = random.Random(10)
    for run in range(3):
        store = f"resumed{run}.sqlite"
        target = chooser.randrange(1, 380)

        def reached(path: Path = cli_files / store, target: int = target) -> bool:
            return progress(path) >= target

        code = run_child(
            lambda store=store: (main(adaptive_argv(cli_files, store)), time.sleep(60)),
            reached,
            chooser.uniform(0, 0.01),
        )
        assert code == -signal.SIGKILL
        check_sqlite(cli_files / store)
        assert main(adaptive_argv(cli_files, store)) == 0
        assert "resumed at sample" in capsys.readouterr().out
        with SampleStore(cli_files / store) as resumed:
            assert (rows(cli_files / store), resumed.checkpoint("budget")) == expected


def test_drip_filter_adaptive_needs_a_byte_capacity(cli_files, capsys):
    from drip.cli import main

    argv = adaptive_argv(cli_files, "s.sqlite")
    del argv[argv.index("--capacity-bytes") : argv.index("--capacity-bytes") + 2]
    assert main(argv) == 2
    assert (
        capsys.readouterr().err
        == "drip: error: --adaptive: needs --capacity-bytes, the budget the bands move to fill\n"
    )
    assert not (cli_files / "s.sqlite").exists()


def test_drip_filter_scores_with_the_thresholds_target(cli_files, capsys):
    # Thresholds calibrated on the margin target: drip filter used to rebuild a label scorer and
    # refuse them ("calibrated with target 'margin', the scorer uses 'label'").
    from drip.cli import main
    from drip.thresholds import Thresholds

    model = torch.load(cli_files / "model.pt", weights_only=False)
    x, y = torch.rand(200, 1, 8, 8), torch.arange(200) % 10
    margin = DripScorer(model, target="margin")
    thresholds = Thresholds.load(cli_files / "t.json")
    calibrated = Thresholds.from_scores(
        margin(x, y), y, 10, q_high=0.5, min_class_points=5, target="margin", layer=thresholds.layer,
        model_fingerprint=thresholds.model_fingerprint,
    )  # fmt: skip
    calibrated.save(cli_files / "t.json")
    for adaptive in ([], ["--adaptive"]):
        argv = adaptive_argv(cli_files, f"margin{len(adaptive)}.sqlite")
        argv.remove("--adaptive")
        assert main(argv + adaptive) == 0, capsys.readouterr().err
