"""The Training Phase: train the scorer on part of D0 and calibrate per-class bands on the rest.

Scores of samples a model trained on are biased (memorised points look easy), and raw Grad-CAM
magnitudes do not transfer between models. So D0 is split, stratified, into D0_train (60%), a
proxy stream P (20%) and a validation set W (20%). The scorer is trained on D0_train and scores P;
per class, ``high_c`` is the (1 - q_high) quantile of P's scores. The band search retrains, for each
candidate q_high, on D0_train plus what the band keeps of P, with the same optimiser-step budget,
and picks the largest q_high whose accuracy on W stays within ``tolerance`` of keeping all of P.
An optional lower cut ``q_low`` drops, per class, what scores below the q_low quantile of P's
scores; D0 is clean, so this is the "clean-percentile" rule (q_low = 0.05: below the 5th
percentile of the class's clean calibration scores), the cut that pays when the stream is noisy.
The deployed scorer is the model trained on D0_train. The cheap mode takes a given q_high and
skips the search (and W: P takes its 20% as well).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

from .data.base import LabelledData, stratified_split
from .errors import DripInputError
from .score import DripScorer, score_in_batches
from .thresholds import Thresholds, model_fingerprint
from .train import TrainConfig, evaluate, fit
from .validation import check_fraction

DEFAULT_CANDIDATES = (0.2, 0.3, 0.4, 0.5)


def bands_for_scorer(
    scorer: DripScorer,
    scores: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    *,
    q_high: float,
    q_low: float = 0.0,
    min_class_points: int = 30,
    metadata: dict | None = None,
) -> Thresholds:
    """Thresholds from held-out ``scores`` of ``scorer``, tagged with the scorer's model and setup."""
    return Thresholds.from_scores(
        scores,
        labels,
        num_classes,
        q_high=q_high,
        q_low=q_low,
        min_class_points=min_class_points,
        statistic=scorer.statistic,
        layer=scorer.layer_name,
        model_fingerprint=model_fingerprint(scorer.model),
        target=scorer.target,
        cam=scorer.cam.method,
        metadata=metadata or {},
    )


def calibrate(
    scorer: DripScorer,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    q_high: float,
    q_low: float = 0.0,
    num_classes: int | None = None,
    min_class_points: int = 30,
    batch_size: int = 256,
) -> Thresholds:
    """Thresholds from a trained scorer and held-out samples ``x``, ``y`` it was not trained on."""
    num_classes = num_classes or scorer.num_classes
    if num_classes is None:
        raise DripInputError("num_classes: the model does not declare it; pass num_classes=")
    scores, _ = score_in_batches(scorer, x, y, batch_size)
    return bands_for_scorer(
        scorer,
        scores,
        y,
        num_classes,
        q_high=q_high,
        q_low=q_low,
        min_class_points=min_class_points,
        metadata={"calibration_points": len(y)},
    )


@dataclass(frozen=True)
class BandTrial:
    """One candidate band of the search: how much of P it kept and the accuracy on W."""

    q_high: float
    kept: int
    proxy: int
    val_accuracy: float


@dataclass
class TrainingPhaseResult:
    """The deployed scorer (``scorer.model`` trained on D0_train), its thresholds, and what the
    phase measured and cost.

    ``proxy`` is the held-out proxy stream P with the scorer's ``proxy_scores`` and
    ``proxy_logits``: the clean calibration data other online selectors can calibrate on too.
    """

    scorer: DripScorer
    thresholds: Thresholds
    q_high: float
    reference_accuracy: float | None
    trials: list[BandTrial] = field(default_factory=list)
    scorer_train_s: float = 0.0
    elapsed_s: float = 0.0
    sizes: dict[str, int] = field(default_factory=dict)
    proxy: LabelledData | None = None
    proxy_scores: torch.Tensor | None = None
    proxy_logits: torch.Tensor | None = None

    @property
    def model(self) -> nn.Module:
        """The deployed scorer's model."""
        return self.scorer.model

    @property
    def cost_ratio(self) -> float:
        """Wall time of the whole phase over one training of the scorer."""
        return self.elapsed_s / self.scorer_train_s if self.scorer_train_s else float("nan")


def choose_q_high(trials: Sequence[BandTrial], reference_accuracy: float, tolerance: float) -> float:
    """The largest q_high whose validation accuracy is within ``tolerance`` of the reference.

    0.0 (keep everything) when no candidate qualifies.
    """
    safe = [t.q_high for t in trials if t.val_accuracy >= reference_accuracy - tolerance]
    return max(safe, default=0.0)


def training_phase(
    d0: LabelledData,
    model_factory: Callable[[], nn.Module],
    config: TrainConfig = TrainConfig(),
    *,
    q_high: float | None = None,
    candidates: Sequence[float] = DEFAULT_CANDIDATES,
    q_low: float = 0.0,
    tolerance: float = 0.005,
    statistic: str = "mean",
    layer: str | None = None,
    min_class_points: int = 30,
    seed: int = 0,
    progress: bool = True,
) -> TrainingPhaseResult:
    """Run the Training Phase on ``d0``; ``q_high`` given means the cheap mode (no search).

    ``model_factory()`` returns a fresh, untrained model; every training of the phase starts from
    the same initialisation (seeded) and the same budget, so the search compares data, not luck.
    If no candidate stays within ``tolerance`` of keeping all of P, the phase keeps everything
    (q_high = 0): DRIP found no band that is safe on this data.
    """
    start = time.perf_counter()
    if q_high is not None:
        q_high = check_fraction(q_high, "q_high")
    candidates = sorted({check_fraction(q, "candidates") for q in candidates})
    if q_high is None and not candidates:
        raise DripInputError("candidates: the search needs at least one candidate q_high")
    fractions = (0.6, 0.4) if q_high is not None else (0.6, 0.2, 0.2)
    parts = stratified_split(d0.y, fractions, seed)
    train_part, proxy = d0.subset(parts[0]), d0.subset(parts[1])
    validation = d0.subset(parts[2]) if len(parts) == 3 else None
    if len(train_part) == 0 or len(proxy) == 0:
        raise DripInputError(f"d0: {len(d0)} samples are too few to split for the Training Phase")

    def train(data_x: torch.Tensor, data_y: torch.Tensor, desc: str) -> tuple[nn.Module, float]:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = model_factory()
        history = fit(model, data_x, data_y, config, seed=seed, progress=progress, desc=desc)
        return model, history.elapsed_s

    model, scorer_train_s = train(train_part.x, train_part.y, "training phase: scorer")
    scorer = DripScorer(model, layer, statistic)
    proxy_scores, proxy_logits = score_in_batches(scorer, proxy.x, proxy.y)

    def band(q: float, metadata: dict | None = None) -> Thresholds:
        return bands_for_scorer(
            scorer,
            proxy_scores,
            proxy.y,
            d0.num_classes,
            q_high=q,
            q_low=q_low,
            min_class_points=min_class_points,
            metadata=metadata,
        )

    trials: list[BandTrial] = []
    reference = None
    if q_high is None:
        assert validation is not None
        both_x = torch.cat([train_part.x, proxy.x])
        both_y = torch.cat([train_part.y, proxy.y])
        reference_model, _ = train(both_x, both_y, "training phase: D0_train + P")
        reference = evaluate(reference_model, validation.x, validation.y)
        for q in tqdm(candidates, desc="band search", disable=not progress, leave=False):
            kept = band(q).keep(proxy_scores, proxy.y)
            candidate, _ = train(
                torch.cat([train_part.x, proxy.x[kept]]),
                torch.cat([train_part.y, proxy.y[kept]]),
                f"training phase: q_high={q}",
            )
            accuracy = evaluate(candidate, validation.x, validation.y)
            trials.append(BandTrial(q, int(kept.sum()), len(proxy), accuracy))
        q_high = choose_q_high(trials, reference, tolerance)
    elapsed = time.perf_counter() - start
    sizes = {
        "d0_train": len(train_part),
        "proxy": len(proxy),
        "validation": len(validation) if validation is not None else 0,
    }
    thresholds = band(
        q_high,
        {
            "reference_accuracy": reference,
            "trials": [asdict(t) for t in trials],
            "tolerance": tolerance,
            "cost_ratio": elapsed / scorer_train_s,
            "sizes": sizes,
        },
    )
    return TrainingPhaseResult(
        scorer=scorer,
        thresholds=thresholds,
        q_high=q_high,
        reference_accuracy=reference,
        trials=trials,
        scorer_train_s=scorer_train_s,
        elapsed_s=elapsed,
        sizes=sizes,
        proxy=proxy,
        proxy_scores=proxy_scores,
        proxy_logits=proxy_logits,
    )
