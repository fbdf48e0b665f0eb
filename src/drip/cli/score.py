"""``drip score``: score and decide a whole data set (file, shard folder, image folder), on any ranks."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import DripInputError
from .common import add_common, add_device, load_model, print_counters, scorer_for

COLUMNS = ("index", "source", "label", "score", "kept", "reason", "sample_id")


def register(commands: argparse._SubParsersAction) -> None:
    """Add ``drip score`` to ``commands``."""
    score = commands.add_parser(
        "score",
        help="score a whole data set with bounded memory, on one or several processes (torchrun)",
        description="Scores every sample of DATA with MODEL, decides it against THRESHOLDS and writes "
        "one CSV row per sample to OUT (index, source id, label, score, kept, reason, store id), in "
        "index order; with --store, also stores what it keeps. DATA is a .pt file of 'x' and 'y', "
        "a folder of such .pt shards (read one shard at a time, in file-name order), or an image "
        "folder DATA/<class>/*.png|jpg (read at the model's input shape). Under `torchrun "
        "--nproc-per-node N drip score ...` each rank scores every N-th sample (Gloo on CPU, NCCL "
        "with --device cuda) and rank 0 alone decides and writes: decisions, store and CSV are "
        "those of one process. Exit codes: 0 done, 2 error.",
    )
    score.add_argument("--model", type=Path, required=True, help="the scorer model the thresholds belong to")
    score.add_argument("--thresholds", type=Path, required=True, help="thresholds JSON from drip calibrate")
    score.add_argument(
        "--data", type=Path, required=True, help=".pt file, folder of .pt shards, or image folder"
    )
    score.add_argument("--out", type=Path, required=True, help="CSV of per-sample scores and decisions")
    score.add_argument(
        "--store", type=Path, default=None, help="also store kept samples in this sample store"
    )
    score.add_argument("--capacity-count", type=int, default=None, help="most samples the store may hold")
    score.add_argument(
        "--capacity-bytes", type=int, default=None, help="most tensor bytes the store may hold"
    )
    score.add_argument("--when-full", choices=("reject", "evict"), default="reject", help="default: reject")
    score.add_argument(
        "--batch-size", type=int, default=256, help="samples per batch and rank (default: 256)"
    )
    score.add_argument(
        "--workers", type=int, default=0, help="DataLoader worker processes per rank (default: 0, none)"
    )
    score.add_argument("--layer", default=None, help="target layer (default: the one in THRESHOLDS)")
    score.add_argument(
        "--allow-model-mismatch",
        action="store_true",
        help="apply thresholds to a model other than the calibrated one",
    )
    add_device(score)
    add_common(score)
    score.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    import contextlib
    import csv
    import os

    from ..filter import DripFilter
    from ..parallel import Ranks, distributed, open_source, resolve_device, score_source
    from ..store import SampleStore
    from ..thresholds import Thresholds

    if args.batch_size < 1:
        raise DripInputError(f"--batch-size: expected a positive number, got {args.batch_size}")
    if args.store is None and (args.capacity_count is not None or args.capacity_bytes is not None):
        raise DripInputError("--capacity-count/--capacity-bytes: only mean something with --store")
    device = resolve_device(args.device, announce=Ranks.from_env().rank == 0)
    thresholds = Thresholds.load(args.thresholds)
    model = load_model(args.model)
    source = open_source(args.data, getattr(model, "input_shape", None))
    with distributed(device) as (ranks, device), contextlib.ExitStack() as stack:
        scorer = scorer_for(model.to(device), thresholds, args.layer)
        writer = ranks.rank == 0
        store = None
        if writer and args.store is not None:
            store = stack.enter_context(
                SampleStore(args.store, args.capacity_bytes, args.capacity_count, args.when_full)
            )
        drip_filter = DripFilter(scorer, thresholds, store, allow_model_mismatch=args.allow_model_mismatch)
        on_decisions = None
        partial = args.out.with_name(args.out.name + ".partial")
        if writer:
            try:
                handle = stack.enter_context(partial.open("w", newline=""))
            except OSError as err:
                raise DripInputError(f"--out: cannot write {partial}: {err}") from None
            stack.callback(partial.unlink, missing_ok=True)  # after a fault: no half-written CSV left
            rows = csv.writer(handle)
            rows.writerow(COLUMNS)

            def on_decisions(indices, decisions):
                for i, d in zip(indices, decisions):
                    sample_id = "" if d.sample_id is None else d.sample_id
                    row = (i, source.source_id(i), d.label, repr(d.score), int(d.kept), d.reason, sample_id)
                    rows.writerow(row)

        run_ = score_source(
            drip_filter,
            source,
            batch_size=args.batch_size,
            ranks=ranks,
            num_workers=args.workers,
            device=device,
            on_decisions=on_decisions,
            progress=not args.quiet,
        )
        if not writer:
            return 0
        handle.close()
        os.replace(partial, args.out)  # the CSV appears whole, or not at all
        print_counters(run_.counters, thresholds.num_classes)
        rate = len(source) / run_.elapsed_s if run_.elapsed_s > 0 else float("inf")
        held = f"; store {args.store} holds {len(store)} samples" if store is not None else ""
        print(
            f"scored {len(source)} samples on {ranks.world_size} process(es) in {run_.elapsed_s:.1f} s "
            f"({rate:,.0f}/s); storage saving {run_.counters.storage_saving:.1%}; wrote {args.out}{held}"
        )
    return 0
