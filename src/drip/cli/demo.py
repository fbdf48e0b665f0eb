"""``drip demo``: the whole DRIP path on scikit-learn's digits, no download."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import add_common


def register(commands: argparse._SubParsersAction) -> None:
    """Add ``drip demo`` to ``commands``."""
    demo = commands.add_parser(
        "demo",
        help="the whole DRIP path on scikit-learn's digits (no download)",
        description="Training Phase on D0, stream S one sample at a time through the filter into a "
        "sample store, then retrain FULL, DRIP, DRIP with the paper's score (same band), RANDOM and "
        "LOSS (DRIP's size) with the same step budget. Writes summary.json, summary.md, "
        "results.json, scores.png and heatmaps.png.",
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
    add_common(demo)
    demo.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from ..data import load_digits
    from ..experiment import DEMO_ARMS, ExperimentConfig, run_experiment
    from ..report import markdown, write_report

    # One sample at a time, as on a device; the arms of the paper's question.
    config = ExperimentConfig(
        seeds=args.seeds, steps=args.steps, q_high=args.q_high, arms=DEMO_ARMS, sweep=(), stream_batch=1
    )
    results = run_experiment(config, load_digits(), args.out, progress=not args.quiet)
    summary = write_report(results, args.out)
    print(markdown(summary))
    print(
        f"wrote {args.out}/summary.md, summary.json, results.json, scores.png, heatmaps.png, "
        "kept_per_class.png"
    )
    return 0
