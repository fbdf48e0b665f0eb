"""The selectors DRIP is compared with.

Two kinds, both deciding which stream samples to store:

* **equal-count controls** keep exactly ``count`` samples (DRIP's kept count), so every comparison
  is at equal storage: ``random``, the class-balanced reservoir (online, count budget), and the
  informativeness rankings ``loss``, ``margin``, ``entropy`` and ``el2n`` (the ``count`` most
  informative samples of the whole stream: an offline oracle ranking, which favours the control);
* **online bands**, calibrated on clean held-out data like DRIP's thresholds: ``band_keep``
  (per-class quantile band on any signal, e.g. the negative loss).

Direction, as everywhere in drip: a higher *evidence* value means the model already sees the label
(redundant); informativeness is the opposite.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from .thresholds import Thresholds


def _probabilities(logits: torch.Tensor) -> torch.Tensor:
    return torch.softmax(logits.double(), dim=1)


def loss_values(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of each sample (B,) in float64 (float32 ties at log p = 0 break rankings)."""
    return nn.functional.cross_entropy(logits.double(), labels, reduction="none")


def margin_values(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Labelled logit minus the largest other logit (B,): small or negative = hard."""
    logits = logits.double()
    own = logits.gather(1, labels[:, None])[:, 0]
    others = logits.scatter(1, labels[:, None], -math.inf)
    return own - others.amax(1)


def entropy_values(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Predictive entropy (B,) in nats; ``labels`` unused (kept for one signature)."""
    del labels
    probs = _probabilities(logits)
    return -(probs * torch.log(probs.clamp_min(1e-300))).sum(1)


def el2n_values(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """EL2N (Paul et al. 2021): L2 norm of softmax minus the one-hot label (B,)."""
    probs = _probabilities(logits)
    return (probs - nn.functional.one_hot(labels, probs.shape[1]).double()).norm(dim=1)


# Informativeness: higher = more worth storing.
INFORMATIVENESS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "loss": loss_values,
    "margin": lambda logits, labels: -margin_values(logits, labels),
    "entropy": entropy_values,
    "el2n": el2n_values,
}


def top_count(priority: torch.Tensor, count: int) -> torch.Tensor:
    """Indices of the ``count`` highest priorities, ties to the earlier sample, sorted."""
    order = torch.argsort(priority, descending=True, stable=True)
    return torch.sort(order[:count]).values


def random_count(total: int, count: int, generator: torch.Generator) -> torch.Tensor:
    """``count`` indices of ``range(total)`` uniformly without replacement, sorted."""
    return torch.sort(torch.randperm(total, generator=generator)[:count]).values


def class_balanced_reservoir(labels: torch.Tensor, count: int, generator: torch.Generator) -> torch.Tensor:
    """Online class-balanced reservoir sampling (Chrysakis & Moens 2020) with room for ``count``.

    The stream ``labels: (N,)`` is offered in order, as one batch, to a
    ``drip.lifelong.buffers.ClassBalancedBuffer`` (its docstring has the rule). Returns the
    stored indices, sorted; nothing is drawn from ``generator`` when ``count`` <= 0.
    """
    # Imported on use: the drip.lifelong package may import selectors, and an import at the top
    # would then make the two a cycle.
    from .lifelong.buffers import ClassBalancedBuffer

    if count <= 0:
        return torch.empty(0, dtype=torch.int64)
    buffer = ClassBalancedBuffer(count, generator)
    buffer.offer(range(len(labels)), labels)
    return torch.tensor(buffer.held(), dtype=torch.int64)


def band_keep(
    values: torch.Tensor,
    labels: torch.Tensor,
    calibration_values: torch.Tensor,
    calibration_labels: torch.Tensor,
    num_classes: int,
    *,
    q_high: float,
    q_low: float = 0.0,
    min_class_points: int = 30,
    rule: str = "per-class",
) -> torch.Tensor:
    """DRIP's bands on any evidence signal (higher = more evidence), calibrated on clean data.

    Drop the top ``q_high`` of the calibration values by ``rule`` (``drip.rules``) and, per class,
    what lies below their q_low quantile. With ``values = -loss`` this is the loss filter at
    DRIP's quantiles and rule.
    """
    thresholds = Thresholds.from_scores(
        calibration_values,
        calibration_labels,
        num_classes,
        q_high=q_high,
        q_low=q_low,
        min_class_points=min_class_points,
        rule=rule,
    )
    return thresholds.keep(values, labels)
