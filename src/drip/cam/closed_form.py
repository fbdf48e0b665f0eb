"""The closed form: maps of a layer followed only by GAP and a linear head, with no backward pass.

Then dz_c/dA_k = W[c, k] / |S| at every position, so the forward runs under
``torch.inference_mode`` like plain inference (the maps and logits handed back are ordinary
tensors). The head's premise, logits == GAP(A) @ W.T + b, is checked once on the first call. The
signed map's mean for Grad-CAM and XGrad-CAM is dt/dz . (z - b) / |S|, a function of the logits
(``map_means``): after that first call for an input shape, scoring runs only the model.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..errors import DripModelError
from . import targets
from .route import CamResult, Route
from .targets import _head_rows, _target_means, _target_values
from .variants import _channel_totals, _combine, _weighted_sum


class ClosedForm(Route):
    """The maps of ``layer`` through the linear ``head`` that follows it after global average pooling."""

    path = "closed_form"

    def __init__(
        self,
        model: nn.Module,
        layer: nn.Module,
        layer_name: str,
        method: str,
        target: str,
        rectify: bool,
        head: nn.Linear,
    ) -> None:
        super().__init__(model, layer, layer_name, method, target, rectify)
        self.head = head
        self._head_verified = False
        # (sample shape, |S|) of the last call: the layer's positions for that input.
        self.positions: tuple[tuple[int, ...], int] | None = None

    def __call__(self, x: torch.Tensor, classes: torch.Tensor | None) -> CamResult:
        # Inference mode, not no_grad: nothing here needs autograd, and it is what plain inference
        # runs under (1-3% faster than no_grad at batch 1, measured).
        with torch.inference_mode():
            activations, logits = self._forward_capturing(x, replace=False)
            if not self._head_verified:
                self._verify_head(activations, logits)
            positions = math.prod(activations.shape[2:])
            self.positions = (tuple(x.shape[1:]), positions)
            classes = self._classes(classes, logits)
            # dz/dA is the head's row / |S| at every position.
            weights = _head_rows(self.target, self.head.weight, logits, classes, 1.0 / positions)
            if self.method == "xgradcam" and not self._nonnegative:
                # A constant gradient weighted by the activations' own shares is the gradient
                # itself, except in a channel whose activations sum to zero (XGrad-CAM's 0/0 is
                # 0); after a ReLU such a channel is zero everywhere, and its weight moot.
                weights = weights.masked_fill(_channel_totals(activations) == 0, 0.0)
        # Outside inference mode, so the maps (and the logits' copy) are ordinary tensors that
        # callers may change in place or use with autograd.
        if self.method in ("gradcam", "xgradcam"):
            maps = _weighted_sum(weights, activations, rectify=self.rectify)
        else:
            shape = (*activations.shape[:2], *([1] * (activations.dim() - 2)))
            maps = _combine(self.method, activations, weights.reshape(shape), self.rectify)
        return CamResult(maps=maps, logits=logits.clone())

    def _verify_head(self, activations: torch.Tensor, logits: torch.Tensor) -> None:
        """Check once that logits == GAP(A) @ W.T + b, the premise of the closed form."""
        spatial = tuple(range(2, activations.dim()))
        pooled = activations.mean(spatial) if spatial else activations
        try:
            expected = nn.functional.linear(pooled, self.head.weight, self.head.bias)
        except RuntimeError as err:
            raise DripModelError(
                f"head: the linear head does not take layer {self.layer_name!r}'s channels: {err}"
            ) from None
        scale = max(1.0, float(logits.abs().max())) if logits.numel() else 1.0
        if expected.shape != logits.shape or not torch.allclose(
            expected, logits, rtol=1e-3, atol=1e-4 * scale
        ):
            raise DripModelError(
                f"layer {self.layer_name!r} is not followed only by global average pooling and "
                "the declared linear head (the logits differ), so the closed form would be "
                "wrong; use path='autograd'"
            )
        self._head_verified = bool(logits.numel())

    @property
    def means_without_map(self) -> bool:
        """Grad-CAM or XGrad-CAM, signed: the mean is dt/dz . (z - b) / |S| (b: the head's biases).

        A channel's weight is (dt/dz) W[:, k] / |S| (XGrad-CAM's is that too, or 0 where the
        channel sums to 0 and adds nothing to the mean either way), and
        sum_k W[c, k] mean(A_k) = z_c - b_c.
        """
        return not self.rectify and self.method in ("gradcam", "xgradcam")

    def map_means(self, x: torch.Tensor, classes: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """``LayerGradCam.map_means``: the first call for an input shape runs the whole route once,
        which checks the head's premise and measures |S|; later calls run only the model, with no
        capture of the layer, no map and no reduction over positions: at batch 1 those were a
        third of a small model's forward."""
        # The plain forward's logits are an inference tensor: cloned, as the closed form hands them back.
        logits = self._plain_logits(x).clone() if self._verified_for(x) else self(x, classes).logits
        assert self.positions is not None
        classes = self._classes(classes, logits)
        bias = self.head.bias
        return _target_means(
            self.target, logits, classes, None if bias is None else bias.detach(), self.positions[1]
        ), logits

    def few_map_means(
        self, x: torch.Tensor, classes: list[int] | None
    ) -> tuple[list[float], torch.Tensor] | None:
        """``LayerGradCam.few_map_means``: None, having run nothing, where it does not apply."""
        head = self.head
        if (
            not self._verified_for(x)
            or self.target == "logprob"
            or (self.target == "margin" and head.out_features < 2)
            or not targets._in_python(len(x) * head.out_features)
            or (classes and (min(classes) < 0 or max(classes) >= head.out_features))
        ):
            return None
        assert self.positions is not None
        logits = self._plain_logits(x)
        rows = logits.tolist()
        if classes is None:
            classes = [row.index(max(row)) for row in rows]  # argmax: the first on ties
        offsets = None if head.bias is None else [head.bias.tolist()] * len(rows)
        return _target_values(self.target, rows, classes, offsets, self.positions[1]), logits

    def _verified_for(self, x: torch.Tensor) -> bool:
        """Whether the head was verified and |S| measured for ``x``'s sample shape."""
        return self._head_verified and self.positions is not None and self.positions[0] == x.shape[1:]

    def _plain_logits(self, x: torch.Tensor) -> torch.Tensor:
        """The model's logits (an inference tensor), from a forward with nothing captured."""
        with torch.inference_mode():
            logits = self.model(x)
        self._check_logits(logits, x)
        return logits
