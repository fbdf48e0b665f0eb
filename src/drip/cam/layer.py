"""``LayerGradCam``: the entry point; checks its arguments, chooses a route once, hands it each call."""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from ..errors import DripInputError, DripModelError
from .autograd import Autograd
from .closed_form import ClosedForm
from .heads import find_gap_linear_head, find_piecewise_linear_head, resolve_layer
from .piecewise import Piecewise
from .route import CamResult
from .targets import CAM_TARGETS, CamTarget
from .variants import CAM_METHODS, CamMethod

CamPath = Literal["auto", "closed_form", "piecewise", "autograd"]


class LayerGradCam:
    """Grad-CAM (Selvaraju et al. 2017) of ``layer`` in ``model`` for given per-sample classes.

    ``path="auto"`` takes the closed form when ``layer`` is followed only by global average pooling
    and a linear layer (found in a Sequential, declared by ``head``, or by a ``drip_head``
    attribute), else the piecewise-linear head when the layer is a child of a plain Sequential
    followed only by such layers, else autograd; ``path`` then names the route taken. Unlike
    captum's ``LayerGradCam`` the ReLU is applied by default (``rectify=False``: the signed map)
    and classes are per sample. ``method`` selects a variant on the same activations and
    gradients: Grad-CAM++, XGrad-CAM, HiResCAM or LayerCAM. ``target`` selects what is
    differentiated for each sample's class y: z_y (``"class"``, the published Grad-CAM), the
    margin z_y - max_{j != y} z_j, or log softmax(z)_y (see ``drip.cam.targets``).

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
        self.route = self._choose_route(head, path)
        # What the route found after the layer, read by the scorer and the ONNX export.
        self.head: nn.Linear | None = self.route.head if isinstance(self.route, ClosedForm) else None
        self.piecewise_head: tuple[nn.Module, ...] | None = (
            self.route.piecewise_head if isinstance(self.route, Piecewise) else None
        )

    def _choose_route(self, head: nn.Module | str | None, path: CamPath) -> ClosedForm | Piecewise | Autograd:
        settings = (self.model, self.layer, self.layer_name, self.method, self.target, self.rectify)
        linear = resolve_layer(self.model, head)[0] if head is not None else None
        if linear is None and path in ("auto", "closed_form"):
            linear = find_gap_linear_head(self.model, self.layer)
        if linear is not None and not isinstance(linear, nn.Linear):
            raise DripModelError(f"head: expected an nn.Linear, got {type(linear).__name__}")
        if path == "closed_form" and linear is None:
            raise DripModelError(
                f"path='closed_form' needs layer {self.layer_name!r} to be followed only by global "
                "average pooling and an nn.Linear; pass head= or use path='autograd'"
            )
        if linear is not None and path in ("auto", "closed_form"):
            return ClosedForm(*settings, linear)
        piecewise_head = (
            find_piecewise_linear_head(self.model, self.layer) if path in ("auto", "piecewise") else None
        )
        if path == "piecewise" and piecewise_head is None:
            raise DripModelError(
                f"path='piecewise' needs layer {self.layer_name!r} to be a child of a plain "
                "nn.Sequential followed only by Linear, ReLU, max or global average pooling, "
                "Flatten, Identity or Dropout layers, ending in a Linear; use path='autograd'"
            )
        if piecewise_head is not None:
            return Piecewise(*settings, piecewise_head)
        return Autograd(*settings)

    @property
    def path(self) -> str:
        """The route maps come from: "closed_form", "piecewise" or "autograd" (a piecewise call
        that finds hooks on the model or its head takes autograd for that call)."""
        return self.route.path

    @property
    def closed_form(self) -> bool:
        """Whether maps come from the closed form (no backward pass)."""
        return self.head is not None

    @property
    def means_without_map(self) -> bool:
        """Whether the signed map's mean (the ``net`` score) can be had without forming the map:
        on the closed form for Grad-CAM and XGrad-CAM, on a piecewise head for XGrad-CAM of a
        ReLU layer (``ClosedForm.means_without_map`` and ``Piecewise.means_without_map`` say why)."""
        return self.route.means_without_map

    def __call__(self, x: torch.Tensor, classes: torch.Tensor | None = None) -> CamResult:
        """Maps for ``x: (B, ...)`` and ``classes: (B,)`` (None: each sample's predicted class)."""
        return self.route(x, classes)

    def map_means(
        self, x: torch.Tensor, classes: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Means ``(B,)`` of the signed maps and the logits ``(B, C)``, without the map.

        Needs ``means_without_map``. The closed form's first call for an input shape runs the
        whole route once, which checks the head's premise and measures |S|; later calls run only
        the model, with no capture of the layer, no map and no reduction over positions: at batch
        1 those were a third of a small model's forward.
        """
        route = self.route
        assert isinstance(route, (ClosedForm, Piecewise)) and route.means_without_map
        return route.map_means(x, classes)

    def few_map_means(
        self, x: torch.Tensor, classes: list[int] | None
    ) -> tuple[list[float], torch.Tensor] | None:
        """``map_means`` of a few samples on a closed form already verified for their shape: the
        means as Python floats (to be rounded once, where they become a tensor) and the logits as
        an inference tensor (copy them before changing them in place or using them with autograd).

        The route of a device scoring its stream one sample at a time, where each tensor op cost a
        measurable share of a small model's forward. Needs ``means_without_map``; ``classes`` are
        checked here against the head's classes (None: each sample's predicted class). Returns
        None, having run nothing, where it does not apply (``map_means`` then runs, or says what is
        wrong): another route, an input shape the closed form has not verified, the ``"logprob"``
        target, a margin without rivals, classes out of range, or more logits than Python's route
        takes.
        """
        route = self.route
        return route.few_map_means(x, classes) if type(route) is ClosedForm else None
