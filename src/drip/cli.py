"""The ``drip`` command line: demo, calibrate, filter.

Every ``DripError`` becomes one line on stderr and exit code 2; no tracebacks for user mistakes.
Torch runs on one thread by default (``--threads``): on small shared machines a spinning OpenMP
pool next to any other busy process slowed torch by 35-230x.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from .errors import DripError, DripInputError

if TYPE_CHECKING:  # torch loads lazily, so that --help stays fast
    import torch

    from .store import SampleStore

T = TypeVar("T")

DESCRIPTION = """\
DRIP keeps only the informative samples of a labelled stream: it scores each sample with the mean
of the model's Grad-CAM map for its label and keeps it if the score lies inside per-class bands
calibrated by a Training Phase. High score = redundant (dropped), low score = informative."""


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: 1)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="drip", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = commands.add_parser(
        "demo",
        help="the whole DRIP path on scikit-learn's digits (no download)",
        description="Training Phase on D0, stream S through the filter into a sample store, then "
        "retrain FULL, DRIP, RANDOM (same size) and LOSS (same size) with the same step budget. "
        "Writes summary.json, summary.md, results.json, scores.png and heatmaps.png.",
    )
    demo.add_argument("--seeds", type=int, default=3, help="number of seeds (default: 3)")
    demo.add_argument("--out", type=Path, default=Path("runs/demo"), help="output folder")
    demo.add_argument("--steps", type=int, default=500, help="optimiser steps per training (default: 500)")
    demo.add_argument(
        "--q-high",
        type=float,
        default=None,
        help="fixed fraction to drop from the top (default: band search)",
    )
    _add_common(demo)

    calibrate = commands.add_parser(
        "calibrate",
        help="calibrate thresholds for your own model",
        description="Cheap mode (--q-high): MODEL is trained, DATA is held-out data it never saw; "
        "per-class bands drop the top q_high of DATA's scores. Search mode (--search): MODEL gives "
        "the architecture only; the Training Phase splits DATA (your D0) 60/20/20, trains the "
        "scorer, searches the band and saves the trained scorer with --save-model.",
    )
    calibrate.add_argument(
        "--model",
        type=Path,
        required=True,
        help="a torch.save'd nn.Module (only load files you trust)",
    )
    calibrate.add_argument("--data", type=Path, required=True, help=".pt file with tensors 'x' and 'y'")
    calibrate.add_argument("--out", type=Path, required=True, help="thresholds JSON to write")
    mode = calibrate.add_mutually_exclusive_group(required=True)
    mode.add_argument("--q-high", type=float, help="fraction of each class to drop from the top")
    mode.add_argument("--search", action="store_true", help="run the full Training Phase")
    calibrate.add_argument(
        "--q-low", type=float, default=0.0, help="fraction to drop from the bottom (default: 0)"
    )
    calibrate.add_argument(
        "--layer", default=None, help="target layer's dotted name (default: model.drip_layer)"
    )
    calibrate.add_argument("--statistic", default="mean", help="score statistic (default: mean)")
    calibrate.add_argument("--steps", type=int, default=500, help="optimiser steps per training (--search)")
    calibrate.add_argument(
        "--save-model",
        type=Path,
        default=None,
        help="where --search writes the trained scorer (default: OUT with .model.pt)",
    )
    calibrate.add_argument("--seed", type=int, default=0)
    _add_common(calibrate)

    filt = commands.add_parser(
        "filter",
        help="stream samples through DRIP into a sample store",
        description="Scores every sample of STREAM with MODEL and stores those inside the bands of "
        "THRESHOLDS in STORE (an SQLite file, created if missing). Prints per-class counts. Sample i "
        "is stored with the id 'STREAM-FILE-NAME:i', and each batch commits, with what it kept, how "
        "far into the stream it got: rerunning the same command after a crash skips what was "
        "decided and ends in the same store as an uninterrupted run. Malformed samples are "
        "reported with their index and reason and the stream goes on. Exit codes: 0 done, 1 done "
        "but --strict and some samples were malformed, 2 error.",
    )
    filt.add_argument("--model", type=Path, required=True, help="the scorer model the thresholds belong to")
    filt.add_argument("--thresholds", type=Path, required=True, help="thresholds JSON from drip calibrate")
    filt.add_argument(
        "--stream",
        type=Path,
        required=True,
        help=".pt file with 'x' and 'y': tensors (N, ...) and (N,), or lists of one record each",
    )
    filt.add_argument("--store", type=Path, required=True, help="sample store file")
    filt.add_argument("--capacity-count", type=int, default=None, help="most samples the store may hold")
    filt.add_argument("--capacity-bytes", type=int, default=None, help="most tensor bytes the store may hold")
    filt.add_argument("--when-full", choices=("reject", "evict"), default="reject")
    filt.add_argument("--batch-size", type=int, default=64, help="samples scored per call (default: 64)")
    filt.add_argument("--layer", default=None, help="target layer (default: the one in THRESHOLDS)")
    filt.add_argument(
        "--allow-model-mismatch",
        action="store_true",
        help="apply thresholds to a model other than the calibrated one",
    )
    filt.add_argument(
        "--strict",
        action="store_true",
        help="exit with code 1 if any sample was malformed (default: report them, exit 0)",
    )
    _add_common(filt)
    return parser


def _load_tensors(path: Path):
    import torch

    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, ValueError) as err:
        raise DripInputError(f"{path}: cannot read a .pt file: {err}") from None
    if not isinstance(data, dict) or not {"x", "y"} <= set(data):
        raise DripInputError(f"{path}: expected a dict with tensors 'x' and 'y'")
    return data["x"], data["y"]


def _load_model(path: Path):
    import torch
    from torch import nn

    try:
        model = torch.load(path, map_location="cpu", weights_only=False)
    except (
        OSError,
        RuntimeError,
        EOFError,
        ValueError,
        AttributeError,
        ModuleNotFoundError,
    ) as err:
        raise DripInputError(f"{path}: cannot load a model: {err}") from None
    if not isinstance(model, nn.Module):
        raise DripInputError(f"{path}: expected a torch.save'd nn.Module, got {type(model).__name__}")
    return model.eval()


def _fresh_copy_factory(model):
    """A factory of untrained copies of ``model``: deep copy, then reset every layer's parameters."""

    def factory():
        fresh = copy.deepcopy(model)
        for module in fresh.modules():
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
        return fresh

    return factory


def _run_demo(args: argparse.Namespace) -> int:
    from .data import load_digits
    from .experiment import ExperimentConfig, run_experiment
    from .report import markdown, write_report

    config = ExperimentConfig(seeds=args.seeds, steps=args.steps, q_high=args.q_high)
    results = run_experiment(config, load_digits(), args.out, progress=not args.quiet)
    summary = write_report(results, args.out)
    print(markdown(summary))
    print(f"wrote {args.out}/summary.md, summary.json, results.json, scores.png, heatmaps.png")
    return 0


def _run_calibrate(args: argparse.Namespace) -> int:
    import torch

    from .calibrate import calibrate, training_phase
    from .data import LabelledData
    from .score import DripScorer
    from .train import TrainConfig

    model = _load_model(args.model)
    x, y = _load_tensors(args.data)
    if args.search:
        num_classes = int(getattr(model, "num_classes", 0) or int(y.max()) + 1)
        d0 = LabelledData(
            args.data.stem, x.float(), y.long(), num_classes, tuple(map(str, range(num_classes)))
        )
        phase = training_phase(
            d0,
            _fresh_copy_factory(model),
            TrainConfig(steps=args.steps),
            q_low=args.q_low,
            statistic=args.statistic,
            layer=args.layer,
            seed=args.seed,
            progress=not args.quiet,
        )
        save_model = args.save_model or args.out.with_suffix(".model.pt")
        torch.save(phase.model, save_model)
        thresholds = phase.thresholds
        print(
            f"band search: q_high = {phase.q_high:g}, reference accuracy on W "
            f"{phase.reference_accuracy:.4f}; trials: "
            + ", ".join(f"{t.q_high:g} -> {t.val_accuracy:.4f}" for t in phase.trials)
        )
        print(f"Training Phase cost: {phase.cost_ratio:.1f}x one training; scorer saved to {save_model}")
    else:
        scorer = DripScorer(model, args.layer, args.statistic)
        thresholds = calibrate(
            scorer,
            x,
            y,
            q_high=args.q_high,
            q_low=args.q_low,
            num_classes=getattr(model, "num_classes", None) or int(y.max()) + 1,
        )
    thresholds.save(args.out)
    print(
        f"wrote {args.out}: {thresholds.num_classes} classes, q_high {thresholds.q_high:g}, "
        f"q_low {thresholds.q_low:g}"
    )
    return 0


def _load_filter_file(load: Callable[[Path], T], path: Path) -> T:
    """``load(path)``, with a damaged pickle (which the shared loaders let through) as a clear error."""
    import pickle

    try:
        return load(path)
    except pickle.UnpicklingError as err:
        raise DripInputError(f"{path}: cannot read a .pt file: {str(err).splitlines()[0]}") from None


def _stream_records(values: Any, name: str, path: Path) -> Any:
    """A stream's 'x' or 'y': a tensor (N, ...) or a list with one record each."""
    import torch

    if (isinstance(values, torch.Tensor) and values.dim() > 0) or isinstance(values, (list, tuple)):
        return values
    raise DripInputError(
        f"{path}: '{name}': expected a tensor (N, ...) or a list of records, got {type(values).__name__}"
    )


def _records(values: Any, start: int, stop: int, name: str) -> torch.Tensor:
    """Records ``start:stop`` of a stream's 'x' or 'y' as one batch tensor."""
    import torch

    from .validation import as_tensor

    if isinstance(values, torch.Tensor):
        return values[start:stop]
    try:
        return torch.stack(
            [as_tensor(value, f"{name}[{start + i}]") for i, value in enumerate(values[start:stop])]
        )
    except RuntimeError as err:
        raise DripInputError(
            f"{name}: records {start} to {stop - 1} differ in shape or dtype ({err})"
        ) from None


def _resume_point(store: SampleStore, key: str, digest: str, stream: Path) -> tuple[int, int]:
    """Where an earlier run on this stream stopped: (next index, malformed samples it met)."""
    import json

    from .errors import DripStoreError

    saved = store.checkpoint(key)
    if saved is None:
        return 0, 0
    try:
        progress = json.loads(saved)
        start, malformed, sha256 = int(progress["next"]), int(progress["malformed"]), progress["sha256"]
    except (ValueError, TypeError, KeyError, RecursionError):
        raise DripStoreError(
            f"{store.path}: progress record for {stream.name} is damaged: {saved!r}"
        ) from None
    if sha256 != digest:
        raise DripInputError(
            f"--stream: {store.path} holds samples of another file named {stream.name} (its "
            "SHA-256 differs); use a new store, or rename the stream file"
        )
    return start, malformed


def _run_filter(args: argparse.Namespace) -> int:
    import hashlib
    import json

    from tqdm.auto import tqdm

    from .errors import DripStoreError
    from .filter import DripFilter
    from .score import DripScorer
    from .store import SampleStore
    from .thresholds import Thresholds

    if args.batch_size < 1:
        raise DripInputError(f"--batch-size: expected a positive number, got {args.batch_size}")
    model = _load_filter_file(_load_model, args.model)
    thresholds = Thresholds.load(args.thresholds)
    x, y = _load_filter_file(_load_tensors, args.stream)
    x, y = _stream_records(x, "x", args.stream), _stream_records(y, "y", args.stream)
    scorer = DripScorer(model, args.layer or thresholds.layer or None, thresholds.statistic)
    if len(x) != len(y):
        raise DripInputError(f"{args.stream}: {len(x)} samples but {len(y)} labels")
    # Sample ids are "<stream file name>:<index>"; the stream's hash tells a rerun from a new file.
    digest = hashlib.sha256(args.stream.read_bytes()).hexdigest()
    key = f"drip filter:{args.stream.name}"
    malformed: list[tuple[int, str]] = []
    with SampleStore(args.store, args.capacity_bytes, args.capacity_count, args.when_full) as store:
        drip_filter = DripFilter(scorer, thresholds, store, allow_model_mismatch=args.allow_model_mismatch)
        start, earlier_malformed = _resume_point(store, key, digest, args.stream)

        def offer(first: int, stop: int) -> None:
            # The position is committed with the batch's samples: a kill never separates them.
            progress = {"next": stop, "malformed": earlier_malformed + len(malformed), "sha256": digest}
            drip_filter.offer_batch(
                _records(x, first, stop, "x"),
                _records(y, first, stop, "y"),
                sources=[f"{args.stream.name}:{i}" for i in range(first, stop)],
                checkpoint=(key, json.dumps(progress)),
            )

        index = start
        try:
            for index in tqdm(range(start, len(x), args.batch_size), desc="filter", disable=args.quiet):
                stop = min(index + args.batch_size, len(x))
                try:
                    offer(index, stop)
                except DripInputError:
                    # A bad sample fails its whole batch and changes nothing: find it one by one.
                    for i in range(index, stop):
                        try:
                            offer(i, i + 1)
                        except DripInputError as err:
                            malformed.append((i, " ".join(str(err).split())))
        except DripStoreError as err:
            raise DripStoreError(
                f"{err}; stopped at sample {index}, everything before it is stored: rerun the same "
                "command to resume"
            ) from None
        counters = drip_filter.counters
        print("| class | seen | kept | dropped | store full |\n|---|---|---|---|---|")
        for c in range(thresholds.num_classes):
            row = (c, counters.seen[c], counters.kept[c], counters.dropped[c], counters.rejected[c])
            print("| " + " | ".join(map(str, row)) + " |")
        if start:
            print(f"resumed at sample {start}: an earlier run decided samples 0 to {start - 1}")
        for i, reason in malformed:
            print(f"malformed sample {i}: {reason}")
        total_malformed = earlier_malformed + len(malformed)
        if total_malformed:
            print(f"{total_malformed} malformed samples skipped ({earlier_malformed} in earlier runs)")
        print(f"storage saving {counters.storage_saving:.1%}; store {args.store} holds {len(store)} samples")
    return 1 if args.strict and total_malformed else 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import torch

    torch.set_num_threads(max(1, args.threads))
    runners = {"demo": _run_demo, "calibrate": _run_calibrate, "filter": _run_filter}
    try:
        return runners[args.command](args)
    except DripError as err:
        # One line, whatever the message carries (torch and SQLite errors may span several).
        print(f"drip: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
