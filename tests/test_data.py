"""Data: digits in the one return shape; stratified splits partition and keep proportions."""

from __future__ import annotations

import numpy as np
import pytest
from fixtures import write_mnist_idx
from hypothesis import given, settings
from hypothesis import strategies as st

from drip.data import load_digits, stratified_split
from drip.errors import DripDataError, DripInputError


def test_digits_shape_and_range():
    data = load_digits()
    assert data.x.shape == (1797, 1, 8, 8) and data.y.shape == (1797,)
    assert float(data.x.min()) == 0.0 and float(data.x.max()) == 1.0
    assert data.num_classes == 10 and data.input_shape == (1, 8, 8)
    assert len(data.subset([0, 5, 7])) == 3


@settings(max_examples=40, deadline=None)
@given(
    labels=st.lists(st.integers(0, 4), min_size=1, max_size=400),
    fractions=st.lists(st.integers(1, 10), min_size=2, max_size=4),
    seed=st.integers(0, 2**31),
)
def test_split_is_a_stratified_partition(labels, fractions, seed):
    labels = np.array(labels)
    weights = np.array(fractions, dtype=float) / sum(fractions)
    parts = stratified_split(labels, weights, seed)
    joined = np.concatenate(parts)
    assert sorted(joined.tolist()) == list(range(len(labels)))
    for c in np.unique(labels):
        total = int((labels == c).sum())
        for part, w in zip(parts, weights):
            assert abs(int((labels[part] == c).sum()) - w * total) < 1 + 1e-9


def test_split_depends_on_seed_only():
    labels = np.arange(100) % 3
    a = stratified_split(labels, (0.5, 0.5), 1)
    assert all(np.array_equal(p, q) for p, q in zip(a, stratified_split(labels, (0.5, 0.5), 1)))
    assert not np.array_equal(a[0], stratified_split(labels, (0.5, 0.5), 2)[0])
    with pytest.raises(DripInputError, match="fractions"):
        stratified_split(labels, (0.5, 0.6), 0)


def test_a_missing_public_data_set_is_fetched_first_and_a_full_folder_never(tmp_path, monkeypatch):
    from drip import data

    fetched = []

    def fake_fetch(folder):
        fetched.append(folder)
        folder.mkdir(parents=True)
        write_mnist_idx(folder, n_train=20, n_test=10)
        return folder

    monkeypatch.setitem(data.FETCHERS, "mnist", fake_fetch)
    folder = tmp_path / "mnist"
    splits = data.load_or_fetch("mnist", folder, progress=False, log=lambda line: None)
    assert fetched == [folder] and len(splits.train) == 20 and len(splits.test) == 10
    data.load_or_fetch("mnist", folder, progress=False, log=lambda line: None)
    assert fetched == [folder]  # there now: loaded, not fetched again
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    (damaged / "notes.txt").write_text("the user's own file")
    with pytest.raises(DripDataError, match="no MNIST here"):
        data.load_or_fetch("mnist", damaged, progress=False, log=lambda line: None)
    assert fetched == [folder]  # a folder holding anything is the user's: never fetched into
