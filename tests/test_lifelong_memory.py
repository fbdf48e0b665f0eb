"""The durable class-balanced reservoir: within the bytes, each class's share following the band's
(or equal), random within a class, the same store whatever the batch cuts, and what the band drops
never stored."""

from __future__ import annotations

import pytest
import torch
from conftest import snapshot
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drip.errors import DripInputError
from drip.lifelong.memory import ClassBalancedReservoir
from drip.store import SampleStore

SAMPLE_BYTES = 2 * 4  # two float32


def stream(
    labels: list[int],
    inside: list[bool],
    path,
    capacity: int,
    batch: int,
    seed: int = 0,
    shares: str = "band",
    start_at: int = 0,
    judged: list[bool] | None = None,
) -> list:
    """Offer ``labels[start_at:]`` (with band decisions ``inside``) in batches of ``batch``; the
    sources held."""
    with SampleStore(path, capacity_bytes=capacity) as store:
        reservoir = ClassBalancedReservoir(store, 4, seed, shares=shares)
        for start in range(start_at, len(labels), batch):
            stop = min(start + batch, len(labels))
            x = torch.arange(start, stop, dtype=torch.float32)[:, None].repeat(1, 2)
            reservoir.offer(
                x,
                labels[start:stop],
                [0.0] * (stop - start),
                [f"s{i}" for i in range(start, stop)],
                inside[start:stop],
                judged=None if judged is None else judged[start:stop],
            )
            assert store.bytes_used <= capacity
        return sorted(store.sources(), key=lambda s: int(s[1:]))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    labels=st.lists(st.integers(0, 3), min_size=1, max_size=120),
    data=st.data(),
    slots=st.integers(0, 25),
    batch=st.integers(1, 30),
    shares=st.sampled_from(["band", "equal"]),
)
def test_the_store_is_the_same_whatever_the_batch_cuts_and_never_holds_a_dropped_sample(
    tmp_path_factory, labels, data, slots, batch, shares
):
    inside = data.draw(st.lists(st.booleans(), min_size=len(labels), max_size=len(labels)))
    folder = tmp_path_factory.mktemp("reservoir")
    one_by_one = stream(labels, inside, folder / "a.sqlite", slots * SAMPLE_BYTES, 1, shares=shares)
    batched = stream(labels, inside, folder / "b.sqlite", slots * SAMPLE_BYTES, batch, shares=shares)
    assert batched == one_by_one
    assert all(inside[int(source[1:])] for source in batched)
    assert len(batched) == min(slots, sum(inside))


def held_per_class(sources: list[str], labels: list[int]) -> list[int]:
    counts = [0] * 4
    for source in sources:
        counts[labels[int(source[1:])]] += 1
    return counts


def test_a_full_store_is_class_balanced_and_keeps_all_of_a_rare_class(tmp_path):
    generator = torch.Generator().manual_seed(0)
    labels = torch.multinomial(
        torch.tensor([0.6, 0.3, 0.097, 0.003]), 2000, True, generator=generator
    ).tolist()
    labels[-3:] = [3, 3, 3]  # the rare class arrives late too
    held = held_per_class(
        stream(labels, [True] * len(labels), tmp_path / "s.sqlite", 60 * SAMPLE_BYTES, 64), labels
    )
    rare = labels.count(3)
    assert held[3] == rare < 15
    largest = [n for n in held[:3]]
    assert sum(held) == 60 and max(largest) - min(largest) <= 1


def uneven_band(count: int = 4000) -> tuple[list[int], list[bool]]:
    """Four balanced classes of which the band keeps all, a half, a quarter and an eighth."""
    generator = torch.Generator().manual_seed(1)
    labels = torch.randint(4, (count,), generator=generator).tolist()
    draws = torch.rand(count, generator=generator).tolist()
    return labels, [u < 0.5**label for label, u in zip(labels, draws)]


def test_band_shares_give_each_class_the_bytes_the_band_gives_it(tmp_path):
    labels, inside = uneven_band()
    held = held_per_class(stream(labels, inside, tmp_path / "s.sqlite", 150 * SAMPLE_BYTES, 64), labels)
    # Each class's weight is the share of it the band kept (about 1, 1/2, 1/4, 1/8): the held
    # counts are 150 in those proportions, within a slot, and another slot as the weights settle.
    kept = [sum(k for label, k in zip(labels, inside) if label == c) / labels.count(c) for c in range(4)]
    assert sum(held) == 150
    assert all(abs(h - 150 * w / sum(kept)) <= 2 for h, w in zip(held, kept))
    assert held[0] > 1.8 * held[1] > 3.2 * held[2]


def test_samples_the_band_had_no_cut_for_do_not_weight_their_class(tmp_path):
    # Class 1's first 250 samples (of about 1000) came while the band had no cut for it (all
    # inside, as a new class is): they do not make it look hard. Judged afterwards, it keeps its
    # share of the band's half, about half of class 0's bytes; counted, they would lift it to 0.62.
    labels, inside = uneven_band()
    first = [i for i, label in enumerate(labels) if label == 1][:250]
    inside = [keep or i in first for i, keep in enumerate(inside)]
    judged = [i not in first for i in range(len(labels))]
    held = held_per_class(
        stream(labels, inside, tmp_path / "s.sqlite", 150 * SAMPLE_BYTES, 64, judged=judged), labels
    )
    assert abs(held[1] / held[0] - 0.5) < 0.06


def test_a_class_nothing_judged_yet_gets_the_mean_share_of_the_judged(tmp_path):
    # Classes 0-2 judged (the band keeps all, a half, a quarter); class 3 never judged, all
    # inside: its weight is the others' mean, 7/12, not 1 (nor its in-band rate, 1).
    labels, inside = uneven_band()
    inside = [keep or label == 3 for label, keep in zip(labels, inside)]
    judged = [label != 3 for label in labels]
    held = held_per_class(
        stream(labels, inside, tmp_path / "s.sqlite", 150 * SAMPLE_BYTES, 64, judged=judged), labels
    )
    assert abs(held[3] / held[0] - 7 / 12) < 0.06


def test_equal_shares_give_every_class_the_same_bytes_whatever_the_band_keeps(tmp_path):
    labels, inside = uneven_band()
    held = held_per_class(
        stream(labels, inside, tmp_path / "s.sqlite", 120 * SAMPLE_BYTES, 64, shares="equal"), labels
    )
    assert sum(held) == 120 and max(held) - min(held) <= 1


def test_within_a_class_every_sample_is_held_with_the_same_chance(tmp_path):
    # Reservoir sampling: 10 of 100 samples of one class, each with probability 1/10 whatever its
    # place in the stream. Over 300 seeds the first and the second half are held equally often:
    # each half's count is binomial(300 * 50, 0.1) (sd about 37 around 1500).
    first = second = 0
    for seed in range(300):
        with SampleStore(tmp_path / f"s{seed}.sqlite", capacity_bytes=10 * SAMPLE_BYTES) as store:
            reservoir = ClassBalancedReservoir(store, 1, seed)
            reservoir.offer(
                torch.zeros(100, 2), [0] * 100, [0.0] * 100, [f"s{i}" for i in range(100)], [True] * 100
            )
            held = [int(s[1:]) for s in store.sources()]
        first += sum(i < 50 for i in held)
        second += sum(i >= 50 for i in held)
    assert first + second == 3000
    assert abs(first - second) < 6 * 37 * 2**0.5


def test_a_reopened_store_goes_on_counting_where_it_stopped(tmp_path):
    labels = [0] * 40
    whole = stream(labels, [True] * 40, tmp_path / "whole.sqlite", 5 * SAMPLE_BYTES, 40)
    path = tmp_path / "split.sqlite"
    for start in (0, 20):
        with SampleStore(path, capacity_bytes=5 * SAMPLE_BYTES) as store:
            x = torch.arange(start, start + 20, dtype=torch.float32)[:, None].repeat(1, 2)
            sources = [f"s{i}" for i in range(start, start + 20)]
            ClassBalancedReservoir(store, 4, 0).offer(x, labels[:20], [0.0] * 20, sources, [True] * 20)
    with SampleStore(path) as store:
        assert sorted(store.sources(), key=lambda s: int(s[1:])) == whole


def test_a_reopened_store_goes_on_weighting_by_what_the_band_kept_before(tmp_path):
    # The shares need every judged sample counted, in band or not: a reopened reservoir that
    # forgot the dropped ones would weight the classes afresh and evict otherwise.
    labels, inside = uneven_band(1200)
    whole = stream(labels, inside, tmp_path / "whole.sqlite", 60 * SAMPLE_BYTES, 64)
    path = tmp_path / "split.sqlite"
    stream(labels[:600], inside[:600], path, 60 * SAMPLE_BYTES, 64)
    assert stream(labels, inside, path, 60 * SAMPLE_BYTES, 64, start_at=600) == whole


def test_a_reservoir_needs_a_byte_capacity_and_samples_of_one_size(tmp_path):
    with SampleStore(tmp_path / "a.sqlite") as store, pytest.raises(DripInputError, match="capacity_bytes"):
        ClassBalancedReservoir(store, 2, 0)
    with SampleStore(tmp_path / "b.sqlite", capacity_bytes=100) as store:
        with pytest.raises(DripInputError, match="shares"):
            ClassBalancedReservoir(store, 2, 0, shares="fair")
        reservoir = ClassBalancedReservoir(store, 2, 0)
        with pytest.raises(DripInputError, match="judged: expected one per label"):
            reservoir.offer(torch.zeros(2, 3), [0, 1], [0.0] * 2, ["a", "b"], [True] * 2, judged=[True])
        store.add(torch.zeros(3), 0)
        before = snapshot(store)
        with pytest.raises(DripInputError, match="other sizes"):
            ClassBalancedReservoir(store, 2, 0).offer(torch.zeros(1, 2), [1], [0.0], ["s"], [True])
        assert snapshot(store) == before


def test_add_batch_removes_the_given_ids_in_its_transaction_or_changes_nothing(tmp_path):
    with SampleStore(tmp_path / "s.sqlite", capacity_count=2) as store:
        ids = store.add_batch(torch.zeros(2, 1), [0, 1], sources=["a", "b"])
        store.add_batch(torch.ones(1, 1), [1], sources=["c"], remove=[ids[0]], checkpoint=("at", "1"))
        assert store.sources() == ["b", "c"] and store.checkpoint("at") == "1"
        assert store.ids_by_label() == {1: [ids[1], ids[1] + 1]}
        before = snapshot(store)
        with pytest.raises(DripInputError, match="not stored"):
            store.add_batch(torch.ones(1, 1), [0], sources=["d"], remove=[ids[0]], checkpoint=("at", "2"))
        assert snapshot(store) == before and store.checkpoint("at") == "1"
