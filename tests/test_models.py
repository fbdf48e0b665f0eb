"""Reference models: shapes, named target layers, and which Grad-CAM path each takes."""

from __future__ import annotations

import pytest
import torch

from drip.errors import DripInputError
from drip.models import MODELS, build_model
from drip.score import DripScorer

EXPECTED = {
    # name: (map shape at the target layer, closed form?)
    "digits_cnn": ((4, 4), True),
    "lenet": ((10, 10), False),
    "resnet8": ((8, 8), True),
    "dscnn": ((25, 5), True),
    "plant_cnn": ((8, 8), True),
}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_model_shapes_target_and_cam_path(name):
    torch.manual_seed(0)
    model = build_model(name, 7).eval()
    x = torch.rand(3, *model.input_shape)
    y = torch.tensor([0, 3, 6])
    assert model(x).shape == (3, 7)
    scorer = DripScorer(model)
    maps_shape, closed = EXPECTED[name]
    assert scorer.cam.closed_form is closed
    maps = scorer.heatmaps(x, y)
    assert maps.shape == (3, *maps_shape)
    assert scorer.cam.path in ("closed_form", "piecewise")  # no model of ours needs autograd
    reference = DripScorer(model, path="autograd").heatmaps(x, y)
    assert torch.allclose(maps, reference, rtol=1e-4, atol=1e-6)


def test_unknown_model_name():
    with pytest.raises(DripInputError, match="expected one of"):
        build_model("vgg", 10)
