"""Grad-CAM of one layer, batched, for per-sample classes, on 1-D and 2-D layers: three routes, one result.

``LayerGradCam`` (``layer.py``) chooses a route once, from what follows the layer
(``heads.py``), and says which in ``path``:

* **closed form** (``closed_form.py``), when the layer is followed only by global average pooling
  and a linear layer: dz_c/dA_k = W[c, k] / |S| at every position, so no backward pass at all;
* **piecewise linear** (``piecewise.py``), when the layer is a child of a plain ``nn.Sequential``
  followed only by ``Linear``, ``ReLU``, max pooling, global average pooling, ``Flatten`` and
  pass-through layers (LeNet's head): the head run and differentiated by hand, no autograd;
* **autograd** (``autograd.py``), for any other head: ``torch.autograd.grad`` of the selected
  logits with respect to the layer's output only.

Every route captures the layer's output the same way (``route.py``: hooks live for one call),
differentiates the same targets (``targets.py``: class, margin, log-prob, through dt/dz) and turns
activations and gradients into a map the same way (``variants.py``: Grad-CAM, Grad-CAM++,
XGrad-CAM, HiResCAM, LayerCAM). The model's train/eval mode and its ``requires_grad`` flags are
left as found; calls work inside ``torch.no_grad()`` and ``torch.inference_mode()``. Maps are raw
(ReLU'd, never min-max normalised): their magnitude is what makes scores comparable across
samples. ``rectify=False`` keeps the map signed (no ReLU): where the layer holds evidence against
the target the map is negative, which a score of net evidence needs; the mean of that signed map
is, for Grad-CAM and XGrad-CAM on the closed form and XGrad-CAM on a piecewise head, a function of
the logits and the head's biases (``map_means``), computed without the map.
"""

from .heads import find_gap_linear_head, find_piecewise_linear_head, resolve_layer
from .layer import CamPath, LayerGradCam
from .route import CamResult
from .targets import CAM_TARGETS, CamTarget, target_logit_gradient, target_means
from .targets import _margin_coefficients as _margin_coefficients
from .variants import CAM_METHODS, CamMethod

__all__ = [
    "CAM_METHODS",
    "CAM_TARGETS",
    "CamMethod",
    "CamPath",
    "CamResult",
    "CamTarget",
    "LayerGradCam",
    "find_gap_linear_head",
    "find_piecewise_linear_head",
    "resolve_layer",
    "target_logit_gradient",
    "target_means",
]
