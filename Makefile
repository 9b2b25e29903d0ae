# ua3dtalk — run `make help` for the list of targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export WANDB_MODE ?= offline
export HF_HUB_OFFLINE ?= 1
export PYTHONUNBUFFERED := 1

.PHONY: help setup test test-fast demo bench lint clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip >/dev/null
	$(PY) -m pip install -e '.[dev]'
	$(PY) -c "from ua3dtalk.render import cpu_backend_status; print('cpu kernel:', cpu_backend_status(build=True))"
	touch $(STAMP)

setup: $(STAMP)  ## create .venv and install the package editable with [dev] (idempotent)

test: setup  ## run the whole test suite (CPU; slow tests included)
	$(PY) -m pytest

test-fast: setup  ## run the test suite without the tests marked slow
	$(PY) -m pytest -m "not slow"

demo: setup  ## set up, then run the demo end to end and write a report with pictures to outputs/demo
	$(PY) -m ua3dtalk.cli.demo --out outputs/demo

bench: setup  ## run the benchmarks (ratio tables, 2 threads)
	$(PY) benchmarks/render.py

lint: setup  ## ruff
	$(PY) -m ruff check src tests benchmarks

clean:  ## remove caches and outputs (keeps .venv; `rm -rf .venv` to reinstall)
	rm -rf outputs .pytest_cache .ruff_cache build src/*.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
