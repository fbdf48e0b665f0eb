"""Shared test setup: one torch thread, hypothesis profiles, small seeded models and data.

``make test`` uses the hypothesis profile "drip" (set in pyproject's addopts): 150 examples per
property test unless the test fixes its own count, no deadline (shared 2-core machines stall), and
under ``CI=true`` a fixed example sequence, so that CI judges the change and not the luck of the
draw; local runs keep exploring new examples. ``pytest --hypothesis-profile=thorough`` runs 3000
where a test does not fix its count.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch
from hypothesis import settings
from torch import nn

from drip.models import digits_cnn
from drip.score import DripScorer
from drip.store import SampleStore
from drip.thresholds import Thresholds, model_fingerprint

torch.set_num_threads(1)

_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
settings.register_profile("drip", max_examples=150, deadline=None, derandomize=_CI)
settings.register_profile("thorough", max_examples=3000, deadline=None)


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


def calibrated_digits(
    *, held_out: int = 300, q_high: float = 0.3, q_low: float = 0.0, min_class_points: int = 30, seed: int = 0
) -> tuple[nn.Module, DripScorer, Thresholds]:
    """A seeded ``digits_cnn``, its scorer, and bands calibrated on random held-out inputs."""
    torch.manual_seed(seed)
    model = digits_cnn().eval()
    scorer = DripScorer(model)
    x, y = torch.rand(held_out, 1, 8, 8), torch.arange(held_out) % 10
    thresholds = Thresholds.from_scores(
        scorer(x, y),
        y,
        10,
        q_high=q_high,
        q_low=q_low,
        min_class_points=min_class_points,
        layer="relu3",
        model_fingerprint=model_fingerprint(model),
    )
    return model, scorer, thresholds


def snapshot(store: SampleStore) -> list[tuple]:
    """Every row of ``store``, values included: equal snapshots mean nothing stored changed."""
    return [(s.id, s.label, s.score, s.source, s.x.dtype, s.x.shape, s.x.tolist()) for s in store]


def torchrun_command(*args: str) -> tuple[list[str], dict[str, str]]:
    """``torchrun --standalone`` (a free port of its own) on 2 CPU ranks, one thread each, running
    ``args`` (``-m module ...`` or a script and its arguments); the command and its environment."""
    import shutil
    import sys
    from pathlib import Path

    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    return [torchrun, "--standalone", "--nproc-per-node", "2", *args], env
