"""The Grad-CAM variants: channel weights from the layer's activations and the target's gradient, and the map.

Grad-CAM averages the gradient over positions; XGrad-CAM weights it by the activations' shares
(drip's default: the map then sums to the head's first-order term); Grad-CAM++ by its alphas;
HiResCAM and LayerCAM multiply gradient and activation position by position. Maps are raw:
ReLU'd unless ``rectify=False`` keeps them signed, never min-max normalised.
"""

from __future__ import annotations

import math
from typing import Literal

import torch

from ..errors import DripInputError

CamMethod = Literal["gradcam", "gradcam++", "xgradcam", "hirescam", "layercam"]
CAM_METHODS: tuple[str, ...] = ("gradcam", "gradcam++", "xgradcam", "hirescam", "layercam")


def _weighted_sum(
    weights: torch.Tensor, activations: torch.Tensor, scale: float = 1.0, rectify: bool = True
) -> torch.Tensor:
    """ReLU(scale * sum_k weights[b, k] * A[b, k]) for ``weights: (B, K)``, ``activations: (B, K, *S)``
    (without the ReLU when not ``rectify``).

    ``scale`` must be positive (it commutes with the ReLU).
    """
    batch, channels = activations.shape[:2]
    flat = activations.reshape(batch, channels, math.prod(activations.shape[2:]))
    # At batch 1 every op costs microseconds, a no-op .to() included: only cast when needed.
    if weights.dtype != flat.dtype:
        weights = weights.to(flat.dtype)
    # One batched matrix product: the cheapest of bmm, einsum and broadcast-multiply-sum measured
    # at batch 1 and 64; the ReLU and the scale then work in the product's own fresh buffer.
    cam = torch.bmm(weights.reshape(batch, 1, channels), flat)
    if rectify:
        cam.relu_()
    if scale != 1.0:
        cam.mul_(scale)
    return cam.reshape(batch, *activations.shape[2:])


def _channel_totals(activations: torch.Tensor) -> torch.Tensor:
    """Each channel's sum over its positions, ``(B, K)``."""
    return activations.sum(tuple(range(2, activations.dim())))


def _xgradcam_weights(weighted_gradients: torch.Tensor, activations: torch.Tensor) -> torch.Tensor:
    """XGrad-CAM's channel weights sum_s A_s dt/dA_s / sum_s A_s from the numerators ``(B, K)``;
    0 for a channel whose activations sum to zero."""
    total = _channel_totals(activations)
    return weighted_gradients / torch.where(total == 0, 1.0, total)


def _combine(
    method: str, activations: torch.Tensor, gradients: torch.Tensor, rectify: bool = True
) -> torch.Tensor:
    """ReLU(sum_k weight_k * A_k) for ``method`` (no ReLU when not ``rectify``); ``gradients``
    broadcast against (B, K, *S)."""
    spatial = tuple(range(2, activations.dim()))
    batch, channels = activations.shape[:2]
    if method in ("hirescam", "layercam"):
        grads = gradients.clamp(min=0) if method == "layercam" else gradients
        cam = (grads * activations).sum(1)
        return torch.relu(cam) if rectify else cam
    if method == "gradcam":
        weights = gradients.mean(spatial) if spatial else gradients
        return _weighted_sum(weights.reshape(batch, channels), activations, rectify=rectify)
    if method == "xgradcam":
        weights = (
            _xgradcam_weights((activations * gradients).sum(spatial), activations) if spatial else gradients
        )
    elif method == "gradcam++":
        grads = gradients.expand_as(activations)
        squared, cubed = grads.pow(2), grads.pow(3)
        total = activations.sum(spatial, keepdim=True) if spatial else activations
        denominator = 2 * squared + total * cubed
        alpha = torch.where(denominator != 0, squared / denominator, torch.zeros_like(squared))
        weights = (alpha * grads.clamp(min=0)).sum(spatial) if spatial else alpha * grads.clamp(min=0)
    else:
        raise DripInputError(f"method: expected one of {CAM_METHODS}, got {method!r}")
    return _weighted_sum(weights.reshape(batch, channels), activations, rectify=rectify)
