"""The piecewise-linear head (Linear, ReLU, max and global average pooling, Flatten) differentiated by hand.

Such a head is linear between its kinks, so the gradient of a logit is a product of the weight
matrices masked by where each ReLU was active and routed through each pool's argmax. The head is
run by hand keeping those masks and indices, and the product applied with a few matrix products
under ``torch.inference_mode``: no graph, no autograd engine, which cost a small model more than
its whole forward at batch 1. Running the head by hand would skip hooks put on the model or the
head: a call that finds any takes the autograd route instead.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .autograd import Autograd
from .heads import _MAX_POOLS, _is_global_pool
from .route import CamResult, Route, _calls_hooks
from .targets import _head_rows, _target_means
from .variants import _combine, _weighted_sum, _xgradcam_weights


class Piecewise(Route):
    """The maps of ``layer``, a child of a plain ``nn.Sequential``, through ``piecewise_head``: the
    children after it (``heads.find_piecewise_linear_head``)."""

    path = "piecewise"

    def __init__(
        self,
        model: nn.Module,
        layer: nn.Module,
        layer_name: str,
        method: str,
        target: str,
        rectify: bool,
        piecewise_head: tuple[nn.Module, ...],
    ) -> None:
        super().__init__(model, layer, layer_name, method, target, rectify)
        self.piecewise_head = piecewise_head
        self._autograd = Autograd(model, layer, layer_name, method, target, rectify)
        children = list(model)
        self._trunk = tuple(children[: children.index(layer) + 1])
        # Grad-CAM needs only each channel's gradient sum at the layer, XGrad-CAM only its
        # activation-weighted sum, and a max pool routes each pooled gradient to the position
        # whose value it took: both sums can be taken at the pool's output, so a pool right
        # after the layer needs no indices and no scatter.
        self._pool_sums = method in ("gradcam", "xgradcam") and type(piecewise_head[0]) in _MAX_POOLS
        # The map's sum as t(z) - t(z0) (``means_without_map``) needs a layer whose zero-sum
        # channels are zero everywhere, and, once a Linear has run, only Linear and ReLU steps.
        linear_at = next(i for i, m in enumerate(piecewise_head) if type(m) is nn.Linear)
        self._biases_propagate = self._nonnegative and all(
            type(m) in (nn.Linear, nn.ReLU, nn.Identity, nn.Dropout) for m in piecewise_head[linear_at:]
        )

    def __call__(self, x: torch.Tensor, classes: torch.Tensor | None) -> CamResult:
        """The head run by hand, then its Jacobian's row for each class applied by hand."""
        # Running the head by hand would skip hooks someone put on the model or the head since.
        if _calls_hooks(self.model, *self.piecewise_head):
            return self._autograd(x, classes)
        with torch.inference_mode():
            activations, logits, steps = self.head_forward(x)
            classes = self._classes(classes, logits)
            # The last step is a Linear of a (B, features) input: dt/dz through it is the first gradient.
            gradients = _head_rows(self.target, steps[-1][1].weight, logits, classes)
            for kind, saved in reversed(steps[:-1]):
                if kind == "pool_sums":
                    weights = self.pooled_weights(gradients, saved, activations)
                    break
                if kind == "linear":
                    gradients = gradients @ saved.weight
                elif kind == "relu":  # ReLU's own backward: one op, where a mask and a product take two
                    gradients = torch.ops.aten.threshold_backward(gradients, saved, 0.0)
                elif kind == "reshape":
                    gradients = gradients.reshape(saved)
                elif kind == "spread":
                    positions = math.prod(saved[2:])
                    gradients = (gradients / positions).reshape(*saved[:2], *[1] * (len(saved) - 2))
                    gradients = gradients.expand(saved)
                else:
                    indices, shape = saved
                    flat = gradients.new_zeros(*shape[:2], math.prod(shape[2:]))
                    flat.scatter_add_(2, indices.flatten(2), gradients.flatten(2))
                    gradients = flat.reshape(shape)
        # Outside inference mode (as in the closed form): the results are ordinary tensors.
        if self._pool_sums:
            maps = _weighted_sum(weights, activations, rectify=self.rectify)
        else:
            maps = _combine(self.method, activations, gradients, self.rectify)
        return CamResult(maps=maps, logits=logits.clone())

    @property
    def means_without_map(self) -> bool:
        """XGrad-CAM, signed, of a ReLU layer: the map's sum is sum A dt/dA, the head's first-order
        term, and a piecewise-linear head is linear on the piece the sample is on:
        sum A dt/dA = t(z) - t(z0), with z0 the head's output for a zero layer output and its
        ReLUs held as they were: its biases pushed through the masked layers, a few small ops
        where the gradient took matrix products as large as the head's."""
        return not self.rectify and self.method == "xgradcam" and self._biases_propagate

    def map_means(self, x: torch.Tensor, classes: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """``LayerGradCam.map_means``: t(z) - t(z0) over |S|, z0 pushed through the head's steps."""
        if _calls_hooks(self.model, *self.piecewise_head):  # as in __call__: hooks need autograd
            result = self._autograd(x, classes)
            return result.maps.mean(tuple(range(1, result.maps.dim()))), result.logits
        with torch.inference_mode():
            activations, logits, steps = self.head_forward(x)
            classes = self._classes(classes, logits)
            offsets = None  # the head's output for a zero layer output, on the sample's piece
            for kind, saved in steps:
                if kind == "linear":
                    if offsets is not None:
                        offsets = nn.functional.linear(offsets, saved.weight, saved.bias)
                    elif saved.bias is not None:
                        offsets = saved.bias.expand(len(x), -1)
                elif kind == "relu" and offsets is not None:
                    offsets = torch.ops.aten.threshold_backward(offsets, saved, 0.0)
        positions = math.prod(activations.shape[2:])
        # Outside inference mode (as the other paths): the results are ordinary tensors.
        logits = logits.clone()
        return _target_means(
            self.target, logits, classes, None if offsets is None else offsets.clone(), positions
        ), logits

    def head_forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[tuple[str, object]]]:
        """The layer's output, the logits and, per head step, what its backward needs: the model's
        forward run child by child (the scorer runs it under ``torch.inference_mode``; the ONNX
        export traces it)."""
        activations = x
        for child in self._trunk:
            activations = child(activations)
        self._check_layer_output(activations)
        output = activations
        # What each step's backward needs: a Linear itself, a ReLU's output,
        # a pool's argmax indices and input shape, a reshape's input shape.
        steps: list[tuple[str, object]] = []
        for position, module in enumerate(self.piecewise_head):
            kind = type(module)
            if position == 0 and self._pool_sums:
                output = module(output)
                steps.append(("pool_sums", output))
            elif kind is nn.Linear:
                steps.append(("linear", module))
                output = nn.functional.linear(output, module.weight, module.bias)
            elif kind is nn.ReLU:
                output = output.relu()
                steps.append(("relu", output))
            elif kind in _MAX_POOLS:
                shape = output.shape
                output, indices = _MAX_POOLS[kind](
                    output,
                    module.kernel_size,
                    module.stride,
                    module.padding,
                    module.dilation,
                    ceil_mode=module.ceil_mode,
                    return_indices=True,
                )
                steps.append(("unpool", (indices, shape)))
            elif kind is nn.Flatten or _is_global_pool(module):
                steps.append(("spread" if _is_global_pool(module) else "reshape", output.shape))
                output = module(output)
        self._check_logits(output, x)
        return activations, output, steps

    def pooled_weights(
        self, gradients: torch.Tensor, pooled: torch.Tensor, activations: torch.Tensor
    ) -> torch.Tensor:
        """Channel weights ``(B, K)`` from the gradient at the output of the max pool right after
        the layer (``pooled`` is that output): the pool sends each gradient to its argmax."""
        if self.method == "gradcam":
            return gradients.sum(tuple(range(2, gradients.dim()))).div_(math.prod(activations.shape[2:]))
        return _xgradcam_weights((gradients * pooled).sum(tuple(range(2, pooled.dim()))), activations)
