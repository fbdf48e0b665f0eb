#!/usr/bin/env bash
# The lifelong evidence of docs/lifelong.md: DRIP's device against the rehearsal buffers, two
# scenarios on two data sets, 3 seeds each, every arm at the same bytes and steps per round. About
# 10 minutes for digits and 1.5 hours for MNIST on one core.
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_WAIT_POLICY=PASSIVE
drip=.venv/bin/drip

$drip data fetch mnist
for dataset in digits mnist; do
  for scenario in class-incremental class-mix; do
    $drip lifelong --dataset "$dataset" --scenario "$scenario" --quiet --out "runs/lifelong/$dataset-$scenario"
  done
done
mkdir -p benchmarks/results/lifelong
for run in runs/lifelong/*/; do
  name=$(basename "$run")
  mkdir -p "benchmarks/results/lifelong/$name"
  cp "$run"/summary.md "$run"/summary.json "$run"/*.png "benchmarks/results/lifelong/$name/"
done
