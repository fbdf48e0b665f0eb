"""The protocol end to end on digits at a tiny budget: arms, equal storage, noise, sweep, report."""

from __future__ import annotations

import json

import pytest
import torch
from fixtures import write_cifar_folder, write_mnist_idx, write_plant_tree, write_speech_corpus

from drip import experiment
from drip.arms import ARMS, BANDS, EQUAL_COUNT, StreamSignals, generator_for
from drip.cli import main
from drip.data import load_digits
from drip.errors import DripInputError
from drip.experiment import DATASET_DEFAULTS, ExperimentConfig, corrupt, planned_trainings, run_experiment
from drip.report import load_results, markdown, summarize, write_report


@pytest.fixture(scope="module")
def noisy_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("exp")
    config = ExperimentConfig(
        seeds=1,
        steps=60,
        q_high=0.3,
        q_low=0.05,
        sweep=(0.2, 0.3, 0.4),
        noise="label",
        noise_rate=0.3,
        pool_limit=900,
    )
    return out, run_experiment(config, load_digits(), out, progress=False)


def test_every_arm_and_equal_storage(noisy_run):
    _, results = noisy_run
    seed = results["seeds"][0]
    arms = seed["arms"]
    assert set(arms) == {*ARMS, "full-clean"}
    kept, counters = seed["stream"]["kept"], seed["stream"]["counters"]
    assert kept == sum(counters["kept"]) == arms["drip"]["kept"]  # the filter's and the store's count
    for arm in EQUAL_COUNT:
        assert arms[arm]["kept"] == kept, arm
        assert arms[arm]["steps"] == 60  # the same optimiser-step budget for every arm
    assert arms["full"]["kept"] == sum(counters["seen"])  # the filter was offered the whole stream


def test_the_sweep_runs_every_arm_at_every_band(noisy_run):
    _, results = noisy_run
    seed = results["seeds"][0]
    sweep, arms = seed["sweep"], seed["arms"]
    assert [p["q_high"] for p in sweep] == [0.2, 0.3, 0.4]
    assert sweep[0]["kept"] > sweep[1]["kept"] > sweep[2]["kept"]
    for point in sweep:
        assert set(point["arms"]) == set(ARMS) - {"full"}
        assert point["arms"]["drip"]["kept"] == point["kept"]
        for arm in EQUAL_COUNT:
            assert point["arms"][arm]["kept"] == point["kept"], (point["q_high"], arm)
        for arm in BANDS:  # each band stores what its own band keeps
            saving = 1 - point["arms"][arm]["kept"] / seed["stream"]["seen"]
            assert point["arms"][arm]["saving"] == pytest.approx(saving)
    # At DRIP's own band (0.3) the sweep reuses the arms instead of training them again.
    assert sweep[1]["arms"] == {arm: arms[arm] for arm in sweep[1]["arms"]}


def test_noise_statistics_are_consistent(noisy_run):
    _, results = noisy_run
    seed = results["seeds"][0]
    corrupted = torch.tensor(seed["stream"]["corrupted"], dtype=torch.bool)
    kept = torch.tensor(seed["stream"]["kept_mask"], dtype=torch.bool)
    assert int(corrupted.sum()) == round(0.3 * len(corrupted))
    dropped = ~kept
    drip = seed["arms"]["drip"]
    assert drip["noise_precision"] == pytest.approx(float((dropped & corrupted).sum() / dropped.sum()))
    assert drip["noise_recall"] == pytest.approx(float((dropped & corrupted).sum() / corrupted.sum()))
    assert seed["arms"]["full"]["noise_recall"] == 0.0
    assert 0 <= seed["arms"]["full"]["noise_fit"] <= 1


def test_report_renders_from_results_json_alone(noisy_run):
    out, results = noisy_run
    for name in ("summary.md", "summary.json"):
        (out / name).unlink(missing_ok=True)
    write_report(load_results(out / "results.json"), out)
    # The same summary as the one made from the run's results in memory.
    assert json.loads((out / "summary.json").read_text()) == json.loads(json.dumps(summarize(results)))
    for name in ("scores.png", "heatmaps.png", "accuracy_vs_saving.png", "noise_scores.png"):
        assert (out / name).stat().st_size > 10_000, name
    text = markdown(summarize(results))
    assert "corrupted dropped" in text and "| q_high 0.3 |" in text and "FULL (clean stream)" in text
    assert text.splitlines()[2].startswith("**DRIP stored")  # the one-line verdict comes first


def test_label_noise_flips_to_another_class_and_gaussian_keeps_labels():
    data = load_digits().subset(range(500))
    generator = torch.Generator().manual_seed(0)
    flipped, mask = corrupt(data, "label", 0.4, 1.0, generator)
    assert int(mask.sum()) == 200
    assert (flipped.y[mask] != data.y[mask]).all() and (flipped.y[~mask] == data.y[~mask]).all()
    noisy, mask = corrupt(data, "gaussian", 0.2, 1.0, generator)
    assert torch.equal(noisy.y, data.y)
    assert not torch.equal(noisy.x[mask], data.x[mask]) and torch.equal(noisy.x[~mask], data.x[~mask])


def test_epoch_budget_gives_smaller_sets_fewer_steps(tmp_path):
    config = ExperimentConfig(
        seeds=1,
        steps=20,
        q_high=0.4,
        budget="epochs",
        sweep=(),
        arms=("full", "drip", "random"),
        pool_limit=600,
    )
    seed = run_experiment(config, load_digits(), tmp_path, progress=False)["seeds"][0]
    arms = seed["arms"]
    assert arms["full"]["steps"] == 20
    expected = round(20 * arms["drip"]["train_size"] / arms["full"]["train_size"])
    assert arms["drip"]["steps"] == arms["random"]["steps"] == expected < 20


def test_bad_configs_are_refused():
    with pytest.raises(DripInputError, match="arms"):
        ExperimentConfig(arms=("full", "random"))
    with pytest.raises(DripInputError, match="target"):
        ExperimentConfig(target="loss")
    with pytest.raises(DripInputError, match="noise"):
        ExperimentConfig(noise="salt")
    with pytest.raises(DripInputError, match="budget"):
        ExperimentConfig(budget="hours")


@pytest.mark.parametrize("dataset", ["mnist", "cifar10", "speech-commands", "plant-village"])
def test_drip_experiment_runs_on_each_data_set_fixture(tmp_path, dataset):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    if dataset == "mnist":
        write_mnist_idx(data_dir, n_train=200, n_test=30)
    elif dataset == "cifar10":
        write_cifar_folder(data_dir, per_batch=40, test=20)
    elif dataset == "speech-commands":
        write_speech_corpus(data_dir, per_word=20)
    else:
        write_plant_tree(data_dir, per_class=20)
    out = tmp_path / "run"
    argv = [
        "experiment",
        "--dataset",
        dataset,
        "--data-dir",
        str(data_dir),
        "--seeds",
        "1",
        "--steps",
        "3",
        "--q-high",
        "0.3",
        "--sweep",
        "0.3",
        "--noise",
        "gaussian",
        "--noise-rate",
        "0.2",
        "--out",
        str(out),
        "--quiet",
    ]
    assert main(argv) == 0
    results = load_results(out / "results.json")
    assert results["dataset"] == dataset and results["config"]["model"] == DATASET_DEFAULTS[dataset]["model"]
    assert set(results["seeds"][0]["arms"]) == {*ARMS, "full-clean"}
    for name in (
        "summary.md",
        "summary.json",
        "scores.png",
        "heatmaps.png",
        "accuracy_vs_saving.png",
        "noise_scores.png",
    ):
        assert (out / name).is_file(), name
    (out / "summary.md").unlink()
    assert main(["report", str(out), "--quiet"]) == 0
    # Any IDX folder loads as mnist: the report names the folder's data set, not "mnist".
    name = "data (IDX)" if dataset == "mnist" else dataset
    assert (out / "summary.md").read_text().startswith(f"# drip: {name}-gaussian20")
    assert "kept_per_class.png" in {p.name for p in out.iterdir()}


def test_results_of_another_version_are_refused(tmp_path, capsys):
    (tmp_path / "results.json").write_text(json.dumps({"format": "drip-results", "version": 1, "seeds": []}))
    assert main(["report", str(tmp_path)]) == 2
    assert "expected drip results version 4, got ('drip-results', 1)" in capsys.readouterr().err


def test_report_of_a_missing_run_is_one_clear_line(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("drip: error:") and "results.json" in err and err.count("\n") == 1


def without_times(seed: dict) -> tuple[dict, dict]:
    """A seed's record without its wall times (in the record, its phase and its thresholds)."""
    seed = dict(seed)
    seed.pop("elapsed_s")
    phase = dict(seed.pop("training_phase"))
    for key in ("elapsed_s", "one_training_s", "cost_ratio"):
        phase.pop(key)
    seed["thresholds"] = {k: v for k, v in seed["thresholds"].items() if k != "metadata"}
    return seed, phase


def test_a_finished_seed_is_not_redone_and_another_config_is_refused(tmp_path, monkeypatch, capsys):
    config = ExperimentConfig(seeds=2, steps=5, q_high=0.3, sweep=(0.3,), arms=("full", "drip", "random"))
    data = load_digits().subset(range(400))
    calls = []
    real_fit = experiment.fit
    monkeypatch.setattr(experiment, "fit", lambda *a, **k: calls.append(1) or real_fit(*a, **k))
    first = run_experiment(config, data, tmp_path, progress=False)
    # One seed's trainings: the phase's own (not counted here), full, drip, random; the sweep's
    # band is the chosen one, so it trains nothing more.
    assert len(calls) == 2 * (planned_trainings(config) - 1 - 2)
    (tmp_path / "seed1" / "record.json").unlink()  # as if the run was killed during seed 1
    calls.clear()
    again = run_experiment(config, data, tmp_path, progress=True)
    assert len(calls) == 3  # seed 0 read back, seed 1 redone
    said = capsys.readouterr()
    assert (
        f"seed 0: finished by an earlier run, read back from {tmp_path / 'seed0' / 'record.json'}"
        in said.out + said.err
    )
    assert "seed 1: finished" not in said.out + said.err
    assert again["seeds"][0] == first["seeds"][0]
    assert without_times(again["seeds"][1]) == without_times(first["seeds"][1])
    with pytest.raises(DripInputError, match="another configuration"):
        run_experiment(ExperimentConfig(**{**config.__dict__, "steps": 6}), data, tmp_path, progress=False)


def test_a_seed_recorded_before_the_proxy_share_was_a_setting_ran_with_the_former_share(tmp_path):
    config = ExperimentConfig(seeds=1, steps=5, q_high=0.3, sweep=(), arms=("drip",), proxy_fraction=0.2)
    data = load_digits().subset(range(300))
    first = run_experiment(config, data, tmp_path, progress=False)
    path = tmp_path / "seed0" / "record.json"
    saved = json.loads(path.read_text())
    del saved["config"]["proxy_fraction"]
    path.write_text(json.dumps(saved))
    assert run_experiment(config, data, tmp_path, progress=False)["seeds"] == first["seeds"]
    with pytest.raises(DripInputError, match="another configuration"):
        other = ExperimentConfig(**{**config.__dict__, "proxy_fraction": 0.64})
        run_experiment(other, data, tmp_path, progress=False)


def test_paper_arm_uses_the_papers_score_on_the_same_model(tmp_path):
    config = ExperimentConfig(seeds=1, steps=20, q_high=0.4, sweep=(), arms=("drip", "drip-paper"))
    seed = run_experiment(config, load_digits().subset(range(500)), tmp_path, progress=False)["seeds"][0]
    assert (seed["thresholds"]["statistic"], seed["thresholds"]["target"]) == ("net", "margin")
    paper = {"statistic": "mean", "target": "label", "rule": "per-class"}
    label = ExperimentConfig(**{**config.__dict__, **paper})
    same = run_experiment(label, load_digits().subset(range(500)), tmp_path / "label", progress=False)
    arms = same["seeds"][0]["arms"]
    assert arms["drip-paper"] == arms["drip"]  # the same score, rule and band: not trained twice


def test_the_same_run_twice_gives_the_same_results(tmp_path):
    """On one machine with one thread a run is reproducible to the bit (only wall times differ)."""
    config = ExperimentConfig(seeds=1, steps=15, q_high=0.4, sweep=(0.3,), arms=("full", "drip", "random"))
    data = load_digits().subset(range(400))
    first = run_experiment(config, data, tmp_path / "a", progress=False)
    second = run_experiment(config, data, tmp_path / "b", progress=False)
    assert without_times(first["seeds"][0]) == without_times(second["seeds"][0])


def test_a_byte_budget_adds_the_adaptive_arm_and_the_reservoir_at_its_size(tmp_path):
    budget = 150 * 64 * 4  # 150 samples of 1 x 8 x 8 float32
    config = ExperimentConfig(
        seeds=1, steps=20, q_high=0.4, sweep=(), arms=("full", "drip"), budget_bytes=budget, pool_limit=800
    )
    results = run_experiment(config, load_digits(), tmp_path, progress=False)
    seed = results["seeds"][0]
    arms = seed["arms"]
    assert {"drip-budget", "reservoir-budget"} <= set(arms)
    assert seed["budget"]["bytes_used"] <= budget and arms["drip-budget"]["kept"] == 150
    assert arms["reservoir-budget"]["kept"] == arms["drip-budget"]["kept"]
    text = markdown(summarize(results))
    assert f"of its {budget}" in text and "adaptive to --budget-bytes" in text


def test_plots_name_the_map_the_run_used(noisy_run, tmp_path, monkeypatch):
    # It said "Grad-CAM" for every run, also for the default XGrad-CAM.
    from matplotlib.figure import Figure

    from drip.report import plot_gallery, plot_scores

    labels = []
    monkeypatch.setattr(
        Figure, "savefig", lambda figure, *args, **kwargs: labels.append(figure._supxlabel.get_text())
    )
    _, results = noisy_run
    plot_scores(results, tmp_path / "scores.png")
    plot_scores({**results, "config": {**results["config"], "cam": "gradcam"}}, tmp_path / "paper.png")
    assert f"of the XGrad-CAM map of the {results['config']['target']} target" in labels[0]
    assert "of the Grad-CAM map" in labels[1]
    titles = []
    monkeypatch.setattr(
        Figure, "savefig", lambda figure, *args, **kwargs: titles.append(figure._suptitle.get_text())
    )
    plot_gallery(results, tmp_path / "heatmaps.png")
    assert f"with XGrad-CAM of the {results['config']['target']} target" in titles[0]


def test_each_rule_is_an_arm_and_the_one_drip_uses_is_not_trained_twice(tmp_path):
    config = ExperimentConfig(
        seeds=1,
        steps=20,
        q_high=0.5,
        sweep=(),
        rule="pooled",
        arms=("drip", "drip-per-class", "drip-pooled", "drip-coverage"),
    )
    seed = run_experiment(config, load_digits().subset(range(600)), tmp_path, progress=False)["seeds"][0]
    arms = seed["arms"]
    assert seed["thresholds"]["rule"] == "pooled"
    assert arms["drip-pooled"] == arms["drip"]
    for record in arms.values():
        assert sum(record["kept_per_class"]) == record["kept"]
    # At the same band the rules keep about the same share, but spend it differently. (Here every
    # class has under 30 calibration points, so per-class quantiles fall back to the pooled one.)
    assert abs(arms["drip-coverage"]["kept"] - arms["drip"]["kept"]) <= 0.1 * arms["drip"]["kept"]
    assert arms["drip-coverage"]["kept_per_class"] != arms["drip"]["kept_per_class"]
    assert planned_trainings(config) == 1 + 3  # the cheap phase, then drip, per-class, coverage


@pytest.mark.parametrize("control", ["random", "reservoir"])
def test_random_controls_do_not_share_the_corruptions_draw(tmp_path, control):
    """RANDOM once took a prefix of the very permutation that chose the corrupted samples, and so
    kept every one of them whenever it kept more samples than were corrupted."""
    config = ExperimentConfig(seeds=1, steps=5, q_high=0.5, sweep=(), arms=("drip",), noise="label")
    data = load_digits()
    seed = run_experiment(config, data, tmp_path, progress=False)["seeds"][0]
    corrupted = torch.tensor(seed["stream"]["corrupted"], dtype=torch.bool)
    _, stream, _ = experiment.seed_splits(config, data, None, 0)
    noisy, again = corrupt(stream, "label", 0.2, 1.0, generator_for(0, "corruption"))
    assert torch.equal(again, corrupted)  # the run corrupts from the corruption's own stream
    signals = StreamSignals(noisy, torch.zeros(0), {}, torch.zeros(0), 0.0, "coverage", 0)
    half = len(stream) // 2
    kept = signals.equal_count(control, half)
    share = float((kept & corrupted).sum() / corrupted.sum())
    # A random half keeps about half of the corrupted samples (binomial sd about 0.04 here).
    assert abs(share - 0.5) < 0.15
