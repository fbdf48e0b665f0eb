"""How much of the learner's own signal each DRIP score carries: per-class rank correlations.

Trains one model on half of a stratified slice of the training data, then scores the other half
with every Grad-CAM target and CAM variant, and prints, per variant, the Spearman correlation
with the negative loss and with the margin z_y - max_{j != y} z_j, averaged over classes (DRIP's
bands are per class, so only the order within a class matters), and the fraction of empty maps
(score 0). One torch thread.

    .venv/bin/python benchmarks/score_correlation.py --dataset mnist --steps 1500
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import torch
from scipy.stats import spearmanr

from drip import selectors
from drip.cam import CAM_METHODS
from drip.data import load_dataset, stratified_split
from drip.experiment import DATASET_DEFAULTS
from drip.models import build_model
from drip.score import DripScorer, score_in_batches
from drip.train import TrainConfig, fit, predict_logits

TARGETS = ("label", "margin", "logprob")


def per_class_rho(values: np.ndarray, reference: np.ndarray, labels: np.ndarray) -> float:
    return float(
        np.mean([spearmanr(values[labels == c], reference[labels == c]).statistic for c in np.unique(labels)])
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dataset", default="mnist", choices=sorted(DATASET_DEFAULTS))
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--fraction", type=float, default=0.15, help="slice of the training data used")
    parser.add_argument("--steps", type=int, default=1500)
    args = parser.parse_args()
    torch.set_num_threads(1)
    pool = load_dataset(args.dataset, args.data_dir, progress=False).train
    pool = pool.subset(stratified_split(pool.y, (args.fraction, 1 - args.fraction), 0)[0])
    train_index, eval_index = stratified_split(pool.y, (0.5, 0.5), 1)
    train, held_out = pool.subset(train_index), pool.subset(eval_index)
    torch.manual_seed(0)
    model = build_model(DATASET_DEFAULTS[args.dataset]["model"], pool.num_classes)
    fit(model, train.x, train.y, TrainConfig(steps=args.steps), progress=False)
    logits = predict_logits(model, held_out.x)
    labels = held_out.y.numpy()
    negative_loss = -selectors.loss_values(logits, held_out.y).numpy()
    margin = selectors.margin_values(logits, held_out.y).numpy()
    accuracy = float((logits.argmax(1) == held_out.y).float().mean())
    print(f"{args.dataset}: {len(train)} training, {len(held_out)} held-out samples, accuracy {accuracy:.4f}")
    print("| target | CAM | rho with -loss | rho with margin | empty maps |\n|---|---|--:|--:|--:|")
    rows = []
    for target in TARGETS:
        for cam in CAM_METHODS:
            scores = score_in_batches(DripScorer(model, target=target, cam=cam), held_out.x, held_out.y)[0]
            scores = scores.double().numpy()
            row = {
                "target": target,
                "cam": cam,
                "rho_negative_loss": per_class_rho(scores, negative_loss, labels),
                "rho_margin": per_class_rho(scores, margin, labels),
                "empty": float((scores == 0).mean()),
            }
            rows.append(row)
            figures = (row["rho_negative_loss"], row["rho_margin"], row["empty"])
            print(f"| {target} | {cam} | " + " | ".join(f"{v:.3f}" for v in figures) + " |")
    out = Path("benchmarks/results/targets") / f"correlation-{args.dataset}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {"config": vars(args) | {"data_dir": str(args.data_dir)}, "accuracy": accuracy, "rows": rows},
            indent=1,
        )
        + "\n"
    )


if __name__ == "__main__":
    main()
