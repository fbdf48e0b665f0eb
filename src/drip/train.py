"""Training and evaluation with a fixed number of optimiser steps.

Every arm of a comparison gets the same number of optimiser updates, whatever the size of its
training set: counting epochs instead would give a smaller kept set fewer updates and make any
selector look worse than it is (measured: drop-top lost clearly under fixed epochs, not under fixed
steps). Runs are seeded: the same seed gives the same batches and the same result.

The loss is cross-entropy over the outputs of the classes the training set holds. Over every
output, it lowers the logit of a class with no samples at every step and nothing stops it, so a
device whose classes arrive over its life meets each new class with a logit sunk by every earlier
training, and a fixed step budget is spent undoing that before the class is learnt (synthetic
speech, 400 steps a round: the two classes that arrived last stayed at 0% in every arm, the
unbounded store's included; masked as here, or trained from scratch, they were learnt). Masking the
outputs of classes not yet seen is the usual remedy of class-incremental learning (the "labels
trick", Zeno et al. 2018). With every class in the training set nothing changes.

Masked, an output the model never trained keeps its initial weights, and its logit is a random
projection of features that training grew: it wins predictions and, above all, is the strongest
rival of the DRIP score's margin for most samples of a device that knows a few of its classes
(graded MNIST, two of ten classes learnt: every sample's rival was an untrained output). So a model
trained from its initialisation can have those outputs **parked** (``park_lacking``): their bias
set to ``PARKED_BIAS``, so that they lose every comparison, their weights left as initialised;
``fit`` sets a parked output's bias to zero when its class arrives, so the class starts where the
masked loss would have started it (from a zero weight row it learnt slower: digits, 150 steps a
round, every arm 1.2 to 2.6 pp lower on average). Every path that reads logits (scores, the ONNX
graph, predictions) then ranges over the classes the model has learnt, unchanged.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

from .errors import DripInputError, DripModelError

# A parked output's bias: its logit loses to any trained one by thousands, and stays finite, so
# that scores and losses stay finite (float16's range included).
PARKED_BIAS = -1e4


@dataclass(frozen=True)
class TrainConfig:
    """Optimiser budget and settings shared by every arm: Adam, cosine decay to zero."""

    steps: int = 600
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 1e-4

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise DripInputError(f"{name}: expected a positive integer, got {value!r}")
        if not self.lr > 0 or self.weight_decay < 0:
            raise DripInputError(
                f"lr/weight_decay: expected lr > 0 and weight_decay >= 0, got {self.lr}, {self.weight_decay}"
            )


@dataclass
class History:
    """Mean training loss of every ``log_every`` steps, and the wall time of the run."""

    losses: list[float] = field(default_factory=list)
    elapsed_s: float = 0.0


def _batches(count: int, batch_size: int, steps: int, generator: torch.Generator):
    """``steps`` index batches from seeded permutations, each sample once per pass."""
    size = min(batch_size, count)
    order, position = torch.randperm(count, generator=generator), 0
    for _ in range(steps):
        if position + size > count:
            order, position = torch.randperm(count, generator=generator), 0
        yield order[position : position + size]
        position += size


def fit(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    config: TrainConfig = TrainConfig(),
    *,
    seed: int = 0,
    progress: bool = True,
    desc: str = "train",
    log_every: int = 50,
    park_lacking: bool = False,
) -> History:
    """Train ``model`` on ``x: (N, ...)``, ``y: (N,)`` for exactly ``config.steps`` updates, the
    loss over the outputs of the classes ``y`` holds (see the module docstring). A parked output
    of a class ``y`` holds gets its bias back (zero); ``park_lacking`` parks the outputs of the
    classes it lacks afterwards (for a model trained from its initialisation: never trained).

    The model is left in ``eval()`` mode, ready to score or evaluate. The global RNG is untouched.
    """
    if len(x) == 0 or len(x) != len(y):
        raise DripInputError(f"x/y: expected the same non-zero count, got {len(x)} and {len(y)}")
    device = next(model.parameters()).device
    lacking = _lacking_outputs(y, predict_logits(model, x[:1]).shape[1]).to(device)
    if park_lacking:
        _output_layer(model, lacking.numel())  # refused before any step, not after the training
    _unpark(model, ~lacking)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.steps)
    generator = torch.Generator().manual_seed(seed)
    history, running = History(), []
    masked = bool(lacking.any())
    start = time.perf_counter()
    model.train()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        bar = tqdm(
            _batches(len(x), config.batch_size, config.steps, generator),
            total=config.steps,
            desc=desc,
            disable=not progress,
            leave=False,
        )
        for step, index in enumerate(bar, 1):
            inputs, labels = x[index].to(device), y[index].to(device)
            logits = model(inputs)
            if masked:
                logits = logits.masked_fill(lacking, -math.inf)
            loss = nn.functional.cross_entropy(logits, labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            running.append(loss.item())
            if step % log_every == 0 or step == config.steps:
                history.losses.append(sum(running) / len(running))
                bar.set_postfix(loss=f"{history.losses[-1]:.3f}")
                running.clear()
    model.eval()
    if park_lacking and masked:
        park_outputs(model, lacking)
    history.elapsed_s = time.perf_counter() - start
    return history


def _output_layer(model: nn.Module, num_outputs: int) -> nn.Linear:
    """The model's last ``nn.Linear``, which must have a bias and make its ``num_outputs`` logits."""
    layer = _last_linear(model)
    if layer is None or layer.bias is None or layer.out_features != num_outputs:
        raise DripModelError(
            f"parking outputs needs a model whose last layer is an nn.Linear with a bias and "
            f"{num_outputs} outputs; {type(model).__name__}'s last nn.Linear is {layer}"
        )
    return layer


def _last_linear(model: nn.Module) -> nn.Linear | None:
    layers = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return layers[-1] if layers else None


def parked_outputs(model: nn.Module) -> torch.Tensor:
    """Which outputs of ``model`` are parked (empty for a model whose last ``nn.Linear`` has no
    bias, or that has none)."""
    layer = _last_linear(model)
    if layer is None or layer.bias is None:
        return torch.zeros(0, dtype=torch.bool)
    with torch.no_grad():
        return (layer.bias <= PARKED_BIAS / 2).cpu()


@torch.no_grad()
def park_outputs(model: nn.Module, outputs: torch.Tensor) -> None:
    """Park the outputs in the boolean mask ``outputs`` (one flag per output): bias
    ``PARKED_BIAS``, so that their logits lose to every other (see the module docstring)."""
    if not isinstance(outputs, torch.Tensor) or outputs.dtype != torch.bool or outputs.dim() != 1:
        raise DripInputError(f"outputs: expected a 1-D boolean mask, one flag per output, got {outputs!r}")
    layer = _output_layer(model, outputs.numel())
    layer.bias[outputs.to(layer.bias.device)] = PARKED_BIAS


@torch.no_grad()
def _unpark(model: nn.Module, outputs: torch.Tensor) -> None:
    """Give the parked ones among the outputs in mask ``outputs`` their bias back (zero)."""
    layer = _last_linear(model)
    if layer is None or layer.bias is None or layer.out_features != outputs.numel():
        return  # no output layer to park in, so nothing is parked
    layer.bias[(layer.bias <= PARKED_BIAS / 2) & outputs.to(layer.bias.device)] = 0.0


def _lacking_outputs(y: torch.Tensor, num_outputs: int) -> torch.Tensor:
    """Which of the model's ``num_outputs`` classes ``y`` holds no sample of."""
    if int(y.min()) < 0 or int(y.max()) >= num_outputs:
        raise DripInputError(
            f"y: labels must lie in [0, {num_outputs}) for a model of {num_outputs} outputs, "
            f"got {int(y.min())}..{int(y.max())}"
        )
    return torch.bincount(y, minlength=num_outputs) == 0


@torch.no_grad()
def predict_logits(model: nn.Module, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """Logits ``(N, C)`` of ``x`` in eval mode (the model's mode is restored afterwards)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        parts = [model(x[i : i + batch_size].to(device)).cpu() for i in range(0, len(x), batch_size)]
    finally:
        model.train(was_training)
    return torch.cat(parts) if parts else torch.empty(0)


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1024) -> float:
    """Top-1 accuracy of ``model`` on ``x``, ``y`` (a fraction in [0, 1])."""
    if len(y) == 0:
        raise DripInputError("evaluate: empty evaluation set")
    return float((predict_logits(model, x, batch_size).argmax(1) == y.cpu()).float().mean())
