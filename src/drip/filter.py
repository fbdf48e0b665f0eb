"""The online decision: score each incoming labelled sample, keep it if it lies inside its band.

``DripFilter`` is what runs on the device. It validates every sample, scores it with the scorer
whose model the thresholds were calibrated on, and stores what it keeps. A bad sample raises
``DripInputError`` and changes nothing: no counter, no stored row.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .errors import DripInputError, DripModelMismatchError
from .score import DripScorer, ScoredBatch
from .store import SampleStore
from .store.rows import check_source
from .thresholds import ABOVE_HIGH, BELOW_LOW, INSIDE, Thresholds
from .validation import as_tensor

KEPT, ABOVE, BELOW, STORE_FULL = "kept", "above_high", "below_low", "store_full"


def _check_sources(sources: Any) -> None:
    """``sources``: None, or one id per sample, each checked before anything is scored: the store
    checks only the ids of what it keeps, so a bad id of a dropped sample went unnoticed."""
    if sources is None:
        return
    if isinstance(sources, (str, bytes)) or not isinstance(sources, Sequence):
        raise DripInputError(f"sources: expected one id (or None) per sample, got {type(sources).__name__}")
    for i, source in enumerate(sources):
        check_source(source, f"sources[{i}]")


@dataclass(frozen=True)
class Decision:
    """What happened to one sample: ``kept`` and why (``reason``), with its score and label.

    ``reason`` is ``"kept"``, ``"above_high"`` (redundant), ``"below_low"`` (suspect) or
    ``"store_full"`` (inside the band, but the store refused it, or evicted it for a later sample
    of the same batch). ``sample_id`` is the store's row id of a kept sample.
    """

    kept: bool
    score: float
    label: int
    reason: str
    sample_id: int | None = None


@dataclass
class ClassCounters:
    """Per-class tallies of what the filter saw and did."""

    seen: list[int]
    kept: list[int]
    dropped: list[int]
    rejected: list[int]

    @classmethod
    def zeros(cls, num_classes: int) -> ClassCounters:
        return cls(*([0] * num_classes for _ in range(4)))

    @property
    def storage_saving(self) -> float:
        """1 - kept / seen over all classes (0 before anything was seen)."""
        seen = sum(self.seen)
        return 1.0 - sum(self.kept) / seen if seen else 0.0


class DripFilter:
    """Keep a sample when its DRIP score lies inside its class's calibrated band.

    ``store`` may be None to decide without storing (e.g. to measure a band). The thresholds must
    come from the scorer's own model (checked by weight fingerprint, statistic and layer);
    ``allow_model_mismatch=True`` overrides that check.

    Example::

        kept = DripFilter(scorer, Thresholds.load("t.json"), SampleStore("kept.sqlite"))
        decision = kept.offer(x, 7)      # x: one sample, e.g. (1, 8, 8)
    """

    def __init__(
        self,
        scorer: DripScorer,
        thresholds: Thresholds,
        store: SampleStore | None = None,
        *,
        allow_model_mismatch: bool = False,
    ) -> None:
        thresholds.check_model(scorer.model, allow_mismatch=allow_model_mismatch)
        if not allow_model_mismatch:
            for name, expected, found in (
                ("statistic", thresholds.statistic, scorer.statistic),
                ("layer", thresholds.layer, scorer.layer_name),
                ("target", thresholds.target, scorer.target),
                ("cam", thresholds.cam, scorer.cam_method),
            ):
                if expected and expected != found:
                    raise DripModelMismatchError(
                        f"thresholds were calibrated with {name} {expected!r}, the scorer uses {found!r}"
                    )
        num_classes = scorer.num_classes
        if num_classes is not None and num_classes != thresholds.num_classes:
            raise DripModelMismatchError(
                f"thresholds have {thresholds.num_classes} classes, the model {num_classes}"
            )
        self.scorer = scorer
        self.thresholds = thresholds
        self.store = store
        self.counters = ClassCounters.zeros(thresholds.num_classes)

    def offer(self, x: Any, y: Any, *, source: str | None = None) -> Decision:
        """Decide on one sample ``x`` (no batch dimension) with label ``y``."""
        check_source(source)
        tensor = as_tensor(x, "x")
        if tensor.dim() == 0:
            raise DripInputError("x: expected one sample (e.g. (C, H, W)), got a scalar")
        labels = as_tensor(y, "y")
        if labels.dim() > 1 or labels.numel() != 1:
            raise DripInputError(f"y: expected one label for one sample, got shape {tuple(labels.shape)}")
        return self.offer_batch(tensor.unsqueeze(0), labels.reshape(1), sources=[source])[0]

    def offer_batch(
        self,
        xs: Any,
        ys: Any,
        *,
        sources: Sequence[str | None] | None = None,
        checkpoint: tuple[str, str] | None = None,
    ) -> list[Decision]:
        """Decide on a batch ``xs: (B, ...)`` with labels ``ys: (B,)``; one decision per sample.

        The kept samples of the batch are stored in one transaction; counters change only after
        it committed. ``checkpoint=(name, value)`` is committed in that same transaction (see
        ``SampleStore.add_batch``), even when nothing is kept: a stream reader that records its
        position this way resumes exactly where the store's contents say it stopped.
        """
        batch, scores, labels = self._score(xs, ys, sources, checkpoint)
        position = self.thresholds.positions(scores, labels)
        return self._decide(batch.x, scores, labels, position, sources, [checkpoint] if checkpoint else [])

    def decide_scored(
        self,
        inputs: Any,
        scores: list[float],
        labels: list[int],
        *,
        sources: Sequence[str | None] | None = None,
    ) -> list[Decision]:
        """Decide on a batch this filter's scorer already scored elsewhere (another rank of
        ``drip.parallel``): store what lies inside its band, in one transaction, then count, as
        ``offer_batch`` does after scoring. ``inputs: (B, ...)``: only the rows inside their band
        are read (and stored); ``scores`` and ``labels`` are checked numbers, as the scorer gives."""
        _check_sources(sources)
        position = self.thresholds.positions(scores, labels)
        return self._decide(inputs, scores, labels, position, sources, [])

    def _score(
        self, xs: Any, ys: Any, sources: Sequence[str | None] | None, checkpoint: tuple[str, str] | None
    ) -> tuple[ScoredBatch, list[float], list[int]]:
        """The checked and scored batch, with its scores and labels as lists."""
        _check_sources(sources)
        if checkpoint is not None and self.store is None:
            raise DripInputError("checkpoint: needs a store to be written to, but the filter has none")
        batch = self.scorer.score_batch(xs, ys, num_classes=self.thresholds.num_classes)
        if sources is not None and len(sources) != len(batch.x):
            raise DripInputError(f"sources: expected one per sample ({len(batch.x)}), got {len(sources)}")
        # The scorer checked the labels against the bands' classes and the scores for finiteness.
        return batch, batch.scores.tolist(), batch.y.tolist()

    def _decide(
        self,
        inputs: Any,
        score_list: list[float],
        label_list: list[int],
        position: list[int],
        sources: Sequence[str | None] | None,
        checkpoints: list[tuple[str, str]],
    ) -> list[Decision]:
        """Store what lies ``INSIDE`` (and ``checkpoints``) in one transaction, then count."""
        keep = [where == INSIDE for where in position]
        keep_index = [i for i, k in enumerate(keep) if k]
        sample_ids: list[int | None] = [None] * len(keep)
        if self.store is not None and (keep_index or checkpoints):
            everything = len(keep_index) == len(keep)  # then no gather copies the batch
            kept_ids = self.store.add_batch(
                inputs if everything else inputs[keep_index],
                label_list if everything else [label_list[i] for i in keep_index],
                score_list if everything else [score_list[i] for i in keep_index],
                [sources[i] for i in keep_index] if sources is not None else None,
                checkpoint=checkpoints or None,
            )
            for i, sample_id in zip(keep_index, kept_ids):
                sample_ids[i] = sample_id
        return self._record(score_list, label_list, position, keep, sample_ids)

    def _record(
        self,
        scores: list[float],
        labels: list[int],
        position: list[int],
        keep: list[bool],
        sample_ids: list[int | None],
    ) -> list[Decision]:
        decisions = []
        counters = self.counters
        for score, label, where, inside, sample_id in zip(scores, labels, position, keep, sample_ids):
            counters.seen[label] += 1
            if inside and (self.store is None or sample_id is not None):
                counters.kept[label] += 1
                decisions.append(Decision(True, score, label, KEPT, sample_id))
            elif inside:
                counters.rejected[label] += 1
                decisions.append(Decision(False, score, label, STORE_FULL))
            else:
                counters.dropped[label] += 1
                reason = ABOVE if where == ABOVE_HIGH else BELOW
                assert where in (ABOVE_HIGH, BELOW_LOW)
                decisions.append(Decision(False, score, label, reason))
        return decisions
