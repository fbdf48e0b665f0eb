"""``drip filter``: stream a file of samples through DRIP into a durable, resumable sample store."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import DripInputError, DripStoreError
from .common import add_common, add_device, load_model, load_tensors, one_line, print_counters, scorer_for

if TYPE_CHECKING:  # torch loads lazily, so that --help stays fast
    import torch

    from ..store import SampleStore


def register(commands: argparse._SubParsersAction) -> None:
    """Add ``drip filter`` to ``commands``."""
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
    filt.add_argument(
        "--model",
        type=Path,
        required=True,
        help="the scorer model the thresholds belong to (with --engine onnx: a drip export file)",
    )
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
    filt.add_argument(
        "--when-full",
        choices=("reject", "evict"),
        default=None,
        help="default: evict with --adaptive, else reject",
    )
    filt.add_argument(
        "--adaptive",
        action="store_true",
        help="move the bands online so that the store ends the stream at --capacity-bytes, class-balanced "
        "(drip.budget); their state is committed with the store",
    )
    filt.add_argument(
        "--expected-length",
        type=int,
        default=None,
        help="with --adaptive: samples the store will be offered in all (default: the records in STREAM)",
    )
    filt.add_argument("--batch-size", type=int, default=64, help="samples scored per call (default: 64)")
    filt.add_argument("--layer", default=None, help="target layer (default: the one in THRESHOLDS)")
    filt.add_argument(
        "--engine",
        choices=("torch", "onnx"),
        default="torch",
        help="score with PyTorch, or with onnxruntime on a graph from drip export (default: torch)",
    )
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
    add_device(filt)
    add_common(filt)
    filt.set_defaults(handler=run)


def _stream_records(values: Any, name: str, path: Path) -> Any:
    """A stream's 'x' or 'y': a tensor (N, ...) or a list with one record each."""
    import torch

    if (isinstance(values, torch.Tensor) and values.dim() > 0) or isinstance(values, (list, tuple)):
        return values
    raise DripInputError(
        f"{path}: '{name}': expected a tensor (N, ...) or a list of records, got {type(values).__name__}"
    )


def _records(values: Any, indices: range | list[int], name: str) -> torch.Tensor:
    """The records ``indices`` of a stream's 'x' or 'y' as one batch tensor."""
    import torch

    from ..validation import as_tensor

    if isinstance(values, torch.Tensor):
        if isinstance(indices, range):
            return values[indices.start : indices.stop]
        return values[list(indices)]
    try:
        return torch.stack([as_tensor(values[i], f"{name}[{i}]") for i in indices])
    except RuntimeError as err:
        raise DripInputError(
            f"{name}: records {indices[0]} to {indices[-1]} differ in shape or dtype ({err})"
        ) from None


def _resume_point(store: SampleStore, key: str, digest: str, stream: Path) -> tuple[int, int]:
    """Where an earlier run on this stream stopped: (next index, malformed samples it met)."""
    import json

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


def _scorer(args: argparse.Namespace, thresholds: Any) -> tuple[Any, Any]:
    """The scorer of ``--engine`` and the thresholds the filter applies with it."""
    if args.engine == "onnx":
        from ..onnx_scorer import OnnxScorer

        if args.layer is not None:
            raise DripInputError("--layer: the layer is fixed in the exported graph; omit --layer")
        if args.device != "cpu":
            raise DripInputError("--device: --engine onnx runs on the CPU; omit --device")
        scorer = OnnxScorer(args.model, threads=args.threads)
        return scorer, scorer.filter_thresholds(thresholds, allow_model_mismatch=args.allow_model_mismatch)
    from ..parallel import resolve_device

    model = load_model(args.model).to(resolve_device(args.device))
    return scorer_for(model, thresholds, args.layer), thresholds


def run(args: argparse.Namespace) -> int:
    import hashlib
    import json

    from tqdm.auto import tqdm

    from ..budget import BudgetedFilter
    from ..filter import DripFilter
    from ..store import SampleStore
    from ..thresholds import Thresholds

    if args.batch_size < 1:
        raise DripInputError(f"--batch-size: expected a positive number, got {args.batch_size}")
    thresholds = Thresholds.load(args.thresholds)
    try:
        content = args.stream.read_bytes()
    except OSError as err:
        raise DripInputError(f"{args.stream}: cannot read a .pt file: {err}") from None
    x, y = load_tensors(args.stream, content)
    x, y = _stream_records(x, "x", args.stream), _stream_records(y, "y", args.stream)
    scorer, thresholds = _scorer(args, thresholds)
    if len(x) != len(y):
        raise DripInputError(f"{args.stream}: {len(x)} samples but {len(y)} labels")
    # Sample ids are "<stream file name>:<index>"; the stream's hash tells a rerun from a new file.
    digest = hashlib.sha256(content).hexdigest()
    key = f"drip filter:{args.stream.name}"
    malformed: list[tuple[int, str]] = []
    if args.adaptive and args.capacity_bytes is None:
        raise DripInputError("--adaptive: needs --capacity-bytes, the budget the bands move to fill")
    when_full = args.when_full or ("evict" if args.adaptive else "reject")
    with SampleStore(args.store, args.capacity_bytes, args.capacity_count, when_full) as store:
        if args.adaptive:
            drip_filter = BudgetedFilter(
                scorer,
                thresholds,
                store,
                len(x) if args.expected_length is None else args.expected_length,
                allow_model_mismatch=args.allow_model_mismatch,
            )
        else:
            drip_filter = DripFilter(
                scorer, thresholds, store, allow_model_mismatch=args.allow_model_mismatch
            )
        start, earlier_malformed = _resume_point(store, key, digest, args.stream)

        def progress(done: int) -> tuple[str, str]:
            """The checkpoint saying samples before ``done`` are decided (and how many were bad)."""
            bad = earlier_malformed + sum(1 for i, _ in malformed if i < done)
            return key, json.dumps({"next": done, "malformed": bad, "sha256": digest})

        def offer(indices: range | list[int], done: int) -> None:
            # The position is committed with the samples' decisions: a kill never separates them.
            drip_filter.offer_batch(
                _records(x, indices, "x"),
                _records(y, indices, "y"),
                sources=[f"{args.stream.name}:{i}" for i in indices],
                checkpoint=progress(done),
            )

        def well_formed(i: int) -> bool:
            """Whether record i passes the scorer's input checks; else it is noted as malformed."""
            try:
                one = range(i, i + 1)
                scorer.prepare(_records(x, one, "x"), _records(y, one, "y"), thresholds.num_classes)
            except DripInputError as err:
                malformed.append((i, one_line(err)))
                return False
            return True

        index = start
        try:
            for index in tqdm(range(start, len(x), args.batch_size), desc="filter", disable=args.quiet):
                stop = min(index + args.batch_size, len(x))
                try:
                    offer(range(index, stop), stop)
                    continue
                except DripInputError:
                    pass
                # A bad record fails its whole batch and changes nothing: find it by the input
                # checks alone, then decide the rest of the batch in one scoring and one commit.
                good = [i for i in range(index, stop) if well_formed(i)]
                try:
                    if good:
                        offer(good, stop)
                    else:
                        store.add_batch([], [], checkpoint=progress(stop))
                except DripInputError:
                    # Only scoring tells (e.g. a sample the model overflows on): one at a time.
                    for i in good:
                        try:
                            offer([i], i + 1)
                        except DripInputError as err:
                            malformed.append((i, one_line(err)))
                    store.add_batch([], [], checkpoint=progress(stop))
        except DripStoreError as err:
            raise DripStoreError(
                f"{err}; stopped at sample {index}, everything before it is stored: rerun the same "
                "command to resume"
            ) from None
        counters = drip_filter.counters
        print_counters(counters, thresholds.num_classes)
        if start:
            print(f"resumed at sample {start}: an earlier run decided samples 0 to {start - 1}")
        for i, reason in malformed:
            print(f"malformed sample {i}: {reason}")
        total_malformed = earlier_malformed + len(malformed)
        if total_malformed:
            print(f"{total_malformed} malformed samples skipped ({earlier_malformed} in earlier runs)")
        print(f"storage saving {counters.storage_saving:.1%}; store {args.store} holds {len(store)} samples")
        if args.adaptive:
            print(f"adaptive bands: the store holds {store.bytes_used} of {args.capacity_bytes} bytes")
    return 1 if args.strict and total_malformed else 0
