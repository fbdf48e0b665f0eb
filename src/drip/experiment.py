"""The evaluation protocol: DRIP against FULL and equal-storage controls, over several seeds.

Per seed: split off a test set (where the data set has none), split the rest, stratified, into the
initial set D0 and the stream S; optionally corrupt a fraction of S (D0 and the test set stay
clean); run the Training Phase on D0; stream S through ``DripFilter`` into a ``SampleStore`` file;
then train a fresh model on D0 plus each arm's share of S (``drip.arms``; every random choice from
its own generator), every arm from the same
initialisation and with the same optimiser-step budget (``budget="epochs"`` instead gives every
arm the same epochs, so smaller sets get fewer steps). ``full`` stores all of S (``full-clean``:
S before corruption, with noise only); ``drip`` retrains from the store itself.

The sweep repeats every arm but FULL at each band of ``sweep``: the bands at that q_high, the
equal-count controls at DRIP's count there. Storage saving is 1 - kept / seen over S. With noise,
every arm also reports the precision and recall with which it dropped the corrupted samples.
``difficulty="graded"`` and ``imbalance`` run the harder regimes of ``drip.data.regimes``.
With ``budget_bytes``, ``drip-budget`` streams S once more through bands that move online to end
at that many tensor bytes (``drip.budget``), against the class-balanced reservoir holding as many.

Each finished seed is written to ``seed<n>/record.json`` at once: a run that was interrupted
resumes with the next seed. Results go to ``results.json``; ``drip.report`` renders tables and
plots from it alone.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from . import selectors
from .arms import ARMS, BANDS, Evidence, StreamSignals, generator_for
from .atomic import write_atomically
from .budget import stream_with_budget
from .calibrate import (
    DEFAULT_CANDIDATES,
    DEFAULT_CONFIDENCE,
    DEFAULT_PROXY_FRACTION,
    TrainingPhaseResult,
    expected_trainings,
    training_phase,
    with_former_proxy_fraction,
)
from .cam import CAM_METHODS
from .data.base import LabelledData, stratified_split
from .data.regimes import DIFFICULTIES, Difficulty, long_tailed, with_difficulty
from .errors import DripInputError
from .filter import DripFilter
from .models import build_model
from .noise import Noise, corrupt, noise_stats
from .parallel import CPU
from .rules import DEFAULT_Q_LOW, DEFAULT_RULE, RULES
from .score import (
    DEFAULT_CAM,
    DEFAULT_STATISTIC,
    DEFAULT_TARGET,
    STATISTICS,
    TARGETS,
    DripScorer,
    score_in_batches,
)
from .store import SampleStore
from .train import TrainConfig, evaluate, fit, predict_logits
from .validation import check_fraction

DEMO_ARMS = ("full", "drip", "drip-paper", "random", "loss")
DEFAULT_SWEEP = (0.2, 0.3, 0.4, 0.5, 0.6)
# The paper's score: Grad-CAM (plain gradient-average weights) of the label's logit.
# The paper's score: the mean of the label's ReLU'd Grad-CAM map.
PAPER_STATISTIC, PAPER_TARGET, PAPER_CAM = "mean", "label", "gradcam"
GALLERY_SIZE = 8

# Per data set: the reference model and a step budget that trains it well on 2 CPU cores
# (MNIST: 2000 steps of 64, about 2 epochs of the 60k pool; 3 seeds of every arm and the sweep in
# about 1.5 h on one core).
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
    q_low: float = DEFAULT_Q_LOW
    rule: str = DEFAULT_RULE
    confidence: float = DEFAULT_CONFIDENCE
    proxy_fraction: float = DEFAULT_PROXY_FRACTION
    statistic: str = DEFAULT_STATISTIC
    target: str = DEFAULT_TARGET
    cam: str = DEFAULT_CAM
    arms: tuple[str, ...] = ARMS
    sweep: tuple[float, ...] = DEFAULT_SWEEP
    noise: Noise = "none"
    noise_rate: float = 0.2
    noise_std: float = 1.0
    stream_batch: int = 64
    budget_bytes: int | None = None
    difficulty: Difficulty = "none"
    imbalance: float = 1.0

    def __post_init__(self) -> None:
        unknown = set(self.arms) - set(ARMS)
        if unknown or "drip" not in self.arms:
            raise DripInputError(f"arms: expected 'drip' and any of {ARMS}, got {list(self.arms)}")
        if self.target not in TARGETS:
            raise DripInputError(f"target: expected one of {TARGETS}, got {self.target!r}")
        if self.statistic not in STATISTICS:
            raise DripInputError(f"statistic: expected one of {sorted(STATISTICS)}, got {self.statistic!r}")
        if self.rule not in RULES:
            raise DripInputError(f"rule: expected one of {RULES}, got {self.rule!r}")
        if self.difficulty not in DIFFICULTIES:
            raise DripInputError(f"difficulty: expected one of {DIFFICULTIES}, got {self.difficulty!r}")
        if not self.imbalance >= 1:
            raise DripInputError(f"imbalance: expected a ratio >= 1, got {self.imbalance!r}")
        if self.cam not in CAM_METHODS:
            raise DripInputError(f"cam: expected one of {CAM_METHODS}, got {self.cam!r}")
        if self.seeds < 1:
            raise DripInputError(f"seeds: expected at least 1, got {self.seeds}")
        if self.budget_bytes is not None and self.budget_bytes < 1:
            raise DripInputError(
                f"budget_bytes: expected a positive number of bytes, got {self.budget_bytes}"
            )
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

    def run_name(self, data_name: str | None = None) -> str:
        """The data set's name (default: ``dataset``) with this run's regimes, e.g.
        ``mnist-graded-label20``: a folder name, and what the report's titles call the data."""
        name = data_name or self.dataset
        if self.difficulty != "none":
            name += f"-{self.difficulty}"
        if self.imbalance > 1:
            name += f"-lt{self.imbalance:g}"
        if self.noise != "none":
            name += f"-{self.noise}{round(100 * self.noise_rate)}"
        if self.budget != "steps":
            name += f"-{self.budget}"
        return name

    def train_config(self, steps: int | None = None) -> TrainConfig:
        return TrainConfig(steps=steps or self.steps, batch_size=self.batch_size, lr=self.lr)


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


def seed_splits(
    config: ExperimentConfig, pool: LabelledData, test: LabelledData | None, seed: int
) -> tuple[LabelledData, LabelledData, LabelledData]:
    """The initial set D0, the (clean) stream S and the test set of one seed, all stratified.

    The pool is first cut to ``config.pool_limit``; without an official test set, ``test_fraction``
    of the pool becomes the test set. ``config.imbalance`` then makes the rest long-tailed (the
    test set stays as it was).
    """
    if config.pool_limit is not None and config.pool_limit < len(pool):
        fraction = config.pool_limit / len(pool)
        pool = pool.subset(stratified_split(pool.y, (fraction, 1 - fraction), seed + 2000)[0])
    if test is None:
        pool_index, test_index = stratified_split(
            pool.y, (1 - config.test_fraction, config.test_fraction), seed
        )
        pool, test = pool.subset(pool_index), pool.subset(test_index)
    if config.imbalance > 1:
        pool = long_tailed(pool, config.imbalance, generator_for(seed, "imbalance"))
    d0_index, stream_index = stratified_split(
        pool.y, (config.initial_fraction, 1 - config.initial_fraction), seed + 1000
    )
    return pool.subset(d0_index), pool.subset(stream_index), test


class _ArmTrainer:
    """Trains one fresh model per arm on D0 plus the arm's share of the stream, and evaluates it.

    Every arm starts from the same initialisation (the seed's) with the same optimiser-step
    budget (``budget="epochs"``: the same epochs instead). Records carry the noise statistics.
    """

    def __init__(self, config, d0, stream, test, corrupted, seed, progress, bar, device=CPU) -> None:
        self.config, self.d0, self.stream, self.test = config, d0, stream, test
        self.corrupted, self.seed, self.progress, self.bar = corrupted, seed, progress, bar
        self.device = device

    def model(self) -> nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            return build_model(self.config.model, self.d0.num_classes).to(self.device)

    def train(
        self, name: str, keep: torch.Tensor | None, data: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> dict[str, Any]:
        """Train on D0 + ``data`` (default: the stream samples in mask ``keep``) and evaluate.

        ``keep`` also tells which stream samples the arm stored, for the noise statistics.
        """
        config, stream = self.config, self.stream
        extra_x, extra_y = data if data is not None else (stream.x[keep], stream.y[keep])
        train_x, train_y = torch.cat([self.d0.x, extra_x]), torch.cat([self.d0.y, extra_y])
        steps = config.steps
        if config.budget == "epochs":
            steps = max(1, round(config.steps * len(train_x) / (len(self.d0) + len(stream))))
        model = self.model()
        fit(
            model,
            train_x,
            train_y,
            config.train_config(steps),
            seed=self.seed,
            progress=self.progress,
            desc=f"seed {self.seed}: {name}",
            park_lacking=True,
        )
        self.bar.update()
        record: dict[str, Any] = {
            "accuracy": evaluate(model, self.test.x, self.test.y),
            "train_size": len(train_x),
            "kept": len(extra_x),
            "kept_per_class": torch.bincount(extra_y, minlength=stream.num_classes).tolist(),
            "saving": 1 - len(extra_x) / len(stream),
            "steps": steps,
        }
        corrupted = self.corrupted
        if keep is not None and corrupted.any():
            record.update(noise_stats(keep, corrupted))
            if config.noise == "label" and (keep & corrupted).any():
                # How far the model fit the wrong labels it trained on: memorisation of noise.
                noisy = keep & corrupted
                predicted = predict_logits(model, stream.x[noisy]).argmax(1)
                record["noise_fit"] = float((predicted == stream.y[noisy]).float().mean())
        return record


def _is_paper_score(config: ExperimentConfig) -> bool:
    return (config.statistic, config.target, config.cam) == (PAPER_STATISTIC, PAPER_TARGET, PAPER_CAM)


def _same_as_drip(config: ExperimentConfig, arm: str) -> bool:
    """Whether band arm ``arm`` keeps exactly DRIP's samples: the same score and rule."""
    if arm == "drip-paper":
        return _is_paper_score(config) and config.rule == "per-class"
    return arm == f"drip-{config.rule}"


def _signals(
    config: ExperimentConfig,
    phase: TrainingPhaseResult,
    stream: LabelledData,
    scores: torch.Tensor,
    seed: int,
) -> StreamSignals:
    """The evidence of every band arm on the stream and on P, and the stream's logits."""
    proxy, proxy_scores, proxy_logits = phase.calibration, phase.calibration_scores, phase.calibration_logits
    assert proxy is not None and proxy_scores is not None and proxy_logits is not None
    # The loss-based arms need the stream's logits: a forward pass, not another Grad-CAM.
    logits = predict_logits(phase.model, stream.x)
    evidence = {
        "drip": Evidence(scores, proxy_scores),
        "loss-band": Evidence(
            -selectors.loss_values(logits, stream.y), -selectors.loss_values(proxy_logits, proxy.y)
        ),
    }
    if "drip-paper" in config.arms:
        if _is_paper_score(config):
            evidence["drip-paper"] = evidence["drip"]
        else:
            paper = DripScorer(
                phase.model, phase.scorer.layer_name, PAPER_STATISTIC, PAPER_TARGET, cam=PAPER_CAM
            )
            evidence["drip-paper"] = Evidence(
                score_in_batches(paper, stream.x, stream.y)[0].double(),
                score_in_batches(paper, proxy.x, proxy.y)[0],
            )
    return StreamSignals(stream, proxy.y, evidence, logits, config.q_low, config.rule, seed)


def _arms_at(
    config: ExperimentConfig,
    signals: StreamSignals,
    trainer: _ArmTrainer,
    drip_keep: torch.Tensor,
    q_high: float,
    done: dict[str, dict[str, Any]],
    stored: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> dict[str, dict[str, Any]]:
    """Every arm of ``config.arms`` but FULL at band ``q_high``; DRIP keeps ``drip_keep``.

    Arms in ``done`` are not trained again; ``stored``: DRIP's samples read back from the store.
    """
    count = int(drip_keep.sum())
    records: dict[str, dict[str, Any]] = {}
    for arm in config.arms:
        if arm == "full":
            continue
        if arm in done:
            records[arm] = done[arm]
        elif arm == "drip":
            records[arm] = trainer.train(f"drip q={q_high:g}", drip_keep, stored)
        elif arm in BANDS and _same_as_drip(config, arm):
            records[arm] = records["drip"]  # the same score, rule and band: the same samples
        elif arm in BANDS:
            records[arm] = trainer.train(f"{arm} q={q_high:g}", signals.band(arm, q_high))
        else:
            records[arm] = trainer.train(f"{arm} {count}", signals.equal_count(arm, count))
    return records


def _budget_arms(
    config: ExperimentConfig,
    phase: TrainingPhaseResult,
    stream: LabelledData,
    trainer: _ArmTrainer,
    signals: StreamSignals,
    store_path: Path,
) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """``drip-budget``: DRIP's bands moving online to end at ``budget_bytes`` (``drip.budget``),
    and the class-balanced reservoir holding as many samples; with the fill trace for the record."""
    for suffix in ("", "-wal", "-shm"):
        Path(f"{store_path}{suffix}").unlink(missing_ok=True)
    with SampleStore(store_path, capacity_bytes=config.budget_bytes, when_full="evict") as store:
        run = stream_with_budget(
            phase.scorer, phase.thresholds, stream.x, stream.y, store, batch_size=config.stream_batch
        )
        stored_x, stored_y, _ = store.tensors()
        bytes_used = store.bytes_used
    count = int(run.kept.sum())
    arms = {
        "drip-budget": trainer.train(
            "drip-budget", run.kept, (stored_x.reshape(-1, *stream.input_shape), stored_y)
        ),
        "reservoir-budget": trainer.train("reservoir-budget", signals.equal_count("reservoir", count)),
    }
    return arms, {
        "capacity_bytes": config.budget_bytes,
        "bytes_used": bytes_used,
        "trace": run.trace.to_dict(),
    }


def run_seed(
    config: ExperimentConfig,
    pool: LabelledData,
    test: LabelledData | None,
    seed: int,
    workdir: Path,
    progress: bool = True,
    bar: tqdm | None = None,
    device: torch.device = CPU,
) -> dict[str, Any]:
    """One seed of the protocol; the stream's store lives in ``workdir``; ``bar`` counts trainings;
    every model trains and scores on ``device``."""
    start = time.perf_counter()
    bar = bar if bar is not None else tqdm(disable=True)
    d0, clean_stream, test = seed_splits(config, pool, test, seed)
    corruption = generator_for(seed, "corruption")
    stream, corrupted = corrupt(clean_stream, config.noise, config.noise_rate, config.noise_std, corruption)
    phase = training_phase(
        d0,
        lambda: build_model(config.model, pool.num_classes).to(device),
        config.train_config(),
        q_high=config.q_high,
        candidates=config.candidates,
        q_low=config.q_low,
        rule=config.rule,
        confidence=config.confidence,
        proxy_fraction=config.proxy_fraction,
        statistic=config.statistic,
        target=config.target,
        cam=config.cam,
        seed=seed,
        progress=progress,
    )
    bar.update(phase.trainings)
    workdir.mkdir(parents=True, exist_ok=True)
    kept, scores, stored, counters = _stream_through_filter(
        phase, stream, workdir / "kept.sqlite", config.stream_batch, progress, seed
    )
    signals = _signals(config, phase, stream, scores, seed)
    trainer = _ArmTrainer(config, d0, stream, test, corrupted, seed, progress, bar, device)
    arms: dict[str, dict[str, Any]] = {}
    if "full" in config.arms:
        arms["full"] = trainer.train("full", torch.ones(len(stream), dtype=torch.bool))
    arms.update(_arms_at(config, signals, trainer, kept, phase.q_high, {}, stored))
    if corrupted.any():
        arms["full-clean"] = trainer.train("full-clean", None, (clean_stream.x, clean_stream.y))
    budget = None
    if config.budget_bytes is not None:
        budget_arms, budget = _budget_arms(config, phase, stream, trainer, signals, workdir / "budget.sqlite")
        arms.update(budget_arms)
    sweep = []
    for q in config.sweep:
        band = signals.band("drip", q)
        # At DRIP's own band the arms already hold the answers: none is trained again.
        same = q == phase.q_high and torch.equal(band, kept)
        at_q = _arms_at(config, signals, trainer, band, q, arms if same else {})
        count = int(band.sum())
        sweep.append({"q_high": q, "kept": count, "saving": 1 - count / len(stream), "arms": at_q})
    return {
        "seed": seed,
        "sizes": {"test": len(test), "d0": len(d0), "stream": len(stream)},
        "q_high": phase.q_high,
        "thresholds": phase.thresholds.to_dict(),
        "training_phase": phase.summary(),
        "stream": {
            "seen": len(stream),
            "kept": int(kept.sum()),
            "labels": stream.y.tolist(),
            "scores": scores.tolist(),
            "kept_mask": kept.int().tolist(),
            "corrupted": corrupted.int().tolist(),
            "counters": counters,
        },
        "arms": arms,
        "budget": budget,
        "sweep": sweep,
        "gallery": _gallery(phase.scorer, stream, kept.numpy(), scores.numpy(), corrupted.numpy()),
        "elapsed_s": time.perf_counter() - start,
    }


def planned_trainings(config: ExperimentConfig) -> int:
    """How many trainings one seed runs (at most: the sweep may reuse DRIP's own band)."""
    arms = len({arm for arm in config.arms if arm == "drip" or not _same_as_drip(config, arm)})
    noise = 1 if config.noise != "none" and config.noise_rate > 0 else 0
    sweep = len(config.sweep) * (arms - ("full" in config.arms))
    budget = 2 if config.budget_bytes is not None else 0
    return expected_trainings(config.q_high) + arms + noise + budget + sweep


# 3: the sweep holds every arm at every band; the Training Phase's own summary.
# 4: selection rules (DRIP's rule, one arm per rule), each arm's kept samples per class.
RESULTS_VERSION = 4


def _finished_seed(path: Path, config: ExperimentConfig) -> dict[str, Any] | None:
    """The record of a seed an earlier run finished with the same config, else None."""
    if not path.is_file():
        return None
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError):
        return None  # half-written by a killed run cannot happen (atomic), but a damaged file is redone
    if saved.get("version") != RESULTS_VERSION:
        return None
    if with_former_proxy_fraction(saved.get("config", {})) != json.loads(json.dumps(asdict(config))):
        raise DripInputError(
            f"{path.parent.parent}: holds a run with another configuration; use another --out "
            "folder, or delete this one to start over"
        )
    return saved["record"]


def run_experiment(
    config: ExperimentConfig,
    pool: LabelledData,
    out: Path,
    test: LabelledData | None = None,
    progress: bool = True,
    source: str | None = None,
    device: torch.device = CPU,
    data_name: str | None = None,
) -> dict[str, Any]:
    """All seeds of the protocol; writes and returns ``results.json``'s content.

    ``data_name`` names the data for the report (e.g. the folder of an IDX set that is not MNIST;
    default: the data set's name), with the run's regimes appended.

    Seeds an earlier run in ``out`` finished with the same config are read back, not redone.
    ``source`` says where the data came from (e.g. the folder), for the reader of the report.
    Models train and score on ``device`` (not part of the config: a seed resumes on any device).
    """
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    pool, test = with_difficulty(config.difficulty, pool, test)
    seeds = []
    with tqdm(
        total=config.seeds * planned_trainings(config), desc="trainings", unit="model", disable=not progress
    ) as bar:
        for seed in range(config.seeds):
            path = out / f"seed{seed}" / "record.json"
            record = _finished_seed(path, config)
            if record is not None and progress:
                bar.write(f"seed {seed}: finished by an earlier run, read back from {path}")
            if record is None:
                record = run_seed(config, pool, test, seed, path.parent, progress, bar, device)
                saved = json.dumps({"version": RESULTS_VERSION, "config": asdict(config), "record": record})
                write_atomically(path, (saved + "\n").encode())
                record = json.loads(saved)["record"]  # as a resumed run reads it back
            bar.total = bar.n + (config.seeds - seed - 1) * planned_trainings(config)
            bar.refresh()
            seeds.append(record)
    results = {
        "format": "drip-results",
        "version": RESULTS_VERSION,
        "config": asdict(config),
        "dataset": config.dataset,
        "data_name": config.run_name(data_name),
        "data_source": source,
        "num_classes": pool.num_classes,
        "class_names": list(pool.class_names),
        "input_shape": list(pool.input_shape),
        "budget": config.budget,
        "threads": torch.get_num_threads(),
        "device": str(device),
        "elapsed_s": time.perf_counter() - start,
        "seeds": seeds,
    }
    write_atomically(out / "results.json", (json.dumps(results) + "\n").encode())
    return results
