"""The boundary checks' fast paths answer as their plain definitions do."""

from __future__ import annotations

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from drip.validation import all_finite

VALUES = st.one_of(st.floats(allow_nan=True, allow_infinity=True, width=32), st.sampled_from([3e38, -3e38]))


@settings(max_examples=200, deadline=None)
@given(
    values=st.lists(VALUES, min_size=0, max_size=40), dtype=st.sampled_from([torch.float32, torch.float64])
)
def test_all_finite_is_isfinite_all_at_every_size(values, dtype):
    # Up to 16 values in Python, beyond by one sum (whose overflow of finite values is rechecked).
    tensor = torch.tensor(values, dtype=dtype)
    assert all_finite(tensor) == all(math.isfinite(v) for v in tensor.tolist())
    assert all_finite(tensor.reshape(-1, 1)) == all_finite(tensor)
    if values:  # a 0-d tensor: one value, no list to walk
        assert all_finite(tensor[0]) == math.isfinite(tensor[0].item())
