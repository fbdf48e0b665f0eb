"""``OnnxScorer``: an exported DRIP graph run by onnxruntime, with the scorer's interface.

It validates inputs as ``DripScorer`` does (shape, dtype, finiteness, label range), runs the graph
(logits, score, keep) and returns a ``ScoredBatch``, so ``DripFilter`` and ``drip filter`` stream
with it into the same durable store. The graph carries its thresholds and the fingerprint of the
torch model it was exported from (ONNX metadata): ``filter_thresholds`` refuses a thresholds file
meant for another model or other bands, so the fingerprint check keeps its meaning without torch
weights to hash. Needs onnxruntime only (the ``export`` extra); not onnx, not torch.onnx.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import DripInputError, DripModelMismatchError
from .score import ScoredBatch
from .thresholds import Thresholds
from .validation import check_inputs, check_labels

FORMAT = "drip-onnx-scorer"
VERSION = "1"


def session(path: str | os.PathLike[str], threads: int = 1) -> Any:
    """An onnxruntime CPU session on ``threads`` intra-op threads (no inter-op pool, no spinning)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # Spinning worker threads starved every other process on a shared 2-core machine (as OpenMP did).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class OnnxScorer:
    """Scores and keep decisions of an ONNX file written by ``drip.export_onnx``.

    Example::

        scorer = OnnxScorer("scorer.onnx")
        batch = scorer.score_batch(x, y)     # x: (B, *input_shape), y: (B,) -> batch.scores
        keep = scorer.decide(x, y)           # the graph's own keep output, (B,) bool
    """

    def __init__(self, path: str | os.PathLike[str], *, threads: int = 1) -> None:
        self.path = Path(path)
        try:
            self.session = session(self.path, threads)
        except Exception as err:  # onnxruntime raises its own exception types for bad files
            raise DripInputError(
                f"{self.path}: not an ONNX model onnxruntime can load: {' '.join(str(err).split())[:300]}"
            ) from None
        meta = dict(self.session.get_modelmeta().custom_metadata_map)
        if meta.get("drip.format") != FORMAT:
            raise DripInputError(f"{self.path}: not a DRIP scorer exported by drip export (no drip metadata)")
        if meta.get("drip.version") != VERSION:
            raise DripInputError(
                f"{self.path}: format version {meta.get('drip.version')!r}, this drip reads {VERSION}"
            )
        self.thresholds = Thresholds.from_dict(json.loads(meta["drip.thresholds"]), source=str(self.path))
        self.model_fingerprint: str = meta["drip.model_fingerprint"]
        self.input_shape: tuple[int, ...] = tuple(json.loads(meta["drip.input_shape"]))
        self.num_classes = int(meta["drip.num_classes"])
        self.statistic: str = meta["drip.statistic"]
        self.target: str = meta["drip.target"]
        self.layer_name: str = meta["drip.layer"]
        self.cam_method: str = meta["drip.cam"]
        self.precision: str = meta["drip.precision"]
        # No torch model to hash: filter_thresholds checks the graph's recorded fingerprint instead.
        self.model = None

    def filter_thresholds(self, thresholds: Thresholds, *, allow_model_mismatch: bool = False) -> Thresholds:
        """``thresholds`` checked against the graph's, ready for ``DripFilter``.

        The fingerprint of the model they were calibrated on must be the one the graph was
        exported from, and the bands the graph applies must be theirs (else the graph's keep and
        the filter's would differ). The returned copy has its fingerprint check done here: the
        filter has no torch weights to hash.
        """
        if not allow_model_mismatch:
            mine = self.thresholds
            if thresholds.model_fingerprint not in (None, self.model_fingerprint):
                raise DripModelMismatchError(
                    f"thresholds were calibrated on model {thresholds.model_fingerprint[:12]}, but "
                    f"{self.path.name} was exported from model {self.model_fingerprint[:12]}: "
                    "recalibrate and re-export, or pass allow_model_mismatch=True if you know better"
                )
            if (thresholds.low, thresholds.high) != (mine.low, mine.high):
                raise DripModelMismatchError(
                    f"thresholds: their bands differ from the ones {self.path.name} applies; export "
                    "again with these thresholds"
                )
        return dataclasses.replace(thresholds, model_fingerprint=None)

    def prepare(self, x: Any, y: Any, num_classes: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Validated ``x: (B, *input_shape)`` float32 and labels ``y: (B,)`` in ``[0, classes)``."""
        inputs = check_inputs(x, sample_shape=self.input_shape, dtype=torch.float32)
        bound = num_classes if num_classes is not None else self.num_classes
        labels = check_labels(y, count=inputs.shape[0], num_classes=min(bound, self.num_classes))
        return inputs, labels

    def _run(self, inputs: torch.Tensor, labels: torch.Tensor) -> tuple[np.ndarray, ...]:
        if len(inputs) == 0:
            return np.zeros((0, self.num_classes), np.float32), np.zeros(0, np.float32), np.zeros(0, bool)
        feed = {"x": inputs.contiguous().numpy(), "label": labels.contiguous().numpy()}
        logits, scores, keep = self.session.run(None, feed)
        if not np.isfinite(scores).all():
            bad = np.flatnonzero(~np.isfinite(scores))[:10].tolist()
            raise DripInputError(
                f"x: expected inputs the model scores finitely, but it overflowed on samples {bad}: "
                "non-finite score"
            )
        return logits, scores, keep

    def score_batch(self, x: Any, y: Any, *, num_classes: int | None = None) -> ScoredBatch:
        """Validate a batch, run the graph; ``maps`` is empty ``(B, 0)``: the graph outputs none."""
        inputs, labels = self.prepare(x, y, num_classes)
        logits, scores, _ = self._run(inputs, labels)
        no_maps = functools.partial(torch.zeros, len(inputs), 0)
        return ScoredBatch(inputs, labels, torch.from_numpy(logits), torch.from_numpy(scores), no_maps)

    def decide(self, x: Any, y: Any) -> torch.Tensor:
        """The graph's keep decisions ``(B,)`` bool: the score inside its label's band."""
        inputs, labels = self.prepare(x, y)
        return torch.from_numpy(self._run(inputs, labels)[2])

    def __call__(self, x: Any, y: Any) -> torch.Tensor:
        """DRIP scores ``(B,)`` of ``x: (B, ...)`` with labels ``y: (B,)``; high = redundant."""
        return self.score_batch(x, y).scores
