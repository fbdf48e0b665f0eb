"""Autograd: maps through any head, by ``torch.autograd.grad`` of the target to the layer's output only.

The forward runs without recording a graph up to the layer, the layer's output becomes a leaf,
and the selected logits are differentiated with respect to that leaf only (no parameter
gradients, no backward through the trunk). Calls work inside ``torch.no_grad()`` and
``torch.inference_mode()``; the grad mode is restored as found.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from ..errors import DripModelError
from .route import CamResult, Route
from .targets import target_logit_gradient
from .variants import _combine


class Autograd(Route):
    """The maps of ``layer`` through whatever head follows it."""

    path = "autograd"

    def __call__(self, x: torch.Tensor, classes: torch.Tensor | None) -> CamResult:
        was_enabled = torch.is_grad_enabled()
        # Entering a mode context costs microseconds per call: leave inference mode only if in it.
        inference = torch.is_inference_mode_enabled()
        try:
            with torch.inference_mode(False) if inference else contextlib.nullcontext():
                torch.set_grad_enabled(False)
                activations, logits = self._forward_capturing(x, replace=True)
                classes = self._classes(classes, logits)
                if not logits.requires_grad:
                    raise DripModelError(
                        f"model: the logits do not depend differentiably on layer {self.layer_name!r}"
                    )
                # A scalar whose gradient is minus each sample's target's: not the logits with
                # grad_outputs, which torch checks with its symbolic-shapes module, whose first
                # use imports sympy (+37 MiB RSS, ~1 s). For the class target nll_loss is that
                # scalar in one graph node where gather + sum take two (4% at batch 1, measured).
                if self.target == "class":
                    selected = nn.functional.nll_loss(logits, classes, reduction="sum")
                else:
                    seed = target_logit_gradient(self.target, logits.detach(), classes)
                    selected = -(logits * seed).sum()
                (gradients,) = torch.autograd.grad(selected, activations, allow_unused=True)
        finally:
            torch.set_grad_enabled(was_enabled)
        if gradients is None:
            raise DripModelError(f"model: the logits do not depend on layer {self.layer_name!r}'s output")
        # Neither input carries a graph, so nothing below is recorded.
        maps = _combine(self.method, activations.detach(), gradients.neg_(), self.rectify)
        return CamResult(maps=maps, logits=logits.detach())
