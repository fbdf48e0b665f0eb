"""What each arm of the evaluation protocol stores of the stream, at a given band.

An arm is a rule that picks stream samples to store. Three kinds:

* ``full`` stores everything;
* **bands** are online rules calibrated on the clean proxy stream P of the Training Phase, each
  storing what its own band keeps: ``drip`` (the product's score: the deployed scorer's target),
  ``drip-paper`` (the paper's score, Grad-CAM of the label's logit, on the same model and band) and
  ``loss-band`` (the same band rule on the negative loss);
* **equal-count controls** store exactly as many samples as ``drip`` does at the same band:
  ``random``, ``reservoir`` (class-balanced, online) and the informativeness rankings ``loss``,
  ``margin``, ``entropy`` and ``el2n`` over the whole stream (an offline oracle, which favours them).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from . import selectors

if TYPE_CHECKING:  # drip.data's package loads every data set's module; `drip --help` needs ARMS only
    from .data.base import LabelledData

BANDS = ("drip", "drip-paper", "loss-band")
EQUAL_COUNT = ("random", "reservoir", "loss", "margin", "entropy", "el2n")
ARMS = ("full", *BANDS, *EQUAL_COUNT)


@dataclass(frozen=True)
class Evidence:
    """One signal (higher = more evidence for the label) on the stream and on the proxy P."""

    stream: torch.Tensor
    proxy: torch.Tensor


@dataclass
class StreamSignals:
    """Everything the arms decide from: the stream, P's labels, and each band's evidence.

    ``evidence`` maps each band arm to its signal; ``logits`` are the scorer model's on the stream.
    """

    stream: LabelledData
    proxy_labels: torch.Tensor
    evidence: dict[str, Evidence]
    logits: torch.Tensor
    q_low: float
    generator: torch.Generator

    def band(self, arm: str, q_high: float) -> torch.Tensor:
        """Keep mask of band arm ``arm`` dropping the top ``q_high`` (and bottom ``q_low``) per class."""
        signal = self.evidence[arm]
        return selectors.band_keep(
            signal.stream,
            self.stream.y,
            signal.proxy,
            self.proxy_labels,
            self.stream.num_classes,
            q_high=q_high,
            q_low=self.q_low,
        )

    def equal_count(self, arm: str, count: int) -> torch.Tensor:
        """Keep mask of control ``arm`` holding exactly ``count`` stream samples."""
        total = len(self.stream)
        if arm == "random":
            index = selectors.random_count(total, count, self.generator)
        elif arm == "reservoir":
            index = selectors.class_balanced_reservoir(self.stream.y, count, self.generator)
        else:
            index = selectors.top_count(selectors.INFORMATIVENESS[arm](self.logits, self.stream.y), count)
        mask = torch.zeros(total, dtype=torch.bool)
        mask[index] = True
        return mask
