"""``drip lifelong``: DRIP's device over rounds under drift, against the rehearsal buffers."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import add_common, add_difficulty, add_proxy_fraction, add_rule

LIFELONG_DATASETS = ("digits", "mnist", "speech-commands", "cifar10", "plant-village")
SCENARIO_NAMES = ("none", "class-incremental", "class-mix", "domain")
SHARE_NAMES = ("equal", "band")
ARM_NAMES = ("drip", "drip-budget", "random", "reservoir", "class-balanced", "margin", "unbounded")


def register(commands: argparse._SubParsersAction) -> None:
    """Add ``drip lifelong`` to ``commands``."""
    lifelong = commands.add_parser(
        "lifelong",
        help="a device's life: rounds of filter -> store -> retrain -> recalibrate, against "
        "reservoir, class-balanced (GDumb) and other buffers at the same bytes",
        description="Per seed: the Training Phase on D0, then the stream in rounds under a drift "
        "scenario. Each round every arm stores what it chooses within the same bytes (DRIP: its "
        "band into a durable store, thinned class-balanced once full), retrains its model with the "
        "same optimiser steps, and is tested on the classes seen so far; DRIP then recalibrates on "
        "a reserve held back from the round. Each finished round is saved at once: rerunning an "
        "interrupted command resumes it, and a run with more --seeds reuses the seeds done. Writes "
        "results.json, summary.json, summary.md and plots to OUT.",
    )
    lifelong.add_argument("--dataset", required=True, choices=LIFELONG_DATASETS)
    lifelong.add_argument(
        "--data-dir", type=Path, default=None, help="where the data set lies (default: $DRIP_DATA/<dataset>)"
    )
    lifelong.add_argument(
        "--scenario",
        choices=SCENARIO_NAMES,
        default="class-incremental",
        help="how the stream drifts over rounds (drip.lifelong.scenarios; default: class-incremental)",
    )
    lifelong.add_argument("--rounds", type=int, default=None, help="rounds (default: 10; digits 5)")
    lifelong.add_argument("--seeds", type=int, default=3, help="number of seeds (default: 3)")
    lifelong.add_argument(
        "--budget-fraction",
        type=float,
        default=None,
        help="every store's bytes as a fraction of all the bytes the life offers (default: 0.25)",
    )
    lifelong.add_argument(
        "--round-steps", type=int, default=None, help="optimiser steps of each round's retraining"
    )
    lifelong.add_argument(
        "--steps", type=int, default=None, help="optimiser steps of the Training Phase's trainings"
    )
    lifelong.add_argument(
        "--retrain",
        choices=("fine-tune", "scratch"),
        default="fine-tune",
        help="fine-tune the current weights each round, or retrain from the initialisation as "
        "GDumb does (default: fine-tune)",
    )
    lifelong.add_argument(
        "--drop-initial", action="store_true", help="D0 does not stay on the device (default: it does)"
    )
    lifelong.add_argument(
        "--q-high", type=float, default=None, help="fixed band (default: the Training Phase's search)"
    )
    add_rule(lifelong)
    add_proxy_fraction(lifelong)
    lifelong.add_argument(
        "--shares",
        choices=SHARE_NAMES,
        default="band",
        help="how DRIP's full store shares its bytes among classes: band (each class as much as the "
        "band keeps of it: the rule's hard classes get more) or equal (class-balanced) (default: band)",
    )
    add_difficulty(lifelong)
    lifelong.add_argument(
        "--arms",
        nargs="+",
        default=None,
        choices=ARM_NAMES,
        metavar="ARM",
        help=f"arms to run (default: all of {', '.join(ARM_NAMES)})",
    )
    lifelong.add_argument(
        "--pool-limit", type=int, default=None, help="use a stratified subset of this many training samples"
    )
    lifelong.add_argument("--out", type=Path, default=None, help="output folder (default: runs/<name>)")
    add_common(lifelong)
    lifelong.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from ..data import load_or_fetch
    from ..lifelong.protocol import LifelongConfig, run_lifelong
    from ..lifelong.report import markdown, write_report

    config = LifelongConfig.for_dataset(
        args.dataset,
        scenario=args.scenario,
        rounds=args.rounds,
        seeds=args.seeds,
        budget_fraction=args.budget_fraction,
        round_steps=args.round_steps,
        steps=args.steps,
        retrain=args.retrain,
        keep_initial=not args.drop_initial,
        q_high=args.q_high,
        rule=args.rule,
        proxy_fraction=args.proxy_fraction,
        arms=tuple(args.arms) if args.arms else None,
        pool_limit=args.pool_limit,
        shares=args.shares,
        difficulty=args.difficulty,
    )
    out = args.out or Path("runs") / config.run_name()
    splits = load_or_fetch(args.dataset, args.data_dir, progress=not args.quiet)
    results = run_lifelong(config, splits.train, out, test=splits.test, progress=not args.quiet)
    summary = write_report(results, out)
    print(markdown(summary))
    print(f"wrote {out}/: results.json, summary.json, summary.md and plots ({results['elapsed_s']:.0f} s)")
    return 0
