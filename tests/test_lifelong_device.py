"""One DRIP device over rounds on tiny data: the round protocol, and a kill anywhere resumes into
the store, model and thresholds of an uninterrupted life."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
import torch
from test_durability import KillAfter, check_sqlite, rows, run_child

from drip.calibrate import calibrate
from drip.data import load_digits
from drip.data.base import LabelledData
from drip.lifelong.device import LifelongDevice, RoundTraining
from drip.models import digits_cnn
from drip.score import DripScorer, score_in_batches
from drip.store import SampleStore
from drip.thresholds import Thresholds, model_fingerprint
from drip.train import TrainConfig, fit, parked_outputs

TRAINING = RoundTraining(steps=12, batch_size=32)
SAMPLE_BYTES = 64 * 4


def fresh() -> torch.nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return digits_cnn()


def life() -> tuple[LabelledData, list[LabelledData], list[LabelledData]]:
    """D0 of classes 0-4, then three rounds: classes 0-4, 5-9 (new), all; each with a reserve."""
    data = load_digits().subset(range(900))
    low, high = (data.y < 5).nonzero().flatten(), (data.y >= 5).nonzero().flatten()
    d0 = data.subset(low[:150])
    parts = [low[150:300], high[:150], torch.cat([low[300:], high[150:]])[:160]]
    rounds = [data.subset(p) for p in parts]
    return d0, [r.subset(range(20, len(r))) for r in rounds], [r.subset(range(20)) for r in rounds]


D0, OFFERED, RESERVES = life()


def initial() -> tuple[torch.nn.Module, Thresholds]:
    model = fresh()
    fit(model, D0.x[:120], D0.y[:120], TrainConfig(steps=20, batch_size=32), progress=False)
    thresholds = calibrate(
        DripScorer(model), D0.x[120:], D0.y[120:], q_high=0.4, num_classes=10, rule="coverage"
    )
    return model, thresholds


INITIAL = initial()  # before any fork: parent and children share it


def device(
    folder: Path,
    training: RoundTraining = TRAINING,
    memory: str = "reservoir",
    capacity: int = 120 * SAMPLE_BYTES,
) -> LifelongDevice:
    model, thresholds = INITIAL
    copy = fresh()
    copy.load_state_dict(model.state_dict())
    copy.eval()
    return LifelongDevice(
        folder, fresh, copy, thresholds, D0, capacity, training, seed=3, memory=memory, stream_batch=16
    )


def live(folder: Path, memory: str = "reservoir", kill_after: int = 0) -> tuple[list[dict], int]:
    """Three rounds; with ``kill_after``, SIGKILLed after that many SQL statements. The records
    and the number of statements run."""
    dev = device(folder, memory=memory)
    counter = dev.store._conn = KillAfter(dev.store._conn, kill_after or -1)
    try:
        return [dev.live_round(r, OFFERED[r], RESERVES[r]) for r in range(3)], len(counter.statements)
    finally:
        dev.close()


def final_state(folder: Path) -> tuple:
    state = torch.load(folder / "model-r2.pt", weights_only=True)
    return (
        rows(folder / "store.sqlite"),
        {k: v.tolist() for k, v in state.items()},
        Thresholds.load(folder / "thresholds-r2.json").to_dict(),
    )


@pytest.fixture(scope="module", params=["reservoir", "budget"])
def uninterrupted(request, tmp_path_factory) -> tuple[Path, list[dict], str, int]:
    folder = tmp_path_factory.mktemp(f"life-{request.param}")
    records, statements = live(folder, request.param)
    return folder, records, request.param, statements


def test_each_round_stays_in_budget_and_recalibrates_on_its_new_model(uninterrupted):
    folder, records, _, _ = uninterrupted
    for r, record in enumerate(records):
        assert record["bytes_used"] <= 120 * SAMPLE_BYTES
        model = fresh()
        model.load_state_dict(torch.load(folder / f"model-r{r}.pt", weights_only=True))
        thresholds = Thresholds.load(folder / f"thresholds-r{r}.json")
        assert thresholds.model_fingerprint == model_fingerprint(model)
        assert (thresholds.q_high, thresholds.rule) == (0.4, "coverage")
        assert thresholds.high == tuple(record["high_next"])
    assert records[0]["high_calibrated"] == list(INITIAL[1].high)
    assert records[1]["high_calibrated"] == records[0]["high_next"]


def test_a_class_that_arrives_late_is_stored(uninterrupted):
    _, records, _, _ = uninterrupted
    assert sum(records[0]["stored_per_class"][5:]) == 0
    assert all(n > 0 for n in records[1]["stored_per_class"][5:])


def test_stored_samples_carry_the_scores_of_the_latest_model(uninterrupted):
    folder, _, _, _ = uninterrupted
    model = fresh()
    model.load_state_dict(torch.load(folder / "model-r2.pt", weights_only=True))
    model.eval()
    with SampleStore(folder / "store.sqlite") as store:
        x, y, stored = store.tensors()
    expected, _ = score_in_batches(DripScorer(model), x.reshape(-1, 1, 8, 8), y)
    torch.testing.assert_close(stored.float(), expected.float())


def test_a_finished_round_is_read_back_not_redone(uninterrupted):
    folder, records, memory, _ = uninterrupted
    again = device(folder, memory=memory)
    try:
        assert again.live_round(1, OFFERED[1], RESERVES[1]) == records[1]
        assert (
            model_fingerprint(again.model) == Thresholds.load(folder / "thresholds-r1.json").model_fingerprint
        )
    finally:
        again.close()


def test_scratch_retraining_starts_from_the_initialisation_and_parks_what_it_never_trained(tmp_path):
    dev = device(tmp_path, RoundTraining(steps=12, batch_size=32, retrain="scratch"))
    try:
        dev.live_round(0, OFFERED[0], RESERVES[0])
        x, y = dev.training_set()
    finally:
        dev.close()
    assert set(y.tolist()) == {0, 1, 2, 3, 4}
    expected = fresh()
    fit(expected, x, y, TRAINING.config, seed=3 * 1000 + 1, progress=False, park_lacking=True)
    state = torch.load(tmp_path / "model-r0.pt", weights_only=True)
    for name, value in expected.state_dict().items():
        torch.testing.assert_close(state[name], value)
    retrained = fresh()
    retrained.load_state_dict(state)
    assert parked_outputs(retrained).nonzero().flatten().tolist() == [5, 6, 7, 8, 9]


@pytest.mark.parametrize("share", [0.001, 0.1, 0.25, 0.4, 0.55, 0.7, 0.85, 0.999])
def test_a_device_killed_after_any_statement_resumes_into_the_uninterrupted_life(
    uninterrupted, tmp_path, share
):
    expected, _, memory, statements = uninterrupted
    folder = tmp_path / "killed"
    kill_after = max(1, round(share * statements))
    assert run_child(lambda: live(folder, memory, kill_after)) == -signal.SIGKILL
    check_sqlite(folder / "store.sqlite")
    live(folder, memory)
    assert final_state(folder) == final_state(expected)


def test_a_device_killed_while_it_retrains_resumes_into_the_uninterrupted_life(uninterrupted, tmp_path):
    expected, _, memory, _ = uninterrupted
    folder = tmp_path / "killed"
    # Killed once round 1's model exists: in its recalibration, rescoring or the next round.
    code = run_child(lambda: live(folder, memory), kill_when=lambda: (folder / "model-r1.pt").exists())
    assert code == -signal.SIGKILL
    live(folder, memory)
    assert final_state(folder) == final_state(expected)
