#!/usr/bin/env bash
# The selection-rule evidence of docs/experiments.md. First what the Training Phase's band search
# sees (benchmarks/band_search_study.py: every candidate of the search, P at 20% and 64% of D0,
# the default and the paper's rule), then DRIP at its default rule, one arm per other rule and the
# controls at DRIP's count on each regime, 3 seeds, and one table of them all
# (benchmarks/rules_table.py). About 15 minutes per regime on one core; one thread per run.
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_WAIT_POLICY=PASSIVE
drip=.venv/bin/drip
python=.venv/bin/python
arms=(full drip drip-per-class drip-pooled random margin)
run() { $drip experiment --sweep none --arms "${arms[@]}" --quiet "$@"; }

$drip data fetch mnist
$python benchmarks/band_search_study.py --dataset mnist --difficulty graded --seeds 4 --out runs/band-search/mnist-graded.json
$python benchmarks/band_search_study.py --dataset mnist --out runs/band-search/mnist.json
$python benchmarks/band_search_table.py runs/band-search/*.json --out benchmarks/results/rules

[ -d runs/data/speech-commands-synth ] || $drip data synth-speech-commands --out runs/data/speech-commands-synth
run --dataset digits --out runs/rules/digits
run --dataset mnist --out runs/rules/mnist
run --dataset mnist --pool-limit 10000 --out runs/rules/mnist-10k
run --dataset mnist --difficulty graded --out runs/rules/mnist-graded
run --dataset mnist --difficulty graded --pool-limit 10000 --out runs/rules/mnist-10k-graded
run --dataset mnist --imbalance 10 --out runs/rules/mnist-lt10
run --dataset mnist --noise label --noise-rate 0.2 --out runs/rules/mnist-label20
run --dataset mnist --difficulty graded --noise label --noise-rate 0.2 --out runs/rules/mnist-graded-label20
run --dataset mnist --noise gaussian --noise-rate 0.2 --out runs/rules/mnist-gaussian20
run --dataset speech-commands --data-dir runs/data/speech-commands-synth --steps 400 \
    --out runs/rules/speech-commands-synth
$python benchmarks/rules_table.py runs/rules/* --out benchmarks/results/rules
