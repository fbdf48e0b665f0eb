"""Rehearsal buffers: capacity, each rule's promise, CBRS's draws, replay, state round trips, bad input."""

from __future__ import annotations

import json
import math
from itertools import pairwise

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from drip.errors import DripInputError
from drip.lifelong.buffers import (
    ClassBalancedBuffer,
    PriorityBuffer,
    RandomBuffer,
    ReservoirBuffer,
    UnboundedBuffer,
)
from drip.selectors import class_balanced_reservoir


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# Each kind built with a capacity and a generator seed.
KINDS = {
    "unbounded": lambda capacity, seed: UnboundedBuffer(),
    "reservoir": lambda capacity, seed: ReservoirBuffer(capacity, gen(seed)),
    "random": lambda capacity, seed: RandomBuffer(capacity, 0.6, gen(seed)),
    "class-balanced": lambda capacity, seed: ClassBalancedBuffer(capacity, gen(seed)),
    "priority": lambda capacity, seed: PriorityBuffer(capacity),
}


@st.composite
def lives(draw, max_size: int = 150):
    """A device's life: unique stream indices, labels and priorities, cut into batches."""
    size = draw(st.integers(0, max_size))
    indices = draw(st.permutations(range(size)))
    labels = draw(st.lists(st.integers(0, 4), min_size=size, max_size=size))
    priorities = draw(st.lists(st.floats(-5, 5), min_size=size, max_size=size))
    cuts = sorted(draw(st.lists(st.integers(0, size), max_size=5)))
    bounds = [0, *cuts, size]
    return [(indices[a:b], labels[a:b], priorities[a:b]) for a, b in pairwise(bounds)]


@settings(max_examples=60)
@given(
    kind=st.sampled_from(sorted(KINDS)), life=lives(), capacity=st.integers(0, 40), seed=st.integers(0, 99)
)
def test_never_above_capacity_and_counts_match_what_is_held(kind, life, capacity, seed):
    buffer = KINDS[kind](capacity, seed)
    label_of, offered = {}, 0
    for indices, labels, priorities in life:
        buffer.offer(indices, labels, priorities)
        label_of.update(zip(indices, labels))
        offered += len(indices)
        held = buffer.held()
        assert held == sorted(set(held)) and set(held) <= set(label_of)
        counts = np.bincount([label_of[i] for i in held], minlength=5)
        assert buffer.class_counts() == {c: int(n) for c, n in enumerate(counts) if n}
        if kind == "unbounded":
            assert held == sorted(label_of)
        else:
            assert len(buffer) <= capacity
        if kind in ("reservoir", "class-balanced", "priority"):
            assert len(buffer) == min(capacity, offered)  # these fill up and stay full


@settings(max_examples=40)
@given(kind=st.sampled_from(sorted(KINDS)), life=lives(), seed=st.integers(0, 99))
def test_offering_a_batch_again_changes_nothing(kind, life, seed):
    buffer = KINDS[kind](10, seed)
    for batch in life:
        buffer.offer(*batch)
        before = buffer.state_dict()
        buffer.offer(*batch)
        assert buffer.state_dict() == before


def test_reservoir_holds_each_sample_with_probability_capacity_over_seen():
    runs, total, capacity = 4000, 20, 5
    held = np.zeros(total)
    for seed in range(runs):
        buffer = ReservoirBuffer(capacity, gen(seed))
        for batch in np.array_split(np.arange(total), 3):
            buffer.offer(batch, [0] * len(batch))
        held[buffer.held()] += 1
    # Each count is Binomial(runs, 1/4): sd = sqrt(4000 * 1/4 * 3/4) = 27.4; 5 sd either side.
    expected = runs * capacity / total
    sd = math.sqrt(runs * capacity / total * (1 - capacity / total))
    assert np.abs(held - expected).max() < 5 * sd


def test_random_buffer_admits_at_its_probability_and_evicts_when_full():
    buffer = RandomBuffer(10000, 0.3, gen(0))
    buffer.offer(range(10000), [0] * 10000)
    sd = math.sqrt(10000 * 0.3 * 0.7)  # Binomial(10000, 0.3)
    assert abs(len(buffer) - 3000) < 5 * sd
    full = RandomBuffer(50, 1.0, gen(0))
    full.offer(range(1000), [0] * 1000)
    assert len(full) == 50 and max(full.held()) >= 950  # always admitted: the latest are in
    never = RandomBuffer(50, 0.0, gen(0))
    never.offer(range(100), [0] * 100)
    assert len(never) == 0


def old_class_balanced_reservoir(labels: list[int], count: int, generator: torch.Generator) -> list[int]:
    """The offline algorithm as drip.selectors had it before the buffer, kept here as the pin."""
    if count <= 0:
        return []
    stored: dict[int, list[int]] = {}
    seen: dict[int, int] = {}
    size = 0
    uniform = torch.rand(len(labels), generator=generator).tolist()
    picks = torch.rand(len(labels), generator=generator).tolist()
    for index, label in enumerate(labels):
        seen[label] = seen.get(label, 0) + 1
        members = stored.setdefault(label, [])
        if size < count:
            members.append(index)
            size += 1
            continue
        largest = max(len(m) for m in stored.values())
        if len(members) < largest:
            victims = stored[min(c for c, m in stored.items() if len(m) == largest)]
            victims.pop(int(picks[index] * len(victims)))
            members.append(index)
        elif uniform[index] < len(members) / seen[label]:
            members[int(picks[index] * len(members))] = index
    return sorted(i for members in stored.values() for i in members)


@settings(max_examples=80)
@given(
    labels=st.lists(st.integers(0, 5), max_size=400),
    count=st.integers(-2, 120),
    seed=st.integers(0, 10**6),
)
def test_one_batch_makes_exactly_the_old_class_balanced_reservoir(labels, count, seed):
    expected = old_class_balanced_reservoir(labels, count, gen(seed))
    kept = class_balanced_reservoir(torch.tensor(labels, dtype=torch.int64), count, gen(seed))
    assert kept.tolist() == expected
    if count >= 0:
        buffer = ClassBalancedBuffer(count, gen(seed))
        buffer.offer(range(len(labels)), labels)
        assert buffer.held() == expected


@settings(max_examples=60)
@given(life=lives(max_size=400), capacity=st.integers(1, 60), seed=st.integers(0, 99))
def test_class_balanced_evens_out_the_classes_it_cannot_keep_whole(life, capacity, seed):
    buffer = ClassBalancedBuffer(capacity, gen(seed))
    for indices, labels, _ in life:
        buffer.offer(indices, labels)
    seen = np.bincount([label for _, labels, _ in life for label in labels], minlength=5)
    counts = buffer.class_counts()
    cut = [counts.get(c, 0) for c in range(5) if counts.get(c, 0) < seen[c]]
    if cut:
        assert max(cut) - min(cut) <= 1
        assert min(cut) >= max(counts.values()) - 1  # no class kept whole is above the cut ones


def test_class_balanced_keeps_a_rare_class_whole_while_under_its_fair_share():
    rng = np.random.default_rng(0)
    labels = np.concatenate([rng.integers(0, 4, 5000), np.full(20, 4)])
    labels = labels[rng.permutation(len(labels))]
    buffer = ClassBalancedBuffer(200, gen(0))
    for start in range(0, len(labels), 500):
        buffer.offer(range(start, min(start + 500, len(labels))), labels[start : start + 500])
    counts = buffer.class_counts()
    assert counts[4] == 20  # the fair share is 200 / 5 = 40
    assert sorted(counts[c] for c in range(4)) == [45, 45, 45, 45]


@settings(max_examples=60)
@given(
    per_class=st.integers(1, 20),
    classes=st.integers(1, 4),
    keep=st.integers(1, 5),
    data=st.data(),
)
def test_priority_holds_each_class_top_priorities_when_classes_arrive_balanced(
    per_class, classes, keep, data
):
    total = per_class * classes
    priorities = data.draw(st.lists(st.floats(-9, 9), min_size=total, max_size=total, unique=True))
    labels = [i % classes for i in range(total)]  # round robin: the classes stay balanced
    buffer = PriorityBuffer(keep * classes)
    cut = data.draw(st.integers(0, total))
    buffer.offer(range(cut), labels[:cut], priorities[:cut])
    buffer.offer(range(cut, total), labels[cut:], priorities[cut:])
    expected = []
    for c in range(classes):
        members = [i for i in range(total) if labels[i] == c]
        expected += sorted(members, key=lambda i: -priorities[i])[:keep]
    assert buffer.held() == sorted(expected)


def test_priority_evicts_from_the_largest_class_counting_the_newcomer():
    buffer = PriorityBuffer(3)
    buffer.offer([0, 1, 2], [0, 0, 1], [5.0, 1.0, 3.0])
    buffer.offer([3], [1], [0.5])  # class 1 would hold 2 like class 0: ties go to class 0, its lowest
    assert buffer.held() == [0, 2, 3]
    buffer.offer([4], [1], [0.5])  # class 1 largest: 0.5 is no higher than its lowest (0.5): refused
    assert buffer.held() == [0, 2, 3]
    buffer.offer([5], [1], [0.7])  # higher than 0.5: replaces it
    assert buffer.held() == [0, 2, 5]
    single = PriorityBuffer(1)
    single.offer([0, 1], [1, 0], [0.0, 9.0])  # class 0 (the newcomer alone) ties class 1: refused
    assert single.held() == [0]
    single.offer([2], [2], [0.0])  # class 1 ties class 2 and has the lower label: gives its sample up
    assert single.held() == [2]


def test_reprioritise_changes_what_is_evicted_next():
    def filled() -> PriorityBuffer:
        buffer = PriorityBuffer(2)
        buffer.offer([10, 11], [0, 0], [1.0, 2.0])
        return buffer

    before, after = filled(), filled()
    after.reprioritise({10: 3.0, 11: 0.0, 99: 7.0})  # entries for indices not held are unused
    for buffer in (before, after):
        buffer.offer([12], [0], [1.5])
    assert before.held() == [11, 12] and after.held() == [10, 12]


def test_reprioritise_needs_every_held_index_and_a_finite_priority():
    buffer = PriorityBuffer(3)
    buffer.offer([1, 2], [0, 1], [0.0, 1.0])
    state = buffer.state_dict()
    with pytest.raises(DripInputError, match=r"no priority for 1 held indices, first \[2\]"):
        buffer.reprioritise({1: 0.5})
    with pytest.raises(DripInputError, match=r"priorities\[2\]"):
        buffer.reprioritise({1: 0.5, 2: math.nan})
    assert buffer.state_dict() == state


@settings(max_examples=40)
@given(
    kind=st.sampled_from(sorted(KINDS)), life=lives(), capacity=st.integers(0, 30), seed=st.integers(0, 99)
)
def test_a_saved_and_loaded_buffer_continues_as_if_never_stopped(kind, life, capacity, seed):
    whole = KINDS[kind](capacity, seed)
    for batch in life:
        whole.offer(*batch)
    half = len(life) // 2
    first = KINDS[kind](capacity, seed)
    for batch in life[:half]:
        first.offer(*batch)
    resumed = KINDS[kind](capacity, seed + 1)  # the state, not the seed, decides what follows
    resumed.load_state_dict(json.loads(json.dumps(first.state_dict())))
    for batch in life[half:]:
        resumed.offer(*batch)
    assert resumed.held() == whole.held()
    assert resumed.state_dict() == whole.state_dict()


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_bad_offers_raise_and_leave_the_buffer_unchanged(kind):
    buffer = KINDS[kind](4, 0)
    buffer.offer([0, 1, 2], [0, 1, 0], [0.1, 0.2, 0.3])
    state = buffer.state_dict()
    bad = [
        (([3, 4], [0], [0.0, 0.0]), "labels: 1 labels for 2 indices"),
        (([3, 4], [0, -1], [0.0, 0.0]), "labels: expected non-negative integers, got -1 at position 1"),
        (([3, 4], [0, 1.0], [0.0, 0.0]), "labels"),
        (([3, True], [0, 1], [0.0, 0.0]), "indices"),
        (([3, -4], [0, 1], [0.0, 0.0]), "indices"),
        ((torch.tensor([3.0]), [0], [0.0]), "indices"),
        (([3, 4], [0, 1], [0.0]), "priorities: 1 priorities for 2 indices"),
        (([3, 4], [0, 1], [0.0, math.inf]), r"priorities\[1\]"),
        ((5, [0], [0.0]), "indices"),
    ]
    for args, message in bad:
        with pytest.raises(DripInputError, match=message):
            buffer.offer(*args)
        assert buffer.state_dict() == state
    if kind == "priority":
        with pytest.raises(DripInputError, match="PriorityBuffer needs a priority per sample"):
            buffer.offer([3], [0])
        assert buffer.state_dict() == state
    else:
        buffer.offer(np.array([3]), torch.tensor([1]))  # arrays, tensors, and no priorities, are fine
        assert 3 in buffer.held() or kind == "random"


def test_bad_constructions_and_states_raise():
    for capacity in (-1, 1.5, True, None):
        with pytest.raises(DripInputError, match="capacity"):
            ReservoirBuffer(capacity, gen(0))
    with pytest.raises(DripInputError, match="admit_probability"):
        RandomBuffer(3, 1.5, gen(0))
    with pytest.raises(DripInputError, match="generator"):
        ClassBalancedBuffer(3, 0)
    buffer = ReservoirBuffer(3, gen(0))
    buffer.offer(range(10), [0] * 10)
    state = buffer.state_dict()
    with pytest.raises(DripInputError, match="expected a ReservoirBuffer state of capacity 3"):
        buffer.load_state_dict(ReservoirBuffer(4, gen(0)).state_dict())
    with pytest.raises(DripInputError, match="expected a ReservoirBuffer state"):
        buffer.load_state_dict(ClassBalancedBuffer(3, gen(0)).state_dict())
    for broken in ({"generator": "not base64!"}, {"slots": [[1]]}, {"offered": [-1]}):
        with pytest.raises(DripInputError, match="malformed ReservoirBuffer state"):
            buffer.load_state_dict(state | broken)
        assert buffer.state_dict() == state
