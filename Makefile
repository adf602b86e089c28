# Fresh machine: `make demo` or `make test` set everything up themselves.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: setup demo test test-gpu lint bench bench-merge bench-check bench-registry bench-api clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" bash examples/demo.sh

test: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy
	$(PY) -m pytest $(PYTEST_ARGS)

# On a machine with CUDA: the differential tests' cuda parametrisations only.
test-gpu: setup
	$(PY) -m pytest -m gpu -rs

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy

bench: bench-merge bench-check bench-registry

bench-merge: setup
	$(PY) benchmarks/merge_bench.py

bench-check: setup
	$(PY) benchmarks/check_bench.py

bench-registry: setup
	$(PY) benchmarks/registry_bench.py

# The HTTP API under load (loopback only, ~3-4 min); BENCH_API_ARGS="--workers 2 --rate 400"
bench-api: setup
	$(PY) benchmarks/api_load_bench.py $(BENCH_API_ARGS)

clean:
	rm -rf $(VENV) demo-out bench-out .pytest_cache .ruff_cache .mypy_cache
