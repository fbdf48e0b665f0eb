"""The evaluation protocol: DRIP against FULL and equal-storage controls, over several seeds.

Per seed: split off a test set (where the data set has none), split the rest into the initial set
D0 and the stream S (stratified), run the Training Phase on D0, stream S one sample at a time
through ``DripFilter`` into a ``SampleStore`` file, then train a fresh model on each arm's data
with the same optimiser-step budget and the same initialisation:

* ``full``: D0 + all of S;
* ``drip``: D0 + what the filter stored;
* ``random``: D0 + exactly as many samples of S, drawn uniformly;
* ``loss``: D0 + the same number of samples of S with the highest loss under the scorer model
  (the lowest-loss ones dropped): the logit-confidence control DRIP's score is close to.

Storage saving is 1 - kept / seen over S. Results go to ``results.json``; ``drip.report`` renders
the tables and plots from it.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .calibrate import DEFAULT_CANDIDATES, training_phase
from .data.base import LabelledData, stratified_split
from .errors import DripInputError
from .filter import DripFilter
from .models import build_model
from .score import DripScorer, score_in_batches
from .store import SampleStore
from .train import TrainConfig, evaluate, fit

ARMS = ("full", "drip", "random", "loss")
GALLERY_SIZE = 8


@dataclass(frozen=True)
class ExperimentConfig:
    """Everything that defines a run; saved into ``results.json``."""

    dataset: str = "digits"
    model: str = "digits_cnn"
    seeds: int = 3
    steps: int = 500
    batch_size: int = 64
    lr: float = 3e-3
    test_fraction: float = 0.3
    initial_fraction: float = 0.2
    q_high: float | None = None
    candidates: tuple[float, ...] = DEFAULT_CANDIDATES
    q_low: float = 0.0
    tolerance: float = 0.005
    statistic: str = "mean"
    arms: tuple[str, ...] = ARMS

    def __post_init__(self) -> None:
        unknown = set(self.arms) - set(ARMS)
        if unknown or "drip" not in self.arms:
            raise DripInputError(f"arms: expected 'drip' and any of {ARMS}, got {list(self.arms)}")
        if self.seeds < 1:
            raise DripInputError(f"seeds: expected at least 1, got {self.seeds}")

    @property
    def train(self) -> TrainConfig:
        return TrainConfig(steps=self.steps, batch_size=self.batch_size, lr=self.lr)


@dataclass
class SeedResult:
    """What one seed measured."""

    seed: int
    sizes: dict[str, int]
    q_high: float
    thresholds: dict[str, Any]
    training_phase: dict[str, Any]
    stream: dict[str, Any]
    accuracy: dict[str, float]
    gallery: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    elapsed_s: float = 0.0


def _highest_loss(logits: torch.Tensor, labels: torch.Tensor, count: int) -> torch.Tensor:
    losses = nn.functional.cross_entropy(logits, labels, reduction="none")
    return torch.argsort(losses, descending=True, stable=True)[:count]


def _gallery(
    scorer: DripScorer, stream: LabelledData, kept: np.ndarray, scores: np.ndarray
) -> dict[str, list[dict[str, Any]]]:
    """A few kept and dropped stream samples, spread over the score range, with their maps."""
    gallery = {}
    for name, mask in (("kept", kept), ("dropped", ~kept)):
        members = np.flatnonzero(mask)
        if not len(members):
            gallery[name] = []
            continue
        ordered = members[np.argsort(scores[members], kind="stable")]
        picks = ordered[np.unique(np.linspace(0, len(ordered) - 1, GALLERY_SIZE).round().astype(int))]
        maps = scorer.heatmaps(stream.x[picks], stream.y[picks])
        gallery[name] = [
            {
                "index": int(i),
                "label": int(stream.y[i]),
                "score": float(scores[i]),
                "x": stream.x[i].tolist(),
                "map": maps[j].tolist(),
            }
            for j, i in enumerate(picks)
        ]
    return gallery


def run_seed(
    config: ExperimentConfig,
    pool: LabelledData,
    test: LabelledData | None,
    seed: int,
    workdir: Path,
    progress: bool = True,
) -> SeedResult:
    """One seed of the protocol; the stream's store lives in ``workdir``."""
    start = time.perf_counter()
    if test is None:
        pool_index, test_index = stratified_split(
            pool.y, (1 - config.test_fraction, config.test_fraction), seed
        )
        pool, test = pool.subset(pool_index), pool.subset(test_index)
    d0_index, stream_index = stratified_split(
        pool.y, (config.initial_fraction, 1 - config.initial_fraction), seed + 1000
    )
    d0, stream = pool.subset(d0_index), pool.subset(stream_index)

    def factory() -> nn.Module:
        return build_model(config.model, pool.num_classes)

    phase = training_phase(
        d0,
        factory,
        config.train,
        q_high=config.q_high,
        candidates=config.candidates,
        q_low=config.q_low,
        tolerance=config.tolerance,
        statistic=config.statistic,
        seed=seed,
        progress=progress,
    )
    scorer = DripScorer(phase.model, statistic=config.statistic)
    workdir.mkdir(parents=True, exist_ok=True)
    store_path = workdir / "kept.sqlite"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{store_path}{suffix}").unlink(missing_ok=True)
    with SampleStore(store_path) as store:
        drip_filter = DripFilter(scorer, phase.thresholds, store)
        decisions = [
            drip_filter.offer(stream.x[i], stream.y[i], source=f"stream:{i}")
            for i in tqdm(range(len(stream)), desc=f"seed {seed}: stream", disable=not progress, leave=False)
        ]
        kept_x, kept_y, _ = store.tensors()
    kept = np.array([d.kept for d in decisions])
    scores = np.array([d.score for d in decisions])
    kept_count = int(kept.sum())

    _, stream_logits = score_in_batches(scorer, stream.x, stream.y)
    generator = torch.Generator().manual_seed(seed)
    arm_data = {
        "full": (stream.x, stream.y),
        "drip": (kept_x.reshape(-1, *stream.input_shape), kept_y),
    }
    random_pick = torch.randperm(len(stream), generator=generator)[:kept_count]
    arm_data["random"] = (stream.x[random_pick], stream.y[random_pick])
    loss_pick = _highest_loss(stream_logits, stream.y, kept_count)
    arm_data["loss"] = (stream.x[loss_pick], stream.y[loss_pick])

    accuracy = {}
    for arm in config.arms:
        extra_x, extra_y = arm_data[arm]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = factory()
        fit(
            model,
            torch.cat([d0.x, extra_x]),
            torch.cat([d0.y, extra_y]),
            config.train,
            seed=seed,
            progress=progress,
            desc=f"seed {seed}: {arm}",
        )
        accuracy[arm] = evaluate(model, test.x, test.y)

    return SeedResult(
        seed=seed,
        sizes={"test": len(test), "d0": len(d0), "stream": len(stream)},
        q_high=phase.q_high,
        thresholds=phase.thresholds.to_dict(),
        training_phase={
            "cost_ratio": phase.cost_ratio,
            "elapsed_s": phase.elapsed_s,
            "scorer_train_s": phase.scorer_train_s,
            "reference_accuracy": phase.reference_accuracy,
            "trials": [asdict(t) for t in phase.trials],
        },
        stream={
            "seen": len(stream),
            "kept": kept_count,
            "labels": stream.y.tolist(),
            "scores": scores.tolist(),
            "kept_mask": kept.astype(int).tolist(),
            "counters": asdict(drip_filter.counters),
        },
        accuracy=accuracy,
        gallery=_gallery(scorer, stream, kept, scores),
        elapsed_s=time.perf_counter() - start,
    )


def run_experiment(
    config: ExperimentConfig,
    pool: LabelledData,
    out: Path,
    test: LabelledData | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """All seeds of the protocol; writes and returns ``results.json``'s content."""
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    seeds = [
        run_seed(config, pool, test, seed, out / f"seed{seed}", progress)
        for seed in tqdm(range(config.seeds), desc="seeds", disable=not progress)
    ]
    results = {
        "format": "drip-results",
        "version": 1,
        "config": asdict(config),
        "dataset": config.dataset,
        "num_classes": pool.num_classes,
        "class_names": list(pool.class_names),
        "input_shape": list(pool.input_shape),
        "budget": "steps",
        "threads": torch.get_num_threads(),
        "elapsed_s": time.perf_counter() - start,
        "seeds": [asdict(s) for s in seeds],
    }
    (out / "results.json").write_text(json.dumps(results) + "\n")
    return results
