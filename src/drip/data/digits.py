"""scikit-learn's handwritten digits (1797 images, 8x8, 10 classes): the embedded default data set.

Ships with scikit-learn, so the demo and the tests need no download. Too small to rank methods
(seed noise is 1-2 pp); good for showing the whole path.
"""

from __future__ import annotations

import torch

from .base import LabelledData


def load_digits() -> LabelledData:
    """All 1797 digits as ``x: (N, 1, 8, 8)`` in [0, 1] and ``y: (N,)``."""
    # Here, not at the top: scikit-learn and the scipy under it were most of what every start of
    # drip cost beyond torch, for this data set only.
    from sklearn.datasets import load_digits as _sklearn_digits

    bunch = _sklearn_digits()
    x = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(bunch.target, dtype=torch.int64)
    return LabelledData("digits", x, y, 10, tuple(str(d) for d in range(10)))
