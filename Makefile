# Set-up and entry points. `make demo` and `make test` each build .venv on first use (CPU torch pinned).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo figures test lint typecheck unit bench bench-quick clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check --upgrade pip
	# The CPU build first: a range the package accepts that 2.13.0 satisfies, so no CUDA download follows.
	$(BIN)/python -m pip install -q --disable-pip-version-check torch==2.13.0
	$(BIN)/python -m pip install -q --disable-pip-version-check -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/caa-lens demo --out results/demo

# Redraw the README gallery from the main job's saved results (no model needed).
figures: $(STAMP)
	$(BIN)/caa-lens figures results/demo --out figures/gallery

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/python -m pytest -m "not slow" -q

test: lint typecheck $(STAMP)
	$(BIN)/python -m pytest -q --durations=15

# Benchmarks against the peers and the limit (see benchmarks/README.md); writes the README's table.
bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py --out results/benchmarks.jsonl --markdown results/benchmarks.md

bench-quick: $(STAMP)
	$(BIN)/python benchmarks/run_all.py --quick --out results/benchmarks-quick.jsonl --markdown results/benchmarks-quick.md

clean:
	rm -rf $(VENV) results .pytest_cache .mypy_cache .ruff_cache
