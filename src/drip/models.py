"""Reference TinyML models, each naming its Grad-CAM target layer.

Every model carries ``drip_layer`` (the dotted name of its last post-activation feature map, the
default target), ``input_shape`` and ``num_classes``, so ``DripScorer(model)`` needs nothing more.
Models whose target is followed only by global average pooling and a linear layer are built as
``nn.Sequential`` so the scorer finds the closed form by itself.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence

from torch import nn

from .errors import DripInputError


def _describe(model: nn.Module, layer: str, input_shape: Sequence[int], num_classes: int) -> nn.Module:
    model.drip_layer = layer
    model.input_shape = tuple(input_shape)
    model.num_classes = num_classes
    return model


def digits_cnn(num_classes: int = 10) -> nn.Module:
    """A 3-conv CNN for scikit-learn's 8x8 digits: (B, 1, 8, 8) -> (B, C); target ``relu3`` (64x4x4)."""
    layers = OrderedDict(
        conv1=nn.Conv2d(1, 16, 3, padding=1),
        relu1=nn.ReLU(),
        conv2=nn.Conv2d(16, 32, 3, padding=1),
        relu2=nn.ReLU(),
        pool=nn.MaxPool2d(2),
        conv3=nn.Conv2d(32, 64, 3, padding=1),
        relu3=nn.ReLU(),
        gap=nn.AdaptiveAvgPool2d(1),
        flatten=nn.Flatten(),
        fc=nn.Linear(64, num_classes),
    )
    return _describe(nn.Sequential(layers), "relu3", (1, 8, 8), num_classes)


MODELS: dict[str, Callable[[int], nn.Module]] = {"digits_cnn": digits_cnn}


def build_model(name: str, num_classes: int) -> nn.Module:
    """A fresh model from the registry by name."""
    if name not in MODELS:
        raise DripInputError(f"model: expected one of {sorted(MODELS)}, got {name!r}")
    return MODELS[name](num_classes)
