"""The lifelong protocol on a slice of digits: the same bytes and steps for every arm, the reserve
never stored, tests on the classes seen so far, resume of finished rounds, the report and CLI."""

from __future__ import annotations

import json
import shutil
import signal

import pytest
from test_durability import run_child

from drip import report as drip_report
from drip.cli import lifelong as cli_lifelong
from drip.cli import main
from drip.data import load_digits
from drip.data.regimes import graded_difficulty
from drip.errors import DripInputError
from drip.lifelong import memory, protocol, scenarios
from drip.lifelong.metrics import forgetting
from drip.lifelong.protocol import LIFELONG_ARMS, LifelongConfig, plan_life, round_test, run_lifelong
from drip.lifelong.report import arm_titles, load_results, write_report
from drip.report import read_results
from drip.store import SampleStore

DATA = load_digits().subset(range(700))
CONFIG = LifelongConfig(
    rounds=4, seeds=1, steps=30, round_steps=8, q_high=0.4, budget_fraction=0.3, calibration_share=0.15
)
TIMINGS = ("stream_s", "train_s", "elapsed_s", "one_training_s", "cost_ratio")


def without_timings(value):
    if isinstance(value, dict):
        return {k: without_timings(v) for k, v in value.items() if k not in TIMINGS}
    if isinstance(value, list):
        return [without_timings(v) for v in value]
    return value


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("lifelong")
    return out, run_lifelong(CONFIG, DATA, out, progress=False)


def test_every_capped_arm_stays_in_the_same_bytes_and_trains_the_same_steps(run):
    _, results = run
    seed = results["seeds"][0]
    offered = 0
    for record in seed["rounds"]:
        offered += record["offered"]
        for arm, figures in record["arms"].items():
            assert figures["trainings"] == 1
            if arm == "unbounded":
                assert sum(figures["stored_per_class"]) == offered
            else:
                assert figures["bytes"] <= seed["capacity_bytes"]
    assert seed["capacity_bytes"] == int(0.3 * seed["offered_bytes"])
    assert set(seed["summary"]) == set(LIFELONG_ARMS)


def test_every_sample_lands_once_and_each_round_holds_back_its_reserve():
    life = plan_life(CONFIG, DATA, None, 0)
    parts = [life.d0, life.test, *life.offered, *life.reserves]
    assert sum(len(p) for p in parts) == len(DATA)
    for offered, reserve in zip(life.offered, life.reserves):
        assert len(reserve) == round(0.15 * (len(offered) + len(reserve)))


def test_class_incremental_ships_with_the_first_classes_and_tests_what_was_seen():
    life = plan_life(CONFIG, DATA, None, 0)
    first = set(life.offered[0].y.tolist())
    assert set(life.d0.y.tolist()) <= first < set(range(10))
    seen = set(first)
    for r, offered in enumerate(life.offered):
        seen |= set(offered.y.tolist())
        assert set(round_test(CONFIG, life, r, 0).y.tolist()) == seen


def test_the_drip_store_holds_only_offered_samples(run):
    out, results = run
    with SampleStore(out / "seed0" / "drip" / "store.sqlite") as store:
        sources = [s.source for s in store]
    offered = results["seeds"][0]["sizes"]["offered"]
    for source in sources:
        r, i = source.removeprefix("r").split(":")
        assert int(i) < offered[int(r)]


def test_a_killed_run_resumes_into_the_uninterrupted_results(run, tmp_path):
    _, expected = run
    out = tmp_path / "killed"
    code = run_child(
        lambda: run_lifelong(CONFIG, DATA, out, progress=False),
        kill_when=lambda: (out / "seed0" / "round-r0.json").exists(),
        jitter_s=0.05,
    )
    assert code == -signal.SIGKILL
    resumed = run_lifelong(CONFIG, DATA, out, progress=False)
    assert without_timings(resumed) == without_timings(expected)


def test_a_run_with_another_configuration_is_refused(run):
    out, _ = run
    other = LifelongConfig(**{**CONFIG.__dict__, "round_steps": 9})
    with pytest.raises(DripInputError, match="another configuration"):
        run_lifelong(other, DATA, out, progress=False)


def copy_of_seed0(out, folder, edit_config):
    """``out``'s seed 0 copied into ``folder``, each saved round's config changed by ``edit_config``
    (as files an earlier version wrote)."""
    shutil.copytree(out / "seed0", folder / "seed0")
    for path in (folder / "seed0").glob("round-r*.json"):
        saved = json.loads(path.read_text())
        edit_config(saved["config"])
        path.write_text(json.dumps(saved))
    return folder


def test_a_run_with_more_seeds_resumes_the_seeds_done(run, tmp_path):
    out, expected = run
    more = copy_of_seed0(out, tmp_path / "more", lambda config: config.update(seeds=1))
    stamps = {p: p.stat().st_mtime_ns for p in (more / "seed0").glob("round-r*.json")}
    results = run_lifelong(LifelongConfig(**{**CONFIG.__dict__, "seeds": 2}), DATA, more, progress=False)
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # seed 0 read back, not rerun
    assert without_timings(results["seeds"][0]) == without_timings(expected["seeds"][0])
    assert len(results["seeds"]) == 2


@pytest.mark.parametrize("setting, former_value", [("proxy_fraction", 0.2), ("shares", "equal")])
def test_rounds_saved_before_a_setting_existed_ran_with_its_former_value(
    run, tmp_path, setting, former_value
):
    out, expected = run
    older = copy_of_seed0(out, tmp_path / "older", lambda config: config.pop(setting))
    with pytest.raises(DripInputError, match="another configuration"):
        run_lifelong(CONFIG, DATA, older, progress=False)
    former = LifelongConfig(**{**CONFIG.__dict__, setting: former_value})
    results = run_lifelong(former, DATA, older, progress=False)
    assert without_timings(results["seeds"][0]) == without_timings(expected["seeds"][0])


def test_forgetting_is_best_earlier_minus_final_over_classes_seen_before():
    rounds = [{"0": 0.9}, {"0": 0.7, "1": 0.8}, {"0": 0.6, "1": 0.9, "2": 0.5}]
    assert forgetting(rounds) == pytest.approx(((0.9 - 0.6) + (0.8 - 0.9)) / 2)
    assert forgetting(rounds[:1]) is None


def test_the_report_writes_its_table_and_plots(run):
    out, results = run
    summary = write_report(load_results(out / "results.json"), out)
    assert summary["arms"]["drip"]["average_accuracy"]["per_seed"] == [
        results["seeds"][0]["summary"]["drip"]["average_accuracy"]
    ]
    text = (out / "summary.md").read_text()
    assert "class-balanced reservoir (GDumb)" in text and "DRIP minus each arm" in text
    assert "DRIP (band + reservoir at the band's class shares)" in text
    assert arm_titles({})["drip"] == "DRIP (band + class-balanced reservoir)"  # runs before shares
    for name in ("accuracy_over_rounds.png", "store_composition.png"):
        assert (out / name).stat().st_size > 10_000


def test_bad_settings_are_refused():
    for bad in (
        {"scenario": "seasons"},
        {"arms": ("drip", "oracle")},
        {"budget_fraction": 0.0},
        {"rounds": 0},
        {"shares": "fair"},
        {"difficulty": "hard"},
    ):
        with pytest.raises(DripInputError):
            LifelongConfig(**bad)


def test_a_graded_run_names_its_data_and_stores_the_blended_samples(tmp_path):
    graded = LifelongConfig(**{**CONFIG.__dict__, "difficulty": "graded", "rounds": 2, "arms": ("drip",)})
    results = run_lifelong(graded, DATA, tmp_path, progress=False)
    assert results["data_name"] == "digits-graded-lifelong-class-incremental"
    with SampleStore(tmp_path / "seed0" / "drip" / "store.sqlite") as store:
        stored, _, _ = store.tensors()
    rows = {tuple(x.flatten().tolist()) for x in graded_difficulty(DATA, seed=0).x}
    plain = {tuple(x.flatten().tolist()) for x in DATA.x}
    stored = [tuple(x.tolist()) for x in stored.reshape(len(stored), -1)]
    assert all(x in rows for x in stored) and any(x not in plain for x in stored)


def test_the_cli_offers_exactly_the_library_names():
    assert cli_lifelong.SCENARIO_NAMES == scenarios.SCENARIOS
    assert cli_lifelong.ARM_NAMES == protocol.LIFELONG_ARMS
    assert cli_lifelong.SHARE_NAMES == memory.SHARES


def test_drip_lifelong_runs_and_reports(tmp_path, capsys):
    out = tmp_path / "cli"
    argv = ["lifelong", "--dataset", "digits", "--rounds", "2", "--seeds", "1", "--steps", "20"]
    argv += ["--round-steps", "5", "--q-high", "0.4", "--arms", "drip", "reservoir"]
    argv += ["--out", str(out), "--quiet"]
    assert main(argv) == 0
    assert "DRIP minus each arm" in capsys.readouterr().out
    results = json.loads((out / "results.json").read_text())
    assert results["config"]["arms"] == ["drip", "reservoir"]
    assert (out / "accuracy_over_rounds.png").is_file()


def test_drip_report_rerenders_a_lifelong_run_reading_its_results_once(run, capsys, monkeypatch):
    out, _ = run
    (out / "summary.md").unlink()
    reads = []
    monkeypatch.setattr(drip_report, "read_results", lambda path: reads.append(path) or read_results(path))
    assert main(["report", str(out)]) == 0
    assert reads == [out / "results.json"]
    assert "DRIP minus each arm" in capsys.readouterr().out
    assert "DRIP minus each arm" in (out / "summary.md").read_text()
