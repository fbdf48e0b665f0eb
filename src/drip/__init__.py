"""drip: DRop unImportant data Points, decided online from Grad-CAM scores (arXiv 2504.08364).

The device path is ``DripScorer`` -> ``Thresholds`` -> ``DripFilter`` -> ``SampleStore``; the
Training Phase (``training_phase``, ``calibrate``) produces the thresholds before deployment.

``import drip`` loads the device path (``cam``, ``score``, ``thresholds``, ``filter``, ``store``,
``budget``) and the Training Phase, and pays for torch and nothing else heavy; the ONNX export
and scorer, parallel scoring and the reference models load on first use of one of their names.
"""

import importlib

from .budget import BudgetedFilter, BudgetedThresholds, BudgetRun, BudgetTrace, stream_with_budget

# Loaded here, not on first use: importing the module drip.calibrate sets drip.calibrate to the
# module, and only this import, run once, binds the name to the function for good.
from .calibrate import BandTrial, TrainingPhaseResult, calibrate, choose_q_high, training_phase
from .cam import CAM_METHODS, CamResult, LayerGradCam
from .errors import (
    DripDataError,
    DripError,
    DripInputError,
    DripMalformedSampleError,
    DripModelError,
    DripModelMismatchError,
    DripStoreError,
    DripThresholdsError,
)
from .filter import ClassCounters, Decision, DripFilter
from .rules import DEFAULT_RULE, RULES
from .score import STATISTICS, DripScorer, ScoredBatch, score_in_batches
from .store import SampleStore, StoredSample
from .thresholds import Thresholds, model_fingerprint
from .train import History, TrainConfig, evaluate, fit, park_outputs, parked_outputs, predict_logits

# Names of the modules loaded on first use, and the module each lives in.
_ON_FIRST_USE = {
    **dict.fromkeys(("ExportResult", "export_onnx"), "export"),
    **dict.fromkeys(("MODELS", "build_model", "digits_cnn"), "models"),
    "OnnxScorer": "onnx_scorer",
    **dict.fromkeys(("LifelongDevice", "RoundTraining"), "lifelong.device"),
    "ClassBalancedReservoir": "lifelong.memory",
    **dict.fromkeys(("LifelongConfig", "run_lifelong"), "lifelong.protocol"),
    **dict.fromkeys(
        (
            "ImageFolder",
            "Malformed",
            "RankBatches",
            "Ranks",
            "ScoredSample",
            "ScoreRun",
            "TensorShards",
            "batch_loader",
            "distributed",
            "open_source",
            "resolve_device",
            "score_source",
        ),
        "parallel",
    ),
}


def __getattr__(name: str) -> object:
    """``drip.X`` for a name of a module loaded on first use (PEP 562)."""
    module = _ON_FIRST_USE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_ON_FIRST_USE})


__version__ = "0.1.0"

__all__ = [
    "CAM_METHODS",
    "DEFAULT_RULE",
    "MODELS",
    "RULES",
    "STATISTICS",
    "BandTrial",
    "BudgetRun",
    "BudgetTrace",
    "BudgetedFilter",
    "BudgetedThresholds",
    "CamResult",
    "ClassBalancedReservoir",
    "ClassCounters",
    "Decision",
    "DripDataError",
    "DripError",
    "DripFilter",
    "DripInputError",
    "DripMalformedSampleError",
    "DripModelError",
    "DripModelMismatchError",
    "DripScorer",
    "DripStoreError",
    "DripThresholdsError",
    "ExportResult",
    "History",
    "ImageFolder",
    "LayerGradCam",
    "LifelongConfig",
    "LifelongDevice",
    "Malformed",
    "OnnxScorer",
    "RankBatches",
    "Ranks",
    "RoundTraining",
    "SampleStore",
    "ScoreRun",
    "ScoredBatch",
    "ScoredSample",
    "StoredSample",
    "TensorShards",
    "Thresholds",
    "TrainConfig",
    "TrainingPhaseResult",
    "batch_loader",
    "build_model",
    "calibrate",
    "choose_q_high",
    "digits_cnn",
    "distributed",
    "evaluate",
    "export_onnx",
    "fit",
    "model_fingerprint",
    "open_source",
    "park_outputs",
    "parked_outputs",
    "predict_logits",
    "resolve_device",
    "run_lifelong",
    "score_in_batches",
    "score_source",
    "stream_with_budget",
    "training_phase",
]
