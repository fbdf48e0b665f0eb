"""Per-class thresholds that move online so that a store ends the stream at its byte budget.

The calibrated ``Thresholds`` say *which* samples are redundant (scores above ``high_c``), not how
many a device can keep: its storage is a number of bytes, the stream's length and class mix are
whatever they turn out to be. ``BudgetedThresholds`` keeps each class's lower cut where the Training
Phase put it and moves its upper cut, once per batch, from what the store holds and a small state
(no past sample is kept or read back for it):

* **how much the class may still store**: the store's capacity is shared out between classes by
  water-filling over what each class can still get (what it holds plus its expected in-band
  supply), as the thresholds' selection rule shares the stream: under ``per-class`` every class
  gets an equal share unless it cannot fill one (a class-balanced store); under ``pooled`` and
  ``coverage`` each class's share follows its supply times its calibrated keep rate, so the hard
  classes get the storage and coverage's floors hold under a budget too; the class's keep rate is
  its remaining share over its expected remaining supply (``expected_length`` samples in all, at
  the class's recent frequency, an exponential average over ``frequency_memory`` samples). A stream
  of unknown length is assumed to last as long again as it has so far.
* **where that rate falls in the class's recent scores**: the upper cut is the score below which
  that fraction of the class's last ``window`` scores lies (counting from its lower cut; the
  batch's own scores count among them). A class with fewer than ``min_class_points`` recent
  scores uses all classes' recent scores pooled, as calibration does; while fewer than that have
  been seen at all, the calibrated band decides.

So a class that arrives more often than expected, or a stream longer than expected, tightens its
cut; a class that is rare, or a store behind its schedule, opens it, up to keeping all of the
class. A class at its share keeps nothing more, unless it holds a sample above the cut of its
whole-stream rate (its share over all its samples, seen and to come): then it keeps what scores
below its highest stored sample, which the store evicts for it. The store must evict
(``when_full="evict"``): when a sample inside its band finds the store full (a class rare early
comes on strong, the first batches overshot, a replacement), the store drops the highest-score
sample of the most represented class. That is what the moving thresholds would drop first: the
most represented class is the one most over its share, and within a class the band only moves at
the top, so the highest score is the first it leaves out. An early, badly calibrated phase
therefore does not lock the store. The state (per-class recent scores, frequencies, what was seen)
is committed with the batch's samples in one transaction, so a killed device resumes with the same
thresholds.
"""

from __future__ import annotations

import base64
import itertools
import json
import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .errors import DripInputError, DripModelMismatchError, DripStoreError
from .filter import ClassCounters, Decision, DripFilter
from .score import DripScorer
from .store import SampleStore
from .thresholds import ABOVE_HIGH, BELOW_LOW, INSIDE, Thresholds

FORMAT = "drip-budget"
VERSION = 1


def water_fill(
    capacity: float, supply: Sequence[float], weights: Sequence[float] | None = None
) -> list[float]:
    """Shares of ``capacity`` in proportion to ``weights`` (default: equal), except that no class
    gets more than its ``supply``.

    The shares sum to ``min(capacity, supply of the classes of positive weight)``; what a class
    cannot use goes to the others, in proportion to their weights.
    """
    weights = [1.0] * len(supply) if weights is None else [float(w) for w in weights]
    # A class is capped once its proportional share reaches its supply: fill those first.
    order = sorted(range(len(supply)), key=lambda c: supply[c] / weights[c] if weights[c] > 0 else math.inf)
    # The weight still to share at each rank, summed from the end rather than decremented from the
    # total: a running difference can round to 0 before the last class.
    weight_left = list(itertools.accumulate(weights[c] for c in reversed(order)))[::-1]
    shares = [0.0] * len(supply)
    left = float(capacity)
    for rank, c in enumerate(order):
        if weights[c] <= 0:
            continue
        shares[c] = min(float(supply[c]), max(left, 0.0) * weights[c] / weight_left[rank])
        left -= shares[c]
    return shares


@dataclass(frozen=True)
class Bands:
    """The bands one batch is decided by: ``low``, ``high`` and the keep ``rates`` per class.

    ``high[c] = -inf`` means the class keeps nothing (it holds its share); ``+inf`` keeps all of
    it above ``low[c]``. ``rates`` are the intended keep fractions of the class's samples (NaN
    while the calibrated band stands in), ``shares`` the bytes each class may hold in the end.
    """

    low: tuple[float, ...]
    high: tuple[float, ...]
    rates: tuple[float, ...]
    shares: tuple[float, ...]

    def positions(self, scores: Sequence[float], labels: Sequence[int]) -> list[int]:
        """Per sample ``BELOW_LOW``, ``INSIDE`` or ``ABOVE_HIGH`` (labels already checked)."""
        low, high = self.low, self.high
        return [
            BELOW_LOW if score < low[c] else ABOVE_HIGH if score > high[c] else INSIDE
            for score, c in zip(scores, labels)
        ]


@dataclass(frozen=True)
class BudgetState:
    """What the moving thresholds remember: samples and bytes seen (all, and samples per class),
    the recent class frequencies, and each class's last scores (float32, oldest first)."""

    seen: int
    seen_bytes: int
    class_seen: tuple[int, ...]
    frequency: tuple[float, ...]
    windows: tuple[np.ndarray, ...]

    def to_json(self, fingerprint: str | None) -> str:
        """The state as JSON; the scores as base64 of little-endian float32, exactly."""
        return json.dumps(
            {
                "format": FORMAT,
                "version": VERSION,
                "model_fingerprint": fingerprint,
                "seen": self.seen,
                "seen_bytes": self.seen_bytes,
                "class_seen": list(self.class_seen),
                "frequency": list(self.frequency),
                "scores": [base64.b64encode(w.astype("<f4").tobytes()).decode("ascii") for w in self.windows],
            },
            allow_nan=False,
        )

    @classmethod
    def from_json(
        cls, text: str, num_classes: int, window: int, where: str
    ) -> tuple[BudgetState, str | None]:
        """The state and the model fingerprint saved with it; a damaged state is a ``DripStoreError``."""
        try:
            data = json.loads(text)
            if data["format"] != FORMAT or data["version"] != VERSION:
                raise ValueError(f"format {data['format']!r} version {data['version']!r}")
            counts = [data["seen"], data["seen_bytes"], *data["class_seen"]]
            if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in counts):
                raise ValueError(f"counts {counts!r}")
            frequency = tuple(float(f) for f in data["frequency"])
            windows = tuple(
                np.frombuffer(base64.b64decode(w, validate=True), dtype="<f4").astype(np.float32)[-window:]
                for w in data["scores"]
            )
            fingerprint = data["model_fingerprint"]
        except (ValueError, TypeError, KeyError, RecursionError, AttributeError) as err:
            raise DripStoreError(f"{where}: the budget state is damaged: {err}") from None
        if not len(frequency) == len(windows) == len(counts) - 2 == num_classes:
            raise DripModelMismatchError(
                f"{where}: the budget state has {len(frequency)} classes, the thresholds {num_classes}"
            )
        return cls(counts[0], counts[1], tuple(counts[2:]), frequency, windows), fingerprint


def _count(value: object, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise DripInputError(f"{name}: expected an integer >= {minimum}, got {value!r}")
    return int(value)


class BudgetedThresholds:
    """Per-class bands that move so that ``capacity_bytes`` is filled by the stream's end.

    ``thresholds``: the calibrated bands (their lower cuts stay; their upper cuts are where the
    state starts). ``expected_length``: the number of samples the whole stream will offer (None:
    unknown). See the module docstring for the rule. ``advanced(...)`` gives the state after a
    batch and ``bands(..., state)`` the bands that batch is decided by; ``state`` is replaced only
    once the batch is committed, so a failed write changes nothing.

    Example::

        budget = BudgetedThresholds(thresholds, capacity_bytes=10_000_000, expected_length=48_000)
        state = budget.advanced(scores, labels, sample_bytes=3136)
        bands = budget.bands(store.class_bytes(), store.top_scores(), state)
        keep = [p == INSIDE for p in bands.positions(scores, labels)]
    """

    def __init__(
        self,
        thresholds: Thresholds,
        capacity_bytes: int,
        expected_length: int | None = None,
        *,
        window: int = 256,
        frequency_memory: int = 1000,
        min_class_points: int = 30,
    ) -> None:
        self.thresholds = thresholds
        self.capacity_bytes = _count(capacity_bytes, "capacity_bytes", 0)
        self.expected_length = (
            None if expected_length is None else _count(expected_length, "expected_length", 0)
        )
        self.window = _count(window, "window")
        self.frequency_memory = _count(frequency_memory, "frequency_memory")
        self.min_class_points = _count(min_class_points, "min_class_points")
        # How the rule shares the stream: None (equal shares) under per-class, else each class's
        # calibrated keep rate; fixed with the thresholds, so derived once.
        self.keep_rates = None if thresholds.rule == "per-class" else thresholds.keep_rates()
        classes = thresholds.num_classes
        counts = thresholds.counts if sum(thresholds.counts) > 0 else (1,) * classes
        empty = np.empty(0, dtype=np.float32)
        self.state = BudgetState(
            0, 0, (0,) * classes, tuple(c / sum(counts) for c in counts), (empty,) * classes
        )

    @property
    def num_classes(self) -> int:
        return self.thresholds.num_classes

    def restore(self, text: str, where: str) -> None:
        """Continue from a state written by ``BudgetState.to_json`` (e.g. read back from a store)."""
        state, fingerprint = BudgetState.from_json(text, self.num_classes, self.window, where)
        expected = self.thresholds.model_fingerprint
        if fingerprint is not None and expected is not None and fingerprint != expected:
            raise DripModelMismatchError(
                f"{where}: the budget state was built with model {fingerprint[:12]}, the thresholds "
                f"are of model {expected[:12]}: its recent scores do not apply; use a new store"
            )
        self.state = state

    def to_json(self, state: BudgetState | None = None) -> str:
        """``state`` (default: the current one) as JSON, tagged with the thresholds' model."""
        return (state or self.state).to_json(self.thresholds.model_fingerprint)

    def _weights(self, supply: Sequence[float]) -> list[float] | None:
        """How the store is shared between classes: equally under the ``per-class`` rule (as a
        class-balanced buffer), else as the rule shares the calibration stream, each class's
        supply times its calibrated keep rate, so the hard classes get the storage there too."""
        if self.keep_rates is None:
            return None
        return [s * r for s, r in zip(supply, self.keep_rates)]

    def _remaining(self, state: BudgetState) -> int:
        """Samples still to come: past the expected end (or with none), as many again as seen."""
        if self.expected_length is None:
            return max(state.seen, 1)
        return max(self.expected_length - state.seen, 1)

    def _recent(self, state: BudgetState, c: int) -> np.ndarray | None:
        """The scores class c's quantiles come from: its own, else all pooled, else None."""
        own = state.windows[c]
        if len(own) >= self.min_class_points:
            return own
        pooled = np.concatenate(state.windows)
        return pooled if len(pooled) >= self.min_class_points else None

    def _cut(self, c: int, recent: np.ndarray | None, below: float, rate: float) -> float:
        """The score below which ``rate`` of class c's recent scores lie, above its lower cut."""
        if rate <= 0:
            return -math.inf
        if recent is None:
            return self.thresholds.high[c]
        if below + rate >= 1:
            return math.inf
        return float(np.quantile(recent.astype(np.float64), below + rate))

    def _replacing(
        self,
        c: int,
        recent: np.ndarray | None,
        below: float,
        state: BudgetState,
        share: float,
        future: float,
        top_scores: Mapping[int, float],
    ) -> tuple[float, float]:
        """Cut and rate of a class at its share: if it holds a sample above the cut of its
        whole-stream rate (share over all its samples, seen and to come), it keeps what scores
        below its highest stored score, and the store evicts that highest score for each; else
        nothing."""
        mean_bytes = state.seen_bytes / state.seen if state.seen else 0.0
        total = state.class_seen[c] * mean_bytes + future
        rate = min(share / total, 1 - below) if total > 0 else 0.0
        top = top_scores.get(c, -math.inf)
        if rate <= 0 or top <= self._cut(c, recent, below, rate):
            return -math.inf, 0.0
        return top, (float(np.mean(recent <= top)) - below if recent is not None else math.nan)

    def bands(
        self, held_bytes: Mapping[int, int], top_scores: Mapping[int, float], state: BudgetState | None = None
    ) -> Bands:
        """The bands of ``state`` (default: the current one) for a store that holds ``held_bytes``
        and, at the top, ``top_scores`` per class. A batch is decided by the bands of the state
        that has seen it: its own scores count among the recent ones."""
        state = state or self.state
        low = self.thresholds.low
        mean_bytes = state.seen_bytes / state.seen if state.seen else 0.0
        remaining = self._remaining(state)
        recent = [self._recent(state, c) for c in range(self.num_classes)]
        below = [0.0 if r is None else float(np.mean(r < low[c])) for c, r in enumerate(recent)]
        future = [remaining * f * mean_bytes for f in state.frequency]
        held = [held_bytes.get(c, 0) for c in range(self.num_classes)]
        supply = [h + f * (1 - b) for h, f, b in zip(held, future, below)]
        shares = water_fill(self.capacity_bytes, supply, self._weights(supply))
        rates, high = [], []
        for c in range(self.num_classes):
            room, keepable = shares[c] - held[c], 1 - below[c]
            if room > 0:  # on schedule: the rate that fills the class's share by the end
                rate = min(room / future[c], keepable) if future[c] > 0 else keepable
                cut = self._cut(c, recent[c], below[c], rate)
            else:
                cut, rate = self._replacing(c, recent[c], below[c], state, shares[c], future[c], top_scores)
            high.append(cut)
            rates.append(math.nan if recent[c] is None and rate > 0 else rate)
        return Bands(tuple(low), tuple(high), tuple(rates), tuple(shares))

    def advanced(self, scores: Sequence[float], labels: Sequence[int], sample_bytes: int) -> BudgetState:
        """The state after a batch of ``scores`` and ``labels`` (checked) of ``sample_bytes`` each."""
        state = self.state
        count = len(labels)
        decay = 1.0 - 1.0 / self.frequency_memory
        frequency = [f * decay**count for f in state.frequency]
        class_seen = list(state.class_seen)
        for i, label in enumerate(labels):
            frequency[label] += (1.0 - decay) * decay ** (count - 1 - i)
            class_seen[label] += 1
        values = np.asarray(scores, dtype=np.float32)
        classes = np.asarray(labels, dtype=np.int64)
        windows = tuple(
            np.concatenate([w, values[classes == c]])[-self.window :] if count else w
            for c, w in enumerate(state.windows)
        )
        return BudgetState(
            state.seen + count,
            state.seen_bytes + count * sample_bytes,
            tuple(class_seen),
            tuple(frequency),
            windows,
        )


class BudgetedFilter(DripFilter):
    """``DripFilter`` whose bands move (``BudgetedThresholds``) to end the stream at the store's
    ``capacity_bytes``; its state is committed with each batch under the checkpoint
    ``state_name``, and read back from the store when the filter is built (a resumed device goes
    on with the same thresholds). Give the store ``when_full="evict"`` (see the module docstring).

    Example::

        store = SampleStore("kept.sqlite", capacity_bytes=20_000_000, when_full="evict")
        drip = BudgetedFilter(scorer, Thresholds.load("t.json"), store, expected_length=48_000)
        decisions = drip.offer_batch(x, y)       # x: (B, ...), y: (B,)
        drip.bands                               # the bands that batch was decided by
    """

    def __init__(
        self,
        scorer: DripScorer,
        thresholds: Thresholds,
        store: SampleStore,
        expected_length: int | None = None,
        *,
        window: int = 256,
        frequency_memory: int = 1000,
        min_class_points: int = 30,
        state_name: str = "budget",
        allow_model_mismatch: bool = False,
    ) -> None:
        if not isinstance(store, SampleStore) or store.capacity_bytes is None:
            raise DripInputError("store: a budgeted filter needs a SampleStore with capacity_bytes set")
        super().__init__(scorer, thresholds, store, allow_model_mismatch=allow_model_mismatch)
        self.store: SampleStore = store
        self.budget = BudgetedThresholds(
            thresholds,
            store.capacity_bytes,
            expected_length,
            window=window,
            frequency_memory=frequency_memory,
            min_class_points=min_class_points,
        )
        self.state_name = state_name
        saved = store.checkpoint(state_name)
        if saved is not None:
            self.budget.restore(saved, f"{store.path}: checkpoint {state_name!r}")
        self.bands: Bands | None = None

    def offer_batch(
        self,
        xs: Any,
        ys: Any,
        *,
        sources: Sequence[str | None] | None = None,
        checkpoint: tuple[str, str] | None = None,
    ) -> list[Decision]:
        """As ``DripFilter.offer_batch``, decided by the current bands; the bands' new state is
        committed with the batch (also when nothing is kept) and adopted once it is."""
        batch, scores, labels = self._score(xs, ys, sources, checkpoint)
        sample_bytes = batch.x[0].numel() * batch.x.element_size() if len(batch.x) else 0
        state = self.budget.advanced(scores, labels, sample_bytes)
        bands = self.budget.bands(self.store.class_bytes(), self.store.top_scores(), state)
        checkpoints = [checkpoint] if checkpoint else []
        checkpoints.append((self.state_name, self.budget.to_json(state)))
        decisions = self._decide(
            batch.x, scores, labels, bands.positions(scores, labels), sources, checkpoints
        )
        self.budget.state, self.bands = state, bands
        return decisions


@dataclass
class BudgetTrace:
    """Per batch of a budgeted stream: samples seen before it, its bands, and the store's bytes
    after it (for plotting the thresholds and the fill level over the stream)."""

    capacity_bytes: int
    seen: list[int] = field(default_factory=list)
    high: list[tuple[float, ...]] = field(default_factory=list)
    rates: list[tuple[float, ...]] = field(default_factory=list)
    bytes_used: list[int] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (infinite and NaN values become None)."""

        def finite(values: tuple[float, ...]) -> list[float | None]:
            return [v if math.isfinite(v) else None for v in values]

        return {
            "capacity_bytes": self.capacity_bytes,
            "seen": self.seen,
            "high": [finite(h) for h in self.high],
            "rates": [finite(r) for r in self.rates],
            "bytes_used": self.bytes_used,
        }


@dataclass
class BudgetRun:
    """What ``stream_with_budget`` did: ``kept`` (N,) marks the stream samples the store holds at
    the end, ``trace`` the batches of this call, ``counters`` the filter's tallies of this call."""

    kept: torch.Tensor
    trace: BudgetTrace
    counters: ClassCounters


def stream_with_budget(
    scorer: DripScorer,
    thresholds: Thresholds,
    x: torch.Tensor,
    y: torch.Tensor,
    store: SampleStore,
    expected_length: int | None = None,
    *,
    batch_size: int = 64,
    source_prefix: str = "stream",
    progress: bool = False,
    **options: Any,
) -> BudgetRun:
    """Stream ``x: (N, ...)``, ``y: (N,)`` through a ``BudgetedFilter`` into ``store``, whose
    ``capacity_bytes`` is the budget, ``batch_size`` samples at a time.

    ``expected_length`` defaults to N (this stream is all the store will see). Sample i is stored
    with the source ``"<source_prefix>:<i>"``, and each batch commits how far it got: calling
    again on the same store after a crash resumes after the last committed batch and ends in the
    store an uninterrupted run ends in. ``options`` go to ``BudgetedFilter`` (``window``,
    ``frequency_memory``, ...).
    """
    if len(x) != len(y):
        raise DripInputError(f"x/y: {len(x)} samples but {len(y)} labels")
    batch_size = _count(batch_size, "batch_size")
    drip = BudgetedFilter(
        scorer, thresholds, store, len(x) if expected_length is None else expected_length, **options
    )
    key = f"stream_with_budget:{source_prefix}"
    saved = store.checkpoint(key)
    start = 0 if saved is None else int(saved)
    trace = BudgetTrace(store.capacity_bytes or 0)
    for index in tqdm(range(start, len(x), batch_size), desc="budgeted stream", disable=not progress):
        stop = min(index + batch_size, len(x))
        seen = drip.budget.state.seen
        drip.offer_batch(
            x[index:stop],
            y[index:stop],
            sources=[f"{source_prefix}:{i}" for i in range(index, stop)],
            checkpoint=(key, str(stop)),
        )
        assert drip.bands is not None
        trace.seen.append(seen)
        trace.high.append(drip.bands.high)
        trace.rates.append(drip.bands.rates)
        trace.bytes_used.append(store.bytes_used)
    kept = torch.zeros(len(x), dtype=torch.bool)
    prefix = f"{source_prefix}:"
    for sample in store:
        if sample.source is not None and sample.source.startswith(prefix):
            kept[int(sample.source[len(prefix) :])] = True
    return BudgetRun(kept, trace, drip.counters)
