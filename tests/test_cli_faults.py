"""drip filter under faults: malformed records, damaged files, a full disk, reruns. Every error
is one line on stderr with exit code 2; malformed records are reported and skipped."""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest
import torch
from conftest import calibrated_digits
from torch import nn

from drip.cli import load_model, load_tensors, main
from drip.errors import DripInputError, DripStoreError
from drip.filter import DripFilter
from drip.store import SampleStore
from drip.thresholds import Thresholds


@pytest.fixture
def files(tmp_path: Path) -> Path:
    model, _, thresholds = calibrated_digits(q_high=0.3)
    torch.save(model, tmp_path / "model.pt")
    thresholds.save(tmp_path / "t.json")
    torch.save({"x": torch.rand(60, 1, 8, 8), "y": torch.arange(60) % 10}, tmp_path / "stream.pt")
    return tmp_path


def run(folder: Path, *extra: str, stream: str = "stream.pt", store: str = "kept.sqlite") -> int:
    return main(
        [
            "filter",
            *("--model", str(folder / "model.pt"), "--thresholds", str(folder / "t.json")),
            *("--stream", str(folder / stream), "--store", str(folder / store), "--quiet"),
            *extra,
        ]
    )


def stored(path: Path) -> list[tuple]:
    with SampleStore(path) as store:
        return [(s.source, s.label, s.score, s.x.numpy().tobytes()) for s in store]


def one_line_error(capsys: pytest.CaptureFixture) -> str:
    err = capsys.readouterr().err
    assert err.startswith("drip: error: ") and err.count("\n") == 1, err
    return err


def test_malformed_records_are_reported_skipped_and_strict_fails(files, capsys):
    data = torch.load(files / "stream.pt")
    x, y = data["x"].clone(), data["y"].clone()
    x[5, 0, 0, 0] = float("nan")
    x[17] = float("inf")
    y[40] = 12
    torch.save({"x": x, "y": y}, files / "bad.pt")
    assert run(files, "--batch-size", "8", stream="bad.pt", store="bad.sqlite") == 0
    out = capsys.readouterr().out
    for index, reason in ((5, "NaN or infinite"), (17, "NaN or infinite"), (40, "label 12 is out of range")):
        assert f"malformed sample {index}: " in out and reason in out.split(f"malformed sample {index}: ")[1]
    assert "3 malformed samples skipped" in out
    # Every good record was decided as in a clean stream without the bad ones.
    good = [i for i in range(60) if i not in (5, 17, 40)]
    torch.save({"x": x[good], "y": y[good]}, files / "good.pt")
    assert run(files, "--batch-size", "8", stream="good.pt", store="good.sqlite") == 0
    index_of = {f"good.pt:{k}": f"bad.pt:{i}" for k, i in enumerate(good)}
    clean = [
        (index_of[s], label, pytest.approx(score, abs=1e-6), x)
        for s, label, score, x in stored(files / "good.sqlite")
    ]
    assert stored(files / "bad.sqlite") == clean
    # --strict: the same report, exit code 1; a rerun remembers the malformed count.
    assert run(files, "--strict", stream="bad.pt", store="strict.sqlite") == 1
    assert run(files, "--strict", stream="bad.pt", store="strict.sqlite") == 1
    assert "3 malformed samples skipped (3 in earlier runs)" in capsys.readouterr().out


def test_a_bad_record_costs_its_batch_one_commit_and_a_trailing_one_is_decided(files, capsys, monkeypatch):
    data = torch.load(files / "stream.pt")
    x = data["x"].clone()
    x[3, 0, 0, 0] = float("nan")  # the first batch of 30 holds one bad record
    x[59] = float("inf")  # the second batch ends with one
    torch.save({"x": x, "y": data["y"]}, files / "bad.pt")
    commits = []
    add_batch = SampleStore.add_batch
    monkeypatch.setattr(SampleStore, "add_batch", lambda *a, **k: commits.append(1) or add_batch(*a, **k))
    assert run(files, "--batch-size", "30", stream="bad.pt") == 0
    assert len(commits) == 2  # one per batch: the bad records were found without scoring each
    assert "2 malformed samples skipped" in capsys.readouterr().out
    # The whole stream was decided, the trailing bad record included: a rerun has nothing to do.
    assert run(files, stream="bad.pt") == 0
    out = capsys.readouterr().out
    assert "resumed at sample 60" in out and "malformed sample 59" not in out
    assert "2 malformed samples skipped (2 in earlier runs)" in out


def test_records_of_different_shapes_in_a_list_stream(files, capsys):
    records = [torch.rand(1, 8, 8) for _ in range(10)]
    records[3] = torch.rand(8, 8)
    records[6] = "pixels"
    torch.save({"x": records, "y": list(range(10))}, files / "list.pt")
    assert run(files, "--batch-size", "4", stream="list.pt") == 0
    out = capsys.readouterr().out
    assert "malformed sample 3: x: expected shape (B, 1, 8, 8)" in out
    assert "malformed sample 6: x[6]: expected a tensor" in out and "2 malformed samples" in out


def _junk_bytes(seed: int) -> bytes:
    return random.Random(seed).randbytes(300)


@pytest.mark.parametrize(
    ("make", "flag", "match"),
    [
        (lambda d: (d / "junk.pt").write_bytes(_junk_bytes(7)), "--stream", "cannot read a .pt file"),
        (lambda d: (d / "junk.pt").write_bytes(_junk_bytes(7)), "--model", "cannot"),
        (lambda d: torch.save({"x": 3, "y": [1]}, d / "junk.pt"), "--stream", "'x': expected a tensor"),
        (
            lambda d: (d / "junk.pt").write_text(
                '{"format": "drip-thresholds", "version": 1, "low": [' + "[" * 9999
            ),
            "--thresholds",
            "JSON",
        ),
        (lambda d: (d / "junk.pt").mkdir(), "--store", "folder"),
    ],
)
def test_damaged_files_are_one_line_errors(files, capsys, make, flag, match):
    make(files)
    argv = {"--model": "model.pt", "--thresholds": "t.json", "--stream": "stream.pt", "--store": "s.sqlite"}
    argv[flag] = "junk.pt"
    code = main(["filter", *(a for k, v in argv.items() for a in (k, str(files / v))), "--quiet"])
    assert code == 2 and match in one_line_error(capsys)


def test_any_damaged_pt_bytes_are_a_clear_error(tmp_path):
    # Unpickling random bytes raised IndexError, KeyError, UnicodeDecodeError, OverflowError...
    # depending on the bytes; os.urandom made the test above flaky before _load_* caught them all.
    junk = tmp_path / "junk.pt"
    for seed in range(300):
        junk.write_bytes(_junk_bytes(seed))
        with pytest.raises(DripInputError, match=r"cannot read a \.pt file"):
            load_tensors(junk)
        with pytest.raises(DripInputError, match="cannot load a model"):
            load_model(junk)


def test_bad_batch_size_is_a_one_line_error(files, capsys):
    assert run(files, "--batch-size", "0") == 2
    assert "--batch-size: expected a positive number, got 0" in one_line_error(capsys)


def test_rerunning_a_finished_evicting_run_changes_nothing(files, capsys):
    flags = ("--capacity-count", "12", "--when-full", "evict", "--batch-size", "5")
    assert run(files, *flags) == 0
    first = stored(files / "kept.sqlite")
    assert run(files, *flags) == 0
    assert stored(files / "kept.sqlite") == first
    assert "resumed at sample 60" in capsys.readouterr().out


def test_another_stream_with_the_same_name_is_refused(files, capsys):
    assert run(files) == 0
    torch.save({"x": torch.rand(60, 1, 8, 8), "y": torch.arange(60) % 10}, files / "stream.pt")
    capsys.readouterr()
    assert run(files) == 2
    assert "holds samples of another file named stream.pt" in one_line_error(capsys)


def test_disk_full_stops_with_one_line_and_a_rerun_completes(files, capsys, monkeypatch):
    assert run(files, "--batch-size", "4", store="uninterrupted.sqlite") == 0
    original = SampleStore._open

    def tiny_disk(self: SampleStore, durable: bool):
        conn = original(self, durable)
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        conn.execute(f"PRAGMA max_page_count = {pages + 1}")
        return conn

    monkeypatch.setattr(SampleStore, "_open", tiny_disk)
    capsys.readouterr()
    assert run(files, "--batch-size", "4") == 2
    err = one_line_error(capsys)
    assert "disk full" in err and "rerun the same command to resume" in err
    monkeypatch.setattr(SampleStore, "_open", original)
    with SampleStore(files / "kept.sqlite") as store:
        assert 0 < len(store) < len(stored(files / "uninterrupted.sqlite"))
    assert run(files, "--batch-size", "4") == 0
    assert stored(files / "kept.sqlite") == stored(files / "uninterrupted.sqlite")


def test_multi_line_error_messages_become_one_line(files, capsys, monkeypatch):
    def fail(*args: object, **kwargs: object) -> None:
        raise DripStoreError("first line\nsecond line\n\tthird")

    monkeypatch.setattr(SampleStore, "__init__", fail)
    assert run(files) == 2
    assert one_line_error(capsys) == "drip: error: first line second line third\n"


def test_rerun_after_a_crash_does_not_replay_what_was_evicted(files, monkeypatch):
    # A model whose (label-target) score is the input's value: one ReLU'd channel, GAP, a linear head.
    model = nn.Sequential(nn.Identity(), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(1, 2))
    with torch.no_grad():
        model[4].weight.fill_(1.0)
        model[4].bias.zero_()
    model.drip_layer = "1"
    torch.save(model.eval(), files / "value.pt")
    Thresholds(low=(-math.inf,) * 2, high=(math.inf,) * 2, target="label").save(files / "wide.json")
    # (label, score, width) into 16 bytes: an uninterrupted run ends holding samples 3 and 4.
    # Replaying from the start into what a crash before sample 5 left (3 and 4, the same) would
    # evict 4 to bring 2 back: only skipping what was decided ends where the uninterrupted run does.
    records = [(1, 0.85, 4), (0, 0.02, 4), (0, 0.86, 2), (1, 0.12, 2), (1, 0.85, 1), (0, 0.21, 3)]
    x = [torch.full((1, 1, width), score * width) for _, score, width in records]
    torch.save({"x": x, "y": [label for label, _, _ in records]}, files / "sized.pt")
    argv = [
        "filter",
        *("--model", str(files / "value.pt"), "--thresholds", str(files / "wide.json")),
        *("--stream", str(files / "sized.pt"), "--capacity-bytes", "16", "--when-full", "evict"),
        *("--batch-size", "1", "--quiet", "--store"),
    ]
    assert main([*argv, str(files / "uninterrupted.sqlite")]) == 0
    original = DripFilter.offer_batch

    def crash_on_the_last(self: DripFilter, *args: object, **kwargs: object) -> object:
        if kwargs["sources"] == ["sized.pt:5"]:
            raise KeyboardInterrupt  # the process dies here, after five committed offers
        return original(self, *args, **kwargs)

    monkeypatch.setattr(DripFilter, "offer_batch", crash_on_the_last)
    with pytest.raises(KeyboardInterrupt):
        main([*argv, str(files / "kept.sqlite")])
    monkeypatch.setattr(DripFilter, "offer_batch", original)
    assert main([*argv, str(files / "kept.sqlite")]) == 0
    expected = stored(files / "uninterrupted.sqlite")
    assert [source for source, *_ in expected] == ["sized.pt:3", "sized.pt:4"]
    assert stored(files / "kept.sqlite") == expected
