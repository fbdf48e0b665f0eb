"""``drip calibrate``: thresholds for a user's own model, cheap mode or the full Training Phase."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import (
    add_common,
    add_proxy_fraction,
    add_rule,
    add_target,
    fresh_copy_factory,
    load_model,
    load_tensors,
)


def register(commands: argparse._SubParsersAction) -> None:
    """Add ``drip calibrate`` to ``commands``."""
    calibrate = commands.add_parser(
        "calibrate",
        help="calibrate thresholds for your own model",
        description="Cheap mode (--q-high): MODEL is trained, DATA is held-out data it never saw; "
        "the bands drop the top q_high of DATA's scores by --rule. Search mode (--search): MODEL "
        "gives the architecture only; the Training Phase splits DATA (your D0) into D0_train, a "
        "proxy stream (--proxy-fraction) and validation (20%), searches the band (largest saving "
        "first, stopping at the first that is not significantly worse than keeping everything) and "
        "saves the deployed scorer (where --save-model says).",
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
        "--q-low",
        type=float,
        default=0.01,
        help="per class, the fraction of the held-out scores below which a sample is dropped as "
        "contradicting its label (a flipped label) (default: 0.01)",
    )
    calibrate.add_argument(
        "--layer", default=None, help="target layer's dotted name (default: model.drip_layer)"
    )
    add_target(calibrate)
    add_rule(calibrate)
    calibrate.add_argument("--steps", type=int, default=500, help="optimiser steps per training (--search)")
    add_proxy_fraction(calibrate, "DATA")
    calibrate.add_argument(
        "--save-model",
        type=Path,
        default=None,
        help="where --search writes the trained scorer (default: OUT with .model.pt)",
    )
    calibrate.add_argument("--seed", type=int, default=0)
    add_common(calibrate)
    calibrate.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from ..calibrate import calibrate, training_phase
    from ..data import LabelledData
    from ..score import DripScorer
    from ..train import TrainConfig
    from ..validation import as_tensor

    model = load_model(args.model)
    x, y = (as_tensor(value, f"{args.data}: '{key}'") for key, value in zip("xy", load_tensors(args.data)))
    if args.search:
        num_classes = int(getattr(model, "num_classes", 0) or int(y.max()) + 1)
        d0 = LabelledData(
            args.data.stem, x.float(), y.long(), num_classes, tuple(map(str, range(num_classes)))
        )
        phase = training_phase(
            d0,
            fresh_copy_factory(model),
            TrainConfig(steps=args.steps),
            q_low=args.q_low,
            rule=args.rule,
            proxy_fraction=args.proxy_fraction,
            statistic=args.statistic,
            target=args.target,
            cam=args.cam,
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
            + ", ".join(
                f"{t.q_high:g} -> {t.val_accuracy:.4f} ({'pass' if t.passes(phase.confidence) else 'fail'})"
                for t in phase.trials
            )
        )
        print(f"Training Phase cost: {phase.cost_ratio:.1f}x one training; scorer saved to {save_model}")
    else:
        scorer = DripScorer(model, args.layer, args.statistic, args.target, cam=args.cam)
        thresholds = calibrate(
            scorer,
            x,
            y,
            q_high=args.q_high,
            q_low=args.q_low,
            rule=args.rule,
            num_classes=getattr(model, "num_classes", None) or int(y.max()) + 1,
        )
    thresholds.save(args.out)
    print(
        f"wrote {args.out}: {thresholds.num_classes} classes, q_high {thresholds.q_high:g}, "
        f"q_low {thresholds.q_low:g}, rule {thresholds.rule}"
    )
    return 0
