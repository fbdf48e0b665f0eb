#!/usr/bin/env bash
# The lifelong evidence of docs/lifelong.md: DRIP's device against the rehearsal buffers, every arm
# at the same bytes and optimiser steps per round, 3 seeds each. Measured on one core of this
# machine: about 2 minutes per digits run (6 with 600 steps), 13-18 per MNIST or graded MNIST run,
# 35 per seed of the first speech run (seven arms), 60 to 85 for each three-arm speech run. Three
# tables, each at the settings it was made with:
# 1. benchmarks/results/lifelong/: the Training Phase's proxy stream at 20% of D0 and a full DRIP
#    store shared equally among classes (--proxy-fraction 0.2 --shares equal);
# 2. .../proxy64/: the proxy stream at today's 64%, shares still equal;
# 3. .../band-shares/: today's defaults (shares band), on digits, MNIST and graded MNIST, with
#    10pct/ (a 10% store) and speech/ (synthetic speech, three arms).
# Tables 1 and 2 were measured before the training loss was masked to the classes a training set
# holds and before the outputs a model never trained were parked (drip.train): their
# class-incremental rows differ from what these commands give today.
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_WAIT_POLICY=PASSIVE
lifelong() { .venv/bin/drip lifelong --proxy-fraction 0.2 --shares equal "$@"; }
speech=runs/data/speech-commands-synth

.venv/bin/drip data fetch mnist
test -d "$speech" || make synth-speech
for dataset in digits mnist; do
  for scenario in class-incremental class-mix domain; do
    lifelong --dataset "$dataset" --scenario "$scenario" --quiet --out "runs/lifelong/$dataset-$scenario"
  done
done
# GDumb's protocol: each round retrains from the initialisation, with the steps of the others and 4x.
for steps in 150 600; do
  lifelong --dataset digits --scenario class-incremental --retrain scratch --round-steps "$steps" \
    --quiet --out "runs/lifelong/digits-class-incremental-scratch-$steps"
done
# A store of 5% of the life's bytes, where what a full store keeps matters more.
lifelong --dataset mnist --scenario class-incremental --budget-fraction 0.05 --quiet \
  --out runs/lifelong/mnist-class-incremental-5pct
lifelong --dataset speech-commands --data-dir "$speech" --scenario class-incremental --quiet \
  --out runs/lifelong/speech-commands-class-incremental

mkdir -p benchmarks/results/lifelong
for run in runs/lifelong/*/; do
  name=$(basename "$run")
  mkdir -p "benchmarks/results/lifelong/$name"
  cp "$run"/summary.md "$run"/summary.json "$run"/*.png "benchmarks/results/lifelong/$name/"
done
.venv/bin/python benchmarks/lifelong_table.py runs/lifelong/*/ --out benchmarks/results/lifelong
# Digits and MNIST at today's default proxy share: what the initial model alone moves.
for dataset in digits mnist; do
  for scenario in class-incremental class-mix domain; do
    .venv/bin/drip lifelong --dataset "$dataset" --scenario "$scenario" --shares equal --quiet \
      --out "runs/lifelong64/$dataset-$scenario"
  done
done
.venv/bin/python benchmarks/lifelong_table.py runs/lifelong64/*/ --out benchmarks/results/lifelong/proxy64
# Today's defaults: the full store shares its bytes among classes as the band does; graded MNIST
# is the set whose classes differ in difficulty.
for data in "digits" "mnist" "mnist --difficulty graded"; do
  for scenario in class-incremental class-mix domain; do
    name="${data/ --difficulty /-}-$scenario"
    # shellcheck disable=SC2086  # $data is a data set and its options
    .venv/bin/drip lifelong --dataset $data --scenario "$scenario" --quiet --out "runs/lifelong-shares/$name"
    mkdir -p "benchmarks/results/lifelong/band-shares/$name"
    cp runs/lifelong-shares/"$name"/{summary.md,summary.json,*.png} "benchmarks/results/lifelong/band-shares/$name/"
  done
done
.venv/bin/python benchmarks/lifelong_table.py runs/lifelong-shares/*/ --out benchmarks/results/lifelong/band-shares
# DRIP with equal shares on graded MNIST, the same seeds: what the band's shares change there
# (on digits and MNIST the proxy64 runs are that comparison).
for scenario in class-incremental class-mix domain; do
  .venv/bin/drip lifelong --dataset mnist --difficulty graded --scenario "$scenario" --shares equal \
    --arms drip --quiet --out "runs/lifelong-equal/mnist-graded-$scenario"
  mkdir -p "benchmarks/results/lifelong/band-shares/equal/mnist-graded-$scenario"
  cp runs/lifelong-equal/mnist-graded-"$scenario"/summary.{md,json} \
    "benchmarks/results/lifelong/band-shares/equal/mnist-graded-$scenario/"
done
# A store of 10% of the life's bytes on graded MNIST, where what a full store keeps matters more.
for scenario in class-incremental class-mix domain; do
  .venv/bin/drip lifelong --dataset mnist --difficulty graded --scenario "$scenario" --budget-fraction 0.1 \
    --quiet --out "runs/lifelong-10pct/mnist-graded-$scenario"
  mkdir -p "benchmarks/results/lifelong/band-shares/10pct/mnist-graded-$scenario"
  cp runs/lifelong-10pct/mnist-graded-"$scenario"/{summary.md,summary.json,*.png} \
    "benchmarks/results/lifelong/band-shares/10pct/mnist-graded-$scenario/"
done
.venv/bin/python benchmarks/lifelong_table.py runs/lifelong-10pct/*/ --out benchmarks/results/lifelong/band-shares/10pct
# Synthetic speech at today's defaults: DRIP, the class-balanced reservoir and the unbounded store
# (the bars' arms; 60 to 85 minutes a run with another run beside it on this 2-core machine).
for scenario in class-incremental domain; do
  .venv/bin/drip lifelong --dataset speech-commands --data-dir "$speech" --scenario "$scenario" \
    --arms drip class-balanced unbounded --quiet --out "runs/lifelong-speech/speech-commands-$scenario"
  mkdir -p "benchmarks/results/lifelong/band-shares/speech/speech-commands-$scenario"
  cp runs/lifelong-speech/speech-commands-"$scenario"/{summary.md,summary.json,*.png} \
    "benchmarks/results/lifelong/band-shares/speech/speech-commands-$scenario/"
done
.venv/bin/python benchmarks/lifelong_table.py runs/lifelong-speech/*/ --out benchmarks/results/lifelong/band-shares/speech
# The margin's rival and the prediction never fall on a class DRIP's model has not trained on
# (parked outputs): 0% in every round; the rows measured before parking gave up to 100%.
.venv/bin/python benchmarks/lifelong_rivals.py runs/lifelong-shares/mnist-graded-class-incremental \
  --dataset mnist --difficulty graded
