#!/usr/bin/env bash
# The MNIST experiments reported in docs/experiments.md, one after another (about 10 hours on one core).
# Each writes runs/<name>/ (results.json, summary.md, plots); copy the ones you report into
# benchmarks/results/.
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_WAIT_POLICY=PASSIVE
drip=.venv/bin/drip
noise_arms=(full drip drip-paper random loss loss-band)

$drip data fetch mnist
$drip experiment --dataset mnist --quiet
for rate in 0.2 0.4; do
  # The default budget (2000 steps on the whole 60k pool): FULL does not memorise the flips.
  $drip experiment --dataset mnist --noise label --noise-rate "$rate" --q-low 0.05 --sweep \
    --arms "${noise_arms[@]}" --quiet
  # A budget long enough that FULL memorises the flips: 8000 steps on a 10k pool (~60 epochs).
  $drip experiment --dataset mnist --noise label --noise-rate "$rate" --q-low 0.05 --sweep \
    --arms "${noise_arms[@]}" --pool-limit 10000 --steps 8000 --out "runs/mnist-label${rate#0.}0-long" --quiet
done
