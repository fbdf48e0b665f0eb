"""The command line: demo end to end, calibrate + filter on a user's files, clear errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from drip.cli import build_parser, main
from drip.models import digits_cnn
from drip.report import load_results, summarize, write_report
from drip.store import SampleStore
from drip.thresholds import Thresholds


def test_demo_runs_end_to_end_and_writes_every_file(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--seeds", "1", "--steps", "25", "--out", str(out), "--quiet"]) == 0
    for name in (
        "summary.json",
        "summary.md",
        "results.json",
        "scores.png",
        "heatmaps.png",
        "kept_per_class.png",
    ):
        assert (out / name).stat().st_size > 0, name
    summary = json.loads((out / "summary.json").read_text())
    for key in (
        "dataset",
        "seeds",
        "storage_saving",
        "kept",
        "seen",
        "accuracy",
        "q_high",
        "statistic",
        "training_phase_cost_ratio",
    ):
        assert key in summary, key
    assert set(summary["accuracy"]) == {"full", "drip", "drip-paper", "random", "loss"}
    for arm in summary["accuracy"].values():
        assert set(arm) == {"mean", "std", "per_seed"} and 0 <= arm["mean"] <= 1
    seen, kept = summary["seen"]["mean"], summary["kept"]["mean"]
    assert summary["storage_saving"]["mean"] == pytest.approx(1 - kept / seen)
    # The store on disk holds exactly what the filter kept.
    with SampleStore(out / "seed0" / "kept.sqlite") as store:
        assert len(store) == kept
    printed = capsys.readouterr().out
    assert "| DRIP |" in printed and "storage saving" in printed
    # The report re-renders from results.json alone.
    (out / "summary.md").unlink()
    assert write_report(load_results(out / "results.json"), out) == summarize(
        load_results(out / "results.json")
    )
    assert (out / "summary.md").read_text().startswith("# drip: digits")


@pytest.fixture
def user_files(tmp_path):
    torch.manual_seed(0)
    model = digits_cnn().eval()
    torch.save(model, tmp_path / "model.pt")
    torch.save({"x": torch.rand(300, 1, 8, 8), "y": torch.arange(300) % 10}, tmp_path / "heldout.pt")
    torch.save({"x": torch.rand(100, 1, 8, 8), "y": torch.arange(100) % 10}, tmp_path / "stream.pt")
    return tmp_path


def filter_args(d) -> list[str]:
    return [
        "filter",
        "--model",
        str(d / "model.pt"),
        "--thresholds",
        str(d / "t.json"),
        "--stream",
        str(d / "stream.pt"),
        "--store",
        str(d / "kept.sqlite"),
        "--quiet",
    ]


def test_calibrate_then_filter_on_user_files(user_files, capsys):
    d = user_files
    assert (
        main(
            [
                "calibrate",
                "--model",
                str(d / "model.pt"),
                "--data",
                str(d / "heldout.pt"),
                "--q-high",
                "0.3",
                "--out",
                str(d / "t.json"),
                "--quiet",
            ]
        )
        == 0
    )
    thresholds = Thresholds.load(d / "t.json")
    assert thresholds.q_high == 0.3 and thresholds.num_classes == 10
    assert main(filter_args(d)) == 0
    out = capsys.readouterr().out
    assert "storage saving" in out
    with SampleStore(d / "kept.sqlite") as store:
        assert 50 <= len(store) <= 90  # about 70% of 100
        first = len(store)
    # Running the same stream again stores nothing twice (stable ids: file name + index).
    assert main(filter_args(d)) == 0
    with SampleStore(d / "kept.sqlite") as store:
        assert len(store) == first


def test_calibrate_search_mode_saves_the_trained_scorer(user_files):
    d = user_files
    assert (
        main(
            [
                "calibrate",
                "--model",
                str(d / "model.pt"),
                "--data",
                str(d / "heldout.pt"),
                "--search",
                "--steps",
                "10",
                "--out",
                str(d / "t.json"),
                "--quiet",
            ]
        )
        == 0
    )
    scorer_model = torch.load(d / "t.model.pt", weights_only=False)
    Thresholds.load(d / "t.json").check_model(scorer_model)


def test_errors_are_one_line_and_exit_code_2(user_files, capsys):
    d = user_files
    (d / "bad.json").write_text("{broken")
    code = main(
        [
            "filter",
            "--model",
            str(d / "model.pt"),
            "--thresholds",
            str(d / "bad.json"),
            "--stream",
            str(d / "stream.pt"),
            "--store",
            str(d / "kept.sqlite"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("drip: error:") and err.count("\n") == 1
    code = main(
        [
            "calibrate",
            "--model",
            str(d / "stream.pt"),
            "--data",
            str(d / "heldout.pt"),
            "--q-high",
            "0.3",
            "--out",
            str(d / "t.json"),
        ]
    )
    assert code == 2 and "expected a torch.save'd nn.Module" in capsys.readouterr().err


@pytest.mark.parametrize(
    "command",
    [[], ["demo"], ["calibrate"], ["filter"], ["experiment"], ["report"], ["data"], ["data", "fetch"]],
)
def test_every_help_explains_itself(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*command, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "usage: drip" in text and len(text) > 300
    assert "%%" not in text  # argparse only %-formats descriptions that name %(prog)


def test_console_entry_point_runs():
    result = subprocess.run([sys.executable, "-m", "drip.cli", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "DRIP keeps only the informative samples" in result.stdout


def test_parser_knows_every_command():
    assert {"demo", "calibrate", "filter"} <= set(build_parser()._subparsers._group_actions[0].choices)


def test_command_line_names_every_data_set_the_library_has():
    # The CLI lists them itself so that --help need not import torch; they must not drift apart.
    from drip.cli import DATASETS, FETCHABLE
    from drip.data import FETCHERS, LOADERS

    assert set(DATASETS) == set(LOADERS) and set(FETCHABLE) == set(FETCHERS)


def test_an_error_line_is_one_write(monkeypatch, tmp_path):
    # Ranks of a torchrun job share stderr, which writes through: print's separate write of the
    # newline let two ranks' error lines run together (seen in CI).
    writes = []

    class Recorder:
        def write(self, text):
            writes.append(text)

        def flush(self):
            pass

    monkeypatch.setattr(sys, "stderr", Recorder())
    assert main(["report", str(tmp_path / "nothing-here")]) == 2
    assert len(writes) == 1 and writes[0].startswith("drip: error: ") and writes[0].endswith("\n")
