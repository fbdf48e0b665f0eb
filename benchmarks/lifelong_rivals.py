"""How often the DRIP score's margin compares a label with a class the model has never trained on,
round by round of a class-incremental lifelong run (docs/lifelong.md, "The margin's rival").

After each round r, DRIP's model (``seedS/drip/model-r<r>.pt``) is run on the test samples of the
classes seen by then (``round_test``), and each sample's rival, the strongest class other than its
label, is checked against those classes. Printed per seed and round: the share of rivals outside
them and of predictions outside them. A model whose untrained outputs are parked
(``drip.train.park_outputs``) gives 0 for both.

python benchmarks/lifelong_rivals.py runs/lifelong-shares/mnist-graded-class-incremental \
    --dataset mnist --difficulty graded
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from drip.cam import target_logit_gradient
from drip.data import load_or_fetch
from drip.lifelong.protocol import LifelongConfig, plan_life, round_test, with_difficulty
from drip.models import build_model
from drip.train import predict_logits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="a `drip lifelong --scenario class-incremental` run folder")
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--difficulty", default=None)
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    config = LifelongConfig.for_dataset(
        args.dataset, scenario="class-incremental", difficulty=args.difficulty
    )
    splits = load_or_fetch(args.dataset, args.data_dir, progress=False)
    pool, test = with_difficulty(config.difficulty, splits.train, splits.test)
    for seed in range(config.seeds):
        life = plan_life(config, pool, test, seed)
        cells = []
        for round_index in range(config.rounds):
            path = args.run / f"seed{seed}" / "drip" / f"model-r{round_index}.pt"
            if not path.is_file():
                break
            samples = round_test(config, life, round_index, seed)
            learnt = torch.unique(samples.y)
            model = build_model(config.model, pool.num_classes)
            model.load_state_dict(torch.load(path, weights_only=True))
            logits = predict_logits(model, samples.x)
            rivals = target_logit_gradient("margin", logits, samples.y).argmin(1)  # the scorer's rival
            outside_rival = float((~torch.isin(rivals, learnt)).float().mean())
            outside_prediction = float((~torch.isin(logits.argmax(1), learnt)).float().mean())
            cells.append(
                f"r{round_index} ({len(learnt)} classes): rival {100 * outside_rival:.0f}%, "
                f"prediction {100 * outside_prediction:.1f}%"
            )
        print(f"seed {seed}: " + "; ".join(cells))


if __name__ == "__main__":
    main()
