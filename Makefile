# ittrna — set-up and main jobs. Each target creates what it needs (virtualenv, data).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
ART    := artifacts
export ITTRNA_DATA ?= $(HOME)/.cache/ittrna

.PHONY: demo test test-slow lint data bench clean help

help:
	@echo "make demo       train the MLP on MNIST, show its accuracy collapse on imperfect chips and its rescue"
	@echo "make test       run the test suite (creates .venv with dev extras, fetches data)"
	@echo "make test-slow  run the slow checks (full training runs, accuracy targets)"
	@echo "make lint       ruff + mypy"
	@echo "make bench      simulation overhead benchmark"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# torch first, pinned to the CPU build on this machine's disk, so pip never pulls a multi-GB CUDA build.
$(VENV)/.torch: | $(BIN)/python
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q torch==2.13.0
	@touch $@

$(VENV)/.installed: pyproject.toml $(VENV)/.torch
	$(BIN)/python -m pip install -q -e .
	@touch $@

$(VENV)/.installed-dev: pyproject.toml $(VENV)/.installed
	$(BIN)/python -m pip install -q -e '.[dev]'
	@touch $@

data: $(VENV)/.installed
	$(BIN)/ittrna data fetch mnist
	$(BIN)/ittrna data fetch fashion-mnist || { apt-get update -qq && $(BIN)/ittrna data fetch fashion-mnist; }

$(ART)/mlp-mnist.pt: | data
	$(BIN)/ittrna train --model mlp --dataset mnist --epochs 5 --seed 0 --out $@

# the collapse of a normally trained MLP, then one chip (SAF 20 % + sigma 1.0) rescued by tolerance methods
demo: data $(ART)/mlp-mnist.pt
	$(BIN)/ittrna sweep --model $(ART)/mlp-mnist.pt --chips 5 --seed 1000 --out $(ART)/demo
	$(BIN)/ittrna chip make --model $(ART)/mlp-mnist.pt --saf-rate 0.2 --sigma 1.0 --seed 1000 --out $(ART)/demo/chip.npz
	for m in none program remap remap-fat; do \
	  $(BIN)/ittrna tolerate --method $$m --model $(ART)/mlp-mnist.pt --chip $(ART)/demo/chip.npz \
	    --out $(ART)/demo/tuned-$$m.pt --quiet || exit 1; done

test: $(VENV)/.installed-dev data
	ITTRNA_REQUIRE_DATA=1 $(BIN)/python -m pytest -q

# pytest exits 5 when it collects nothing: fine for the optional slow suite, an error for the default one.
test-slow: $(VENV)/.installed-dev data
	ITTRNA_REQUIRE_DATA=1 $(BIN)/python -m pytest -q -m slow || { rc=$$?; [ $$rc -eq 5 ] && echo "no slow tests"; [ $$rc -eq 5 ]; }

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/mypy

bench: data
	$(BIN)/python benchmarks/bench_evaluate.py

clean:
	rm -rf $(VENV) $(ART) .pytest_cache .mypy_cache .ruff_cache
