"""A DRIP device over its life: rounds of filter -> store -> retrain -> recalibrate, in a folder.

Each round the device

1. **streams** the round's samples through DRIP's band of the current model and thresholds into
   one durable store of ``capacity_bytes``. What a full store does is the device's ``memory``:
   ``reservoir`` (default) keeps the band as calibrated and thins it at random, class by class,
   each class's share of the bytes following the band's (``drip.lifelong.memory``: ``shares``);
   ``budget`` tightens the band instead (``drip.budget``: the upper
   cuts move so that the store is full by the round's end, and a full store evicts the most
   redundant sample of its most represented class). Either way a class that arrives late gets
   stored;
2. **retrains** from the store (and the initial set D0 when it stays on the device) for a fixed
   number of optimiser steps: fine-tuning the current weights, or from the seed's initialisation
   as GDumb does (``retrain="scratch"``);
3. **recalibrates** the thresholds on the new model, at the Training Phase's band and rule, from
   the round's calibration reserve: samples held back from this round that no model trained on,
   drawn from what the device sees now (D0's calibration split would describe the initial
   distribution, and the stored samples are what the new model trained on: its scores there are
   optimistic);
4. **rescores** the stored samples with the new scorer, so that eviction never compares one
   model's scores with another's.

Every step is durable and deterministic: the store commits each batch with its position and the
budget's state, the model and thresholds of a round are written atomically once made, and
training is seeded by the round. A device killed anywhere resumes where it was and ends with the
store, model and thresholds of an uninterrupted run.
"""

from __future__ import annotations

import io
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from ..atomic import write_atomically
from ..budget import stream_with_budget
from ..calibrate import calibrate
from ..errors import DripInputError
from ..filter import DripFilter
from ..score import DripScorer, score_in_batches
from ..store import SampleStore
from ..thresholds import Thresholds
from ..train import TrainConfig, fit
from .memory import DEFAULT_SHARES, SHARES, ClassBalancedReservoir, Shares

Retrain = Literal["fine-tune", "scratch"]
RETRAINS = ("fine-tune", "scratch")
Memory = Literal["reservoir", "budget"]
MEMORIES = ("reservoir", "budget")


@dataclass(frozen=True)
class RoundTraining:
    """What every round's retraining gets, the same for every arm: ``steps`` optimiser updates of
    ``batch_size`` at ``lr``, from the current weights (``fine-tune``) or from the seed's
    initialisation (``scratch``); ``keep_initial``: D0 stays on the device and is trained on."""

    steps: int = 300
    batch_size: int = 64
    lr: float = 3e-3
    retrain: Retrain = "fine-tune"
    keep_initial: bool = True

    def __post_init__(self) -> None:
        if self.retrain not in RETRAINS:
            raise DripInputError(f"retrain: expected one of {RETRAINS}, got {self.retrain!r}")
        TrainConfig(self.steps, self.batch_size, self.lr)  # checks the numbers

    @property
    def config(self) -> TrainConfig:
        return TrainConfig(steps=self.steps, batch_size=self.batch_size, lr=self.lr)


def round_seed(seed: int, round_index: int) -> int:
    """The seed of round ``round_index``'s training: each round its own batches, reproducibly."""
    return seed * 1000 + round_index + 1


def retrain(
    model: nn.Module,
    fresh_model: Callable[[], nn.Module],
    x: torch.Tensor,
    y: torch.Tensor,
    training: RoundTraining,
    seed: int,
    *,
    progress: bool = False,
    desc: str = "retrain",
) -> tuple[nn.Module, float]:
    """The model after one round's retraining on ``x``, ``y``, and the seconds it took. From
    scratch, the outputs of the classes ``y`` lacks were never trained and are parked
    (``drip.train``); fine-tuned, a parked output stays parked until its class arrives, and one
    the model learnt earlier is kept."""
    from_scratch = training.retrain == "scratch"
    if from_scratch:
        model = fresh_model()
    history = fit(
        model, x, y, training.config, seed=seed, progress=progress, desc=desc, park_lacking=from_scratch
    )
    return model, history.elapsed_s


def _save_model(path: Path, model: nn.Module) -> None:
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    write_atomically(path, buffer.getvalue())


class LifelongDevice:
    """One DRIP device's life in ``folder``: ``store.sqlite``, and per finished step of round r
    ``model-r<r>.pt``, ``thresholds-r<r>.json`` and ``round-r<r>.json`` (its record).

    ``fresh_model()`` builds the architecture at the seed's initialisation; ``initial_model`` and
    ``initial_thresholds`` are the Training Phase's; ``d0`` the initial set (trained on each round
    when ``training.keep_initial``). ``q_high``, ``q_low`` and ``rule`` of the thresholds are kept
    at every recalibration; only the cuts move with the model.

    Example::

        device = LifelongDevice("dev", fresh, phase.model, phase.thresholds, d0, 2_000_000, RoundTraining())
        for r, (samples, reserve) in enumerate(rounds):
            record = device.live_round(r, samples, reserve)
    """

    def __init__(
        self,
        folder: str | Path,
        fresh_model: Callable[[], nn.Module],
        initial_model: nn.Module,
        initial_thresholds: Thresholds,
        d0: Any,
        capacity_bytes: int,
        training: RoundTraining,
        *,
        seed: int = 0,
        memory: Memory = "reservoir",
        shares: Shares = DEFAULT_SHARES,
        stream_batch: int = 64,
        progress: bool = False,
    ) -> None:
        if memory not in MEMORIES:
            raise DripInputError(f"memory: expected one of {MEMORIES}, got {memory!r}")
        if shares not in SHARES:
            raise DripInputError(f"shares: expected one of {SHARES}, got {shares!r}")
        self.memory, self.shares = memory, shares
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.fresh_model = fresh_model
        self.d0, self.training, self.seed = d0, training, seed
        self.stream_batch, self.progress = stream_batch, progress
        self.capacity_bytes = capacity_bytes
        self.model, self.thresholds = initial_model, initial_thresholds
        self.q_high = float(initial_thresholds.q_high)
        self.store = SampleStore(
            self.folder / "store.sqlite", capacity_bytes=capacity_bytes, when_full="evict"
        )

    def scorer(self, model: nn.Module | None = None) -> DripScorer:
        """A scorer of ``model`` (default: the current one) set up as the thresholds say."""
        t = self.thresholds
        return DripScorer(model or self.model, t.layer, t.statistic, t.target, cam=t.cam)

    def _path(self, kind: str, round_index: int, suffix: str) -> Path:
        return self.folder / f"{kind}-r{round_index}.{suffix}"

    def resume(self, round_index: int) -> None:
        """Adopt the model and thresholds the device ended round ``round_index - 1`` with (the
        initial ones before round 0)."""
        if round_index == 0:
            return
        previous = round_index - 1
        model = self.fresh_model()
        model.load_state_dict(torch.load(self._path("model", previous, "pt"), weights_only=True))
        model.eval()
        self.model = model
        self.thresholds = Thresholds.load(self._path("thresholds", previous, "json"))

    def finished(self, round_index: int) -> dict[str, Any] | None:
        """The record of round ``round_index`` if the device finished it, else None."""
        path = self._path("round", round_index, "json")
        return json.loads(path.read_text()) if path.is_file() else None

    def live_round(self, round_index: int, samples: Any, reserve: Any) -> dict[str, Any]:
        """Run round ``round_index`` on ``samples`` (offered to the store) and ``reserve`` (the
        calibration reserve), both ``LabelledData``; the round's record. Resumes a round an
        earlier, killed run left unfinished, and returns a finished round's record as it was."""
        done = self.finished(round_index)
        if done is not None:
            self.resume(round_index + 1)
            return done
        self.resume(round_index)
        start = time.perf_counter()
        before = self.thresholds
        kept = self._stream(round_index, samples)
        stream_s = time.perf_counter() - start
        model, train_s = self._retrained(round_index)
        thresholds = self._recalibrated(round_index, model, reserve)
        self._rescore(round_index, model)
        self.model, self.thresholds = model, thresholds
        record = {
            "round": round_index,
            "offered": len(samples),
            "kept": kept,
            "bytes_used": self.store.bytes_used,
            "stored_per_class": _per_class(self.store.class_counts(), samples.num_classes),
            "high_calibrated": list(before.high),
            "high_next": list(thresholds.high),
            "threshold_shift": threshold_shift(before, thresholds),
            "stream_s": stream_s,
            "train_s": train_s,
            "trainings": 1,
        }
        write_atomically(self._path("round", round_index, "json"), (json.dumps(record) + "\n").encode())
        return record

    def _stream(self, round_index: int, samples: Any) -> int:
        """Offer the round's samples to the store; how many of them it holds afterwards."""
        prefix = f"r{round_index}"
        if self.memory == "budget":
            run = stream_with_budget(
                self.scorer(),
                self.thresholds,
                samples.x,
                samples.y,
                self.store,
                len(samples),
                batch_size=self.stream_batch,
                source_prefix=prefix,
                state_name=f"budget:{prefix}",
                progress=self.progress,
            )
            return int(run.kept.sum())
        band = DripFilter(self.scorer(), self.thresholds)  # decides; the reservoir stores
        reservoir = ClassBalancedReservoir(
            self.store, self.thresholds.num_classes, self.seed, shares=self.shares
        )
        key = f"stream:{prefix}"
        start = int(self.store.checkpoint(key) or 0)
        for index in range(start, len(samples), self.stream_batch):
            stop = min(index + self.stream_batch, len(samples))
            x, y = samples.x[index:stop], samples.y[index:stop]
            decisions = band.offer_batch(x, y)
            reservoir.offer(
                x,
                y.tolist(),
                [d.score for d in decisions],
                [f"{prefix}:{i}" for i in range(index, stop)],
                [d.kept for d in decisions],
                checkpoint=(key, str(stop)),
                judged=[math.isfinite(self.thresholds.high[label]) for label in y.tolist()],
            )
        return sum(1 for source in self.store.sources() if source.startswith(f"{prefix}:"))

    def training_set(self) -> tuple[torch.Tensor, torch.Tensor]:
        """What the device retrains on: the store, and D0 when it stays on the device."""
        x, y, _ = self.store.tensors()
        if len(y):
            x = x.reshape(-1, *self.thresholds.input_shape) if self.thresholds.input_shape else x
        if self.training.keep_initial:
            x = torch.cat([self.d0.x, x]) if len(y) else self.d0.x
            y = torch.cat([self.d0.y, y]) if len(y) else self.d0.y
        return x, y

    def _retrained(self, round_index: int) -> tuple[nn.Module, float]:
        path = self._path("model", round_index, "pt")
        if path.is_file():  # trained before a kill: seeded, so the same model again
            model = self.fresh_model()
            model.load_state_dict(torch.load(path, weights_only=True))
            model.eval()
            return model, 0.0
        x, y = self.training_set()
        model, seconds = retrain(
            self.model,
            self.fresh_model,
            x,
            y,
            self.training,
            round_seed(self.seed, round_index),
            progress=self.progress,
            desc=f"round {round_index}: retrain drip",
        )
        _save_model(path, model)
        return model, seconds

    def _recalibrated(self, round_index: int, model: nn.Module, reserve: Any) -> Thresholds:
        path = self._path("thresholds", round_index, "json")
        if path.is_file():
            return Thresholds.load(path)
        old = self.thresholds
        thresholds = calibrate(
            self.scorer(model),
            reserve.x,
            reserve.y,
            q_high=self.q_high,
            q_low=old.q_low,
            num_classes=old.num_classes,
            rule=old.rule,
        )
        thresholds.save(path)
        return thresholds

    def _rescore(self, round_index: int, model: nn.Module) -> None:
        name = f"rescored:r{round_index}"
        if self.store.checkpoint(name) is not None:
            return
        ids, x, y = [], [], []
        for sample in self.store:
            ids.append(sample.id)
            x.append(sample.x)
            y.append(sample.label)
        if ids:
            scores, _ = score_in_batches(self.scorer(model), torch.stack(x), torch.tensor(y))
            self.store.rescore(dict(zip(ids, scores.tolist())), checkpoint=(name, "1"))

    def close(self) -> None:
        self.store.close()


def threshold_shift(before: Thresholds, after: Thresholds) -> float | None:
    """How far recalibration moved the upper cuts: the mean absolute change over the classes
    with a finite cut in both (None when there is none)."""
    pairs = [(b, a) for b, a in zip(before.high, after.high) if math.isfinite(b) and math.isfinite(a)]
    return sum(abs(a - b) for b, a in pairs) / len(pairs) if pairs else None


def _per_class(counts: dict[int, int], num_classes: int) -> list[int]:
    return [counts.get(c, 0) for c in range(num_classes)]
