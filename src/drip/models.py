"""Reference TinyML models, each naming its Grad-CAM target layer.

Every model carries ``drip_layer`` (the dotted name of its last post-activation feature map, the
default target), ``input_shape`` and ``num_classes``, so ``DripScorer(model)`` needs nothing more.
Models whose target is followed only by global average pooling and a linear layer are built as
``nn.Sequential`` so the scorer finds the closed form by itself.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence

import torch
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


def lenet(num_classes: int = 10) -> nn.Module:
    """LeNet-5 with ReLU and max pooling for 1x28x28 (MNIST); target ``relu2`` (16x10x10).

    Its head (pool, flatten, two hidden dense layers) is not GAP + linear: scored by the
    piecewise-linear path (the head differentiated by hand).
    """
    layers = OrderedDict(
        conv1=nn.Conv2d(1, 6, 5, padding=2),
        relu1=nn.ReLU(),
        pool1=nn.MaxPool2d(2),
        conv2=nn.Conv2d(6, 16, 5),
        relu2=nn.ReLU(),
        pool2=nn.MaxPool2d(2),
        flatten=nn.Flatten(),
        fc1=nn.Linear(16 * 5 * 5, 120),
        relu3=nn.ReLU(),
        fc2=nn.Linear(120, 84),
        relu4=nn.ReLU(),
        fc3=nn.Linear(84, num_classes),
    )
    return _describe(nn.Sequential(layers), "relu2", (1, 28, 28), num_classes)


class _ResidualBlock(nn.Module):
    """Two 3x3 conv + BN, a shortcut (1x1 conv when the shape changes), ReLU after the sum."""

    def __init__(self, channels_in: int, channels_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels_in, channels_out, 3, stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels_out)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(channels_out, channels_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels_out)
        self.shortcut = (
            nn.Identity()
            if stride == 1 and channels_in == channels_out
            else nn.Conv2d(channels_in, channels_out, 1, stride)
        )
        self.out = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        return self.out(residual + self.shortcut(x))


class ResNet8(nn.Module):
    """MLPerf Tiny image classification ResNet-8 for 3x32x32 (CIFAR-10).

    Stem conv 16, three residual stacks (16, 32, 64 channels; stride 1, 2, 2), global average
    pooling, linear. Target ``stack3.out`` (64x8x8), followed only by GAP + ``fc``: closed form.
    """

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.stack1 = _ResidualBlock(16, 16, 1)
        self.stack2 = _ResidualBlock(16, 32, 2)
        self.stack3 = _ResidualBlock(32, 64, 2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)
        self.drip_head = "fc"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.stack3(self.stack2(self.stack1(self.stem(x))))
        return self.fc(self.pool(features).flatten(1))


def resnet8(num_classes: int = 10) -> nn.Module:
    """See ``ResNet8``."""
    return _describe(ResNet8(num_classes), "stack3.out", (3, 32, 32), num_classes)


def _depthwise_separable(channels: int, index: int) -> list[tuple[str, nn.Module]]:
    return [
        (f"dw{index}", nn.Conv2d(channels, channels, 3, padding=1, groups=channels, bias=False)),
        (f"dw{index}_bn", nn.BatchNorm2d(channels)),
        (f"dw{index}_relu", nn.ReLU()),
        (f"pw{index}", nn.Conv2d(channels, channels, 1, bias=False)),
        (f"pw{index}_bn", nn.BatchNorm2d(channels)),
        (f"pw{index}_relu", nn.ReLU()),
    ]


def dscnn(num_classes: int = 12) -> nn.Module:
    """MLPerf Tiny keyword-spotting DS-CNN for 1x49x10 MFCC (12 classes).

    A 10x4 stride-2 conv to 64 channels (TensorFlow "same" padding: 25x5 out), four depthwise
    separable blocks, dropout, global average pooling, linear. Target ``pw4_relu`` (64x25x5).
    """
    layers = [
        ("pad", nn.ZeroPad2d((1, 1, 4, 5))),
        ("conv", nn.Conv2d(1, 64, (10, 4), stride=2, bias=False)),
        ("conv_bn", nn.BatchNorm2d(64)),
        ("conv_relu", nn.ReLU()),
        ("dropout1", nn.Dropout(0.2)),
    ]
    for index in range(1, 5):
        layers += _depthwise_separable(64, index)
    layers += [
        ("dropout2", nn.Dropout(0.4)),
        ("gap", nn.AdaptiveAvgPool2d(1)),
        ("flatten", nn.Flatten()),
        ("fc", nn.Linear(64, num_classes)),
    ]
    return _describe(nn.Sequential(OrderedDict(layers)), "pw4_relu", (1, 49, 10), num_classes)


def plant_cnn(num_classes: int = 38) -> nn.Module:
    """A compact CNN for 3x64x64 PlantVillage leaves (38 classes).

    Three conv-BN-ReLU-maxpool blocks (32, 64, 96 channels) to 8x8, a conv to 128 channels,
    global average pooling, linear. Target ``relu4`` (128x8x8): closed form.
    """
    layers: list[tuple[str, nn.Module]] = []
    channels = [3, 32, 64, 96]
    for index in range(1, 4):
        layers += [
            (f"conv{index}", nn.Conv2d(channels[index - 1], channels[index], 3, padding=1, bias=False)),
            (f"bn{index}", nn.BatchNorm2d(channels[index])),
            (f"relu{index}", nn.ReLU()),
            (f"pool{index}", nn.MaxPool2d(2)),
        ]
    layers += [
        ("conv4", nn.Conv2d(96, 128, 3, padding=1, bias=False)),
        ("bn4", nn.BatchNorm2d(128)),
        ("relu4", nn.ReLU()),
        ("gap", nn.AdaptiveAvgPool2d(1)),
        ("flatten", nn.Flatten()),
        ("fc", nn.Linear(128, num_classes)),
    ]
    return _describe(nn.Sequential(OrderedDict(layers)), "relu4", (3, 64, 64), num_classes)


MODELS: dict[str, Callable[[int], nn.Module]] = {
    "digits_cnn": digits_cnn,
    "lenet": lenet,
    "resnet8": resnet8,
    "dscnn": dscnn,
    "plant_cnn": plant_cnn,
}


def build_model(name: str, num_classes: int) -> nn.Module:
    """A fresh model from the registry by name."""
    if name not in MODELS:
        raise DripInputError(f"model: expected one of {sorted(MODELS)}, got {name!r}")
    return MODELS[name](num_classes)
