"""Scenarios: each sample in one round, class-incremental groups, class-mix peaks, the domain shift."""

from __future__ import annotations

import math
from itertools import pairwise

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from drip.data.base import LabelledData
from drip.errors import DripInputError
from drip.lifelong.scenarios import (
    SCENARIOS,
    classes_by_round,
    round_severity,
    shift_inputs,
    split_rounds,
)


def stream_of(labels, num_classes: int) -> LabelledData:
    y = torch.as_tensor(labels, dtype=torch.int64)
    x = torch.arange(len(y), dtype=torch.float32)[:, None]
    return LabelledData("toy", x, y, num_classes, tuple(str(c) for c in range(num_classes)))


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@st.composite
def streams(draw):
    """A stream holding every class at least once, and a round count it can fill."""
    num_classes = draw(st.integers(1, 8))
    extra = draw(st.lists(st.integers(0, num_classes - 1), max_size=200))
    labels = draw(st.permutations(list(range(num_classes)) + extra))
    rounds = draw(st.integers(1, min(len(labels), 25)))
    return stream_of(labels, num_classes), rounds


@given(case=streams(), scenario=st.sampled_from(SCENARIOS), seed=st.integers(0, 2**31))
def test_every_sample_lands_in_exactly_one_round(case, scenario, seed):
    stream, rounds = case
    parts = split_rounds(stream, rounds, scenario, gen(seed))
    assert len(parts) == rounds
    assert all(part.dtype == np.int64 for part in parts)
    assert sorted(np.concatenate(parts).tolist()) == list(range(len(stream)))
    if scenario in ("none", "domain"):
        assert max(map(len, parts)) - min(map(len, parts)) <= 1


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_the_generator_decides_the_split(scenario):
    stream = stream_of(np.arange(300) % 6, 6)
    first = split_rounds(stream, 6, scenario, gen(1))
    again = split_rounds(stream, 6, scenario, gen(1))
    other = split_rounds(stream, 6, scenario, gen(2))
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other))


@settings(max_examples=60)
@given(case=streams(), seed=st.integers(0, 2**31))
def test_class_incremental_gives_each_block_of_rounds_its_own_group_of_classes(case, seed):
    stream, rounds = case
    parts = split_rounds(stream, rounds, "class-incremental", gen(seed))
    groups = max(1, min(rounds // 2, stream.num_classes))
    blocks = np.array_split(np.arange(rounds), groups)
    assert max(map(len, blocks)) - min(map(len, blocks)) <= 1
    labels = stream.y.numpy()
    block_classes = []
    for block in blocks:
        block_classes.append({int(c) for r in block for c in labels[parts[r]]})
        sizes = [len(parts[r]) for r in block]
        assert max(sizes) - min(sizes) <= 1  # a group's samples spread near-equally over its block
    # Each class arrives in exactly one block, and the groups are near-equal in classes.
    assert sorted(c for group in block_classes for c in group) == list(range(stream.num_classes))
    assert max(map(len, block_classes)) - min(map(len, block_classes)) <= 1


def test_class_incremental_with_ten_rounds_and_classes_brings_two_new_classes_every_two_rounds():
    stream = stream_of(np.arange(1000) % 10, 10)
    parts = split_rounds(stream, 10, "class-incremental", gen(0))
    classes = [sorted(set(stream.y[part].tolist())) for part in parts]
    for r in range(0, 10, 2):
        assert len(classes[r]) == 2 and classes[r] == classes[r + 1]
    seen = classes_by_round(stream.y, parts)
    assert [len(s) for s in seen] == [2, 2, 4, 4, 6, 6, 8, 8, 10, 10]
    assert seen[3] == sorted(classes[0] + classes[2])


def test_class_incremental_with_more_groups_than_classes_or_one_round():
    stream = stream_of([0, 1] * 6, 2)
    parts = split_rounds(stream, 12, "class-incremental", gen(0))  # 2 groups of one class
    assert {len(set(stream.y[p].tolist())) for p in parts} == {1}
    (single,) = split_rounds(stream, 1, "class-incremental", gen(0))
    assert sorted(single.tolist()) == list(range(12))


@pytest.mark.parametrize(("num_classes", "rounds"), [(10, 10), (5, 10), (4, 12)])
def test_class_mix_peaks_each_class_where_the_rule_says(num_classes, rounds):
    # 20000 samples: at kappa = 2 a class's peak round beats its neighbours by 7+ standard deviations.
    stream = stream_of(np.arange(20000) % num_classes, num_classes)
    parts = split_rounds(stream, rounds, "class-mix", gen(3))
    counts = np.stack([np.bincount(stream.y[p].numpy(), minlength=num_classes) for p in parts], 1)
    for c in range(num_classes):
        assert counts[c].argmax() == round(c / num_classes * rounds) % rounds
    assert (counts > 0).all()  # every class in every round
    shares = counts / counts.sum(0, keepdims=True)
    # Class 0's share at its peak against the opposite round: e^4 = 55x expected, 3x is plenty.
    assert shares[0, 0] > 3 * shares[0, rounds // 2]


def test_class_mix_orders_each_round_at_random():
    stream = stream_of(np.zeros(400, dtype=np.int64), 1)
    (part,) = split_rounds(stream, 1, "class-mix", gen(0))
    assert sorted(part.tolist()) == list(range(400)) and part.tolist() != list(range(400))


def test_round_severity_rises_linearly_under_domain_only():
    assert [round_severity(r, 5, "domain") for r in range(5)] == [0, 0.25, 0.5, 0.75, 1]
    assert round_severity(0, 1, "domain") == 0
    assert {round_severity(r, 5, s) for r in range(5) for s in SCENARIOS if s != "domain"} == {0}


def test_shift_at_severity_zero_returns_x_unchanged():
    x = torch.randn(4, 1, 5, 5, generator=gen(0))
    shifted = shift_inputs(x, 0.0, gen(1), scale=1.0)
    assert torch.equal(shifted, x) and shifted is not x


@settings(max_examples=40)
@given(
    shape=st.sampled_from([(1, 28, 28), (13, 20), (3, 8, 8), (50,)]),
    severity=st.floats(0.05, 1.0),
    scale=st.floats(0.1, 3.0),
    seed=st.integers(0, 2**31),
)
def test_shift_keeps_each_sample_mean_in_expectation(shape, severity, scale, seed):
    n = 400
    x = 2.0 + torch.rand(n, *shape, generator=gen(seed))
    shifted = shift_inputs(x, severity, gen(seed + 1), scale)
    dims = tuple(range(1, x.ndim))
    # mean(x') - m = (s/2) scale mean(noise): normal with sd (s/2) scale / sqrt(D), per sample.
    sd = 0.5 * severity * scale / math.sqrt(math.prod(shape))
    z = (shifted.double().mean(dims) - x.double().mean(dims)) / sd
    assert abs(float(z.mean())) < 5 / math.sqrt(n)  # the mean of n standard normals
    assert float(z.abs().max()) < 6  # no sample's mean moves further than 6 sd
    assert torch.equal(shift_inputs(x, severity, gen(seed + 1), scale), shifted)  # reproducible


def test_shift_without_noise_shrinks_contrast_by_half_the_severity():
    x = torch.tensor([[[0.0, 1.0], [2.0, 5.0]]])  # one (2, 2) sample, mean 2
    shifted = shift_inputs(x, 0.5, gen(0), scale=0.0)
    assert torch.allclose(shifted, torch.tensor([[[0.5, 1.25], [2.0, 4.25]]]))  # 2 + (x - 2) * 0.75


def test_shift_grows_with_severity():
    x = torch.rand(500, 13, 20, generator=gen(0))
    within = float((x - x.mean((1, 2), keepdim=True)).var())
    stds = [float((shift_inputs(x, s, gen(1), 1.5) - x).std()) for s in (0.25, 0.5, 0.75, 1.0)]
    assert all(a < b for a, b in pairwise(stds))
    # x' - x = (s/2)(noise scale - (x - m)), independent terms: sd = (s/2) sqrt(scale^2 + var(x - m));
    # 130000 values estimate it within far less than 2%.
    assert stds[-1] == pytest.approx(0.5 * math.sqrt(1.5**2 + within), rel=0.02)


def test_bad_arguments_raise_input_errors():
    stream = stream_of([0, 1, 2], 3)
    with pytest.raises(DripInputError, match="rounds: 4 rounds but the stream has only 3"):
        split_rounds(stream, 4, "none", gen(0))
    for rounds in (0, -1, 1.5, True):
        with pytest.raises(DripInputError, match="rounds"):
            split_rounds(stream, rounds, "none", gen(0))
    with pytest.raises(DripInputError, match="scenario"):
        split_rounds(stream, 2, "drift", gen(0))
    with pytest.raises(DripInputError, match=r"labels must lie in \[0, 2\)"):
        split_rounds(stream_of([0, 1, 2], 2), 2, "class-mix", gen(0))
    with pytest.raises(DripInputError, match="round_index"):
        round_severity(5, 5, "domain")
    x = torch.rand(2, 3)
    for severity in (-0.1, 1.5, math.nan):
        with pytest.raises(DripInputError, match="severity"):
            shift_inputs(x, severity, gen(0), 1.0)
    with pytest.raises(DripInputError, match="scale"):
        shift_inputs(x, 0.5, gen(0), math.inf)
    with pytest.raises(DripInputError, match="rank >= 2"):
        shift_inputs(torch.rand(5), 0.5, gen(0), 1.0)
