"""The rehearsal buffers drip is compared with over a device's life: which stream samples to hold.

A buffer holds stream indices (ints, unique over the device's life) with their labels, at most
``capacity`` of them; every sample of a data set has the same bytes, so equal counts are equal
storage. Samples are offered in arrival order, round after round. An index offered before is
ignored, so replaying a round (after a restart) changes nothing. A random buffer draws from its
own generator a fixed number of uniforms per new sample, batch by batch (all of the first kind
for the batch, then all of the second): the same batches give the same buffer, and
``state_dict`` carries the generator's state, so a buffer saved and loaded mid-life continues as
if it had never stopped.

* ``UnboundedBuffer``: keeps everything (the upper bound).
* ``ReservoirBuffer``: Vitter's algorithm R over the whole life: the n-th sample replaces a
  random slot with probability capacity / n, so after n samples each is held with probability
  capacity / n.
* ``RandomBuffer``: admits each sample with probability ``admit_probability``; when full, the
  admitted sample replaces a uniformly random held one.
* ``ClassBalancedBuffer``: online class-balanced reservoir (Chrysakis & Moens 2020, CBRS). While
  there is room every sample is stored. When full, a sample of a class that is not (one of) the
  largest replaces a random member of the largest class (ties: the lowest label); a sample of the
  largest class replaces a random member of its own class with probability stored_c / seen_c.
* ``PriorityBuffer``: class-balanced by eviction, by priority within a class (priority =
  informativeness, e.g. minus the margin). When full, the newcomer evicts the lowest-priority
  sample (ties: the lowest index) of the largest class counting the newcomer (ties: the lowest
  label), unless that class is the newcomer's own and the newcomer's priority is no higher than
  its lowest held one, or it holds none: then the newcomer is refused.
  This is ``SampleStore``'s eviction with the direction turned: the store evicts the highest DRIP
  score, the most redundant sample, which here is the lowest priority.
"""

from __future__ import annotations

import base64
import heapq
import math
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from numbers import Real
from typing import Any, ClassVar

import numpy as np
import torch

from ..errors import DripInputError


def _ints(values: Any, name: str) -> list[int]:
    """``values`` as a list of non-negative Python ints."""
    if isinstance(values, (torch.Tensor, np.ndarray)):
        values = values.tolist()
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise DripInputError(f"{name}: expected a sequence of non-negative integers, got {values!r}")
    values = list(values)
    for position, value in enumerate(values):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise DripInputError(
                f"{name}: expected non-negative integers, got {value!r} at position {position}"
            )
    return [int(v) for v in values]


def _real(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
        raise DripInputError(f"{where}: expected a finite number, got {value!r}")
    return float(value)


def _reals(values: Any, name: str) -> list[float]:
    """``values`` as a list of finite Python floats."""
    if isinstance(values, (torch.Tensor, np.ndarray)):
        values = values.tolist()
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise DripInputError(f"{name}: expected a sequence of finite numbers, got {values!r}")
    return [_real(v, f"{name}[{position}]") for position, v in enumerate(values)]


def _bounded(capacity: Any) -> int:
    if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 0:
        raise DripInputError(f"capacity: expected an integer >= 0, got {capacity!r}")
    return capacity


def _uniforms(count: int, generator: torch.Generator) -> list[float]:
    # float64: int(u * n) must stay uniform over slots for n far beyond float32's 2**24 steps.
    return torch.rand(count, generator=generator, dtype=torch.float64).tolist()


class Buffer(ABC):
    """Stream indices held for rehearsal, with their labels (see the module for each rule)."""

    needs_priorities: ClassVar[bool] = False

    def __init__(self, capacity: int | None, generator: torch.Generator | None = None) -> None:
        if generator is not None and not isinstance(generator, torch.Generator):
            raise DripInputError(f"generator: expected a torch.Generator, got {generator!r}")
        self.capacity = capacity
        self._generator = generator
        self._label_of: dict[int, int] = {}
        self._counts: dict[int, int] = {}
        self._offered: set[int] = set()

    def offer(
        self, indices: Sequence[int], labels: Sequence[int], priorities: Sequence[float] | None = None
    ) -> None:
        """Offer samples in arrival order; each is held or not by the buffer's rule.

        ``priorities`` are required by buffers with ``needs_priorities`` and checked, unused, by
        the others. Indices offered before (or earlier in the batch) are ignored. Bad input
        raises ``DripInputError`` before anything changes.
        """
        indices, labels = _ints(indices, "indices"), _ints(labels, "labels")
        if len(labels) != len(indices):
            raise DripInputError(f"labels: {len(labels)} labels for {len(indices)} indices")
        if priorities is None and self.needs_priorities:
            raise DripInputError(f"priorities: {type(self).__name__} needs a priority per sample, got None")
        values = None if priorities is None else _reals(priorities, "priorities")
        if values is not None and len(values) != len(indices):
            raise DripInputError(f"priorities: {len(values)} priorities for {len(indices)} indices")
        new = []
        for position, index in enumerate(indices):
            if index not in self._offered:
                self._offered.add(index)
                new.append(position)
        if new:
            self._admit(
                [indices[p] for p in new],
                [labels[p] for p in new],
                None if values is None else [values[p] for p in new],
            )

    @abstractmethod
    def _admit(self, indices: list[int], labels: list[int], priorities: list[float] | None) -> None:
        """Hold or refuse each sample, in order; all are new and checked."""

    def held(self) -> list[int]:
        """The indices held, sorted."""
        return sorted(self._label_of)

    def class_counts(self) -> dict[int, int]:
        """Held samples per label, for the labels held at all, by label."""
        return dict(sorted(self._counts.items()))

    def __len__(self) -> int:
        return len(self._label_of)

    def _hold(self, index: int, label: int) -> None:
        self._label_of[index] = label
        self._counts[label] = self._counts.get(label, 0) + 1

    def _drop(self, index: int) -> None:
        label = self._label_of.pop(index)
        self._counts[label] -= 1
        if not self._counts[label]:
            del self._counts[label]

    def state_dict(self) -> dict[str, Any]:
        """All the buffer needs to continue where it is, in JSON-serialisable values."""
        state: dict[str, Any] = {
            "kind": type(self).__name__,
            "capacity": self.capacity,
            "offered": sorted(self._offered),
        }
        if self._generator is not None:
            state["generator"] = base64.b64encode(self._generator.get_state().numpy().tobytes()).decode()
        return state | self._extra_state()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from ``state``, a ``state_dict`` of a buffer of this kind and capacity."""
        kind = type(self).__name__
        found = (state.get("kind"), state.get("capacity")) if isinstance(state, Mapping) else type(state)
        if found != (kind, self.capacity):
            raise DripInputError(f"state: expected a {kind} state of capacity {self.capacity}, got {found}")
        before = self.state_dict()
        try:
            self._load(state)
        except (KeyError, TypeError, ValueError, RuntimeError) as err:
            self._load(before)
            raise DripInputError(
                f"state: a malformed {kind} state ({err!r}); the buffer is unchanged"
            ) from err

    def _load(self, state: Mapping[str, Any]) -> None:
        self._label_of, self._counts = {}, {}
        self._offered = set(_ints(state["offered"], "offered"))
        if self._generator is not None:
            raw = bytearray(base64.b64decode(state["generator"], validate=True))
            self._generator.set_state(torch.frombuffer(raw, dtype=torch.uint8))
        self._restore(state)

    @abstractmethod
    def _extra_state(self) -> dict[str, Any]:
        """The rule's own state (what it holds, in the order the rule needs)."""

    @abstractmethod
    def _restore(self, state: Mapping[str, Any]) -> None:
        """Rebuild the rule's own state from ``_extra_state``'s values, holding each sample."""


class UnboundedBuffer(Buffer):
    """Keeps every sample offered: the upper bound of every buffer."""

    def __init__(self) -> None:
        super().__init__(None)

    def _admit(self, indices: list[int], labels: list[int], priorities: list[float] | None) -> None:
        for index, label in zip(indices, labels):
            self._hold(index, label)

    def _extra_state(self) -> dict[str, Any]:
        return {"held": [[index, label] for index, label in self._label_of.items()]}

    def _restore(self, state: Mapping[str, Any]) -> None:
        for index, label in state["held"]:
            self._hold(int(index), int(label))


class _SlotBuffer(Buffer):
    """A buffer of ``capacity`` slots, one sample each, replaced in place."""

    def __init__(self, capacity: int, generator: torch.Generator) -> None:
        super().__init__(_bounded(capacity), generator)
        self._slots: list[int] = []

    def _put(self, index: int, label: int, slot: int) -> None:
        self._drop(self._slots[slot])
        self._slots[slot] = index
        self._hold(index, label)

    def _append(self, index: int, label: int) -> None:
        self._slots.append(index)
        self._hold(index, label)

    def _extra_state(self) -> dict[str, Any]:
        return {"slots": [[index, self._label_of[index]] for index in self._slots]}

    def _restore(self, state: Mapping[str, Any]) -> None:
        self._slots = []
        for index, label in state["slots"]:
            self._append(int(index), int(label))


class ReservoirBuffer(_SlotBuffer):
    """Vitter's algorithm R over the whole life: after n samples each is held with probability
    capacity / n. One uniform per new sample."""

    def __init__(self, capacity: int, generator: torch.Generator) -> None:
        super().__init__(capacity, generator)
        self._seen = 0

    def _admit(self, indices: list[int], labels: list[int], priorities: list[float] | None) -> None:
        for index, label, u in zip(indices, labels, _uniforms(len(indices), self._generator)):
            self._seen += 1
            if len(self._slots) < self.capacity:
                self._append(index, label)
            elif (slot := int(u * self._seen)) < self.capacity:
                self._put(index, label, slot)

    def _extra_state(self) -> dict[str, Any]:
        return super()._extra_state() | {"seen": self._seen}

    def _restore(self, state: Mapping[str, Any]) -> None:
        super()._restore(state)
        self._seen = int(state["seen"])


class RandomBuffer(_SlotBuffer):
    """Random admission (probability ``admit_probability``), random eviction when full. Two
    uniforms per new sample: the admission draws of the batch, then its slot draws."""

    def __init__(self, capacity: int, admit_probability: float, generator: torch.Generator) -> None:
        super().__init__(capacity, generator)
        if not 0 <= _real(admit_probability, "admit_probability") <= 1:
            raise DripInputError(f"admit_probability: expected a number in [0, 1], got {admit_probability!r}")
        self.admit_probability = float(admit_probability)

    def _admit(self, indices: list[int], labels: list[int], priorities: list[float] | None) -> None:
        admits, picks = _uniforms(len(indices), self._generator), _uniforms(len(indices), self._generator)
        for index, label, u, pick in zip(indices, labels, admits, picks):
            if u >= self.admit_probability or self.capacity == 0:
                continue
            if len(self._slots) < self.capacity:
                self._append(index, label)
            else:
                self._put(index, label, int(pick * self.capacity))


class ClassBalancedBuffer(Buffer):
    """Online class-balanced reservoir (Chrysakis & Moens 2020, "CBRS"; see the module).

    Two float32 uniforms per new sample, all ``uniform`` draws of the batch and then all
    ``picks``, indexed by the sample's position in the batch: offering a whole stream in one
    batch makes exactly the draws of ``drip.selectors.class_balanced_reservoir``.
    """

    def __init__(self, capacity: int, generator: torch.Generator) -> None:
        super().__init__(_bounded(capacity), generator)
        # INVARIANT: a class's members keep the order the picks index into (append, pop, replace).
        self._members: dict[int, list[int]] = {}
        self._seen: dict[int, int] = {}

    def _admit(self, indices: list[int], labels: list[int], priorities: list[float] | None) -> None:
        uniform = torch.rand(len(indices), generator=self._generator).tolist()
        picks = torch.rand(len(indices), generator=self._generator).tolist()
        for index, label, u, pick in zip(indices, labels, uniform, picks):
            self._seen[label] = self._seen.get(label, 0) + 1
            if self._place(index, label, u, pick):
                self._hold(index, label)

    def _place(self, index: int, label: int, u: float, pick: float) -> bool:
        """Put ``index`` among its class's members, evicting as the rule says; False if refused."""
        if self.capacity == 0:
            return False
        members = self._members.setdefault(label, [])
        if len(self._label_of) < self.capacity:
            members.append(index)
            return True
        largest = max(self._counts.values())
        if len(members) < largest:
            victims = self._members[min(c for c, n in self._counts.items() if n == largest)]
            self._drop(victims.pop(int(pick * len(victims))))
            members.append(index)
            return True
        if u < len(members) / self._seen[label]:
            slot = int(pick * len(members))
            self._drop(members[slot])
            members[slot] = index
            return True
        return False

    def _extra_state(self) -> dict[str, Any]:
        return {
            "seen": [[label, n] for label, n in self._seen.items()],
            "members": [[label, list(members)] for label, members in self._members.items()],
        }

    def _restore(self, state: Mapping[str, Any]) -> None:
        self._seen = {int(label): int(n) for label, n in state["seen"]}
        self._members = {}
        for label, members in state["members"]:
            self._members[int(label)] = [int(index) for index in members]
            for index in members:
                self._hold(int(index), int(label))


class PriorityBuffer(Buffer):
    """Class-balanced by eviction, lowest priority first within a class (see the module).

    ``offer`` needs a priority per sample (higher = more worth keeping); ``reprioritise`` gives the
    held samples new ones when the model changes between rounds.
    """

    needs_priorities = True

    def __init__(self, capacity: int) -> None:
        super().__init__(_bounded(capacity))
        # Per class, a min-heap of (priority, index) over exactly the held samples: eviction only
        # ever takes a heap's top, and reprioritise rebuilds them all, so no deletion is lazy.
        self._heaps: dict[int, list[tuple[float, int]]] = {}

    def _admit(self, indices: list[int], labels: list[int], priorities: list[float] | None) -> None:
        assert priorities is not None  # offer requires them (needs_priorities)
        for index, label, priority in zip(indices, labels, priorities):
            if self._place(index, label, priority):
                self._hold(index, label)

    def _place(self, index: int, label: int, priority: float) -> bool:
        """Put ``index`` in its class's heap, evicting as the rule says; False if refused."""
        own = self._heaps.setdefault(label, [])
        if len(self._label_of) < self.capacity:
            heapq.heappush(own, (priority, index))
            return True
        counts = self._counts | {label: self._counts.get(label, 0) + 1}
        largest = max(counts.values())
        victim_class = min(c for c, n in counts.items() if n == largest)
        victims = self._heaps[victim_class]
        # The newcomer's own class holding nothing: the newcomer is the one it would give up.
        if victim_class == label and (not victims or priority <= victims[0][0]):
            return False
        self._drop(heapq.heappop(victims)[1])
        heapq.heappush(own, (priority, index))
        return True

    def reprioritise(self, priorities: Mapping[int, float]) -> None:
        """Give every held sample its priority in ``priorities`` (index -> priority); others unused."""
        if not isinstance(priorities, Mapping):
            raise DripInputError(f"priorities: expected a mapping index -> priority, got {type(priorities)}")
        missing = sorted(index for index in self._label_of if index not in priorities)
        if missing:
            raise DripInputError(
                f"priorities: no priority for {len(missing)} held indices, first {missing[:5]}"
            )
        new = {index: _real(priorities[index], f"priorities[{index}]") for index in self._label_of}
        self._heaps = {}
        for index, label in self._label_of.items():
            self._heaps.setdefault(label, []).append((new[index], index))
        for heap in self._heaps.values():
            heapq.heapify(heap)

    def _extra_state(self) -> dict[str, Any]:
        return {"held": [[index, label, p] for label, heap in self._heaps.items() for p, index in heap]}

    def _restore(self, state: Mapping[str, Any]) -> None:
        self._heaps = {}
        for index, label, priority in state["held"]:
            self._heaps.setdefault(int(label), []).append((_real(priority, "priority"), int(index)))
            self._hold(int(index), int(label))
        for heap in self._heaps.values():
            heapq.heapify(heap)
