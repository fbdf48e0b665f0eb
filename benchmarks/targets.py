"""Which Grad-CAM target and which selection rule make DRIP win: the evidence behind the default.

Per seed, one scorer model is trained on D0_train (the Training Phase's cheap split) and scores the
proxy stream P and the stream S with every Grad-CAM target (``label``: z_y, the paper's;
``margin``: z_y - max_{j != y} z_j; ``logprob``: log softmax_y). Each (target, rule) variant keeps
its share of S at each q (the fraction it is meant to drop), calibrated on P's scores:

* ``top``: per class, drop what scores above the class's (1 - q) quantile (DRIP's band);
* ``pooled``: the same with one quantile for all classes (hard classes keep more);
* ``thin``: per class, keep with a probability falling linearly with the score's percentile
  among P's scores (the stochastic thinning of the earlier ``drip-rank`` arm): some redundant
  samples survive. It lost to ``top`` (docs/how-it-works.md, "Which score"), so it lives here only.

Controls at the count of ``margin/top`` at each q: RANDOM and LOSS (the highest-loss samples of the
whole stream), and the loss band (``top`` on the negative loss, per class). Every training starts
from the same initialisation with the same optimiser-step budget; FULL trains on all of S.

    .venv/bin/python benchmarks/targets.py --dataset mnist --pool-limit 10000

writes ``benchmarks/results/targets/<name>.json`` and ``.md``. One torch thread.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch
from tqdm.auto import tqdm

from drip import selectors
from drip.calibrate import training_phase
from drip.data import load_dataset
from drip.experiment import DATASET_DEFAULTS, ExperimentConfig, seed_splits
from drip.models import build_model
from drip.score import DripScorer, score_in_batches
from drip.thresholds import Thresholds
from drip.train import evaluate, fit, predict_logits

VARIANTS = ("label/top", "margin/top", "logprob/top", "margin/pooled", "margin/thin", "label/thin")
CONTROLS = ("random", "loss", "loss-band")
POOLED = 10**9  # min_class_points no class reaches: one quantile for all classes


def class_percentile(values, labels, reference, reference_labels) -> torch.Tensor:
    """Per sample: the fraction of its class's reference values below it (mid-rank for ties)."""
    result = torch.empty(len(values), dtype=torch.float64)
    for label in labels.unique().tolist():
        basis = torch.sort(reference[reference_labels == label].double()).values
        mask = labels == label
        below = torch.searchsorted(basis, values[mask].double(), right=False)
        not_above = torch.searchsorted(basis, values[mask].double(), right=True)
        result[mask] = (below + not_above).double() / (2 * len(basis))
    return result


def thinning_keep_probability(percentile: torch.Tensor, drop_fraction: float) -> torch.Tensor:
    """1 up to a knee, then linear to 0 at the top: a uniform percentile loses ``drop_fraction``."""
    if drop_fraction <= 0.5:
        knee = 1 - 2 * drop_fraction
        return ((1 - percentile) / (1 - knee)).clamp(0, 1)
    return (1 - percentile / (2 * (1 - drop_fraction))).clamp(0, 1)


def keep_mask(rule: str, scores, labels, proxy_scores, proxy_labels, num_classes, q, generator):
    """Which stream samples ``rule`` keeps when meant to drop a fraction ``q`` (calibrated on P)."""
    if rule == "thin":
        percentile = class_percentile(scores, labels, proxy_scores, proxy_labels)
        probability = thinning_keep_probability(percentile, q)
        return torch.rand(len(labels), generator=generator, dtype=torch.float64) < probability
    points = POOLED if rule == "pooled" else 30
    bands = Thresholds.from_scores(proxy_scores, proxy_labels, num_classes, q_high=q, min_class_points=points)
    return bands.keep(scores, labels)


def run_seed(
    config: ExperimentConfig, pool, test, seed: int, qs: list[float], variants: list[str], progress: bool
) -> dict:
    d0, stream, test = seed_splits(config, pool, test, seed)

    def factory():
        return build_model(config.model, pool.num_classes)

    phase = training_phase(d0, factory, config.train_config(), q_high=0.5, seed=seed, progress=progress)
    proxy = phase.calibration
    scores = {}
    for score in sorted({variant.split("/")[0] for variant in variants}):
        target, _, cam = score.partition("+")
        scorer = DripScorer(phase.model, target=target, cam=cam or "gradcam")
        scores[score] = (
            score_in_batches(scorer, proxy.x, proxy.y)[0],
            score_in_batches(scorer, stream.x, stream.y)[0],
        )
    stream_losses = selectors.loss_values(predict_logits(phase.model, stream.x), stream.y)
    proxy_losses = selectors.loss_values(phase.calibration_logits, proxy.y)
    generator = torch.Generator().manual_seed(seed)

    def train(keep: torch.Tensor, name: str) -> dict:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = factory()
        x, y = torch.cat([d0.x, stream.x[keep]]), torch.cat([d0.y, stream.y[keep]])
        fit(model, x, y, config.train_config(), seed=seed, progress=progress, desc=f"seed {seed}: {name}")
        return {"accuracy": evaluate(model, test.x, test.y), "kept": int(keep.sum())}

    record: dict = {
        "seed": seed,
        "stream": len(stream),
        "full": train(torch.ones(len(stream), dtype=torch.bool), "full"),
    }
    for q in qs:
        point: dict = {}
        for variant in variants:
            score, rule = variant.split("/")
            proxy_scores, stream_scores = scores[score]
            keep = keep_mask(
                rule, stream_scores, stream.y, proxy_scores, proxy.y, pool.num_classes, q, generator
            )
            point[variant] = train(keep, f"{variant} q={q}")
        count = point[variants[0]]["kept"]
        mask = torch.zeros(len(stream), dtype=torch.bool)
        controls = {
            "random": selectors.random_count(len(stream), count, generator),
            "loss": selectors.top_count(stream_losses, count),
        }
        for name, index in controls.items():
            keep = mask.clone()
            keep[index] = True
            point[name] = train(keep, f"{name} q={q}")
        keep = keep_mask(
            "top", -stream_losses, stream.y, -proxy_losses, proxy.y, pool.num_classes, q, generator
        )
        point["loss-band"] = train(keep, f"loss-band q={q}")
        record[str(q)] = point
    return record


def summarise(runs: list[dict], qs: list[float], variants: list[str]) -> str:
    full = [r["full"]["accuracy"] for r in runs]
    lines = [
        f"FULL: {100 * statistics.fmean(full):.2f} ± {100 * statistics.pstdev(full):.2f} "
        f"({len(runs)} seeds, {runs[0]['stream']} stream samples)",
        "",
        "| q | arm | saving (%) | accuracy (%) | - RANDOM (pp) | - FULL (pp) | - LOSS (pp) |",
        "|---|---|--:|--:|--:|--:|--:|",
    ]
    for q in qs:
        for arm in (*variants, *CONTROLS):
            acc = [r[str(q)][arm]["accuracy"] for r in runs]
            saving = statistics.fmean(1 - r[str(q)][arm]["kept"] / r["stream"] for r in runs)

            def gap(other: list[float], acc: list[float] = acc) -> str:
                diffs = [a - o for a, o in zip(acc, other)]
                wins = sum(d > 0 for d in diffs)
                return f"{100 * statistics.fmean(diffs):+.2f} ({wins}/{len(diffs)})"

            random = [r[str(q)]["random"]["accuracy"] for r in runs]
            loss = [r[str(q)]["loss"]["accuracy"] for r in runs]
            lines.append(
                f"| {q:g} | {arm} | {100 * saving:.1f} | {100 * statistics.fmean(acc):.2f} ± "
                f"{100 * statistics.pstdev(acc):.2f} | {gap(random)} | {gap(full)} | {gap(loss)} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dataset", default="digits", choices=sorted(DATASET_DEFAULTS))
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--pool-limit", type=int, default=None)
    parser.add_argument("--q", type=float, nargs="+", default=[0.3, 0.5])
    parser.add_argument(
        "--variants",
        nargs="+",
        default=list(VARIANTS),
        help="SCORE/RULE with SCORE a target, optionally +CAM (e.g. margin+hirescam), RULE top, "
        "pooled or thin; the controls take the first variant's count",
    )
    parser.add_argument("--name", default=None, help="results file name (default: from the data set)")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    config = ExperimentConfig.for_dataset(args.dataset, steps=args.steps, pool_limit=args.pool_limit)
    splits = load_dataset(args.dataset, args.data_dir, progress=not args.quiet)
    name = args.name or args.dataset + (f"-{args.pool_limit // 1000}k" if args.pool_limit else "")
    out = Path("benchmarks/results/targets")
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    runs = []
    for seed in tqdm(range(args.seeds), desc="seeds", disable=args.quiet):
        runs.append(run_seed(config, splits.train, splits.test, seed, args.q, args.variants, not args.quiet))
        # Written after every seed, so a long run can be read (and stopped) half way.
        payload = {
            "config": vars(args) | {"data_dir": str(args.data_dir), "steps": config.steps},
            "elapsed_s": time.perf_counter() - start,
            "threads": 1,
            "seeds": runs,
        }
        (out / f"{name}.json").write_text(json.dumps(payload, indent=1) + "\n")
        (out / f"{name}.md").write_text(f"# {name}\n\n" + summarise(runs, args.q, args.variants))
    print(summarise(runs, args.q, args.variants))
    print(f"{time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
