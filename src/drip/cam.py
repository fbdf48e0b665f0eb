"""Grad-CAM of one layer, batched, for per-sample classes, on 1-D and 2-D layers.

Two paths give the same maps:

* **closed form**, when the layer is followed only by global average pooling and a linear layer:
  then dz_c/dA_k = W[c, k] / |S| at every position, so no backward pass is needed at all, and the
  forward runs under ``torch.inference_mode`` like plain inference (the maps and logits handed back
  are ordinary tensors);
* **piecewise linear**, when the layer is a child of a plain ``nn.Sequential`` followed only by
  ``Linear``, ``ReLU``, max pooling, global average pooling, ``Flatten`` and pass-through layers
  (LeNet's head): such a head is linear between its kinks, so the gradient of a logit is a product
  of the weight matrices masked by where each ReLU was active and routed through each pool's
  argmax. The head is run by hand keeping those masks and indices, and the product applied with a
  few matrix products under ``torch.inference_mode``: no graph, no autograd engine, which cost a
  small model more than its whole forward at batch 1;
* **autograd**, for any other head: the forward runs without recording a graph up to the layer,
  the layer's output becomes a leaf, and ``torch.autograd.grad`` differentiates the selected logits
  with respect to that leaf only (no parameter gradients, no backward through the trunk).

The layer's output is taken by a forward hook that lives for one call (removed in ``finally``),
or, for a plain ``nn.Sequential`` with no hooks of its own, by running its children in turn as its
forward does, which costs no hook at all. The model's train/eval mode and its ``requires_grad``
flags are left as found; calls work inside ``torch.no_grad()`` and ``torch.inference_mode()``.
Maps are raw (ReLU'd, never min-max normalised): their magnitude is what makes scores comparable
across samples. ``rectify=False`` keeps the map signed (no ReLU): where the layer holds evidence
against the target the map is negative, which a score of net evidence needs; the mean of that
signed map is, for Grad-CAM and XGrad-CAM on the closed form and XGrad-CAM on a piecewise head, a
function of the logits and the head's biases (``map_means``), computed without the map.

What is differentiated, the **target**, is a function of the logits z for each sample's class y:
``"class"`` is z_y (Grad-CAM as published); ``"margin"`` is z_y - max_{j != y} z_j, the map of how
far the class wins over its strongest rival (the difference of the two classes' maps); ``"logprob"``
is log softmax(z)_y, the map of the negative cross-entropy. Each path only needs the target's
gradient with respect to the logits, dt/dz (a one-hot row for ``"class"``): the chain rule through
the head is the same linear map for every target, so all three paths serve all three targets.
"""

from __future__ import annotations

import contextlib
import itertools
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from .errors import DripInputError, DripModelError
from .validation import int_range

CamMethod = Literal["gradcam", "gradcam++", "xgradcam", "hirescam", "layercam"]
CamPath = Literal["auto", "closed_form", "piecewise", "autograd"]
CamTarget = Literal["class", "margin", "logprob"]
CAM_METHODS: tuple[str, ...] = ("gradcam", "gradcam++", "xgradcam", "hirescam", "layercam")
CAM_TARGETS: tuple[str, ...] = ("class", "margin", "logprob")

# Dropout counts as pass-through: scoring is meant for eval mode (the scorer warns otherwise).
_POOL_OR_RESHAPE = (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.Flatten, nn.Identity, nn.Dropout)


@dataclass(frozen=True)
class CamResult:
    """Heatmaps ``maps: (B, *S)`` (raw; ReLU'd unless signed) and the model's ``logits: (B, C)``."""

    maps: torch.Tensor
    logits: torch.Tensor


def resolve_layer(model: nn.Module, layer: nn.Module | str) -> tuple[nn.Module, str]:
    """The module ``layer`` (a module inside ``model`` or its dotted name) and its dotted name."""
    if isinstance(layer, str):
        try:
            return model.get_submodule(layer), layer
        except AttributeError:
            names = [name for name, _ in model.named_modules() if name]
            raise DripModelError(
                f"layer: no module named {layer!r} in {type(model).__name__}; some names it has: {names[-8:]}"
            ) from None
    for name, module in model.named_modules():
        if module is layer:
            return module, name
    raise DripModelError(f"layer: {type(layer).__name__} is not a module inside the model")


def _execution_atoms(module: nn.Module, stop: nn.Module) -> Iterator[nn.Module]:
    """Modules of nested ``nn.Sequential`` containers in execution order, ``stop`` kept whole."""
    if isinstance(module, nn.Sequential) and module is not stop:
        for child in module:
            yield from _execution_atoms(child, stop)
    else:
        yield module


def _is_global_pool(module: nn.Module) -> bool:
    size = getattr(module, "output_size", None)
    if isinstance(module, (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d)):
        return size == 1 or (isinstance(size, tuple) and all(s == 1 for s in size))
    return False


def find_gap_linear_head(model: nn.Module, layer: nn.Module) -> nn.Linear | None:
    """The linear head if ``model`` is a Sequential whose ``layer`` is followed only by GAP + Linear.

    A model of another structure can declare its head with a ``drip_head`` attribute (the dotted
    name of the linear layer); the scorer then checks the claim against the logits on first use.
    """
    declared = getattr(model, "drip_head", None)
    if isinstance(declared, str):
        head, _ = resolve_layer(model, declared)
        return head if isinstance(head, nn.Linear) else None
    if not isinstance(model, nn.Sequential):
        return None
    atoms = list(_execution_atoms(model, layer))
    if layer not in atoms:
        return None
    tail = atoms[atoms.index(layer) + 1 :]
    if not tail or not isinstance(tail[-1], nn.Linear):
        return None
    between = tail[:-1]
    if all(isinstance(m, _POOL_OR_RESHAPE) for m in between) and any(map(_is_global_pool, between)):
        return tail[-1]
    return None


_MAX_POOLS = {nn.MaxPool1d: nn.functional.max_pool1d, nn.MaxPool2d: nn.functional.max_pool2d}
# Exact types: a subclass may override forward, and the head is run by hand.
_PIECEWISE_LINEAR = (nn.Linear, nn.ReLU, nn.Flatten, nn.Identity, nn.Dropout, *_MAX_POOLS)


def find_piecewise_linear_head(model: nn.Module, layer: nn.Module) -> tuple[nn.Module, ...] | None:
    """The children after ``layer`` if ``model`` is a plain Sequential with ``layer`` a child and
    only piecewise-linear layers after it (Linear, ReLU, max or global average pooling, Flatten,
    Identity, Dropout), ending in a Linear; else None."""
    if not _is_plain_sequential_child(model, layer):
        return None
    children = list(model)
    tail = tuple(children[children.index(layer) + 1 :])
    if not tail or type(tail[-1]) is not nn.Linear:
        return None
    for module in tail:
        pool_with_indices = type(module) in _MAX_POOLS and module.return_indices
        if not (type(module) in _PIECEWISE_LINEAR or _is_global_pool(module)) or pool_with_indices:
            return None
    return tail


def _is_plain_sequential_child(model: nn.Module, layer: nn.Module) -> bool:
    """Whether ``model`` is an ``nn.Sequential`` (not a subclass, whose forward may differ) with
    ``layer`` as a direct child and nowhere else."""
    if type(model) is not nn.Sequential:
        return False
    uses = sum(module is layer for _, module in model.named_modules(remove_duplicate=False))
    return uses == 1 and any(child is layer for child in model)


# The hook registries torch's Module.__call__ consults (private names, stable since torch 1.x).
_OWN_HOOKS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
_GLOBAL_HOOKS = tuple(f"_global{name}" for name in _OWN_HOOKS)


def _calls_hooks(*modules: nn.Module) -> bool:
    """Whether calling any of ``modules`` runs hooks: their own, or torch's global module hooks."""
    registry = torch.nn.modules.module
    return any(getattr(registry, name) for name in _GLOBAL_HOOKS) or any(
        getattr(module, name) for module in modules for name in _OWN_HOOKS
    )


@contextlib.contextmanager
def _one_call_hook(layer: nn.Module, hook: Callable) -> Iterator[None]:
    handle = layer.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def _check_has_rivals(target: str, logits: torch.Tensor) -> None:
    if logits.shape[1] < 2:
        raise DripModelError(f"target {target!r} compares classes, but the model has {logits.shape[1]}")


# Up to this many logits (a batch of a few samples) the margin's rivals are found in Python: at
# batch 1 each tensor op costs 4-8 us, and target_logit_gradient's six cost more than the map.
_PYTHON_MARGIN_LOGITS = 128


def _rival(row: list[float], label: int) -> int:
    """The strongest class other than ``label`` in one sample's logits (the first on ties, as
    ``argmax``)."""
    others = row.copy()
    others[label] = -math.inf
    return others.index(max(others))


def _margin_coefficients(
    logits: torch.Tensor, classes: torch.Tensor, scale: float, like: torch.Tensor
) -> torch.Tensor:
    """``scale`` x ``target_logit_gradient("margin", ...)`` for a few samples, on ``like``'s
    device and dtype: +scale at y, -scale at the strongest rival (the first on ties, as ``argmax``)."""
    _check_has_rivals("margin", logits)
    coefficients = []
    for row, label in zip(logits.tolist(), classes.tolist()):
        rival = _rival(row, label)
        coefficient = [0.0] * len(row)
        coefficient[label], coefficient[rival] = scale, -scale
        coefficients.append(coefficient)
    return torch.tensor(coefficients, dtype=like.dtype, device=like.device).reshape(logits.shape)


def _few_target_means(
    target: str, logits: torch.Tensor, classes: torch.Tensor, offsets: torch.Tensor | None, positions: int
) -> torch.Tensor:
    """``_target_values`` of a few samples' logits as a tensor. ``offsets``: (C,) for every
    sample, (B, C) per sample, or None."""
    if target == "margin":
        _check_has_rivals(target, logits)
    if offsets is None:
        offset_rows = None
    else:
        offset_rows = offsets.tolist() if offsets.dim() == 2 else [offsets.tolist()] * len(logits)
    return logits.new_tensor(
        _target_values(target, logits.tolist(), classes.tolist(), offset_rows, positions)
    )


def _target_values(
    target: str,
    rows: list[list[float]],
    labels: list[int],
    offset_rows: list[list[float]] | None,
    positions: int,
) -> list[float]:
    """The ``"class"`` or ``"margin"`` target of ``rows - offset_rows`` over ``positions``, in
    Python's float64: (z_y - o_y), or that minus (z_r - o_r) with r the strongest rival of z (the
    first on ties). Each value is rounded once, where it becomes a tensor."""
    zero = [0.0] * (len(rows[0]) if rows else 0)
    values = []
    for row, label, offset in zip(rows, labels, offset_rows or itertools.repeat(zero)):
        value = row[label] - offset[label]
        if target == "margin":
            rival = _rival(row, label)
            value -= row[rival] - offset[rival]
        values.append(value / positions)
    return values


def target_logit_gradient(target: str, logits: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """dt/dz ``(B, C)``: the gradient of each sample's target with respect to its logits.

    ``"class"``: the one-hot row of y. ``"margin"``: +1 at y, -1 at the strongest rival
    argmax_{j != y} z_j (the first on ties). ``"logprob"``: one_hot(y) - softmax(z).
    """
    one_hot = torch.zeros_like(logits).scatter_(1, classes[:, None], 1.0)
    if target == "class":
        return one_hot
    _check_has_rivals(target, logits)
    if target == "margin":
        rivals = logits.masked_fill(one_hot.bool(), -math.inf).argmax(1)
        return one_hot.scatter_(1, rivals[:, None], -1.0)
    if target == "logprob":
        return one_hot.sub_(torch.softmax(logits, 1))
    raise DripInputError(f"target: expected one of {CAM_TARGETS}, got {target!r}")


def target_means(
    target: str, logits: torch.Tensor, classes: torch.Tensor, offsets: torch.Tensor | None, positions: int
) -> torch.Tensor:
    """dt/dz . (logits - offsets) / positions per sample, in tensor ops: in float64, rounded once
    to the logits' dtype (the signed map's mean, ``LayerGradCam.map_means``; the ONNX export
    traces it)."""
    centred = logits.double() if offsets is None else logits.double() - offsets.double()
    coefficients = target_logit_gradient(target, logits, classes).double()
    return ((coefficients * centred).sum(1) / positions).to(logits.dtype)


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


class LayerGradCam:
    """Grad-CAM (Selvaraju et al. 2017) of ``layer`` in ``model`` for given per-sample classes.

    ``path="auto"`` takes the closed form when ``layer`` is followed only by global average pooling
    and a linear layer (found in a Sequential, declared by ``head``, or by a ``drip_head``
    attribute), else autograd. Unlike captum's ``LayerGradCam`` the ReLU is applied by default
    (``rectify=False``: the signed map) and classes are per sample. ``method`` selects a variant
    on the same activations and gradients: Grad-CAM++, XGrad-CAM, HiResCAM or LayerCAM.
    ``target`` selects what is differentiated for each sample's class y: z_y (``"class"``, the
    published Grad-CAM), the margin z_y - max_{j != y} z_j, or log softmax(z)_y (see the module's
    docstring).

    Example::

        cam = LayerGradCam(model, "features.relu3")
        result = cam(x, y)     # x: (B, C, H, W), y: (B,) -> result.maps: (B, h, w)
    """

    def __init__(
        self,
        model: nn.Module,
        layer: nn.Module | str,
        *,
        head: nn.Module | str | None = None,
        path: CamPath = "auto",
        method: CamMethod = "gradcam",
        target: CamTarget = "class",
        rectify: bool = True,
    ) -> None:
        if method not in CAM_METHODS:
            raise DripInputError(f"method: expected one of {CAM_METHODS}, got {method!r}")
        if target not in CAM_TARGETS:
            raise DripInputError(f"target: expected one of {CAM_TARGETS}, got {target!r}")
        if path not in ("auto", "closed_form", "piecewise", "autograd"):
            raise DripInputError(
                f"path: expected 'auto', 'closed_form', 'piecewise' or 'autograd', got {path!r}"
            )
        self.model = model
        self.layer, self.layer_name = resolve_layer(model, layer)
        self.method = method
        self.target = target
        self.rectify = rectify
        linear = resolve_layer(model, head)[0] if head is not None else None
        if linear is None and path in ("auto", "closed_form"):
            linear = find_gap_linear_head(model, self.layer)
        if linear is not None and not isinstance(linear, nn.Linear):
            raise DripModelError(f"head: expected an nn.Linear, got {type(linear).__name__}")
        if path == "closed_form" and linear is None:
            raise DripModelError(
                f"path='closed_form' needs layer {self.layer_name!r} to be followed only by global "
                "average pooling and an nn.Linear; pass head= or use path='autograd'"
            )
        self.head: nn.Linear | None = linear if path in ("auto", "closed_form") else None
        self._nonnegative = type(self.layer) in (nn.ReLU, nn.ReLU6)
        self._head_verified = False
        # (sample shape, |S|) of the closed form's last call: the layer's positions for that input.
        self._positions: tuple[tuple[int, ...], int] | None = None
        self._runs_children = _is_plain_sequential_child(model, self.layer)
        self.piecewise_head = (
            find_piecewise_linear_head(model, self.layer)
            if self.head is None and path in ("auto", "piecewise")
            else None
        )
        if path == "piecewise" and self.piecewise_head is None:
            raise DripModelError(
                f"path='piecewise' needs layer {self.layer_name!r} to be a child of a plain "
                "nn.Sequential followed only by Linear, ReLU, max or global average pooling, "
                "Flatten, Identity or Dropout layers, ending in a Linear; use path='autograd'"
            )
        if self.piecewise_head is not None:
            children = list(model)
            self._trunk = tuple(children[: children.index(self.layer) + 1])
            # Grad-CAM needs only each channel's gradient sum at the layer, XGrad-CAM only its
            # activation-weighted sum, and a max pool routes each pooled gradient to the position
            # whose value it took: both sums can be taken at the pool's output, so a pool right
            # after the layer needs no indices and no scatter.
            self._pool_sums = method in ("gradcam", "xgradcam") and type(self.piecewise_head[0]) in _MAX_POOLS
            # The map's sum as t(z) - t(z0) (``means_without_map``) needs a layer whose zero-sum
            # channels are zero everywhere, and, once a Linear has run, only Linear and ReLU steps.
            linear_at = next(i for i, m in enumerate(self.piecewise_head) if type(m) is nn.Linear)
            self._biases_propagate = self._nonnegative and all(
                type(m) in (nn.Linear, nn.ReLU, nn.Identity, nn.Dropout)
                for m in self.piecewise_head[linear_at:]
            )

    def _head_rows(
        self, weight: torch.Tensor, logits: torch.Tensor, classes: torch.Tensor, scale: float = 1.0
    ) -> torch.Tensor:
        """``scale`` (dt/dz) @ ``weight``: the target's gradient at the input of the last linear layer."""
        if self.target == "class":  # one row per sample: a gather, not a matrix product
            rows = weight.index_select(0, classes)
        elif self.target == "margin" and logits.numel() <= _PYTHON_MARGIN_LOGITS:
            return _margin_coefficients(logits, classes, scale, weight) @ weight
        else:
            rows = target_logit_gradient(self.target, logits, classes) @ weight
        return rows if scale == 1.0 else rows.mul_(scale)

    @property
    def means_without_map(self) -> bool:
        """Whether the signed map's mean (the ``net`` score) can be had without forming the map.

        * Closed form, Grad-CAM or XGrad-CAM: the mean is dt/dz . (z - b) / |S| (b: the head's
          biases). A channel's weight is (dt/dz) W[:, k] / |S| (XGrad-CAM's is that too, or 0
          where the channel sums to 0 and adds nothing to the mean either way), and
          sum_k W[c, k] mean(A_k) = z_c - b_c.
        * Piecewise head, XGrad-CAM, a ReLU layer: the map's sum is sum A dt/dA, the head's
          first-order term, and a piecewise-linear head is linear on the piece the sample is on:
          sum A dt/dA = t(z) - t(z0), with z0 the head's output for a zero layer output and its
          ReLUs held as they were: its biases pushed through the masked layers, a few small ops
          where the gradient took matrix products as large as the head's.
        """
        if self.rectify:
            return False
        if self.head is not None:
            return self.method in ("gradcam", "xgradcam")
        return self.piecewise_head is not None and self.method == "xgradcam" and self._biases_propagate

    def map_means(
        self, x: torch.Tensor, classes: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Means ``(B,)`` of the signed maps and the logits ``(B, C)``, without the map.

        Needs ``means_without_map``. The closed form's first call for an input shape runs the
        whole path once, which checks the head's premise and measures |S|; later calls run only
        the model, with no capture of the layer, no map and no reduction over positions: at batch
        1 those were a third of a small model's forward.
        """
        assert self.means_without_map
        if self.head is None:
            return self._piecewise_means(x, classes)
        if self._verified_for(x):
            logits = self._plain_logits(x).clone()  # an ordinary tensor, as the closed form hands back
        else:
            logits = self._closed_form(x, classes).logits
        assert self._positions is not None
        classes = self._classes(classes, logits)
        bias = self.head.bias
        return self._target_means(
            logits, classes, None if bias is None else bias.detach(), self._positions[1]
        ), logits

    def few_map_means(
        self, x: torch.Tensor, classes: list[int] | None
    ) -> tuple[list[float], torch.Tensor] | None:
        """``map_means`` of a few samples on a closed form already verified for their shape: the
        means as Python floats (to be rounded once, where they become a tensor) and the logits as
        an inference tensor (copy them before changing them in place or using them with autograd).

        The path of a device scoring its stream one sample at a time, where each tensor op cost a
        measurable share of a small model's forward. Needs ``means_without_map``; ``classes`` are
        checked here against the head's classes (None: each sample's predicted class). Returns
        None, having run nothing, where it does not apply (``map_means`` then runs, or says what is
        wrong): another head, an input shape the closed form has not verified, the ``"logprob"``
        target, a margin without rivals, classes out of range, or more logits than Python's route
        takes.
        """
        head = self.head
        if (
            head is None
            or not self._verified_for(x)
            or self.target == "logprob"
            or (self.target == "margin" and head.out_features < 2)
            or len(x) * head.out_features > _PYTHON_MARGIN_LOGITS
            or (classes and (min(classes) < 0 or max(classes) >= head.out_features))
        ):
            return None
        assert self._positions is not None
        logits = self._plain_logits(x)
        rows = logits.tolist()
        if classes is None:
            classes = [row.index(max(row)) for row in rows]  # argmax: the first on ties
        offsets = None if head.bias is None else [head.bias.tolist()] * len(rows)
        return _target_values(self.target, rows, classes, offsets, self._positions[1]), logits

    def _verified_for(self, x: torch.Tensor) -> bool:
        """Whether the closed form's head was verified and |S| measured for ``x``'s sample shape."""
        return self._head_verified and self._positions is not None and self._positions[0] == x.shape[1:]

    def _plain_logits(self, x: torch.Tensor) -> torch.Tensor:
        """The model's logits (an inference tensor), from a forward with nothing captured."""
        with torch.inference_mode():
            logits = self.model(x)
        self._check_logits(logits, x)
        return logits

    def _piecewise_means(
        self, x: torch.Tensor, classes: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if _calls_hooks(self.model, *self.piecewise_head):  # as in __call__: hooks need autograd
            result = self._autograd(x, classes)
            return result.maps.mean(tuple(range(1, result.maps.dim()))), result.logits
        with torch.inference_mode():
            activations, logits, steps = self._head_forward(x)
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
        return self._target_means(
            logits, classes, None if offsets is None else offsets.clone(), positions
        ), logits

    def _target_means(
        self, logits: torch.Tensor, classes: torch.Tensor, offsets: torch.Tensor | None, positions: int
    ) -> torch.Tensor:
        """The target's linear form of ``logits - offsets`` per sample, divided by ``positions``.

        In float64, rounded once to the logits' dtype, so that Python's route for a few samples
        and the tensors' route give the same bits: a sample's score must not depend on the route.
        """
        if self.target != "logprob" and logits.numel() <= _PYTHON_MARGIN_LOGITS:
            return _few_target_means(self.target, logits, classes, offsets, positions)
        return target_means(self.target, logits, classes, offsets, positions)

    @property
    def closed_form(self) -> bool:
        """Whether maps come from the closed form (no backward pass)."""
        return self.head is not None

    @property
    def path(self) -> str:
        """The path maps come from: "closed_form", "piecewise" or "autograd"."""
        if self.head is not None:
            return "closed_form"
        return "piecewise" if self.piecewise_head is not None else "autograd"

    def __call__(self, x: torch.Tensor, classes: torch.Tensor | None = None) -> CamResult:
        """Maps for ``x: (B, ...)`` and ``classes: (B,)`` (None: each sample's predicted class)."""
        if self.head is not None:
            return self._closed_form(x, classes)
        # Running the head by hand would skip hooks someone put on the model or the head since.
        if self.piecewise_head is not None and not _calls_hooks(self.model, *self.piecewise_head):
            return self._piecewise(x, classes)
        return self._autograd(x, classes)

    def _forward_capturing(self, x: torch.Tensor, replace: bool) -> tuple[torch.Tensor, torch.Tensor]:
        captured: list[torch.Tensor] = []

        def capture(output: object) -> torch.Tensor | None:
            self._check_layer_output(output)
            if captured:
                raise DripModelError(
                    f"layer {self.layer_name!r} ran more than once in one forward pass; "
                    "Grad-CAM needs a layer that runs once"
                )
            if not replace:
                captured.append(output)
                return None
            leaf = output.detach().requires_grad_(True)
            captured.append(leaf)
            # Record the graph from here on only; the clone keeps in-place ops after the layer
            # (e.g. ReLU(inplace=True)) off the leaf.
            torch.set_grad_enabled(True)
            return leaf.clone()

        # A hook puts the layer on torch's slow call path, measured 13-23 us a call at batch 1
        # (13% of a small model's forward). A plain Sequential is run child by child instead,
        # exactly as its forward does, unless calling it would run hooks the loop would skip.
        if self._runs_children and not _calls_hooks(self.model):
            logits = self._run_children(x, capture)
        else:
            with _one_call_hook(self.layer, lambda module, inputs, output: capture(output)):
                logits = self.model(x)
        if not captured:
            raise DripModelError(f"layer {self.layer_name!r} did not run in the model's forward")
        self._check_logits(logits, x)
        return captured[0], logits

    def _check_layer_output(self, output: object) -> None:
        if not isinstance(output, torch.Tensor) or output.dim() < 2:
            raise DripModelError(
                f"layer {self.layer_name!r} must output a tensor (B, K, ...), got "
                f"{type(output).__name__}{tuple(getattr(output, 'shape', ()))}"
            )

    @staticmethod
    def _check_logits(logits: object, x: torch.Tensor) -> None:
        if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or logits.shape[0] != x.shape[0]:
            raise DripModelError(
                f"model: expected logits of shape (B={x.shape[0]}, C), got "
                f"{type(logits).__name__}{tuple(getattr(logits, 'shape', ()))}"
            )

    def _run_children(self, x: torch.Tensor, capture: Callable[[object], torch.Tensor | None]) -> object:
        """``nn.Sequential.forward``, with ``capture`` applied to the layer's output on the way."""
        output: object = x
        for child in self.model:
            output = child(output)
            if child is self.layer:
                replacement = capture(output)
                if replacement is not None:
                    output = replacement
        return output

    def _classes(self, classes: torch.Tensor | None, logits: torch.Tensor) -> torch.Tensor:
        if classes is None:
            return logits.detach().argmax(1)
        if classes.shape != (logits.shape[0],):
            raise DripInputError(f"classes: expected shape ({logits.shape[0]},), got {tuple(classes.shape)}")
        if classes.dtype != torch.int64 or classes.device != logits.device:
            classes = classes.to(device=logits.device, dtype=torch.int64)
        if classes.numel():
            low, high = int_range(classes)
            if low < 0 or high >= logits.shape[1]:
                raise DripInputError(
                    f"classes: expected values in [0, {logits.shape[1]}), got [{low}, {high}]"
                )
        return classes

    def _closed_form(self, x: torch.Tensor, classes: torch.Tensor | None) -> CamResult:
        assert self.head is not None
        # Inference mode, not no_grad: nothing here needs autograd, and it is what plain inference
        # runs under (1-3% faster than no_grad at batch 1, measured).
        with torch.inference_mode():
            activations, logits = self._forward_capturing(x, replace=False)
            if not self._head_verified:
                self._verify_head(activations, logits)
            positions = math.prod(activations.shape[2:])
            self._positions = (tuple(x.shape[1:]), positions)
            classes = self._classes(classes, logits)
            # dz/dA is the head's row / |S| at every position.
            weights = self._head_rows(self.head.weight, logits, classes, 1.0 / positions)
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
        assert self.head is not None
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

    def _head_forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[tuple[str, object]]]:
        """The layer's output, the logits and, per head step, what its backward needs: the model's
        forward run child by child (the scorer runs it under ``torch.inference_mode``; the ONNX
        export traces it)."""
        assert self.piecewise_head is not None
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

    def _piecewise(self, x: torch.Tensor, classes: torch.Tensor | None) -> CamResult:
        """The head run by hand, then its Jacobian's row for each class applied by hand."""
        with torch.inference_mode():
            activations, logits, steps = self._head_forward(x)
            classes = self._classes(classes, logits)
            # The last step is a Linear of a (B, features) input: dt/dz through it is the first gradient.
            gradients = self._head_rows(steps[-1][1].weight, logits, classes)
            for kind, saved in reversed(steps[:-1]):
                if kind == "pool_sums":
                    weights = self._pooled_weights(gradients, saved, activations)
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

    def _pooled_weights(
        self, gradients: torch.Tensor, pooled: torch.Tensor, activations: torch.Tensor
    ) -> torch.Tensor:
        """Channel weights ``(B, K)`` from the gradient at the output of the max pool right after
        the layer (``pooled`` is that output): the pool sends each gradient to its argmax."""
        if self.method == "gradcam":
            return gradients.sum(tuple(range(2, gradients.dim()))).div_(math.prod(activations.shape[2:]))
        return _xgradcam_weights((gradients * pooled).sum(tuple(range(2, pooled.dim()))), activations)

    def _autograd(self, x: torch.Tensor, classes: torch.Tensor | None) -> CamResult:
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
