"""The DRIP score: a statistic of the labelled class's Grad-CAM map, and the scorer that computes it.

Direction, defined here once: a **high** score means the model already sees strong evidence for
the label (the sample is redundant, safe to drop); a score near zero means weak or contrary
evidence (informative, or mislabelled / corrupted).
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from .cam import CamMethod, CamPath, LayerGradCam
from .errors import DripError, DripInputError, DripModelError
from .validation import all_finite, check_inputs, check_labels


def score_mean(maps: torch.Tensor) -> torch.Tensor:
    """Mean heat per position (the default DRIP score); 0 for an empty (all-zero) map."""
    return maps.mean(tuple(range(1, maps.dim())))  # one op, not flatten + mean: batch 1 counts them


def score_max(maps: torch.Tensor) -> torch.Tensor:
    """Peak heat; 0 for an empty map."""
    return maps.flatten(1).amax(1)


def score_sum(maps: torch.Tensor) -> torch.Tensor:
    """Total heat: the mean times the number of positions."""
    return maps.flatten(1).sum(1)


def score_entropy(maps: torch.Tensor) -> torch.Tensor:
    """Shannon entropy (nats) of the map normalised to a distribution; 0 for an empty map.

    Low entropy means the evidence is concentrated in few positions. An all-zero map has no
    distribution; it gets 0, the same as a map with all heat in one place.
    """
    flat = maps.flatten(1)
    total = flat.sum(1, keepdim=True)
    probs = flat / torch.where(total > 0, total, torch.ones_like(total))
    return -(probs * torch.log(probs.clamp_min(torch.finfo(probs.dtype).tiny))).sum(1)


def score_coverage(maps: torch.Tensor) -> torch.Tensor:
    """Fraction of positions hotter than half the map's maximum; 0 for an empty map."""
    flat = maps.flatten(1)
    peak = flat.amax(1, keepdim=True)
    hot = (flat > 0.5 * peak) & (peak > 0)
    return hot.to(flat.dtype).mean(1)


STATISTICS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    # The mean of the signed map (no ReLU): evidence for the target minus evidence against.
    "net": score_mean,
    "mean": score_mean,
    "max": score_max,
    "sum": score_sum,
    "entropy": score_entropy,
    "coverage": score_coverage,
}

# Statistics of the map before Grad-CAM's ReLU; every other statistic reduces the ReLU'd map.
SIGNED_STATISTICS: frozenset[str] = frozenset({"net"})

Target = Literal["label", "predicted", "margin", "logprob"]
TARGETS: tuple[str, ...] = ("label", "predicted", "margin", "logprob")
# The product's score (docs/how-it-works.md, "Which score"): the net evidence (the signed map's mean) of the
# margin target with XGrad-CAM weights, which equal Grad-CAM's for GAP + linear heads.
DEFAULT_STATISTIC = "net"
DEFAULT_TARGET: Target = "margin"
DEFAULT_CAM: CamMethod = "xgradcam"
# Up to this many samples, a batch already as ``prepare`` returns it is checked by
# ``_steady_labels``, which reads the labels into Python (as ``int_range`` does up to 32 values:
# beyond, one reduction is cheaper than the copy).
_STEADY_BATCH = 32
# What each scorer target differentiates (drip.cam's target) and for which class.
_CAM_TARGET = {"label": "class", "predicted": "class", "margin": "margin", "logprob": "logprob"}


@dataclass(frozen=True)
class ScoredBatch:
    """One scored batch: validated ``x``, labels ``y: (B,)``, ``scores: (B,)``, ``logits: (B, C)``
    and ``maps: (B, *S)``; the last two computed on first access where the scores did not need
    them."""

    x: torch.Tensor
    y: torch.Tensor
    model_logits: torch.Tensor = field(repr=False)
    scores: torch.Tensor
    compute_maps: Callable[[], torch.Tensor] = field(repr=False, compare=False)

    @functools.cached_property
    def logits(self) -> torch.Tensor:
        """The model's logits, an ordinary tensor (``model_logits`` may be an inference tensor,
        copied here on first access: a filter deciding on scores never reads them)."""
        return self.model_logits.clone() if self.model_logits.is_inference() else self.model_logits

    @functools.cached_property
    def maps(self) -> torch.Tensor:
        """The class-activation maps of the scored targets."""
        return self.compute_maps()


class DripScorer:
    """DRIP scores of labelled samples: ``statistic(class-activation map of the target)``, of the
    signed map for ``net`` (the default), of the ReLU'd map for every other statistic.

    ``layer`` is a module inside ``model`` or its dotted name; ``None`` takes the model's
    ``drip_layer`` attribute (every model in ``drip.models`` names its post-activation target).
    Maps are taken at the layer's own resolution, raw (no min-max normalisation, no upsampling).
    The scorer never changes the model's mode or ``requires_grad`` flags: put the model in
    ``eval()`` mode yourself (a model left in training mode would update BatchNorm statistics
    while scoring; the scorer warns once).

    The product's default score is the mean of the signed XGrad-CAM map of the **margin** target
    z_y - max_{j != y} z_j: how far the label wins over its strongest rival. The paper's score is
    ``statistic="mean", target="label", cam="gradcam"``. What the scores measure, for a
    global-average-pooling + linear head (dz_c/dA_k = W[c, k] / |S|, where XGrad-CAM's weights
    equal Grad-CAM's): the map before the ReLU has mean (t - b_t) / |S|, the ``net`` score, with t
    the target's logit form and b_t its biases, so the ``mean`` score is (t - b_t) / |S| +
    mean(ReLU(-M)):

    * ``label``: t = z_y, the labelled logit (close to a logit-confidence score);
    * ``margin``: t = z_y - z_r with r the strongest rival (a confusable sample scores low even
      when its z_y is large);
    * ``logprob``: t = z_y - sum_j softmax_j z_j with the softmax held fixed: close to zero both
      for samples the model is sure of and for ones it gets wrong, so under DRIP's direction
      (high = redundant) it ranks by the loss the wrong way round; kept for comparison.

    For other piecewise-linear heads (flatten + dense layers, LeNet's) XGrad-CAM keeps this
    identity (its weights average the gradient weighted by the activation: the map's sum is the
    head's first-order term), while Grad-CAM's plain gradient average loses it.

    Because of these identities the default ``net`` score needs no map on either kind of head
    (``LayerGradCam.means_without_map``): it is read off the logits (and, for a piecewise head,
    the head's biases pushed through its active ReLUs), so scoring costs about one plain forward;
    ``heatmaps`` and ``ScoredBatch.maps`` still form the map.

    Example::

        scorer = DripScorer(model, "features.5")
        scores = scorer(x, y)            # x: (B, 1, 8, 8), y: (B,) -> (B,)
        paper = DripScorer(model, "features.5", target="label", cam="gradcam")
        maps = scorer.heatmaps(x, y)     # (B, 4, 4): the layer's spatial shape
    """

    def __init__(
        self,
        model: nn.Module,
        layer: nn.Module | str | None = None,
        statistic: str = DEFAULT_STATISTIC,
        target: Target = DEFAULT_TARGET,
        *,
        head: nn.Module | str | None = None,
        path: CamPath = "auto",
        cam: CamMethod = DEFAULT_CAM,
        input_shape: Sequence[int] | None = None,
    ) -> None:
        if statistic not in STATISTICS:
            raise DripInputError(f"statistic: expected one of {sorted(STATISTICS)}, got {statistic!r}")
        if target not in TARGETS:
            raise DripInputError(f"target: expected one of {TARGETS}, got {target!r}")
        if layer is None:
            layer = getattr(model, "drip_layer", None)
            if layer is None:
                raise DripModelError(
                    f"layer: {type(model).__name__} names no target layer (no drip_layer "
                    "attribute); pass layer= (a post-activation module or its dotted name)"
                )
        self.model = model
        self.statistic = statistic
        self.target = target
        self.cam = LayerGradCam(
            model,
            layer,
            head=head,
            path=path,
            method=cam,
            target=_CAM_TARGET[target],
            rectify=statistic not in SIGNED_STATISTICS,
        )
        # Decided once: the statistic, the head's kind and the map's variant are fixed.
        self._scores_without_map = statistic == "net" and self.cam.means_without_map
        shape = input_shape if input_shape is not None else getattr(model, "input_shape", None)
        self.input_shape: tuple[int, ...] | None = tuple(shape) if shape is not None else None
        self._warned_training = False
        # The module and name of the model's first parameter, read on each call (so model.to() and
        # load_state_dict(assign=True) are followed): walking model.parameters() took 5-9 us a call.
        self._first_parameter = next(
            ((m, name) for m in model.modules() for name, _ in m.named_parameters(recurse=False)), None
        )

    @property
    def layer_name(self) -> str:
        """Dotted name of the target layer inside the model."""
        return self.cam.layer_name

    @property
    def cam_method(self) -> str:
        """The map's variant: "gradcam", "xgradcam", ... (what thresholds record as ``cam``)."""
        return self.cam.method

    @property
    def num_classes(self) -> int | None:
        """Number of classes, when the model declares it (or its linear head shows it)."""
        declared = getattr(self.model, "num_classes", None)
        if declared is not None:
            return int(declared)
        return self.cam.head.out_features if self.cam.head is not None else None

    def _parameter(self) -> torch.Tensor | None:
        if self._first_parameter is None:
            return None
        module, name = self._first_parameter
        # The registry first: getattr on a module runs nn.Module.__getattr__, in Python.
        parameter = module._parameters.get(name)
        return parameter if parameter is not None else getattr(module, name, None)

    def prepare(self, x: Any, y: Any, num_classes: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Validated ``x: (B, ...)`` on the model's device and dtype, and labels ``y: (B,)`` in
        ``[0, num_classes)`` (default: the model's class count, when it declares one)."""
        parameter = self._parameter()
        dtype = parameter.dtype if parameter is not None else torch.float32
        device = parameter.device if parameter is not None else torch.device("cpu")
        inputs = check_inputs(x, sample_shape=self.input_shape, dtype=dtype, device=device)
        bound = num_classes if num_classes is not None else self.num_classes
        labels = check_labels(y, count=inputs.shape[0], num_classes=bound, device=device)
        return inputs, labels

    def score_batch(self, x: Any, y: Any, *, num_classes: int | None = None) -> ScoredBatch:
        """Validate a batch (labels as in ``prepare``), then compute its logits and scores in one
        pass. The maps come from that pass too, except where the score is a function of the logits
        (the default ``net`` statistic on a GAP + linear head): then ``maps`` runs a second pass
        when first read, and scoring costs about one plain forward."""
        return self._score_batch(x, y, num_classes, maps_needed=False)

    def _score_batch(self, x: Any, y: Any, num_classes: int | None, *, maps_needed: bool) -> ScoredBatch:
        map_free = self._scores_without_map and not maps_needed
        steady = self._steady_labels(x, y, num_classes) if map_free else None
        if steady is None:
            x, y = self.prepare(x, y, num_classes)
            self._warn_if_training()
        classes = None if self.target == "predicted" else y
        try:
            few = None if steady is None else self.cam.few_map_means(x, None if classes is None else steady)
            if few is not None:
                values, logits = few
                scores = logits.new_tensor(values)
                maps = functools.partial(_maps, self.cam, x, classes)
            elif map_free:
                scores, logits = self.cam.map_means(x, classes)
                maps = functools.partial(_maps, self.cam, x, classes)
            else:
                result = self.cam(x, classes)
                scores, logits = STATISTICS[self.statistic](result.maps), result.logits
                maps = functools.partial(getattr, result, "maps")
        except DripError:
            raise
        except (RuntimeError, ValueError, TypeError, IndexError) as err:
            raise DripInputError(
                f"x: expected input the model accepts, but its forward failed on shape "
                f"{tuple(x.shape)}: {err}"
            ) from None
        if not all_finite(scores):
            bad = (~torch.isfinite(scores)).nonzero().flatten()[:10].tolist()
            raise DripInputError(
                f"x: expected inputs the model scores finitely, but it overflowed on samples {bad} "
                f"(as {x.dtype}): non-finite score"
            )
        return ScoredBatch(x, y, logits, scores, maps)

    def _steady_labels(self, x: Any, y: Any, num_classes: int | None) -> list[int] | None:
        """The labels as a list where ``x`` and ``y`` are already what ``prepare`` returns, else
        None (``prepare`` then converts them or says what is wrong).

        A device scoring its stream hands over a few samples at a time as tensors of the model's
        dtype and device, and at batch 1 ``prepare``'s general checks were a tenth of a small
        model's forward: here they are a few attribute reads, one reduction (the inputs'
        finiteness) and the labels' copy to Python, which the score needs anyway.
        """
        parameter = self._parameter()
        if (
            type(x) is not torch.Tensor
            or type(y) is not torch.Tensor
            or parameter is None
            or x.is_nested
            or x.layout is not torch.strided
            or y.layout is not torch.strided
            or x.dtype is not parameter.dtype
            or y.dtype is not torch.int64
            or self.model.training
        ):
            return None
        shape = x.shape
        if (
            y.shape != shape[:1]
            or not 0 < shape[0] <= _STEADY_BATCH
            or (self.input_shape is not None and shape[1:] != self.input_shape)
            # Each .device builds an object (2 us a call at batch 1, measured): CPU is a flag.
            or not (x.is_cpu and y.is_cpu if parameter.is_cpu else x.device == parameter.device == y.device)
        ):
            return None
        labels = y.tolist()
        bound = num_classes if num_classes is not None else self.num_classes
        if min(labels) < 0 or (bound is not None and max(labels) >= bound):
            return None
        return labels if all_finite(x) else None

    def _warn_if_training(self) -> None:
        if self.model.training and not self._warned_training:
            warnings.warn(
                "DripScorer: the model is in training mode; scores of a model in eval() mode are "
                "what thresholds are calibrated on",
                stacklevel=4,
            )
            self._warned_training = True

    def heatmaps(self, x: Any, y: Any) -> torch.Tensor:
        """Raw Grad-CAM maps ``(B, *S)`` of the target class at the layer's resolution."""
        return self._score_batch(x, y, None, maps_needed=True).maps

    def __call__(self, x: Any, y: Any) -> torch.Tensor:
        """DRIP scores ``(B,)`` of ``x: (B, ...)`` with labels ``y: (B,)``; high = redundant."""
        return self._score_batch(x, y, None, maps_needed=False).scores


def _maps(cam: LayerGradCam, x: torch.Tensor, classes: torch.Tensor | None) -> torch.Tensor:
    return cam(x, classes).maps


def score_in_batches(
    scorer: DripScorer, x: torch.Tensor, y: torch.Tensor, batch_size: int = 256
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores ``(N,)`` and logits ``(N, C)`` of a whole data set, a batch at a time."""
    scores, logits = [], []
    for start in range(0, len(x), batch_size):
        batch = scorer.score_batch(x[start : start + batch_size], y[start : start + batch_size])
        scores.append(batch.scores.cpu())
        logits.append(batch.logits.cpu())
    if not scores:
        return torch.empty(0), torch.empty(0, 0)
    return torch.cat(scores), torch.cat(logits)
