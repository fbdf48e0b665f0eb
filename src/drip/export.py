"""The device path as one ONNX graph: inputs ``x`` and ``label``, outputs ``logits``, ``score``, ``keep``.

``export_onnx`` traces a graph that runs the model, takes the target layer's activations, computes
the Grad-CAM map of the scorer's target the way ``LayerGradCam`` does, reduces it with the
scorer's statistic and applies the per-class bands of the thresholds, all inside the graph, so a
device with onnxruntime (or any ONNX runtime) and no PyTorch decides keep/drop in one call:

* **closed form** (the layer followed only by global average pooling and a linear head): the
  forward pass, dt/dz from the logits, one product with the head's weights, the map and the
  statistic: a few ops beyond plain inference. The default score needs not even those: it is
  read off the logits by the scorer's own tensor route (``cam.target_means``), in float64, with no
  layer captured and no map;
* **piecewise linear** (LeNet-like plain ``nn.Sequential`` heads of Linear, ReLU, max and global
  average pooling, Flatten): the head's gradient is written out as explicit ops, the ReLU masks
  and the max pools' argmax indices taken from the forward, as in ``drip.cam.piecewise``;
* heads that only autograd can differentiate are refused with a ``DripModelError`` naming why.

``int8=True`` quantises the float graph statically with onnxruntime's tools, calibrated on D0
samples: convolutions and linear layers become int8 (per-channel weight scales), except the first
convolution and the layer computing the logits; the Grad-CAM combination, the statistic and the
band comparison stay in float, and each class's systematic int8 shift of the score, measured on
the calibration samples, is subtracted inside the graph (``score_offset``). The file carries, as
ONNX metadata, the thresholds, the fingerprint of the torch model it came from and what it
computes, so that ``drip.onnx_scorer.OnnxScorer`` can refuse thresholds meant for another model.

Band edges are stored as float32 rounded inwards (low up, high down): for a float32 score s,
``low32 <= s <= high32`` exactly when ``low <= s <= high`` in float64, so the graph's ``keep``
equals ``Thresholds.keep`` on the graph's own scores, bit for bit.

The graph is built by the TorchScript-based ``torch.onnx.export(dynamo=False)``: it needs neither
onnxscript nor a network, keeps the batch axis dynamic, and took 0.1-0.5 s per model here where
the torch.export-based exporter took 6-14 s.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .atomic import write_atomically
from .cam import target_logit_gradient, target_means
from .cam.closed_form import ClosedForm
from .cam.piecewise import Piecewise
from .cam.variants import _combine
from .errors import DripError, DripInputError, DripModelError, DripModelMismatchError
from .onnx_scorer import FORMAT, VERSION, session
from .score import STATISTICS, DripScorer
from .thresholds import Thresholds, model_fingerprint

INPUTS = ("x", "label")
OUTPUTS = ("logits", "score", "keep")
OPSET = 17
# Scores of the float graph and DripScorer's must agree this closely, else the export is refused.
AGREEMENT = 1e-4
# The graph's per-class score correction (int8: the mean int8-minus-float score on D0).
SCORE_OFFSET = "score_offset"
# A class with fewer calibration samples than this takes the pooled mean as its offset.
OFFSET_MIN_SAMPLES = 10


@dataclass(frozen=True)
class ExportResult:
    """What ``export_onnx`` wrote: the file, its size, the float graph's size, and how it scores."""

    path: Path
    size_bytes: int
    float_size_bytes: int
    int8: bool
    cam_path: str

    @property
    def compression(self) -> float:
        """Float graph bytes / written bytes (1.0 for a float export)."""
        return self.float_size_bytes / self.size_bytes


def band_edges(thresholds: Thresholds) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class ``(low, high)`` as float32 rounded inwards: exact on float32 scores."""
    with np.errstate(over="ignore"):
        low = np.array(thresholds.low, dtype=np.float64).astype(np.float32)
        high = np.array(thresholds.high, dtype=np.float64).astype(np.float32)
    low = np.where(low < np.array(thresholds.low), np.nextafter(low, np.float32(np.inf)), low)
    high = np.where(high > np.array(thresholds.high), np.nextafter(high, np.float32(-np.inf)), high)
    return torch.from_numpy(low.astype(np.float32)), torch.from_numpy(high.astype(np.float32))


class DecisionGraph(nn.Module):
    """``forward(x, label) -> (logits, score, keep)``: what the exported graph computes.

    Written for tracing: every shape it uses but the batch is fixed by the model, and the batch
    only ever flows through tensor ops. Run eagerly, it is the reference of the ONNX graph.
    """

    def __init__(self, scorer: DripScorer, thresholds: Thresholds) -> None:
        super().__init__()
        cam = scorer.cam
        if cam.head is None and cam.piecewise_head is None:
            raise DripModelError(_autograd_only(scorer))
        self.model = scorer.model
        # The LayerGradCam, not its modules: they are the model's, registered once through it.
        self.cam = cam
        self.predicted = scorer.target == "predicted"
        self.statistic = STATISTICS[scorer.statistic]
        # The default score on a GAP + linear head is a function of the logits, as in the scorer;
        # |S| is the scorer's, measured on its first call for the traced input shape.
        self.map_free = cam.head is not None and scorer._scores_without_map
        low, high = band_edges(thresholds)
        self.register_buffer("low", low)
        self.register_buffer("high", high)
        # Zero in the float graph (x - 0 is exact); the int8 export writes its measured bias here.
        self.register_buffer(SCORE_OFFSET, torch.zeros(thresholds.num_classes))
        # torch.onnx.export restores the mode of the module it is given, recursively: a graph in
        # the default training mode would leave the user's model in training mode afterwards.
        self.eval()

    def forward(self, x: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, ...]:
        logits, score = self._scores(x, label)
        score = score - self.score_offset.index_select(0, label)
        keep = (score >= self.low.index_select(0, label)) & (score <= self.high.index_select(0, label))
        return logits, score, keep

    def _scores(self, x: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The logits and the scorer's score, before the int8 offset."""
        cam = self.cam
        if self.map_free:  # no capture, no map: the scorer's own tensor route
            route = cam.route
            assert isinstance(route, ClosedForm) and route.positions is not None
            logits = self.model(x)
            classes = logits.argmax(1) if self.predicted else label
            return logits, target_means(cam.target, logits, classes, route.head.bias, route.positions[1])
        if cam.head is not None:
            activations, logits = self._capture(x)
            classes = logits.argmax(1) if self.predicted else label
            weights = self._head_rows(cam.head.weight, logits, classes)
            spatial = activations.dim() - 2
            gradients = _broadcastable(weights, spatial) / math.prod(activations.shape[2:])
        else:
            activations, logits, gradients = self._piecewise(x, label)
        return logits, self.statistic(_combine(cam.method, activations, gradients, cam.rectify))

    def _head_rows(self, weight: torch.Tensor, logits: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """dt/dz @ ``weight`` (``drip.cam.targets._head_rows``)."""
        if self.cam.target == "class":
            return weight.index_select(0, classes)
        return target_logit_gradient(self.cam.target, logits, classes) @ weight

    def _capture(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The layer's output and the logits, from one forward of the whole model."""
        captured: list[torch.Tensor] = []
        handle = self.cam.layer.register_forward_hook(lambda module, inputs, output: captured.append(output))
        try:
            logits = self.model(x)
        finally:
            handle.remove()
        if len(captured) != 1:
            raise DripModelError(
                f"the target layer ran {len(captured)} times in one forward pass; Grad-CAM needs a "
                "layer that runs once"
            )
        return captured[0], logits

    def _piecewise(self, x: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Activations, logits and the target's gradient at the layer, as explicit ops: the
        scorer's own head forward (``Piecewise.head_forward``), its backward written with
        ops every ONNX runtime has (a ReLU's mask as a product, the scatter out of place)."""
        route = self.cam.route
        assert isinstance(route, Piecewise)
        activations, logits, steps = route.head_forward(x)
        classes = logits.argmax(1) if self.predicted else label
        gradients = self._head_rows(steps[-1][1].weight, logits, classes)
        spatial = activations.dim() - 2
        for kind, saved in reversed(steps[:-1]):
            if kind == "pool_sums":
                # Channel weights from the max pool's output (``Piecewise.pooled_weights``),
                # as a gradient constant over positions, which both Grad-CAM and XGrad-CAM turn
                # back into those weights.
                weights = route.pooled_weights(gradients, saved, activations)
                return activations, logits, _broadcastable(weights, spatial)
            if kind == "linear":
                gradients = gradients @ saved.weight
            elif kind == "relu":
                gradients = gradients * (saved > 0).to(gradients.dtype)
            elif kind == "reshape":
                gradients = gradients.reshape(-1, *saved[1:])
            elif kind == "spread":
                positions = math.prod(saved[2:])
                gradients = _broadcastable(gradients.flatten(1) / positions, len(saved) - 2)
                gradients = gradients.expand(-1, *saved[1:])
            else:
                indices, shape = saved
                flat = torch.zeros_like(indices.flatten(2)[:, :, :1]).to(gradients.dtype)
                flat = flat.expand(-1, -1, math.prod(shape[2:])).contiguous()
                flat = flat.scatter_add(2, indices.flatten(2), gradients.flatten(2))
                gradients = flat.reshape(-1, *shape[1:])
        return activations, logits, gradients


def _broadcastable(weights: torch.Tensor, spatial: int) -> torch.Tensor:
    """``weights: (B, K)`` as ``(B, K, 1, ...)`` with ``spatial`` trailing ones."""
    for _ in range(spatial):
        weights = weights.unsqueeze(-1)
    return weights


def _autograd_only(scorer: DripScorer) -> str:
    after = _modules_after(scorer.model, scorer.cam.layer)
    found = f" (after it: {', '.join(after)})" if after else ""
    return (
        f"export: layer {scorer.layer_name!r} of {type(scorer.model).__name__} is scored by autograd"
        f"{found}; only two heads can be written as ONNX ops: global average pooling + one "
        "nn.Linear (or a declared drip_head), or a plain nn.Sequential of Linear, ReLU, max or "
        "global average pooling, Flatten, Identity and Dropout ending in a Linear"
    )


def _modules_after(model: nn.Module, layer: nn.Module) -> list[str]:
    """Type names of the Sequential children after ``layer``, when it is one (for the message)."""
    if not isinstance(model, nn.Sequential) or not any(child is layer for child in model):
        return []
    children = list(model)
    return [type(child).__name__ for child in children[children.index(layer) + 1 :]]


def check_pairing(scorer: DripScorer, thresholds: Thresholds, *, allow_model_mismatch: bool = False) -> None:
    """Refuse thresholds that were not calibrated for this scorer (as ``DripFilter`` does)."""
    thresholds.check_model(scorer.model, allow_mismatch=allow_model_mismatch)
    if not allow_model_mismatch:
        for name, expected, found in (
            ("statistic", thresholds.statistic, scorer.statistic),
            ("layer", thresholds.layer, scorer.layer_name),
            ("target", thresholds.target, scorer.target),
            ("cam", thresholds.cam, scorer.cam.method),
        ):
            if expected and expected != found:
                raise DripModelMismatchError(
                    f"thresholds were calibrated with {name} {expected!r}, the scorer uses {found!r}"
                )
    num_classes = scorer.num_classes
    if num_classes is not None and num_classes != thresholds.num_classes:
        raise DripModelMismatchError(
            f"thresholds have {thresholds.num_classes} classes, the model {num_classes}"
        )


def _check_model(scorer: DripScorer) -> None:
    if scorer.model.training:
        raise DripModelError(
            "export: the model is in training mode; call model.eval() first (thresholds are "
            "calibrated on eval-mode scores, and the graph is exported in eval mode)"
        )
    dtypes = {p.dtype for p in scorer.model.parameters()} | {
        b.dtype for b in scorer.model.buffers() if b.is_floating_point()
    }
    if dtypes - {torch.float32}:
        raise DripModelError(
            f"export: expected a float32 model, got parameters of {sorted(map(str, dtypes))}"
        )
    if any(p.device.type != "cpu" for p in scorer.model.parameters()):
        raise DripModelError("export: expected a model on the CPU; call model.cpu() first")


def _example(
    scorer: DripScorer, thresholds: Thresholds, calibration: tuple[torch.Tensor, torch.Tensor] | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """A small labelled batch to trace with and to verify the graph on."""
    if calibration is not None:
        x, y = calibration
        if len(x) == 0:
            raise DripInputError("calibration: expected at least one sample, got none")
        return x[:8], y[:8]
    shape = scorer.input_shape or thresholds.input_shape  # the shape it was calibrated on
    if not shape:
        raise DripModelError(
            "export: neither the model nor the thresholds declare an input_shape; pass "
            "DripScorer(..., input_shape=...) or calibration samples"
        )
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(8, *shape, generator=generator)
    return x, torch.arange(8) % thresholds.num_classes


def _trace(graph: DecisionGraph, example: tuple[torch.Tensor, torch.Tensor], path: Path, opset: int) -> None:
    """``torch.onnx.export`` of ``graph`` with a dynamic batch; its faults as ``DripModelError``."""
    dynamic = {name: {0: "batch"} for name in (*INPUTS, *OUTPUTS)}
    try:
        with warnings.catch_warnings(), torch.no_grad():
            # The TorchScript exporter's deprecation notice, and tracer notes on shapes that the
            # model fixes (class count, spatial size): neither concerns the user.
            warnings.simplefilter("ignore")
            torch.onnx.export(
                graph,
                example,
                str(path),
                dynamo=False,
                input_names=list(INPUTS),
                output_names=list(OUTPUTS),
                dynamic_axes=dynamic,
                opset_version=opset,
                do_constant_folding=True,
            )
    except DripError:
        raise
    except Exception as err:  # the exporter raises many types (RuntimeError, OnnxExporterError, ...)
        message = " ".join(str(err).split())[:400]
        raise DripModelError(f"export: torch.onnx could not export this model: {message}") from None


def _metadata(
    scorer: DripScorer, thresholds: Thresholds, input_shape: Sequence[int], cam_path: str, int8: bool
) -> dict[str, str]:
    return {
        "drip.format": FORMAT,
        "drip.version": VERSION,
        "drip.model_fingerprint": model_fingerprint(scorer.model),
        "drip.thresholds": json.dumps(thresholds.to_dict(), allow_nan=False),
        "drip.input_shape": json.dumps(list(input_shape)),
        "drip.num_classes": str(thresholds.num_classes),
        "drip.statistic": scorer.statistic,
        "drip.target": scorer.target,
        "drip.layer": scorer.layer_name,
        "drip.cam": scorer.cam.method,
        "drip.cam_path": cam_path,
        "drip.precision": "int8" if int8 else "float32",
    }


def _with_metadata(source: Path, metadata: dict[str, str]) -> bytes:
    """The bytes of the ONNX file ``source``, compacted, with ``metadata`` as its only metadata."""
    import onnx

    model = onnx.load(str(source))
    _compact(model.graph)
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, metadata)
    model.doc_string = (
        "DRIP keep/drop decision: inputs x (batch, *input_shape) float32 and label (batch,) int64; "
        "outputs logits (batch, classes) float32, score (batch,) float32, keep (batch,) bool"
    )
    return model.SerializeToString()


def _compact(graph: Any) -> None:
    """Drop what only a reader of the graph needs: node names, intermediate values' names (short
    ids instead) and shape annotations (``value_info``, which runtimes infer). On the int8 graphs
    of the reference models that was 10-19 KB, 15-27% of the file. The graph's inputs, outputs
    and the tensors drip reads back by name (the bands, the score offset) keep their names."""
    import onnx

    if any(
        a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
        for n in graph.node
        for a in n.attribute
    ):
        return  # a subgraph may read outer names: left as it is
    kept = {value.name for value in (*graph.input, *graph.output)} | {"low", "high", SCORE_OFFSET, ""}
    short: dict[str, str] = {}

    def rename(name: str) -> str:
        return name if name in kept else short.setdefault(name, f"t{len(short)}")

    for node in graph.node:
        node.name = ""
        node.doc_string = ""
        node.input[:] = [rename(name) for name in node.input]
        node.output[:] = [rename(name) for name in node.output]
    for tensor in graph.initializer:
        tensor.name = rename(tensor.name)
    del graph.value_info[:]


def _verify(
    path: Path, expected: torch.Tensor, thresholds: Thresholds, x: torch.Tensor, y: torch.Tensor
) -> None:
    """The graph's scores against DripScorer's ``expected`` on ``x``, at batch len(x) and 1."""
    graph = session(path)
    for batch in sorted({len(x), 1}):
        _, score, keep = graph.run(None, {"x": x[:batch].numpy(), "label": y[:batch].numpy()})
        reference = expected[:batch].numpy()
        error = _relative_error(score, reference)
        if not error < AGREEMENT:
            raise DripModelError(
                f"export: the ONNX graph's scores differ from DripScorer's by {error:.2e} (relative) "
                f"at batch {batch}; this model cannot be exported faithfully"
            )
        if not np.array_equal(keep, thresholds.keep(torch.from_numpy(score), y[:batch]).numpy()):
            raise DripModelError("export: the ONNX graph's keep decisions differ from its thresholds'")


def _relative_error(found: np.ndarray, expected: np.ndarray) -> float:
    """max |found - expected| / max |expected| (a zero reference counts as 1e-12)."""
    scale = max(float(np.abs(expected).max(initial=0.0)), 1e-12)
    return float(np.abs(found - expected).max(initial=0.0)) / scale


def export_onnx(
    scorer: DripScorer,
    thresholds: Thresholds,
    path: str | os.PathLike[str],
    *,
    int8: bool = False,
    calibration: tuple[Any, Any] | None = None,
    opset: int = OPSET,
    allow_model_mismatch: bool = False,
) -> ExportResult:
    """Write ``scorer`` and ``thresholds`` as one ONNX graph (x, label) -> (logits, score, keep).

    ``calibration``: D0 samples ``(x: (N, ...), y: (N,))``, required for ``int8`` (the
    activations' ranges), else used only as the example to trace and verify with. The float
    graph's scores are checked against ``scorer`` before anything is written; the file is
    written atomically. Thresholds must belong to the scorer's model and settings (as for
    ``DripFilter``) unless ``allow_model_mismatch``.

    Example::

        result = export_onnx(DripScorer(model), Thresholds.load("t.json"), "scorer.onnx")
        result.size_bytes
    """
    if int8 and calibration is None:
        raise DripInputError("calibration: int8 export needs D0 samples (x, y) to calibrate ranges on")
    if isinstance(opset, bool) or not isinstance(opset, int) or not 16 <= opset <= 20:
        raise DripInputError(f"opset: expected an ONNX opset from 16 to 20, got {opset!r}")
    check_pairing(scorer, thresholds, allow_model_mismatch=allow_model_mismatch)
    _check_model(scorer)
    graph = DecisionGraph(scorer, thresholds)
    calibration_xy = scorer.prepare(*calibration, thresholds.num_classes) if calibration is not None else None
    x, y = _example(scorer, thresholds, calibration_xy)
    expected = scorer(x, y)  # first: the scorer's own checks (e.g. of a declared head) speak first
    metadata = _metadata(scorer, thresholds, x.shape[1:], scorer.cam.path, int8)
    with tempfile.TemporaryDirectory(prefix="drip-export-") as folder:
        float_path = Path(folder) / "float.onnx"
        _trace(graph, (x, y), float_path, opset)
        _verify(float_path, expected, thresholds, x, y)
        float_bytes = _with_metadata(float_path, metadata)
        if int8:
            assert calibration_xy is not None
            int8_path = Path(folder) / "int8.onnx"
            quantize_int8(float_path, int8_path, *calibration_xy)
            data = _with_metadata(int8_path, metadata)
        else:
            data = float_bytes
    target = Path(path)
    try:
        write_atomically(target, data)
    except OSError as err:
        raise DripInputError(f"{target}: cannot write the ONNX file: {err}") from None
    return ExportResult(target, len(data), len(float_bytes), int8, scorer.cam.path)


def quantize_int8(
    float_path: Path,
    int8_path: Path,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    batch_size: int = 64,
) -> np.ndarray:
    """Static int8 quantisation (QDQ) of the graph at ``float_path``, calibrated on ``x``, ``y``.

    Returns the per-class score offsets written into the graph. Choices measured on the four
    reference models over three training seeds (docs/deploy.md):

    * convolutions and linear layers in int8 with per-channel weight scales, the standard for
      convolution weights (TFLite's int8 spec requires them); convolution outputs stay float;
    * the first convolution stays float: it reads the raw, signed input, whose full int8 range
      saturated AVX2's u8 x s8 products (digits_cnn's decisions agreed with float on 91%);
    * the layer that computes the logits stays float: for a GAP + linear head its rows are the
      Grad-CAM channel weights themselves, which the score is linear in, and it is the smallest
      layer (features x classes);
    * bias correction at the score: int8 rounding shifts each class's scores by a systematic
      amount (up to 1.6 standard deviations of the int8 error here), which moves decisions at a
      band edge all one way. The mean int8-minus-float score per class on ``x`` is subtracted
      inside the graph (a class with fewer than ``OFFSET_MIN_SAMPLES`` samples takes the pooled
      mean).

    The Grad-CAM combination, the head's gradient, the statistic and the bands stay float.
    """
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    def batches() -> Iterator[dict[str, np.ndarray]]:
        for start in range(0, len(x), batch_size):
            yield {"x": x[start : start + batch_size].numpy(), "label": y[start : start + batch_size].numpy()}

    class Batches(CalibrationDataReader):
        def __init__(self) -> None:
            self.feed = batches()

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.feed, None)

    nodes = onnx.load(str(float_path)).graph.node
    convolutions = [node.name for node in nodes if node.op_type == "Conv"]
    logit_layers = [node.name for node in nodes if OUTPUTS[0] in node.output and node.op_type == "Gemm"]
    root = logging.getLogger()
    level = root.level
    # onnxruntime.quantization logs advice ("consider pre-processing") on the root logger.
    root.setLevel(logging.ERROR)
    try:
        quantize_static(
            str(float_path),
            str(int8_path),
            Batches(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            op_types_to_quantize=["Conv", "Gemm"],
            nodes_to_exclude=convolutions[:1] + logit_layers,
            extra_options={"OpTypesToExcludeOutputQuantization": ["Conv"]},
        )
    finally:
        root.setLevel(level)
    quantized = onnx.load(str(int8_path))
    _share_dequantized_weights(quantized.graph)
    offset = _own_initializer(quantized.graph, SCORE_OFFSET)
    onnx.save(quantized, str(int8_path))
    offsets = _score_offsets(float_path, int8_path, batches(), y.numpy(), offset.dims[0])
    offset.CopyFrom(onnx.numpy_helper.from_array(offsets, SCORE_OFFSET))
    onnx.save(quantized, str(int8_path))
    return offsets


def _own_initializer(graph: Any, name: str) -> Any:
    """The initializer ``name``, made its own tensor where the exporter aliased it to another
    of equal value (an ``Identity`` of it): the int8 export writes into it alone."""
    import onnx

    tensors = {tensor.name: tensor for tensor in graph.initializer}
    if name in tensors:
        return tensors[name]
    alias = next((node for node in graph.node if node.op_type == "Identity" and node.output[0] == name), None)
    if alias is None or alias.input[0] not in tensors:
        raise DripModelError(f"export: the traced graph lost its {name}; cannot calibrate int8 scores")
    graph.node.remove(alias)
    own = onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(tensors[alias.input[0]]), name)
    graph.initializer.append(own)
    return graph.initializer[-1]


def _score_offsets(
    float_path: Path,
    int8_path: Path,
    feeds: Iterable[dict[str, np.ndarray]],
    labels: np.ndarray,
    classes: int,
) -> np.ndarray:
    """Per class, the mean of the int8 graph's score (offset still zero) minus the float graph's."""
    float_graph, int8_graph = session(float_path), session(int8_path)
    differences = np.concatenate(
        [int8_graph.run(["score"], feed)[0] - float_graph.run(["score"], feed)[0] for feed in feeds]
    ).astype(np.float64)
    offsets = np.full(classes, differences.mean())
    for c in range(classes):
        own = differences[labels == c]
        if own.size >= OFFSET_MIN_SAMPLES:
            offsets[c] = own.mean()
    return offsets.astype(np.float32)


def _share_dequantized_weights(graph: Any) -> None:
    """Let float ops that read a quantised weight (the head's gradient products, the class row
    gather) read its dequantised copy, and drop the float original: one int8 copy in the file."""
    initializers = {tensor.name: tensor for tensor in graph.initializer}
    dequantized = {}
    for node in graph.node:
        if node.op_type == "DequantizeLinear" and node.input[0].endswith("_quantized"):
            original = node.input[0].removesuffix("_quantized")
            if original in initializers:
                dequantized[original] = node.output[0]
    for node in graph.node:
        if node.op_type == "DequantizeLinear":
            continue
        for position, name in enumerate(node.input):
            if name in dequantized:
                node.input[position] = dequantized[name]
    used = {name for node in graph.node for name in node.input}
    for name in dequantized:
        if name not in used:
            graph.initializer.remove(initializers[name])


__all__ = ["DecisionGraph", "ExportResult", "band_edges", "check_pairing", "export_onnx", "quantize_int8"]
