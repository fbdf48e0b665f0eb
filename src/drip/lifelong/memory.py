"""A durable class-balanced reservoir: how a full store chooses among samples DRIP's band keeps.

DRIP's band says which samples are worth keeping; a device's store still has to choose among them
once it is full. Tightening the band to fit (``drip.budget``: the upper cut moves down) keeps ever
harder samples, beyond what the Training Phase checked, and a store of a few dozen samples per
class made of its hardest ones trains worse than a random few dozen (Sorscher et al., NeurIPS
2022: with little data per class, keep the typical samples). ``ClassBalancedReservoir`` keeps the
band as calibrated and thins it at random instead, class-balanced as the rehearsal buffers that
hold up under drift do (CBRS, Chrysakis & Moens, ICML 2020; GDumb's greedy sampler is its
cousin):

* while a sample fits, it is stored;
* when full, a sample of a class that does not hold the most bytes evicts random samples of the
  class that does (ties: the lowest label) until it fits;
* a sample of that largest class replaces random samples of its own class with probability
  held_c / seen_c (reservoir sampling within the class; ``seen_c``: in-band samples of class c
  offered so far over the device's life).

Randomness is a function of the seed and each sample's source, not a generator's position, and
the counts ``seen_c`` are committed with every batch: a device killed anywhere resumes with the
same store.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

import torch

from ..errors import DripInputError
from ..store import SampleStore


def uniform(seed: int, source: str, purpose: str) -> float:
    """A number in [0, 1) fixed by ``seed``, the sample's ``source`` and the draw's ``purpose``."""
    digest = hashlib.sha256(f"{seed}:{purpose}:{source}".encode()).digest()
    return int.from_bytes(digest[:8], "little") / 2**64


class ClassBalancedReservoir:
    """Class-balanced reservoir sampling into ``store`` (which has ``capacity_bytes``), state
    committed under the checkpoint ``state_name``. See the module docstring.

    Example::

        reservoir = ClassBalancedReservoir(store, num_classes=10, seed=0)
        kept = reservoir.offer(x, y, scores, sources, inside)   # inside: DRIP's band keeps
    """

    def __init__(
        self, store: SampleStore, num_classes: int, seed: int, state_name: str = "reservoir"
    ) -> None:
        if store.capacity_bytes is None:
            raise DripInputError("store: a class-balanced reservoir needs a SampleStore with capacity_bytes")
        self.store, self.num_classes, self.seed, self.state_name = store, num_classes, seed, state_name
        saved = store.checkpoint(state_name)
        self.seen = [0] * num_classes if saved is None else list(json.loads(saved)["seen"])

    def offer(
        self,
        xs: torch.Tensor,
        labels: Sequence[int],
        scores: Sequence[float],
        sources: Sequence[str],
        inside: Sequence[bool],
        checkpoint: tuple[str, str] | None = None,
    ) -> list[bool]:
        """Offer a batch (``inside``: the samples the band keeps); one transaction with the new
        counts and ``checkpoint``. Per sample, whether the store holds it afterwards.

        Every sample has the size of those stored (a device's inputs have one shape), so one
        eviction makes room for one newcomer."""
        sample_bytes = xs[0].numel() * xs.element_size() if len(xs) else 0
        capacity = self.store.capacity_bytes
        members = self.store.ids_by_label()
        held_bytes = {c: len(ids) * sample_bytes for c, ids in members.items()}
        used = self.store.bytes_used
        if used != sum(held_bytes.values()):
            raise DripInputError(
                f"xs: samples of {sample_bytes} bytes, but the store holds samples of other sizes"
            )
        seen = list(self.seen)
        removed: list[int] = []
        for i, (label, source, keep) in enumerate(zip(labels, sources, inside)):
            if not keep or sample_bytes > capacity:
                continue
            seen[label] += 1
            own = members.setdefault(label, [])
            if used + sample_bytes > capacity:
                largest = _largest(held_bytes)
                if held_bytes.get(label, 0) >= held_bytes[largest]:
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
        checkpoints = [(self.state_name, json.dumps({"seen": seen}))]
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
        self.seen = seen
        kept = set(chosen)
        return [i in kept for i in range(len(labels))]


def _largest(held_bytes: dict[int, int]) -> int:
    """The class holding the most bytes (ties: the lowest label)."""
    most = max(held_bytes.values())
    return min(c for c, b in held_bytes.items() if b == most)
