"""The evaluation protocol: DRIP against FULL and equal-storage controls, over several seeds.

Per seed: split off a test set (where the data set has none), split the rest, stratified, into the
initial set D0 and the stream S; optionally corrupt a fraction of S (D0 and the test set stay
clean); run the Training Phase on D0; stream S through ``DripFilter`` into a ``SampleStore`` file;
then train a fresh model on D0 plus each arm's share of S, every arm from the same initialisation
and with the same optimiser-step budget (``budget="epochs"`` instead gives every arm the same
epochs, so smaller sets get fewer steps):

* ``full``: all of S (``full-clean``: S before corruption, with noise only);
* ``drip``: what the filter stored;
* equal storage, exactly DRIP's kept count: ``random``, ``reservoir`` (class-balanced, online),
  ``loss``, ``margin``, ``entropy``, ``el2n`` (the most informative samples under the scorer model);
* online bands at DRIP's quantiles: ``loss-band`` (the band rule on the negative loss) and
  ``drip-rank`` (see ``drip.selectors``), each with its own storage;
* the sweep: DRIP's band at each q_high of ``sweep`` and RANDOM at each resulting size.

Storage saving is 1 - kept / seen over S. With noise, every arm also reports the precision and
recall with which it dropped the corrupted samples. Results go to ``results.json``;
``drip.report`` renders tables and plots from it alone.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from . import selectors
from .calibrate import DEFAULT_CANDIDATES, TrainingPhaseResult, training_phase
from .data.base import LabelledData, stratified_split
from .errors import DripInputError
from .filter import DripFilter
from .models import build_model
from .score import DripScorer
from .store import SampleStore
from .train import TrainConfig, evaluate, fit, predict_logits
from .validation import check_fraction

ARMS = ("full", "drip", "random", "reservoir", "loss", "margin", "entropy", "el2n", "loss-band", "drip-rank")
DEMO_ARMS = ("full", "drip", "random", "loss")
EQUAL_COUNT = ("random", "reservoir", "loss", "margin", "entropy", "el2n")
DEFAULT_SWEEP = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6)
GALLERY_SIZE = 8
Noise = Literal["none", "label", "gaussian"]

# Per data set: the reference model and a step budget that trains it well on 2 CPU cores
# (MNIST: 2000 steps of 64, about 2 epochs of the 60k pool; 3 seeds of every arm in ~20 min).
DATASET_DEFAULTS: dict[str, dict[str, Any]] = {
    "digits": {"model": "digits_cnn", "steps": 500},
    "mnist": {"model": "lenet", "steps": 2000},
    "cifar10": {"model": "resnet8", "steps": 4000},
    "speech-commands": {"model": "dscnn", "steps": 3000},
    "plant-village": {"model": "plant_cnn", "steps": 3000, "test_fraction": 0.2},
}


@dataclass(frozen=True)
class ExperimentConfig:
    """Everything that defines a run; saved into ``results.json``."""

    dataset: str = "digits"
    model: str = "digits_cnn"
    seeds: int = 3
    steps: int = 500
    batch_size: int = 64
    lr: float = 3e-3
    budget: Literal["steps", "epochs"] = "steps"
    test_fraction: float = 0.3
    initial_fraction: float = 0.2
    pool_limit: int | None = None
    q_high: float | None = None
    candidates: tuple[float, ...] = DEFAULT_CANDIDATES
    q_low: float = 0.0
    tolerance: float = 0.005
    statistic: str = "mean"
    arms: tuple[str, ...] = ARMS
    sweep: tuple[float, ...] = DEFAULT_SWEEP
    noise: Noise = "none"
    noise_rate: float = 0.2
    noise_std: float = 1.0
    stream_batch: int = 64

    def __post_init__(self) -> None:
        unknown = set(self.arms) - set(ARMS)
        if unknown or "drip" not in self.arms:
            raise DripInputError(f"arms: expected 'drip' and any of {ARMS}, got {list(self.arms)}")
        if self.seeds < 1:
            raise DripInputError(f"seeds: expected at least 1, got {self.seeds}")
        if self.budget not in ("steps", "epochs"):
            raise DripInputError(f"budget: expected 'steps' or 'epochs', got {self.budget!r}")
        if self.noise not in ("none", "label", "gaussian"):
            raise DripInputError(f"noise: expected 'none', 'label' or 'gaussian', got {self.noise!r}")
        check_fraction(self.noise_rate, "noise_rate")
        check_fraction(self.initial_fraction, "initial_fraction")
        for q in self.sweep:
            check_fraction(q, "sweep")

    @classmethod
    def for_dataset(cls, dataset: str, **overrides: Any) -> ExperimentConfig:
        """The defaults of ``dataset`` (model, step budget), then ``overrides`` (None = default)."""
        if dataset not in DATASET_DEFAULTS:
            raise DripInputError(f"dataset: expected one of {sorted(DATASET_DEFAULTS)}, got {dataset!r}")
        chosen = {key: value for key, value in overrides.items() if value is not None}
        return cls(dataset=dataset, **{**DATASET_DEFAULTS[dataset], **chosen})

    def train_config(self, steps: int | None = None) -> TrainConfig:
        return TrainConfig(steps=steps or self.steps, batch_size=self.batch_size, lr=self.lr)


def corrupt(
    stream: LabelledData, noise: Noise, rate: float, std: float, generator: torch.Generator
) -> tuple[LabelledData, torch.Tensor]:
    """A copy of ``stream`` with ``rate`` of its samples corrupted, and the corrupted mask.

    ``label``: the label moves to one of the other classes, uniformly (symmetric flips).
    ``gaussian``: the input gets additive Gaussian noise of ``std`` times the stream's pixel std.
    """
    corrupted = torch.zeros(len(stream), dtype=torch.bool)
    if noise == "none" or rate == 0:
        return stream, corrupted
    chosen = torch.randperm(len(stream), generator=generator)[: round(rate * len(stream))]
    corrupted[chosen] = True
    x, y = stream.x.clone(), stream.y.clone()
    if noise == "label":
        shift = torch.randint(1, stream.num_classes, (len(chosen),), generator=generator)
        y[chosen] = (y[chosen] + shift) % stream.num_classes
    else:
        scale = std * float(stream.x.std())
        x[chosen] += scale * torch.randn(x[chosen].shape, generator=generator)
    return LabelledData(stream.name, x, y, stream.num_classes, stream.class_names), corrupted


def _noise_stats(kept: torch.Tensor, corrupted: torch.Tensor) -> dict[str, float | None]:
    """Precision and recall with which the dropped samples are the corrupted ones."""
    dropped = ~kept
    hits = int((dropped & corrupted).sum())
    return {
        "noise_precision": hits / int(dropped.sum()) if dropped.any() else None,
        "noise_recall": hits / int(corrupted.sum()) if corrupted.any() else None,
    }


def _gallery(
    scorer: DripScorer, stream: LabelledData, kept: np.ndarray, scores: np.ndarray, corrupted: np.ndarray
) -> dict[str, list[dict[str, Any]]]:
    """A few kept and dropped stream samples, spread over the score range, with their maps."""
    gallery = {}
    for name, mask in (("kept", kept), ("dropped", ~kept)):
        members = np.flatnonzero(mask)
        picks = members[np.argsort(scores[members], kind="stable")]
        if len(picks):
            picks = picks[np.unique(np.linspace(0, len(picks) - 1, GALLERY_SIZE).round().astype(int))]
        maps = scorer.heatmaps(stream.x[picks], stream.y[picks]) if len(picks) else []
        gallery[name] = [
            {
                "index": int(i),
                "label": int(stream.y[i]),
                "score": float(scores[i]),
                "corrupted": bool(corrupted[i]),
                "x": stream.x[i].tolist(),
                "map": maps[j].tolist(),
            }
            for j, i in enumerate(picks)
        ]
    return gallery


def _stream_through_filter(
    phase: TrainingPhaseResult,
    stream: LabelledData,
    store_path: Path,
    batch: int,
    progress: bool,
    seed: int,
) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor], dict[str, Any]]:
    """Offer S to a fresh ``DripFilter`` + ``SampleStore``: kept mask, scores, stored (x, y), counters."""
    for suffix in ("", "-wal", "-shm"):
        Path(f"{store_path}{suffix}").unlink(missing_ok=True)
    decisions = []
    with SampleStore(store_path) as store:
        drip_filter = DripFilter(phase.scorer, phase.thresholds, store)
        starts = range(0, len(stream), batch)
        for start in tqdm(starts, desc=f"seed {seed}: stream", disable=not progress, leave=False):
            stop = min(start + batch, len(stream))
            sources = [f"stream:{i}" for i in range(start, stop)]
            decisions += drip_filter.offer_batch(stream.x[start:stop], stream.y[start:stop], sources=sources)
        stored_x, stored_y, _ = store.tensors()
    kept = torch.tensor([d.kept for d in decisions])
    scores = torch.tensor([d.score for d in decisions], dtype=torch.float64)
    stored_x = stored_x.reshape(-1, *stream.input_shape)
    return kept, scores, (stored_x, stored_y), asdict(drip_filter.counters)


def run_seed(
    config: ExperimentConfig,
    pool: LabelledData,
    test: LabelledData | None,
    seed: int,
    workdir: Path,
    progress: bool = True,
) -> dict[str, Any]:
    """One seed of the protocol; the stream's store lives in ``workdir``."""
    start = time.perf_counter()
    generator = torch.Generator().manual_seed(seed)
    if config.pool_limit is not None and config.pool_limit < len(pool):
        fraction = config.pool_limit / len(pool)
        pool = pool.subset(stratified_split(pool.y, (fraction, 1 - fraction), seed + 2000)[0])
    if test is None:
        pool_index, test_index = stratified_split(
            pool.y, (1 - config.test_fraction, config.test_fraction), seed
        )
        pool, test = pool.subset(pool_index), pool.subset(test_index)
    d0_index, stream_index = stratified_split(
        pool.y, (config.initial_fraction, 1 - config.initial_fraction), seed + 1000
    )
    d0, clean_stream = pool.subset(d0_index), pool.subset(stream_index)
    stream, corrupted = corrupt(clean_stream, config.noise, config.noise_rate, config.noise_std, generator)

    def factory() -> nn.Module:
        return build_model(config.model, pool.num_classes)

    phase = training_phase(
        d0,
        factory,
        config.train_config(),
        q_high=config.q_high,
        candidates=config.candidates,
        q_low=config.q_low,
        tolerance=config.tolerance,
        statistic=config.statistic,
        seed=seed,
        progress=progress,
    )
    workdir.mkdir(parents=True, exist_ok=True)
    kept, scores, stored, counters = _stream_through_filter(
        phase, stream, workdir / "kept.sqlite", config.stream_batch, progress, seed
    )
    kept_count = int(kept.sum())
    # The loss-based selectors need the stream's logits: a forward pass, not another Grad-CAM.
    stream_logits = predict_logits(phase.model, stream.x)
    stream_losses = selectors.loss_values(stream_logits, stream.y)
    proxy = phase.proxy
    proxy_losses = selectors.loss_values(phase.proxy_logits, proxy.y)

    full_size = len(d0) + len(stream)
    arms: dict[str, dict[str, Any]] = {}

    def train_arm(
        name: str, keep: torch.Tensor | None, data: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> dict[str, Any]:
        """Train on D0 + ``data`` (default: the stream samples in mask ``keep``) and evaluate.

        ``keep`` also tells which stream samples the arm stored, for the noise statistics.
        """
        extra_x, extra_y = data if data is not None else (stream.x[keep], stream.y[keep])
        train_x, train_y = torch.cat([d0.x, extra_x]), torch.cat([d0.y, extra_y])
        steps = config.steps
        if config.budget == "epochs":
            steps = max(1, round(config.steps * len(train_x) / full_size))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = factory()
        fit(
            model,
            train_x,
            train_y,
            config.train_config(steps),
            seed=seed,
            progress=progress,
            desc=f"seed {seed}: {name}",
        )
        record: dict[str, Any] = {
            "accuracy": evaluate(model, test.x, test.y),
            "train_size": len(train_x),
            "kept": len(extra_x),
            "saving": 1 - len(extra_x) / len(stream),
            "steps": steps,
        }
        if keep is not None and corrupted.any():
            record.update(_noise_stats(keep, corrupted))
            if config.noise == "label" and (keep & corrupted).any():
                # How far the model fit the wrong labels it trained on: memorisation of noise.
                noisy = keep & corrupted
                predicted = predict_logits(model, stream.x[noisy]).argmax(1)
                record["noise_fit"] = float((predicted == stream.y[noisy]).float().mean())
        return record

    def mask_of(index: torch.Tensor) -> torch.Tensor:
        mask = torch.zeros(len(stream), dtype=torch.bool)
        mask[index] = True
        return mask

    keep_of: dict[str, Callable[[], torch.Tensor]] = {
        "full": lambda: torch.ones(len(stream), dtype=torch.bool),
        "random": lambda: mask_of(selectors.random_count(len(stream), kept_count, generator)),
        "reservoir": lambda: mask_of(selectors.class_balanced_reservoir(stream.y, kept_count, generator)),
        "loss-band": lambda: selectors.band_keep(
            -stream_losses,
            stream.y,
            -proxy_losses,
            proxy.y,
            pool.num_classes,
            q_high=phase.q_high,
            q_low=config.q_low,
        ),
        "drip-rank": lambda: selectors.drip_rank_keep(
            scores,
            stream_losses,
            stream.y,
            phase.proxy_scores,
            proxy_losses,
            proxy.y,
            drop_fraction=phase.q_high + config.q_low,
            generator=generator,
        ),
    }
    for kind, informativeness in selectors.INFORMATIVENESS.items():
        keep_of[kind] = lambda f=informativeness: mask_of(
            selectors.top_count(f(stream_logits, stream.y), kept_count)
        )
    for arm in config.arms:
        if arm == "drip":
            arms[arm] = train_arm(arm, kept, stored)  # retrained from the store itself
        else:
            arms[arm] = train_arm(arm, keep_of[arm]())
    if corrupted.any():
        arms["full-clean"] = train_arm("full-clean", None, (clean_stream.x, clean_stream.y))

    sweep = []
    for q in config.sweep:
        band = selectors.band_keep(
            scores, stream.y, phase.proxy_scores, proxy.y, pool.num_classes, q_high=q, q_low=config.q_low
        )
        count = int(band.sum())
        # At DRIP's own band the DRIP and RANDOM arms already hold the answer: train neither again.
        same = q == phase.q_high and count == kept_count
        drip_record = arms["drip"] if same else train_arm(f"sweep q={q}", band)
        if same and "random" in arms:
            random_record = arms["random"]
        else:
            random_record = train_arm(
                f"sweep random {count}", mask_of(selectors.random_count(len(stream), count, generator))
            )
        sweep.append(
            {
                "q_high": q,
                "kept": count,
                "saving": 1 - count / len(stream),
                "drip": drip_record["accuracy"],
                "random": random_record["accuracy"],
            }
        )

    return {
        "seed": seed,
        "sizes": {"test": len(test), "d0": len(d0), "stream": len(stream)},
        "q_high": phase.q_high,
        "thresholds": phase.thresholds.to_dict(),
        "training_phase": {
            "cost_ratio": phase.cost_ratio,
            "elapsed_s": phase.elapsed_s,
            "scorer_train_s": phase.scorer_train_s,
            "reference_accuracy": phase.reference_accuracy,
            "trials": [asdict(t) for t in phase.trials],
        },
        "stream": {
            "seen": len(stream),
            "kept": kept_count,
            "labels": stream.y.tolist(),
            "scores": scores.tolist(),
            "kept_mask": kept.int().tolist(),
            "corrupted": corrupted.int().tolist(),
            "counters": counters,
        },
        "arms": arms,
        "sweep": sweep,
        "gallery": _gallery(phase.scorer, stream, kept.numpy(), scores.numpy(), corrupted.numpy()),
        "elapsed_s": time.perf_counter() - start,
    }


# 2: per-arm records with sweep and noise statistics (1 was the first demo's per-seed fields).
RESULTS_VERSION = 2


def run_experiment(
    config: ExperimentConfig,
    pool: LabelledData,
    out: Path,
    test: LabelledData | None = None,
    progress: bool = True,
    source: str | None = None,
) -> dict[str, Any]:
    """All seeds of the protocol; writes and returns ``results.json``'s content.

    ``source`` says where the data came from (e.g. the folder), for the reader of the report.
    """
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    seeds = [
        run_seed(config, pool, test, seed, out / f"seed{seed}", progress)
        for seed in tqdm(range(config.seeds), desc="seeds", disable=not progress)
    ]
    results = {
        "format": "drip-results",
        "version": RESULTS_VERSION,
        "config": asdict(config),
        "dataset": config.dataset,
        "data_source": source,
        "num_classes": pool.num_classes,
        "class_names": list(pool.class_names),
        "input_shape": list(pool.input_shape),
        "budget": config.budget,
        "threads": torch.get_num_threads(),
        "elapsed_s": time.perf_counter() - start,
        "seeds": seeds,
    }
    (out / "results.json").write_text(json.dumps(results) + "\n")
    return results
