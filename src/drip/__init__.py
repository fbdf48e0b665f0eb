"""drip: DRop unImportant data Points, decided online from Grad-CAM scores (arXiv 2504.08364).

The device path is ``DripScorer`` -> ``Thresholds`` -> ``DripFilter`` -> ``SampleStore``; the
Training Phase (``training_phase``, ``calibrate``) produces the thresholds before deployment.
"""

from .budget import BudgetedFilter, BudgetedThresholds, BudgetRun, BudgetTrace, stream_with_budget
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
from .export import ExportResult, export_onnx
from .filter import ClassCounters, Decision, DripFilter
from .models import MODELS, build_model, digits_cnn
from .onnx_scorer import OnnxScorer
from .parallel import (
    ImageFolder,
    Malformed,
    RankBatches,
    Ranks,
    ScoredSample,
    ScoreRun,
    TensorShards,
    batch_loader,
    distributed,
    open_source,
    resolve_device,
    score_source,
)
from .score import STATISTICS, DripScorer, ScoredBatch, score_in_batches
from .store import SampleStore, StoredSample
from .thresholds import Thresholds, model_fingerprint
from .train import History, TrainConfig, evaluate, fit, predict_logits

__version__ = "0.1.0"

__all__ = [
    "CAM_METHODS",
    "MODELS",
    "STATISTICS",
    "BandTrial",
    "BudgetRun",
    "BudgetTrace",
    "BudgetedFilter",
    "BudgetedThresholds",
    "CamResult",
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
    "Malformed",
    "OnnxScorer",
    "RankBatches",
    "Ranks",
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
    "predict_logits",
    "resolve_device",
    "score_in_batches",
    "score_source",
    "stream_with_budget",
    "training_phase",
]
