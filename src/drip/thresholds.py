"""Per-class score bands ``[low_c, high_c]``: what DRIP keeps, and the JSON file that carries them.

A sample of class c is kept when ``low_c <= score <= high_c``. ``low_c = -inf`` (JSON ``null``)
means no lower cut, ``high_c = +inf`` no upper cut. Scores above ``high_c`` are redundant (the model
already sees strong evidence), scores below ``low_c`` are suspect (weak or contrary evidence).
The selection rule (``drip.rules``) that placed the upper cuts is recorded with them; files
written before rules existed load as ``per-class``, the only rule they could hold.
Thresholds remember the model they were calibrated on (a fingerprint of its weights): raw Grad-CAM
magnitudes do not transfer between models, so applying them elsewhere is refused unless overridden.
"""

from __future__ import annotations

import hashlib
import json
import math
import numbers
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .atomic import write_atomically
from .cam import CAM_METHODS
from .errors import DripInputError, DripModelMismatchError, DripThresholdsError
from .rules import DEFAULT_RULE, RULES, lower_cut, upper_cuts
from .score import DEFAULT_CAM, DEFAULT_STATISTIC, DEFAULT_TARGET, STATISTICS, TARGETS
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


@dataclass(frozen=True)
class Thresholds:
    """Per-class bands on the DRIP score and where they came from.

    ``input_shape``: the shape of one calibration sample (empty: unknown), so that a model which
    declares none can still be exported or read image folders at the shape it was calibrated on.
    """

    low: tuple[float, ...]
    high: tuple[float, ...]
    statistic: str = DEFAULT_STATISTIC
    layer: str = ""
    model_fingerprint: str | None = None
    q_low: float = 0.0
    q_high: float = 0.0
    counts: tuple[int, ...] = ()
    pooled: tuple[bool, ...] = ()
    target: str = DEFAULT_TARGET
    cam: str = DEFAULT_CAM
    metadata: Mapping[str, Any] = field(default_factory=dict)
    rule: str = "per-class"
    kept: tuple[int, ...] = ()
    input_shape: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        low = _floats(self.low, "low")
        high = _floats(self.high, "high")
        counts = _sequence(self.counts, "counts")
        kept = _sequence(self.kept, "kept")
        input_shape = _sequence(self.input_shape, "input_shape")
        if not all(
            isinstance(d, numbers.Integral) and not isinstance(d, bool) and d > 0 for d in input_shape
        ):
            raise DripThresholdsError(f"input_shape: expected positive integers, got {self.input_shape!r}")
        for name, values in (("counts", counts), ("kept", kept)):
            if not all(
                isinstance(c, numbers.Integral) and not isinstance(c, bool) and c >= 0 for c in values
            ):
                raise DripThresholdsError(f"{name}: expected non-negative integers, got {values!r}")
        pooled = _sequence(self.pooled, "pooled")
        if not all(isinstance(p, (bool, np.bool_)) for p in pooled):
            raise DripThresholdsError(f"pooled: expected true/false values, got {self.pooled!r}")
        for name in ("q_low", "q_high"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= value < 1:
                raise DripThresholdsError(f"{name}: expected a number in [0, 1), got {value!r}")
        for name in ("statistic", "layer", "target", "cam", "rule"):
            if not isinstance(getattr(self, name), str):
                raise DripThresholdsError(f"{name}: expected a string, got {getattr(self, name)!r}")
        # Unknown settings are refused here, not by the filter or the export much later.
        for name, known in (
            ("statistic", tuple(STATISTICS)),
            ("target", TARGETS),
            ("cam", CAM_METHODS),
            ("rule", RULES),
        ):
            if getattr(self, name) not in known:
                raise DripThresholdsError(f"{name}: expected one of {known}, got {getattr(self, name)!r}")
        if self.model_fingerprint is not None and not isinstance(self.model_fingerprint, str):
            raise DripThresholdsError(
                f"model_fingerprint: expected a string or None, got {self.model_fingerprint!r}"
            )
        if not isinstance(self.metadata, Mapping):
            raise DripThresholdsError(f"metadata: expected a mapping, got {type(self.metadata).__name__}")
        object.__setattr__(self, "low", low)
        object.__setattr__(self, "high", high)
        object.__setattr__(self, "counts", tuple(int(c) for c in counts))
        object.__setattr__(self, "kept", tuple(int(c) for c in kept))
        object.__setattr__(self, "input_shape", tuple(int(d) for d in input_shape))
        object.__setattr__(self, "pooled", tuple(bool(p) for p in pooled))
        if not low or len(low) != len(high):
            raise DripThresholdsError(
                f"low/high: expected one value per class, got {len(low)} and {len(high)}"
            )
        for name, values in (("counts", self.counts), ("pooled", self.pooled), ("kept", self.kept)):
            if values and len(values) != len(low):
                raise DripThresholdsError(f"{name}: expected {len(low)} values, got {len(values)}")
        for c, (lo, hi) in enumerate(zip(low, high)):
            if math.isnan(lo) or math.isnan(hi) or lo > hi or lo == math.inf or hi == -math.inf:
                raise DripThresholdsError(f"class {c}: invalid band [{lo}, {hi}]")

    @property
    def num_classes(self) -> int:
        return len(self.low)

    def keep_rates(self) -> tuple[float, ...] | None:
        """Per class, the share of its calibration samples inside its band: how the rule shares
        the storage between classes (1 for a class with no calibration sample: it keeps all).
        None when the file records no kept counts (written by hand or before they were)."""
        if not self.kept:
            return None
        return tuple(k / n if n else 1.0 for k, n in zip(self.kept, self.counts))

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
        rule: str = DEFAULT_RULE,
        **provenance: Any,
    ) -> Thresholds:
        """Bands from held-out scores: drop the top ``q_high`` by ``rule`` and, per class, the
        bottom ``q_low``.

        ``rule`` places the upper cuts (``drip.rules``: ``per-class`` drops the top ``q_high`` of
        each class, ``pooled`` of all scores, ``coverage`` of all scores with a floor per class).
        ``low_c`` is the q_low quantile of class c's scores, for every rule: a suspect sample is
        one unusual for its own class. 0 means no cut on that side. A class with fewer than
        ``min_class_points`` scores takes its per-class quantiles from all scores pooled, as
        quantiles of a handful of points miss the intended saving badly (the coverage floor
        still comes from its own scores; a lower cut needs 1 / q_low scores: ``drip.rules``); a
        class with none has no lower cut.
        ``provenance`` fills the other fields.
        """
        q_high = check_fraction(q_high, "q_high")
        q_low = check_fraction(q_low, "q_low")
        if q_low + q_high >= 1:
            raise DripInputError(f"q_low + q_high: expected a sum below 1, got {q_low} + {q_high}")
        if rule not in RULES:
            raise DripInputError(f"rule: expected one of {RULES}, got {rule!r}")
        for name, value in (("num_classes", num_classes), ("min_class_points", min_class_points)):
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
                raise DripInputError(f"{name}: expected a positive integer, got {value!r}")
        scores_1d = _scores(scores)
        if scores_1d.numel() == 0:
            raise DripInputError("scores: expected at least one calibration score, got none")
        if not torch.isfinite(scores_1d).all():
            raise DripInputError("scores: expected finite calibration scores, got NaN or infinite ones")
        labels_1d = check_labels(labels, count=scores_1d.numel(), num_classes=int(num_classes), name="labels")
        values = scores_1d.numpy()
        classes = labels_1d.cpu().numpy()
        counts = [int((classes == c).sum()) for c in range(num_classes)]
        pooled = [count < min_class_points for count in counts]
        # A class with no calibration score gets no lower cut: nothing says what is unusual for
        # it, and after a drift it is a class the model has not learnt, all of whose samples
        # score low (a pooled cut dropped every sample of each new class of a class-incremental
        # MNIST stream).
        low = [
            -math.inf if count == 0 else lower_cut(values if use_pool else values[classes == c], q_low)
            for c, (count, use_pool) in enumerate(zip(counts, pooled))
        ]
        high = upper_cuts(
            values, classes, num_classes, q_high=q_high, rule=rule, min_class_points=min_class_points
        )
        # Under a pooled rule an easy class's upper cut can lie below its own lower quantile:
        # the band then closes at the upper cut (it keeps next to nothing of the class).
        low = [min(lo, hi) for lo, hi in zip(low, high)]
        inside = (values >= np.array(low)[classes]) & (values <= np.array(high)[classes])
        return cls(
            low=tuple(low),
            high=tuple(high),
            q_low=q_low,
            q_high=q_high,
            counts=tuple(counts),
            pooled=tuple(pooled),
            rule=rule,
            kept=tuple(int(inside[classes == c].sum()) for c in range(num_classes)),
            **provenance,
        )

    def position(self, scores: Any, labels: Any) -> torch.Tensor:
        """Per sample: ``BELOW_LOW`` (-1), ``INSIDE`` (0) or ``ABOVE_HIGH`` (1) of its class band.

        ``scores: (B,)`` real numbers (a NaN score lies in no band: an error), ``labels: (B,)``
        integers in ``[0, num_classes)``.
        """
        scores = _scores(scores)
        if torch.isnan(scores).any():
            bad = torch.isnan(scores).nonzero().flatten()[:10].tolist()
            raise DripInputError(f"scores: expected numbers, got NaN at samples {bad}")
        labels = check_labels(labels, count=scores.numel(), num_classes=self.num_classes, name="labels")
        return torch.tensor(self.positions(scores.tolist(), labels.tolist()), dtype=torch.int8)

    def positions(self, scores: Sequence[float], labels: Sequence[int]) -> list[int]:
        """``position`` for scores and labels already checked (numbers, not NaN; labels in
        ``[0, num_classes)``), in plain Python: what the filter runs on every batch, where the
        tensor version's checks, casts and masked writes cost more than the comparisons."""
        low, high = self.low, self.high
        return [
            BELOW_LOW if score < low[c] else ABOVE_HIGH if score > high[c] else INSIDE
            for score, c in zip(scores, labels)
        ]

    def keep(self, scores: Any, labels: Any) -> torch.Tensor:
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
        if isinstance(version, bool) or version != VERSION:
            raise DripThresholdsError(
                f"{source}: thresholds format version {version!r}, this drip reads version {VERSION}"
            )
        try:
            low = [-math.inf if v is None else _number(v, "low") for v in data["low"]]
            high = [math.inf if v is None else _number(v, "high") for v in data["high"]]
            fields = {
                key: data[key]
                for key in ("statistic", "layer", "model_fingerprint", "target", "cam", "rule")
                if key in data
            }
            for key, value in fields.items():
                if value is not None and not isinstance(value, str):
                    raise TypeError(f"{key} must be a string")
            metadata = data.get("metadata", {})
            if not isinstance(metadata, Mapping):
                raise TypeError("metadata must be an object")
            return cls(
                low=tuple(low),
                high=tuple(high),
                q_low=_number(data.get("q_low", 0.0), "q_low"),
                q_high=_number(data.get("q_high", 0.0), "q_high"),
                counts=tuple(data.get("counts", [])),
                pooled=tuple(data.get("pooled", [])),
                kept=tuple(data.get("kept", [])),
                input_shape=tuple(data.get("input_shape", [])),
                metadata=dict(metadata),
                **fields,
            )
        except DripThresholdsError as err:
            raise DripThresholdsError(f"{source}: {err}") from None
        except (KeyError, TypeError, ValueError, OverflowError) as err:
            raise DripThresholdsError(f"{source}: malformed field: {err}") from None

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write JSON atomically: a crash leaves the old file or the new one, never half of one."""
        text = json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n"
        write_atomically(Path(path), text.encode("utf-8"))

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
        except RecursionError:
            raise DripThresholdsError(f"{path}: not valid JSON for thresholds (nested too deeply)") from None
        return cls.from_dict(data, source=str(path))


def _number(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must hold numbers, got {value!r}")
    return float(value)


def _sequence(values: Any, name: str) -> tuple[Any, ...]:
    if isinstance(values, (torch.Tensor, np.ndarray)) and values.ndim == 1:
        return tuple(values.tolist())
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise DripThresholdsError(f"{name}: expected a list, got {type(values).__name__}")
    return tuple(values)


def _floats(values: Any, name: str) -> tuple[float, ...]:
    """Band edges as floats (NaN included: the band check names it), or a clear error."""
    result = []
    for value in _sequence(values, name):
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
            raise DripThresholdsError(f"{name}: expected one number per class, got {value!r}")
        try:
            result.append(float(value))
        except OverflowError:
            raise DripThresholdsError(f"{name}: expected one number per class, got {value!r}") from None
    return tuple(result)


def _scores(scores: Any) -> torch.Tensor:
    """Scores ``(B,)`` as float64 on the CPU; a 0-d score is one sample."""
    tensor = as_tensor(scores, "scores")
    if tensor.dtype == torch.float32 and not isinstance(scores, (torch.Tensor, np.ndarray)):
        # Python floats are doubles: torch's default float32 would round them, or overflow to inf.
        tensor = torch.as_tensor(scores, dtype=torch.float64)
    if tensor.dtype == torch.bool or tensor.is_complex():
        raise DripInputError(f"scores: expected real numbers, got {tensor.dtype}")
    if tensor.dim() > 1:
        raise DripInputError(f"scores: expected a 1-D tensor (B,), got shape {tuple(tensor.shape)}")
    return tensor.detach().cpu().double().reshape(-1)
