"""``drip export``: a scorer and its thresholds as one ONNX graph (float or int8) for devices."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import add_common, load_model, load_tensors, scorer_for


def register(commands: argparse._SubParsersAction) -> None:
    """Add ``drip export`` to ``commands``."""
    export = commands.add_parser(
        "export",
        help="export the keep/drop decision to ONNX (float or int8)",
        description="Writes MODEL's DRIP decision with the bands of THRESHOLDS as one ONNX graph: "
        "inputs x (batch, ...) and label (batch,) int64; outputs logits, score and keep. The layer, "
        "statistic, target and CAM variant come from THRESHOLDS. The float graph's scores are "
        "checked against drip's before anything is written. --int8 quantises it statically with "
        "onnxruntime, calibrated on the D0 samples of --calibration (activation ranges, and each "
        "class's int8 score shift, subtracted in the graph). Run it with "
        "`drip filter --engine onnx --model OUT`.",
    )
    export.add_argument("--model", type=Path, required=True, help="the scorer model the thresholds belong to")
    export.add_argument("--thresholds", type=Path, required=True, help="thresholds JSON from drip calibrate")
    export.add_argument("--out", type=Path, required=True, help="ONNX file to write")
    export.add_argument("--int8", action="store_true", help="static int8 quantisation (needs --calibration)")
    export.add_argument(
        "--calibration",
        type=Path,
        default=None,
        help=".pt file with D0 tensors 'x' and 'y' (int8 ranges and score correction)",
    )
    export.add_argument("--opset", type=int, default=17, help="ONNX opset (default: 17)")
    export.add_argument(
        "--allow-model-mismatch",
        action="store_true",
        help="export thresholds with a model other than the calibrated one",
    )
    add_common(export)
    export.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from ..errors import DripInputError
    from ..export import export_onnx
    from ..thresholds import Thresholds

    if args.int8 and args.calibration is None:
        raise DripInputError("--int8: needs --calibration, D0 samples to calibrate the int8 ranges on")
    model = load_model(args.model)
    thresholds = Thresholds.load(args.thresholds)
    scorer = scorer_for(model, thresholds)
    calibration = load_tensors(args.calibration) if args.calibration is not None else None
    result = export_onnx(
        scorer,
        thresholds,
        args.out,
        int8=args.int8,
        calibration=calibration,
        opset=args.opset,
        allow_model_mismatch=args.allow_model_mismatch,
    )
    size = f"{result.size_bytes} bytes"
    if result.int8:
        size += f" (float graph {result.float_size_bytes} bytes, {result.compression:.2f}x smaller)"
    print(f"wrote {result.path}: {'int8' if result.int8 else 'float32'}, {result.cam_path} head, {size}")
    return 0
