"""The exported ONNX scorer (float and int8) against torch: throughput at batch 1 and 64, file sizes.

Run by ``make bench-export`` (never by ``make test``). For each reference model: plain torch
forward under ``torch.inference_mode``, ``DripScorer`` (scores), and onnxruntime running the
exported float and int8 graphs (logits, score and keep), one thread each. Shared machines drift,
so the approaches run interleaved: each round runs every approach in a rotated order for at least
``--min-s`` seconds; a round's rate is the batch over the median call time; reported are medians
over rounds, also as ratios to torch's forward and to DripScorer measured in the same rounds.
Models are seeded and untrained (speed does not depend on the weights); int8 is calibrated on 256
random inputs. Writes benchmarks/results/export.json and prints a markdown table.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import datetime
import json
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import onnxruntime
import torch
from tqdm.auto import tqdm

from drip import DripScorer, Thresholds, export_onnx, model_fingerprint
from drip.models import MODELS
from drip.onnx_scorer import session

RESULTS = Path(__file__).parent / "results" / "export.json"
NAMES = ("digits_cnn", "lenet", "resnet8", "dscnn")


def median_rate(call: Callable[[], object], batch: int, min_s: float) -> float:
    """Samples/s of ``call``: the batch over its median wall time over ``min_s`` seconds (>= 5 calls)."""
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < 5 or time.perf_counter() - started < min_s:
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return batch / statistics.median(times)


def bench_model(name: str, folder: Path, rounds: int, min_s: float) -> dict:
    torch.manual_seed(0)
    model = MODELS[name]().eval()
    scorer = DripScorer(model)
    calibration = torch.randn(256, *model.input_shape), torch.arange(256) % model.num_classes
    thresholds = Thresholds.from_scores(
        scorer(*calibration),
        calibration[1],
        model.num_classes,
        q_high=0.3,
        layer=scorer.layer_name,
        model_fingerprint=model_fingerprint(model),
    )
    exports = {
        "float": export_onnx(scorer, thresholds, folder / f"{name}.onnx"),
        "int8": export_onnx(
            scorer, thresholds, folder / f"{name}-int8.onnx", int8=True, calibration=calibration
        ),
    }
    sessions = {kind: session(result.path, threads=1) for kind, result in exports.items()}
    result = {
        "path": scorer.cam.path,
        "float_bytes": exports["float"].size_bytes,
        "int8_bytes": exports["int8"].size_bytes,
        "batches": {},
    }
    for batch in (1, 64):
        x = torch.randn(batch, *model.input_shape)
        y = torch.randint(0, model.num_classes, (batch,))
        feed = {"x": x.numpy(), "label": y.numpy()}

        def forward(x: torch.Tensor = x) -> object:
            with torch.inference_mode():
                return model(x)

        calls = {
            "forward": forward,
            "drip_scorer": lambda x=x, y=y: scorer(x, y),
            "onnx_float": lambda feed=feed: sessions["float"].run(None, feed),
            "onnx_int8": lambda feed=feed: sessions["int8"].run(None, feed),
        }
        for call in calls.values():
            call()
        rates: dict[str, list[float]] = {key: [] for key in calls}
        ratios: dict[str, list[float]] = {
            f"{k}/{ref}": [] for k in calls for ref in ("forward", "drip_scorer")
        }
        order = list(calls)
        for round_index in range(rounds):
            shift = round_index % len(order)
            measured = {key: median_rate(calls[key], batch, min_s) for key in order[shift:] + order[:shift]}
            for key, rate in measured.items():
                rates[key].append(rate)
                for ref in ("forward", "drip_scorer"):
                    ratios[f"{key}/{ref}"].append(rate / measured[ref])
        result["batches"][str(batch)] = {
            "samples_per_s": {key: statistics.median(values) for key, values in rates.items()},
            "ratios": {key: statistics.median(values) for key, values in ratios.items()},
        }
    return result


def table(results: dict) -> str:
    lines = [
        "| model | head | batch | torch forward /s | DripScorer /s | ONNX float /s (x scorer, x forward) "
        "| ONNX int8 /s (x scorer, x forward) | float bytes | int8 bytes (x smaller) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, model in results["models"].items():
        for batch, row in model["batches"].items():
            rate, ratio = row["samples_per_s"], row["ratios"]
            cells = [name, model["path"], batch, f"{rate['forward']:.0f}", f"{rate['drip_scorer']:.0f}"]
            for kind in ("onnx_float", "onnx_int8"):
                cells.append(
                    f"{rate[kind]:.0f} ({ratio[kind + '/drip_scorer']:.2f}x, {ratio[kind + '/forward']:.2f}x)"
                )
            compression = model["float_bytes"] / model["int8_bytes"]
            cells += [str(model["float_bytes"]), f"{model['int8_bytes']} ({compression:.2f}x)"]
            lines.append("| " + " | ".join(map(str, cells)) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--min-s", type=float, default=0.2, help="seconds per approach per round")
    parser.add_argument("--models", default=",".join(NAMES))
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(1)
    models = {}
    with tempfile.TemporaryDirectory() as folder:
        for name in tqdm(args.models.split(","), desc="models"):
            models[name] = bench_model(name, Path(folder), args.rounds, args.min_s)
    results = {
        "command": "make bench-export",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform()},
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "threads": 1,
        "rounds": args.rounds,
        "models": models,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2, allow_nan=False) + "\n")
    print(table(results))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
