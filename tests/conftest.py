"""Shared fixtures: one torch thread, small seeded models and data."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest
import torch
from torch import nn

torch.set_num_threads(1)


def gap_model(channels: int = 6, classes: int = 4, one_d: bool = False, seed: int = 0) -> nn.Sequential:
    """A random conv net whose target ``act`` is followed only by GAP + Linear."""
    torch.manual_seed(seed)
    conv, pool = (nn.Conv1d, nn.AdaptiveAvgPool1d) if one_d else (nn.Conv2d, nn.AdaptiveAvgPool2d)
    return nn.Sequential(
        conv(2, channels, 3, padding=1),
        nn.Tanh(),
        conv(channels, channels, 3, padding=1),
        nn.LeakyReLU(0.1),
        pool(1),
        nn.Flatten(),
        nn.Linear(channels, classes),
    ).eval()


def mlp_head_model(seed: int = 0) -> nn.Sequential:
    """LeNet-like: conv trunk, then flatten + two-layer MLP (no closed form)."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(4, 8, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(8 * 4 * 4, 16),
        nn.ReLU(),
        nn.Linear(16, 5),
    ).eval()


@pytest.fixture
def rng() -> torch.Generator:
    return torch.Generator().manual_seed(1234)
