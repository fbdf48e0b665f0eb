"""``drip experiment``: the evaluation protocol on a data set, every arm at equal storage."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..arms import ARMS
from .common import add_common, add_device, add_difficulty, add_proxy_fraction, add_rule, add_target

DATASETS = ("digits", "mnist", "cifar10", "speech-commands", "plant-village")


class _SweepAction(argparse.Action):
    """``--sweep``'s values as a tuple of q_high; ``none``, or no value at all, is the empty sweep
    (``type=float`` refused the ``none`` that the help offers)."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        words = [values] if isinstance(values, str) else list(values or [])
        if words in ([], ["none"]):
            setattr(namespace, self.dest, ())
            return
        try:
            sweep = tuple(float(word) for word in words)
        except ValueError:
            parser.error(f"argument {option_string}: expected q_high values or none, got {' '.join(words)!r}")
        setattr(namespace, self.dest, sweep)


def register(commands: argparse._SubParsersAction) -> None:
    """Add ``drip experiment`` to ``commands``."""
    experiment = commands.add_parser(
        "experiment",
        help="the evaluation protocol on a data set: DRIP against FULL and equal-storage controls",
        description="Per seed: D0 (20%) and stream S from the training data, Training Phase on D0, S "
        "through the filter into a store, then every arm retrained with the same optimiser-step "
        "budget: FULL, DRIP, DRIP with the paper's score and the loss band at the chosen band, "
        "RANDOM / class-balanced reservoir / loss / margin / entropy / EL2N at DRIP's kept count; "
        "then every arm but FULL again at each band of the sweep. A public data set that is not "
        "there yet is fetched first (checksums verified). Each finished seed is saved at once: "
        "rerunning an interrupted command resumes with the next seed. Writes results.json, "
        "summary.json, summary.md and plots to OUT.",
    )
    experiment.add_argument("--dataset", required=True, choices=sorted(DATASETS))
    experiment.add_argument(
        "--data-dir", type=Path, default=None, help="where the data set lies (default: $DRIP_DATA/<dataset>)"
    )
    experiment.add_argument("--seeds", type=int, default=3, help="number of seeds (default: 3)")
    experiment.add_argument(
        "--steps",
        type=int,
        default=None,
        help="optimiser steps per training (default: per data set, mnist 2000)",
    )
    experiment.add_argument(
        "--budget",
        choices=("steps", "epochs"),
        default="steps",
        help="same steps for every arm (default), or same epochs (fewer steps "
        "for smaller sets; FULL gets --steps)",
    )
    experiment.add_argument(
        "--noise",
        choices=("none", "label", "gaussian"),
        default="none",
        help="corrupt part of the stream only (D0 and test stay clean)",
    )
    experiment.add_argument("--noise-rate", type=float, default=0.2, help="fraction corrupted (default: 0.2)")
    experiment.add_argument(
        "--q-high",
        type=float,
        default=None,
        help="fixed fraction to drop from the top (default: band search)",
    )
    experiment.add_argument(
        "--q-low",
        type=float,
        default=None,
        help="per class, the fraction of the clean calibration scores below which a stream sample "
        "is dropped as contradicting its label (default: 0.01)",
    )
    experiment.add_argument(
        "--sweep",
        nargs="*",
        action=_SweepAction,
        default=None,
        metavar="Q_HIGH",
        help="q_high values of the band sweep (default: 0.2 0.3 0.4 0.5 0.6; none: no sweep, as is "
        "--sweep alone)",
    )
    experiment.add_argument(
        "--arms",
        nargs="+",
        default=None,
        choices=ARMS,
        metavar="ARM",
        help=f"arms to run (default: all of {', '.join(ARMS)})",
    )
    add_target(experiment)
    add_rule(experiment)
    add_difficulty(experiment)
    experiment.add_argument(
        "--imbalance",
        type=float,
        default=1.0,
        help="long-tailed training data: class c keeps ratio^(-c/(C-1)) of its samples, the test "
        "set stays as it is (default: 1, as the data set comes)",
    )
    experiment.add_argument(
        "--budget-bytes",
        type=int,
        default=None,
        help="also stream S through bands that adapt online to end at this many tensor bytes "
        "(arm drip-budget), against the class-balanced reservoir holding as many samples",
    )
    experiment.add_argument(
        "--pool-limit", type=int, default=None, help="use a stratified subset of this many training samples"
    )
    add_proxy_fraction(experiment)
    experiment.add_argument("--out", type=Path, default=None, help="output folder (default: runs/<name>)")
    add_device(experiment)
    add_common(experiment)
    experiment.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from ..data import dataset_dir, load_or_fetch
    from ..experiment import ExperimentConfig, run_experiment
    from ..parallel import resolve_device
    from ..report import markdown, write_report

    device = resolve_device(args.device)  # first: a bad name fails before any data is read
    config = ExperimentConfig.for_dataset(
        args.dataset,
        seeds=args.seeds,
        steps=args.steps,
        budget=args.budget,
        noise=args.noise,
        noise_rate=args.noise_rate,
        q_high=args.q_high,
        q_low=args.q_low,
        sweep=args.sweep,
        arms=tuple(args.arms) if args.arms else None,
        pool_limit=args.pool_limit,
        statistic=args.statistic,
        target=args.target,
        cam=args.cam,
        budget_bytes=args.budget_bytes,
        rule=args.rule,
        difficulty=args.difficulty,
        imbalance=args.imbalance,
        proxy_fraction=args.proxy_fraction,
    )
    # Any 28x28 IDX set loads as "mnist": its folder names it (Fashion-MNIST is not MNIST).
    data_name, folder_name = args.dataset, args.dataset
    if args.dataset == "mnist" and args.data_dir is not None and args.data_dir.resolve().name != "mnist":
        folder_name = args.data_dir.resolve().name
        data_name = f"{folder_name} (IDX)"
    out = args.out or Path("runs") / config.run_name(folder_name)
    splits = load_or_fetch(args.dataset, args.data_dir, progress=not args.quiet)
    source = "scikit-learn"
    if args.dataset != "digits":
        folder = dataset_dir(args.dataset, args.data_dir)
        source = str(folder)
        if (folder / "README.txt").is_file():  # a synthetic corpus says so in its README.txt
            source += f" ({(folder / 'README.txt').read_text().strip().rstrip('.')})"
    results = run_experiment(
        config,
        splits.train,
        out,
        test=splits.test,
        progress=not args.quiet,
        source=source,
        device=device,
        data_name=data_name,
    )
    summary = write_report(results, out)
    print(markdown(summary))
    print(f"wrote {out}/: results.json, summary.json, summary.md and plots ({results['elapsed_s']:.0f} s)")
    return 0
