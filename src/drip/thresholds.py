"""Per-class score bands ``[low_c, high_c]``: what DRIP keeps, and the JSON file that carries them.

A sample of class c is kept when ``low_c <= score <= high_c``. ``low_c = -inf`` (JSON ``null``)
means no lower cut, ``high_c = +inf`` no upper cut. Scores above ``high_c`` are redundant (the model
already sees strong evidence), scores below ``low_c`` are suspect (weak or contrary evidence).
Thresholds remember the model they were calibrated on (a fingerprint of its weights): raw Grad-CAM
magnitudes do not transfer between models, so applying them elsewhere is refused unless overridden.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .errors import DripInputError, DripModelMismatchError, DripThresholdsError
from .validation import as_tensor, check_fraction, check_labels

FORMAT = "drip-thresholds"
VERSION = 1

BELOW_LOW, INSIDE, ABOVE_HIGH = -1, 0, 1


def model_fingerprint(model: nn.Module) -> str:
    """SHA-256 of the model's state (names, dtypes, shapes and bytes of parameters and buffers)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        data = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{data.dtype}|{tuple(data.shape)}|".encode())
        digest.update(data.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _quantile(values: np.ndarray, q: float) -> float:
    return float(np.quantile(values.astype(np.float64), q))


@dataclass(frozen=True)
class Thresholds:
    """Per-class bands on the DRIP score and where they came from."""

    low: tuple[float, ...]
    high: tuple[float, ...]
    statistic: str = "mean"
    layer: str = ""
    model_fingerprint: str | None = None
    q_low: float = 0.0
    q_high: float = 0.0
    counts: tuple[int, ...] = ()
    pooled: tuple[bool, ...] = ()
    target: str = "label"
    cam: str = "gradcam"
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        low = tuple(float(v) for v in self.low)
        high = tuple(float(v) for v in self.high)
        object.__setattr__(self, "low", low)
        object.__setattr__(self, "high", high)
        object.__setattr__(self, "counts", tuple(int(c) for c in self.counts))
        object.__setattr__(self, "pooled", tuple(bool(p) for p in self.pooled))
        if not low or len(low) != len(high):
            raise DripThresholdsError(
                f"low/high: expected one value per class, got {len(low)} and {len(high)}"
            )
        for name, values in (("counts", self.counts), ("pooled", self.pooled)):
            if values and len(values) != len(low):
                raise DripThresholdsError(f"{name}: expected {len(low)} values, got {len(values)}")
        for c, (lo, hi) in enumerate(zip(low, high)):
            if math.isnan(lo) or math.isnan(hi) or lo > hi or lo == math.inf or hi == -math.inf:
                raise DripThresholdsError(f"class {c}: invalid band [{lo}, {hi}]")

    @property
    def num_classes(self) -> int:
        return len(self.low)

    @classmethod
    def from_scores(
        cls,
        scores: Sequence[float] | np.ndarray | torch.Tensor,
        labels: Sequence[int] | np.ndarray | torch.Tensor,
        num_classes: int,
        *,
        q_high: float,
        q_low: float = 0.0,
        min_class_points: int = 30,
        **provenance: Any,
    ) -> Thresholds:
        """Bands from held-out scores: per class, drop the top ``q_high`` and bottom ``q_low``.

        ``high_c`` is the (1 - q_high) quantile of class c's scores and ``low_c`` the q_low
        quantile; 0 means no cut on that side. A class with fewer than ``min_class_points``
        scores takes the quantile of all scores pooled, as per-class quantiles of a handful of
        points miss the intended saving badly. ``provenance`` fills the other fields.
        """
        q_high = check_fraction(q_high, "q_high")
        q_low = check_fraction(q_low, "q_low")
        if q_low + q_high >= 1:
            raise DripInputError(f"q_low + q_high: must be below 1, got {q_low} + {q_high}")
        values = torch.as_tensor(scores).detach().cpu().double().numpy().reshape(-1)
        classes = torch.as_tensor(labels).detach().cpu().long().numpy().reshape(-1)
        if values.size == 0 or values.size != classes.size:
            raise DripInputError(
                f"scores/labels: expected the same non-zero count, got {values.size} and {classes.size}"
            )
        if not np.isfinite(values).all():
            raise DripInputError("scores: calibration scores must be finite")
        if classes.min() < 0 or classes.max() >= num_classes:
            raise DripInputError(f"labels: expected values in [0, {num_classes})")
        low, high, counts, pooled = [], [], [], []
        for c in range(num_classes):
            own = values[classes == c]
            use_pool = own.size < min_class_points
            basis = values if use_pool else own
            low.append(_quantile(basis, q_low) if q_low > 0 else -math.inf)
            high.append(_quantile(basis, 1 - q_high) if q_high > 0 else math.inf)
            counts.append(int(own.size))
            pooled.append(use_pool)
        return cls(
            low=tuple(low),
            high=tuple(high),
            q_low=q_low,
            q_high=q_high,
            counts=tuple(counts),
            pooled=tuple(pooled),
            **provenance,
        )

    def position(self, scores: Any, labels: Any) -> torch.Tensor:
        """Per sample: ``BELOW_LOW`` (-1), ``INSIDE`` (0) or ``ABOVE_HIGH`` (1) of its class band.

        ``scores`` must be finite: a NaN lies in no band, and silently keeping it would store garbage.
        """
        values = as_tensor(scores, "scores")
        if values.dtype == torch.bool or values.is_complex() or values.dim() != 1:
            raise DripInputError(
                f"scores: expected a 1-D tensor of real numbers, got {values.dtype} {tuple(values.shape)}"
            )
        values = values.detach().cpu().double()
        if not torch.isfinite(values).all():
            raise DripInputError("scores: expected finite values, got NaN or infinity")
        classes = check_labels(labels, count=len(values), num_classes=self.num_classes, name="labels")
        low = torch.tensor(self.low, dtype=torch.float64)[classes]
        high = torch.tensor(self.high, dtype=torch.float64)[classes]
        result = torch.zeros(classes.shape, dtype=torch.int8)
        result[values < low] = BELOW_LOW
        result[values > high] = ABOVE_HIGH
        return result

    def keep(self, scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """BoolTensor (B,): True where the score lies inside its class's band."""
        return self.position(scores, labels) == INSIDE

    def check_model(self, model: nn.Module, *, allow_mismatch: bool = False) -> None:
        """Refuse a model whose weights differ from the calibrated one (unless ``allow_mismatch``)."""
        if allow_mismatch or self.model_fingerprint is None:
            return
        found = model_fingerprint(model)
        if found != self.model_fingerprint:
            raise DripModelMismatchError(
                f"thresholds were calibrated on model {self.model_fingerprint[:12]}, but this model "
                f"is {found[:12]}: raw Grad-CAM scores do not transfer between models; "
                "recalibrate, or pass allow_model_mismatch=True if you know better"
            )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict; infinite band edges become ``null``."""
        data = asdict(self)
        data["low"] = [None if math.isinf(v) else v for v in self.low]
        data["high"] = [None if math.isinf(v) else v for v in self.high]
        data["metadata"] = dict(self.metadata)
        return {"format": FORMAT, "version": VERSION, **data}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "thresholds") -> Thresholds:
        """Inverse of ``to_dict``, checking format, version and every field's type."""
        if not isinstance(data, Mapping) or data.get("format") != FORMAT:
            raise DripThresholdsError(f"{source}: not a drip thresholds file (no format {FORMAT!r})")
        version = data.get("version")
        if version != VERSION:
            raise DripThresholdsError(
                f"{source}: thresholds format version {version!r}, this drip reads version {VERSION}"
            )
        try:
            low = [-math.inf if v is None else _number(v, "low") for v in data["low"]]
            high = [math.inf if v is None else _number(v, "high") for v in data["high"]]
            fields = {
                key: data[key]
                for key in ("statistic", "layer", "model_fingerprint", "target", "cam")
                if key in data
            }
            for key, value in fields.items():
                if value is not None and not isinstance(value, str):
                    raise TypeError(f"{key} must be a string")
            counts = [int(_number(c, "counts")) for c in data.get("counts", [])]
            pooled = [bool(p) for p in data.get("pooled", [])]
            metadata = data.get("metadata", {})
            if not isinstance(metadata, Mapping):
                raise TypeError("metadata must be an object")
            return cls(
                low=tuple(low),
                high=tuple(high),
                q_low=_number(data.get("q_low", 0.0), "q_low"),
                q_high=_number(data.get("q_high", 0.0), "q_high"),
                counts=tuple(counts),
                pooled=tuple(pooled),
                metadata=dict(metadata),
                **fields,
            )
        except DripThresholdsError as err:
            raise DripThresholdsError(f"{source}: {err}") from None
        except (KeyError, TypeError, ValueError) as err:
            raise DripThresholdsError(f"{source}: malformed field: {err}") from None

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write JSON atomically: a crash leaves the old file or the new one, never half of one."""
        target = Path(path)
        text = json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n"
        with tempfile.NamedTemporaryFile(
            "w", dir=target.parent or ".", prefix=f".{target.name}.", delete=False
        ) as tmp:
            tmp.write(text)
            tmp.flush()
            os.fsync(tmp.fileno())
        os.replace(tmp.name, target)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Thresholds:
        """Read a file written by ``save``; any fault is a ``DripThresholdsError`` naming the file."""
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise DripThresholdsError(f"{path}: cannot read thresholds: {err}") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise DripThresholdsError(f"{path}: not valid JSON ({err})") from None
        return cls.from_dict(data, source=str(path))


def _number(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must hold numbers, got {value!r}")
    return float(value)
