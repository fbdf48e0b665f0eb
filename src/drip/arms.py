"""What each arm of the evaluation protocol stores of the stream, at a given band.

An arm is a rule that picks stream samples to store. Three kinds:

* ``full`` stores everything;
* **bands** are online rules calibrated on the clean calibration data of the Training Phase,
  each storing what its own band keeps: ``drip`` (the product's score and selection rule),
  ``drip-paper`` (the paper's score, Grad-CAM of the label's logit, and its per-class rule, on the
  same model and band), ``loss-band`` (DRIP's rule on the negative loss) and one arm per
  selection rule on DRIP's score (``drip-per-class``, ``drip-pooled``, ``drip-coverage``), so a
  run shows the rules side by side;
* **equal-count controls** store exactly as many samples as ``drip`` does at the same band:
  ``random``, ``reservoir`` (class-balanced, online) and the informativeness rankings ``loss``,
  ``margin``, ``entropy`` and ``el2n`` over the whole stream (an offline oracle, which favours them).

Every random choice draws from its own stream (``generator_for``): RANDOM must not share the
permutation that chose the corrupted samples, or it is no control.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from . import selectors
from .rules import RULES

if TYPE_CHECKING:  # drip.data's package loads every data set's module; `drip --help` needs ARMS only
    from .data.base import LabelledData

RULE_ARMS = tuple(f"drip-{rule}" for rule in RULES)
BANDS = ("drip", "drip-paper", "loss-band", *RULE_ARMS)
EQUAL_COUNT = ("random", "reservoir", "loss", "margin", "entropy", "el2n")
ARMS = ("full", *BANDS, *EQUAL_COUNT)


def generator_for(seed: int, purpose: str) -> torch.Generator:
    """A generator of its own for one random ``purpose`` of one seed (e.g. corruption, random,
    reservoir): streams derived from the seed and the purpose's name, unrelated to each other."""
    digest = hashlib.sha256(f"{seed}:{purpose}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)


@dataclass(frozen=True)
class Evidence:
    """One signal (higher = more evidence for the label) on the stream and on the proxy P."""

    stream: torch.Tensor
    proxy: torch.Tensor


@dataclass
class StreamSignals:
    """Everything the arms decide from: the stream, the calibration labels, each band's evidence.

    ``evidence`` maps ``drip``, ``drip-paper`` and ``loss-band`` to their signals; ``logits`` are
    the scorer model's on the stream; ``rule`` is DRIP's selection rule; ``seed`` derives each
    random control's own generator.
    """

    stream: LabelledData
    proxy_labels: torch.Tensor
    evidence: dict[str, Evidence]
    logits: torch.Tensor
    q_low: float
    rule: str
    seed: int

    def band(self, arm: str, q_high: float) -> torch.Tensor:
        """Keep mask of band arm ``arm`` dropping the top ``q_high`` by its rule (and, per class,
        the bottom ``q_low``)."""
        if arm in RULE_ARMS:
            signal, rule = self.evidence["drip"], arm.removeprefix("drip-")
        else:
            signal, rule = self.evidence[arm], "per-class" if arm == "drip-paper" else self.rule
        return selectors.band_keep(
            signal.stream,
            self.stream.y,
            signal.proxy,
            self.proxy_labels,
            self.stream.num_classes,
            q_high=q_high,
            q_low=self.q_low,
            rule=rule,
        )

    def equal_count(self, arm: str, count: int) -> torch.Tensor:
        """Keep mask of control ``arm`` holding exactly ``count`` stream samples."""
        total = len(self.stream)
        if arm == "random":
            index = selectors.random_count(total, count, generator_for(self.seed, arm))
        elif arm == "reservoir":
            index = selectors.class_balanced_reservoir(self.stream.y, count, generator_for(self.seed, arm))
        else:
            index = selectors.top_count(selectors.INFORMATIVENESS[arm](self.logits, self.stream.y), count)
        mask = torch.zeros(total, dtype=torch.bool)
        mask[index] = True
        return mask
