"""What the Training Phase's band search sees, against what deployment then shows.

For each seed of a ``drip experiment`` configuration this rebuilds the seed's D0 (the same
split, regime and training as the experiment) and runs *every* candidate band of the search,
not only up to the first that passes, for each proxy share and rule asked for. Besides the
reference it trains a second reference on the same data from another initialisation: the gap
between two trainings of the same data is the noise a one-training trial cannot tell from a loss.
Each model's per-sample correctness on W is saved, so any decision test can be replayed offline.

    python benchmarks/band_search_study.py --dataset mnist --difficulty graded --seeds 5 \
        --rules coverage per-class --proxy-fractions 0.2 0.64 --out runs/band-search/mnist-graded.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from drip.calibrate import DEFAULT_CANDIDATES, _correct, _join
from drip.data import load_or_fetch
from drip.data.base import stratified_split
from drip.data.regimes import with_difficulty
from drip.experiment import ExperimentConfig, seed_splits
from drip.models import build_model
from drip.score import DripScorer, score_in_batches
from drip.thresholds import Thresholds
from drip.train import fit

SECOND_INITIALISATION = 7919  # any other seed: a second reference from another starting point


def correct_on(model: torch.nn.Module, data) -> list[int]:
    return _correct(model, data).int().tolist()


def study_seed(config: ExperimentConfig, pool, test, seed: int, proxy_fractions, rules) -> dict:
    d0, _, _ = seed_splits(config, pool, test, seed)
    train_config = config.train_config()

    def train(data, init_seed: int) -> torch.nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(init_seed)
            model = build_model(config.model, d0.num_classes)
        fit(model, data.x, data.y, train_config, seed=init_seed, progress=False)
        return model

    record: dict = {"seed": seed, "d0": len(d0), "splits": []}
    for proxy_fraction in proxy_fractions:
        parts = stratified_split(d0.y, (0.8 - proxy_fraction, proxy_fraction, 0.2), seed)
        train_part, proxy, validation = (d0.subset(p) for p in parts)
        start = time.perf_counter()
        probe = DripScorer(train(train_part, seed), None, config.statistic, config.target, cam=config.cam)
        probe_scores, _ = score_in_batches(probe, proxy.x, proxy.y)
        full = _join(train_part, proxy)
        split: dict = {
            "proxy_fraction": proxy_fraction,
            "sizes": [len(train_part), len(proxy), len(validation)],
            "reference": correct_on(train(full, seed), validation),
            "second_reference": correct_on(train(full, SECOND_INITIALISATION + seed), validation),
            "candidates": [],
        }
        for rule in rules:
            for q in DEFAULT_CANDIDATES:
                kept = Thresholds.from_scores(
                    probe_scores, proxy.y, d0.num_classes, q_high=q, rule=rule
                ).keep(probe_scores, proxy.y)
                candidate = train(_join(train_part, proxy.subset(kept.nonzero().flatten())), seed)
                correct = correct_on(candidate, validation)
                trial = {"rule": rule, "q_high": q, "kept": int(kept.sum()), "correct": correct}
                split["candidates"].append(trial)
        split["elapsed_s"] = time.perf_counter() - start
        record["splits"].append(split)
        print(f"seed {seed}, proxy {proxy_fraction}: {split['elapsed_s']:.0f} s", flush=True)
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument("--difficulty", default="none")
    parser.add_argument("--imbalance", type=float, default=1.0)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--rules", nargs="+", default=["coverage", "per-class"])
    parser.add_argument("--proxy-fractions", nargs="+", type=float, default=[0.2, 0.64])
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    config = ExperimentConfig.for_dataset(args.dataset, difficulty=args.difficulty, imbalance=args.imbalance)
    splits = load_or_fetch(args.dataset, progress=False)
    pool, test = with_difficulty(config.difficulty, splits.train, splits.test)
    records = json.loads(args.out.read_text())["seeds"] if args.out.is_file() else []
    done = {r["seed"] for r in records}
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        if seed in done:
            continue
        records.append(study_seed(config, pool, test, seed, args.proxy_fractions, args.rules))
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"config": vars(args) | {"out": str(args.out)}, "seeds": records}))


if __name__ == "__main__":
    main()
