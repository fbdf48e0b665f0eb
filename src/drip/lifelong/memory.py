"""A durable class-balanced reservoir: how a full store chooses among samples DRIP's band keeps.

DRIP's band says which samples are worth keeping; a device's store still has to choose among them
once it is full. Tightening the band to fit (``drip.budget``: the upper cut moves down) keeps ever
harder samples, beyond what the Training Phase checked, and a store of a few dozen samples per
class made of its hardest ones trains worse than a random few dozen (Sorscher et al., NeurIPS
2022: with little data per class, keep the typical samples). ``ClassBalancedReservoir`` keeps the
band as calibrated and thins it at random instead, class by class as the rehearsal buffers that
hold up under drift do (CBRS, Chrysakis & Moens, ICML 2020; GDumb's greedy sampler is its
cousin). Each class c has a weight ``w_c`` and its fair share of the store is proportional to it:

* while a sample fits, it is stored;
* when full, a sample of a class that is not the most over its share (the largest
  ``held_c / w_c``; ties: the lowest label) evicts random samples of the class that is, until it
  fits;
* a sample of that class replaces random samples of its own class with probability
  held_c / seen_c (reservoir sampling within the class; ``seen_c``: in-band samples of class c
  offered so far over the device's life).

The weights are the ``shares`` rule:

* ``equal``: ``w_c = 1``, CBRS itself: every class the same bytes, whatever its difficulty;
* ``band`` (the default): ``w_c = (kept_c + 1) / (judged_c + 1)``, the share of class c's
  samples the band kept over the life (``judged_c`` of them offered while the band had an upper
  cut for c, ``kept_c`` of those inside it; add-one, so that no weight is 0). The selection rule
  decides where storage goes (``drip.rules``: most of a hard class, a floor of an easy one) and a
  full store keeps those proportions, where ``equal`` would give every class the same bytes
  again. As the weight is a rate, not a count, a rare class is under its share and kept whole,
  as in CBRS. A class the band has no upper cut for is kept whole by the band for what the
  calibration data said of its numbers, not of its difficulty: its calibration never saw it (a
  new class after a drift), or the coverage floor keeps all of a class that was rare there.
  Those samples do not count, and until a class is judged its weight is the mean of the judged
  classes' (CBRS gives a new class the share of any other). Not more: a new class is often
  confusable with one the store already holds, and a model trained on several times more of one
  than of the other gives the ambiguous samples to the first (on graded MNIST, weight 1 gave a
  new class of the hardest pair 3.5 times its judged partner's samples, and the partner ended at
  0.6% final accuracy in that seed).

Randomness is a function of the seed and each sample's source, not a generator's position, and
the counts are committed with every batch: a device killed anywhere resumes with the same store.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Literal

import torch

from ..errors import DripInputError
from ..store import SampleStore

Shares = Literal["equal", "band"]
SHARES: tuple[str, ...] = ("equal", "band")
DEFAULT_SHARES: Shares = "band"


def uniform(seed: int, source: str, purpose: str) -> float:
    """A number in [0, 1) fixed by ``seed``, the sample's ``source`` and the draw's ``purpose``."""
    digest = hashlib.sha256(f"{seed}:{purpose}:{source}".encode()).digest()
    return int.from_bytes(digest[:8], "little") / 2**64


class ClassBalancedReservoir:
    """Class-balanced reservoir sampling into ``store`` (which has ``capacity_bytes``), each
    class's share weighted by ``shares``, state committed under the checkpoint ``state_name``.
    See the module docstring.

    Example::

        reservoir = ClassBalancedReservoir(store, num_classes=10, seed=0)
        kept = reservoir.offer(x, y, scores, sources, inside)   # inside: DRIP's band keeps
    """

    def __init__(
        self,
        store: SampleStore,
        num_classes: int,
        seed: int,
        state_name: str = "reservoir",
        shares: Shares = DEFAULT_SHARES,
    ) -> None:
        if store.capacity_bytes is None:
            raise DripInputError("store: a class-balanced reservoir needs a SampleStore with capacity_bytes")
        if shares not in SHARES:
            raise DripInputError(f"shares: expected one of {SHARES}, got {shares!r}")
        self.store, self.num_classes, self.seed, self.state_name = store, num_classes, seed, state_name
        self.shares = shares
        saved = json.loads(store.checkpoint(state_name) or "{}")
        self.seen = list(saved.get("seen", [0] * num_classes))
        self.judged = list(saved.get("judged", [0] * num_classes))
        self.kept = list(saved.get("kept", [0] * num_classes))

    def offer(
        self,
        xs: torch.Tensor,
        labels: Sequence[int],
        scores: Sequence[float],
        sources: Sequence[str],
        inside: Sequence[bool],
        checkpoint: tuple[str, str] | None = None,
        judged: Sequence[bool] | None = None,
    ) -> list[bool]:
        """Offer a batch (``inside``: the samples the band keeps; ``judged``: those whose class
        the band had an upper cut for, default all); one transaction with the new counts and
        ``checkpoint``. Per sample, whether the store holds it afterwards.

        Every sample has the size of those stored (a device's inputs have one shape), so one
        eviction makes room for one newcomer."""
        judged = [True] * len(labels) if judged is None else judged
        per_label = {"scores": scores, "sources": sources, "inside": inside, "judged": judged}
        for name, values in per_label.items():
            if len(values) != len(labels):
                raise DripInputError(f"{name}: expected one per label ({len(labels)}), got {len(values)}")
        sample_bytes = xs[0].numel() * xs.element_size() if len(xs) else 0
        capacity = self.store.capacity_bytes
        members = self.store.ids_by_label()
        held_bytes = {c: len(ids) * sample_bytes for c, ids in members.items()}
        used = self.store.bytes_used
        if used != sum(held_bytes.values()):
            raise DripInputError(
                f"xs: samples of {sample_bytes} bytes, but the store holds samples of other sizes"
            )
        seen, judged_count, kept_count = list(self.seen), list(self.judged), list(self.kept)
        removed: list[int] = []
        for i, (label, source, keep) in enumerate(zip(labels, sources, inside)):
            if judged[i]:
                judged_count[label] += 1
                kept_count[label] += bool(keep)
            if not keep or sample_bytes > capacity:
                continue
            seen[label] += 1
            own = members.setdefault(label, [])
            if used + sample_bytes > capacity:
                weights = self._weights(judged_count, kept_count)
                largest = _most_over_share(held_bytes, weights)
                own_load = held_bytes.get(label, 0) / weights[label]
                if own_load >= held_bytes[largest] / weights[largest]:
                    if uniform(self.seed, source, "admit") >= len(own) / seen[label]:
                        continue
                    largest = label
                evictions = 0
                while used + sample_bytes > capacity:
                    pool = members[largest]
                    victim = pool.pop(int(uniform(self.seed, f"{source}:{evictions}", "evict") * len(pool)))
                    evictions += 1
                    if victim >= 0:
                        removed.append(victim)
                    used -= sample_bytes
                    held_bytes[largest] -= sample_bytes
            # This batch's samples are held as placeholders ~i (negative) until it is written.
            own.append(~i)
            held_bytes[label] = held_bytes.get(label, 0) + sample_bytes
            used += sample_bytes
        chosen = sorted(~p for ids in members.values() for p in ids if p < 0)
        state = {"seen": seen, "judged": judged_count, "kept": kept_count}
        checkpoints = [(self.state_name, json.dumps(state))]
        if checkpoint is not None:
            checkpoints.append(checkpoint)
        self.store.add_batch(
            xs[chosen],
            [labels[i] for i in chosen],
            [scores[i] for i in chosen],
            [sources[i] for i in chosen],
            checkpoint=checkpoints,
            remove=removed,
        )
        self.seen, self.judged, self.kept = seen, judged_count, kept_count
        kept = set(chosen)
        return [i in kept for i in range(len(labels))]

    def _weights(self, judged: list[int], kept: list[int]) -> list[float]:
        """Each class's weight under ``shares``."""
        if self.shares == "equal":
            return [1.0] * self.num_classes
        rates = {c: (k + 1) / (j + 1) for c, (j, k) in enumerate(zip(judged, kept)) if j}
        unjudged = sum(rates.values()) / len(rates) if rates else 1.0
        return [rates.get(c, unjudged) for c in range(self.num_classes)]


def _most_over_share(held_bytes: dict[int, int], weights: list[float]) -> int:
    """The class holding the most bytes per unit of weight (ties: the lowest label)."""
    load = {c: b / weights[c] for c, b in held_bytes.items()}
    most = max(load.values())
    return min(c for c, value in load.items() if value == most)
