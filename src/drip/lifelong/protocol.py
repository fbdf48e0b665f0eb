"""The lifelong protocol: DRIP's device against the rehearsal buffers, round by round, over seeds.

Per seed: a test set is split off (where the data set has none); the rest is cut into rounds by
the scenario (``drip.lifelong.scenarios``). The initial set D0 is ``initial_fraction`` of it,
stratified, from the classes round 0 holds (in ``class-incremental`` the device ships knowing its
first classes only); D0's samples leave the rounds. The Training Phase runs on D0 once, and every
arm starts from its model. Each round, a ``calibration_share`` of the round's samples is held back
as the calibration reserve (no arm stores or trains on it; DRIP recalibrates on it), and the rest
is offered to every arm in the same order. Each arm then retrains its own model from what it
stored (and D0, when it stays on the device) with the same optimiser steps, and is tested on the
test samples of every class seen so far (in ``domain``, shifted as the round's inputs are).

``difficulty="graded"`` runs the harder data set of ``drip.data.regimes`` (classes of graded
difficulty), where it matters which classes the storage goes to.

Arms, all holding at most the same bytes but ``unbounded``:

* ``drip``: ``LifelongDevice``: DRIP's band, recalibrated each round, into a durable store whose
  full state is a reservoir of what the band keeps, each class's share of the bytes following the
  band's (``shares="band"``; ``"equal"``: class-balanced) (``drip.lifelong.memory``);
* ``drip-budget``: the same device whose band tightens to fit the bytes instead (``drip.budget``);
* ``random``: random admission at the rate that would fill the store within a round, random
  eviction;
* ``reservoir``: reservoir sampling over the whole life;
* ``class-balanced``: the class-balanced reservoir (CBRS; GDumb's sampler is its greedy cousin);
* ``margin``: an online learner-signal rule from the same forward pass: the store keeps, class
  balanced, the samples of smallest margin under the arm's current model (rescored each round);
* ``unbounded``: everything offered (the upper bound on what storage can give).

Each finished round (every arm's state, model and record) is saved at once: an interrupted run
resumes with the next round, and DRIP's device resumes inside its round.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ..arms import generator_for
from ..atomic import write_atomically
from ..calibrate import DEFAULT_CANDIDATES, DEFAULT_PROXY_FRACTION, FORMER_PROXY_FRACTION, training_phase
from ..data.base import LabelledData, stratified_split
from ..data.regimes import DIFFICULTIES, with_difficulty
from ..errors import DripInputError
from ..models import build_model
from ..rules import DEFAULT_Q_LOW, DEFAULT_RULE, RULES
from ..score import DEFAULT_CAM, DEFAULT_STATISTIC, DEFAULT_TARGET
from ..selectors import margin_values
from ..thresholds import Thresholds
from ..train import TrainConfig, predict_logits
from ..validation import check_fraction
from .buffers import (
    Buffer,
    ClassBalancedBuffer,
    PriorityBuffer,
    RandomBuffer,
    ReservoirBuffer,
    UnboundedBuffer,
)
from .device import RETRAINS, LifelongDevice, RoundTraining, retrain, round_seed
from .memory import DEFAULT_SHARES, SHARES
from .metrics import summarise
from .scenarios import SCENARIOS, round_severity, shift_inputs, split_rounds

LIFELONG_ARMS = ("drip", "drip-budget", "random", "reservoir", "class-balanced", "margin", "unbounded")
DEVICE_MEMORY = {"drip": "reservoir", "drip-budget": "budget"}
FORMAT = "drip-lifelong"
VERSION = 1
# What a round file written before a setting existed ran with.
FORMER_SETTINGS = {"proxy_fraction": FORMER_PROXY_FRACTION, "shares": "equal", "difficulty": "none"}

# Per data set: the model, the Training Phase's steps and each round's retraining steps.
LIFELONG_DEFAULTS: dict[str, dict[str, Any]] = {
    "digits": {"model": "digits_cnn", "steps": 500, "round_steps": 150, "rounds": 5},
    "mnist": {"model": "lenet", "steps": 2000, "round_steps": 300},
    "speech-commands": {"model": "dscnn", "steps": 3000, "round_steps": 400},
    "cifar10": {"model": "resnet8", "steps": 4000, "round_steps": 500},
    "plant-village": {"model": "plant_cnn", "steps": 3000, "round_steps": 400},
}


@dataclass(frozen=True)
class LifelongConfig:
    """Everything that defines a lifelong run; saved with every round."""

    dataset: str = "digits"
    model: str = "digits_cnn"
    scenario: str = "class-incremental"
    rounds: int = 10
    seeds: int = 3
    budget_fraction: float = 0.25
    steps: int = 500
    round_steps: int = 150
    batch_size: int = 64
    lr: float = 3e-3
    retrain: str = "fine-tune"
    keep_initial: bool = True
    initial_fraction: float = 0.1
    test_fraction: float = 0.3
    pool_limit: int | None = None
    calibration_share: float = 0.1
    q_high: float | None = None
    candidates: tuple[float, ...] = DEFAULT_CANDIDATES
    q_low: float = DEFAULT_Q_LOW
    rule: str = DEFAULT_RULE
    proxy_fraction: float = DEFAULT_PROXY_FRACTION
    statistic: str = DEFAULT_STATISTIC
    target: str = DEFAULT_TARGET
    cam: str = DEFAULT_CAM
    arms: tuple[str, ...] = LIFELONG_ARMS
    stream_batch: int = 64
    shares: str = DEFAULT_SHARES
    difficulty: str = "none"

    def __post_init__(self) -> None:
        if self.scenario not in SCENARIOS:
            raise DripInputError(f"scenario: expected one of {SCENARIOS}, got {self.scenario!r}")
        unknown = set(self.arms) - set(LIFELONG_ARMS)
        if unknown or not self.arms:
            raise DripInputError(f"arms: expected any of {LIFELONG_ARMS}, got {list(self.arms)}")
        if self.rule not in RULES:
            raise DripInputError(f"rule: expected one of {RULES}, got {self.rule!r}")
        if self.shares not in SHARES:
            raise DripInputError(f"shares: expected one of {SHARES}, got {self.shares!r}")
        if self.difficulty not in DIFFICULTIES:
            raise DripInputError(f"difficulty: expected one of {DIFFICULTIES}, got {self.difficulty!r}")
        if self.retrain not in RETRAINS:
            raise DripInputError(f"retrain: expected one of {RETRAINS}, got {self.retrain!r}")
        for name in ("rounds", "seeds", "steps", "round_steps", "batch_size", "stream_batch"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise DripInputError(f"{name}: expected a positive integer, got {value!r}")
        for name in ("budget_fraction", "initial_fraction", "test_fraction", "calibration_share"):
            check_fraction(getattr(self, name), name)
        if not 0 < self.budget_fraction <= 1:
            raise DripInputError(
                f"budget_fraction: expected a number in (0, 1], got {self.budget_fraction!r}"
            )

    @classmethod
    def for_dataset(cls, dataset: str, **overrides: Any) -> LifelongConfig:
        """The defaults of ``dataset``, then ``overrides`` (None = default)."""
        if dataset not in LIFELONG_DEFAULTS:
            raise DripInputError(f"dataset: expected one of {sorted(LIFELONG_DEFAULTS)}, got {dataset!r}")
        chosen = {key: value for key, value in overrides.items() if value is not None}
        return cls(dataset=dataset, **{**LIFELONG_DEFAULTS[dataset], **chosen})

    def run_name(self, data_name: str | None = None) -> str:
        graded = "" if self.difficulty == "none" else f"-{self.difficulty}"
        return f"{data_name or self.dataset}{graded}-lifelong-{self.scenario}"

    @property
    def training(self) -> RoundTraining:
        return RoundTraining(self.round_steps, self.batch_size, self.lr, self.retrain, self.keep_initial)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Life:
    """One seed's data: D0, the rounds (each its offered samples and its calibration reserve),
    the test set, and the domain shift's scale."""

    d0: LabelledData
    offered: list[LabelledData]
    reserves: list[LabelledData]
    test: LabelledData
    scale: float


def plan_life(config: LifelongConfig, pool: LabelledData, test: LabelledData | None, seed: int) -> Life:
    """Split ``pool`` (and ``test``, where the data set has one) into one seed's life."""
    if config.pool_limit is not None and config.pool_limit < len(pool):
        fraction = config.pool_limit / len(pool)
        pool = pool.subset(stratified_split(pool.y, (fraction, 1 - fraction), seed + 2000)[0])
    if test is None:
        keep, held_out = stratified_split(pool.y, (1 - config.test_fraction, config.test_fraction), seed)
        pool, test = pool.subset(keep), pool.subset(held_out)
    rounds = split_rounds(pool, config.rounds, config.scenario, generator_for(seed, "rounds"))
    first_classes = torch.unique(pool.y[torch.as_tensor(rounds[0])])
    candidates = np.flatnonzero(np.isin(pool.y.numpy(), first_classes.numpy()))
    share = min(config.initial_fraction * len(pool) / len(candidates), 0.5)
    chosen, _ = stratified_split(pool.y[candidates], (share, 1 - share), seed + 1000)
    d0_index = candidates[chosen]
    in_d0 = np.zeros(len(pool), dtype=bool)
    in_d0[d0_index] = True
    d0 = pool.subset(d0_index)
    scale = float(d0.x.std())
    offered, reserves = [], []
    for r, index in enumerate(rounds):
        index = np.asarray(index)[~in_d0[np.asarray(index)]]
        samples = pool.subset(index)
        severity = round_severity(r, config.rounds, config.scenario)
        if severity > 0:
            shifted = shift_inputs(samples.x, severity, generator_for(seed, f"domain:r{r}"), scale)
            samples = LabelledData(samples.name, shifted, samples.y, samples.num_classes, samples.class_names)
        order = torch.randperm(len(samples), generator=generator_for(seed, f"reserve:r{r}"))
        cut = round(config.calibration_share * len(samples))
        reserves.append(samples.subset(torch.sort(order[:cut]).values))
        offered.append(samples.subset(torch.sort(order[cut:]).values))
    return Life(d0, offered, reserves, test, scale)


def round_test(config: LifelongConfig, life: Life, round_index: int, seed: int) -> LabelledData:
    """The test samples of every class seen by the end of round ``round_index``, shifted as that
    round's inputs are."""
    seen = torch.unique(torch.cat([life.d0.y, *[o.y for o in life.offered[: round_index + 1]]]))
    test = life.test.subset(torch.isin(life.test.y, seen).nonzero().flatten())
    severity = round_severity(round_index, config.rounds, config.scenario)
    if severity > 0:
        shifted = shift_inputs(
            test.x, severity, generator_for(seed, f"domain-test:r{round_index}"), life.scale
        )
        test = LabelledData(test.name, shifted, test.y, test.num_classes, test.class_names)
    return test


def class_accuracy(model: nn.Module, test: LabelledData) -> dict[int, float]:
    """Accuracy per class present in ``test``."""
    right = predict_logits(model, test.x).argmax(1) == test.y
    return {int(c): float(right[test.y == c].float().mean()) for c in torch.unique(test.y)}


def _buffer(arm: str, capacity: int, admit: float, seed: int) -> Buffer:
    generator = generator_for(seed, arm)
    if arm == "random":
        return RandomBuffer(capacity, admit, generator)
    if arm == "reservoir":
        return ReservoirBuffer(capacity, generator)
    if arm == "class-balanced":
        return ClassBalancedBuffer(capacity, generator)
    if arm == "margin":
        return PriorityBuffer(capacity)
    return UnboundedBuffer()


@dataclass(frozen=True)
class _Shared:
    """What every arm's round of one seed's life shares: the life, its samples in order of
    arrival (buffers hold indices into them), the retraining and the model's initialisation."""

    config: LifelongConfig
    life: Life
    seed: int
    fresh_model: Callable[[], nn.Module]
    history_x: torch.Tensor
    history_y: torch.Tensor
    sample_bytes: int

    @property
    def training(self) -> RoundTraining:
        return self.config.training


class _BufferArm:
    """A rehearsal buffer and the model it retrains each round; the samples it can hold are the
    life's offered samples so far, by their index over the life."""

    def __init__(self, arm: str, buffer: Buffer, model: nn.Module) -> None:
        self.arm, self.buffer, self.model = arm, buffer, model

    def priorities(self, x: torch.Tensor, y: torch.Tensor) -> list[float]:
        """Informativeness under the arm's current model: minus the margin (higher = keep)."""
        return (-margin_values(predict_logits(self.model, x), y)).tolist()

    def live_round(
        self, shared: _Shared, round_index: int, offset: int, offered: LabelledData
    ) -> dict[str, Any]:
        """Offer round ``round_index``'s samples (life indices from ``offset``), then retrain."""
        history_x, history_y, training = shared.history_x, shared.history_y, shared.training
        start = time.perf_counter()
        indices = list(range(offset, offset + len(offered)))
        priorities = None
        if isinstance(self.buffer, PriorityBuffer):
            held = self.buffer.held()
            if held:
                values = self.priorities(history_x[held], history_y[held])
                self.buffer.reprioritise(dict(zip(held, values)))
            priorities = self.priorities(offered.x, offered.y)
        self.buffer.offer(indices, offered.y.tolist(), priorities)
        stream_s = time.perf_counter() - start
        held = self.buffer.held()
        x, y = history_x[held], history_y[held]
        if training.keep_initial:
            x, y = torch.cat([shared.life.d0.x, x]), torch.cat([shared.life.d0.y, y])
        self.model, train_s = retrain(
            self.model,
            shared.fresh_model,
            x,
            y,
            training,
            round_seed(shared.seed, round_index),
            desc=f"round {round_index}: {self.arm}",
        )
        return {"stream_s": stream_s, "train_s": train_s, "trainings": 1, "stored": len(held)}


def _state_bytes(models: dict[str, nn.Module]) -> bytes:
    buffer = io.BytesIO()
    torch.save({arm: model.state_dict() for arm, model in models.items()}, buffer)
    return buffer.getvalue()


def run_seed(
    config: LifelongConfig,
    pool: LabelledData,
    test: LabelledData | None,
    seed: int,
    folder: Path,
    progress: bool = True,
    bar: tqdm | None = None,
) -> dict[str, Any]:
    """One seed's life for every arm; each finished round is saved in ``folder`` and read back
    by a rerun."""
    bar = bar if bar is not None else tqdm(disable=True)
    folder.mkdir(parents=True, exist_ok=True)
    life = plan_life(config, pool, test, seed)

    def fresh_model() -> nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return build_model(config.model, pool.num_classes)

    phase = _initial_phase(config, life.d0, fresh_model, seed, folder, progress)
    bar.update(phase["trainings"])
    sample_bytes = life.d0.x[0].numel() * life.d0.x.element_size()
    offered_bytes = sum(len(o) for o in life.offered) * sample_bytes
    capacity_bytes = max(int(config.budget_fraction * offered_bytes), sample_bytes)
    capacity = capacity_bytes // sample_bytes
    admit = min(1.0, capacity / max(len(life.offered[0]), 1))
    training = config.training
    devices = {
        arm: LifelongDevice(
            folder / arm,
            fresh_model,
            _copy(phase["model"], fresh_model),
            phase["thresholds"],
            life.d0,
            capacity_bytes,
            training,
            seed=seed,
            memory=memory,  # type: ignore[arg-type]
            shares=config.shares,  # type: ignore[arg-type]
            stream_batch=config.stream_batch,
        )
        for arm, memory in DEVICE_MEMORY.items()
        if arm in config.arms
    }
    buffers = {
        arm: _BufferArm(arm, _buffer(arm, capacity, admit, seed), _copy(phase["model"], fresh_model))
        for arm in config.arms
        if arm not in DEVICE_MEMORY
    }
    shared = _Shared(
        config,
        life,
        seed,
        fresh_model,
        torch.cat([o.x for o in life.offered]),
        torch.cat([o.y for o in life.offered]),
        sample_bytes,
    )
    rounds: list[dict[str, Any]] = []
    offset = 0
    try:
        for r, offered in enumerate(life.offered):
            saved = _finished_round(folder, r, config)
            if saved is not None:
                record, states = saved
                for arm, state in states["buffers"].items():
                    buffers[arm].buffer.load_state_dict(state)
                models = torch.load(folder / f"models-r{r}.pt", weights_only=True)
                for arm, state in models.items():
                    buffers[arm].model.load_state_dict(state)
                    buffers[arm].model.eval()
            else:
                record = _live_round(shared, devices, buffers, r, offset, offered)
                write_atomically(
                    folder / f"models-r{r}.pt", _state_bytes({a: b.model for a, b in buffers.items()})
                )
                states = {"buffers": {arm: b.buffer.state_dict() for arm, b in buffers.items()}}
                text = json.dumps(
                    {
                        "version": VERSION,
                        "config": _seed_config(_config_json(config)),
                        "record": record,
                        "states": states,
                    }
                )
                write_atomically(folder / f"round-r{r}.json", (text + "\n").encode())
            if saved is not None:
                for device in devices.values():
                    device.live_round(r, offered, life.reserves[r])  # adopts the round's model
            bar.update(len(config.arms))
            rounds.append(record)
            offset += len(offered)
    finally:
        for device in devices.values():
            device.close()
    return {
        "seed": seed,
        "sizes": {
            "d0": len(life.d0),
            "offered": [len(o) for o in life.offered],
            "reserve": [len(r) for r in life.reserves],
            "test": len(life.test),
        },
        "capacity_bytes": capacity_bytes,
        "offered_bytes": offered_bytes,
        "sample_bytes": sample_bytes,
        "q_high": phase["q_high"],
        "training_phase": phase["summary"],
        "rounds": rounds,
        "summary": summarise(rounds, config.arms),
    }


def _live_round(
    shared: _Shared,
    devices: dict[str, LifelongDevice],
    buffers: dict[str, _BufferArm],
    r: int,
    offset: int,
    offered: LabelledData,
) -> dict[str, Any]:
    """Round ``r`` of every arm, each tested after it on the classes seen so far: its record."""
    config, life = shared.config, shared.life
    test = round_test(config, life, r, shared.seed)
    arms: dict[str, dict[str, Any]] = {}
    for arm in config.arms:
        if arm in devices:
            record = devices[arm].live_round(r, offered, life.reserves[r])
            model = devices[arm].model
            stored = record["stored_per_class"]
        else:
            record = buffers[arm].live_round(shared, r, offset, offered)
            model = buffers[arm].model
            counts = buffers[arm].buffer.class_counts()
            stored = [counts.get(c, 0) for c in range(life.test.num_classes)]
        per_class = class_accuracy(model, test)
        right = sum(acc * int((test.y == c).sum()) for c, acc in per_class.items())
        arms[arm] = {
            **record,
            "accuracy": right / len(test),
            "class_accuracy": {str(c): acc for c, acc in per_class.items()},
            "stored_per_class": stored,
            "bytes": sum(stored) * shared.sample_bytes,
        }
    return {
        "round": r,
        "severity": round_severity(r, config.rounds, config.scenario),
        "classes_seen": sorted(int(c) for c in torch.unique(test.y)),
        "offered": len(offered),
        "offered_per_class": torch.bincount(offered.y, minlength=offered.num_classes).tolist(),
        "reserve": len(life.reserves[r]),
        "test": len(test),
        "arms": arms,
    }


def _copy(model: nn.Module, fresh_model: Any) -> nn.Module:
    copy = fresh_model()
    copy.load_state_dict(model.state_dict())
    copy.eval()
    return copy


def _config_json(config: LifelongConfig) -> dict[str, Any]:
    return json.loads(json.dumps(asdict(config)))


def _seed_config(config: dict[str, Any]) -> dict[str, Any]:
    """What one seed's life depends on, of a run's ``config`` (as JSON): everything but how many
    seeds the run has, so that a run with more seeds resumes the seeds an earlier run finished
    (a file that names no proxy share, shares or difficulty ran with the former ones)."""
    chosen = {k: v for k, v in config.items() if k != "seeds"}
    return {**FORMER_SETTINGS, **chosen}


def _finished_round(folder: Path, r: int, config: LifelongConfig) -> tuple[dict, dict] | None:
    path = folder / f"round-r{r}.json"
    if not path.is_file() or not (folder / f"models-r{r}.pt").is_file():
        return None
    saved = json.loads(path.read_text())
    if saved.get("version") != VERSION:
        return None
    if _seed_config(saved.get("config", {})) != _seed_config(_config_json(config)):
        raise DripInputError(
            f"{folder.parent}: holds a lifelong run with another configuration; use another --out "
            "folder, or delete this one to start over"
        )
    return saved["record"], saved["states"]


def _initial_phase(
    config: LifelongConfig, d0: LabelledData, fresh_model: Any, seed: int, folder: Path, progress: bool
) -> dict[str, Any]:
    """The Training Phase on D0 (read back when an earlier run made it)."""
    model_path, thresholds_path = folder / "initial-model.pt", folder / "initial-thresholds.json"
    if model_path.is_file() and thresholds_path.is_file():
        model = fresh_model()
        model.load_state_dict(torch.load(model_path, weights_only=True))
        model.eval()
        thresholds = Thresholds.load(thresholds_path)
        summary = thresholds.metadata["training_phase"]
        return {
            "model": model,
            "thresholds": thresholds,
            "q_high": thresholds.q_high,
            "summary": summary,
            "trainings": 0,
        }
    phase = training_phase(
        d0,
        fresh_model,
        TrainConfig(config.steps, config.batch_size, config.lr),
        q_high=config.q_high,
        candidates=config.candidates,
        q_low=config.q_low,
        rule=config.rule,
        proxy_fraction=config.proxy_fraction,
        statistic=config.statistic,
        target=config.target,
        cam=config.cam,
        seed=seed,
        progress=progress,
    )
    buffer = io.BytesIO()
    torch.save(phase.model.state_dict(), buffer)
    phase.thresholds.save(thresholds_path)
    write_atomically(model_path, buffer.getvalue())
    return {
        "model": phase.model,
        "thresholds": phase.thresholds,
        "q_high": phase.q_high,
        "summary": phase.summary(),
        "trainings": phase.trainings,
    }


def run_lifelong(
    config: LifelongConfig,
    pool: LabelledData,
    out: Path,
    test: LabelledData | None = None,
    progress: bool = True,
    data_name: str | None = None,
) -> dict[str, Any]:
    """Every seed's life; writes and returns ``results.json``'s content."""
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    pool, test = with_difficulty(config.difficulty, pool, test)
    per_seed = config.rounds * len(config.arms) + 5
    seeds = []
    with tqdm(total=config.seeds * per_seed, desc="trainings", unit="model", disable=not progress) as bar:
        for seed in range(config.seeds):
            seeds.append(run_seed(config, pool, test, seed, out / f"seed{seed}", progress, bar))
    results = {
        "format": FORMAT,
        "version": VERSION,
        "config": _config_json(config),
        "data_name": config.run_name(data_name),
        "num_classes": pool.num_classes,
        "class_names": list(pool.class_names),
        "threads": torch.get_num_threads(),
        "elapsed_s": time.perf_counter() - start,
        "seeds": seeds,
    }
    write_atomically(out / "results.json", (json.dumps(results) + "\n").encode())
    return results
