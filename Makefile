# The two commands a newcomer runs: `make demo` and `make test`. Both set up .venv first.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.installed-bench
# One thread, and OpenMP threads that sleep instead of spinning: on a shared 2-core machine a
# spinning OpenMP pool next to any other busy process slowed torch 35-230x.
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: demo test lint format bench bench-scorer bench-export bench-mnist bench-rules bench-lifelong bench-budget bench-parallel venv clean synth-speech

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[test,export]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/drip demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

format: $(STAMP)
	$(BIN)/ruff check --fix src tests benchmarks
	$(BIN)/ruff format src tests benchmarks

bench: bench-scorer
	$(BIN)/python -m pytest -q -m slow

# captum is the benchmark's external reference only; the constraints keep torch at its pin.
$(BENCH_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[test,export,bench]'
	touch $(BENCH_STAMP)

bench-scorer: $(BENCH_STAMP)
	$(BIN)/python benchmarks/scorer.py $(ARGS)

# The exported ONNX scorer (float and int8) against torch and DripScorer: benchmarks/results/export.json.
bench-export: $(STAMP)
	$(BIN)/python benchmarks/export.py $(ARGS)

# drip.parallel: 1 against 2 processes (torchrun, Gloo), peak RSS at N and 10N samples, GPU batch 1024
# where CUDA exists: benchmarks/results/parallel.json.
bench-parallel: $(STAMP)
	$(BIN)/python benchmarks/parallel.py $(ARGS)

# The MNIST experiments of docs/experiments.md (hours on 2 cores).
bench-mnist: $(STAMP)
	bash benchmarks/mnist.sh

# What the band search sees (graded MNIST, MNIST), then the selection rules on ten regimes (digits,
# synthetic speech, and MNIST: 60k, a 10k pool, graded difficulty, both, a long tail, 20% flipped
# labels, both, Gaussian noise), every arm at equal storage, 3 seeds: benchmarks/results/rules/
# (about 3 hours on one core).
bench-rules: $(STAMP)
	bash benchmarks/rules.sh

# drip lifelong against the rehearsal buffers: three scenarios on digits, MNIST and graded MNIST, a
# 5% store, and synthetic speech, 3 seeds each, at the settings each table was made with:
# benchmarks/results/lifelong/ (about 8 hours on one core).
bench-lifelong: $(STAMP)
	bash benchmarks/lifelong.sh

# Adaptive thresholds under a byte budget against fixed ones and the reservoir (about an hour, one thread).
bench-budget: $(STAMP)
	test -d runs/data/speech-commands-synth || $(MAKE) synth-speech
	$(BIN)/python benchmarks/budget.py $(ARGS)

# A synthetic Speech Commands corpus (espeak-ng from Debian, installed for this target only).
synth-speech: $(STAMP)
	command -v espeak-ng >/dev/null || (apt-get update && apt-get install -y espeak-ng)
	$(BIN)/drip data synth-speech-commands --out runs/data/speech-commands-synth

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache .hypothesis
