#!/usr/bin/env bash
# The selection-rule evidence of docs/experiments.md: every arm (DRIP at its default rule, one arm
# per rule, the paper's score, the controls at DRIP's count) on each regime, 3 seeds, then one
# table of them all (benchmarks/rules_table.py). About 2.5 hours on one core per regime pair.
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_WAIT_POLICY=PASSIVE
drip=.venv/bin/drip
arms=(full drip drip-paper drip-per-class drip-pooled drip-coverage random reservoir loss margin el2n loss-band)
run() { $drip experiment --sweep none --arms "${arms[@]}" --quiet "$@"; }

$drip data fetch mnist
run --dataset digits --out runs/rules/digits
run --dataset mnist --out runs/rules/mnist
run --dataset mnist --pool-limit 10000 --out runs/rules/mnist-10k
run --dataset mnist --difficulty graded --out runs/rules/mnist-graded
run --dataset mnist --imbalance 10 --out runs/rules/mnist-lt10
run --dataset mnist --noise label --noise-rate 0.2 --out runs/rules/mnist-label20
.venv/bin/python benchmarks/rules_table.py runs/rules/* --out benchmarks/results/rules
