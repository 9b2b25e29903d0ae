# ua3dtalk — run `make help` for the list of targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export WANDB_MODE ?= offline
export HF_HUB_OFFLINE ?= 1
export PYTHONUNBUFFERED := 1

.PHONY: help setup test test-fast demo demo-full bench lint clean sweep tables notebooks evaluators video

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

# uv installs the same pins as pip in a fraction of the time (parallel downloads and unpacking); when uv
# cannot be installed or fails, pip does the install. The C++ kernels are built once, here (both at once).
$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet uv 2>/dev/null && $(VENV)/bin/uv pip install --python $(PY) -e '.[dev,preprocess]' \
	  || { $(PY) -m pip install --upgrade pip >/dev/null && $(PY) -m pip install -e '.[dev,preprocess]'; }
	$(PY) -m ua3dtalk.utils.cpp_ext
	touch $(STAMP)

setup: $(STAMP)  ## create .venv and install the package editable with [dev,preprocess] (idempotent)

# The suite runs on pytest-xdist workers (a dev dependency): one per CPU core, at most 2 (measured on 2 cores:
# ≈ 11 min instead of ≈ 23.5 min in one process; each worker builds the session fixtures it needs, and
# test_learning's ≈ 7 min file bounds the wall time, so more workers would mostly repeat work), none on a
# 1-core machine; TEST_WORKERS=N overrides (0: one process, as a plain `pytest` does). --dist loadfile keeps a
# test file on one worker, so module-scoped fixtures are built once (tests/conftest.py also keeps the metrics
# files that share trained evaluators together); --no-loadscope-reorder keeps the order tests/conftest.py gives
# the files (slowest first, so both workers finish together). tests/conftest.py gives each worker, and the
# processes its tests start, one torch / OpenMP thread. Without pytest-xdist (an older .venv) the suite runs in
# one process.
TEST_WORKERS ?= $(shell n=$$(nproc 2>/dev/null || echo 1); if [ "$$n" -gt 2 ]; then n=2; elif [ "$$n" -lt 2 ]; then n=0; fi; echo $$n)
XDIST = $(if $(filter-out 0,$(TEST_WORKERS)),$(shell $(PY) -c 'import xdist' 2>/dev/null \
  && echo --numprocesses=$(TEST_WORKERS) --dist=loadfile --no-loadscope-reorder))

test: setup  ## run the whole test suite (CPU; slow tests included; 2 xdist workers on ≥ 2 cores)
	$(PY) -m pytest $(XDIST)

test-fast: setup  ## run the test suite without the tests marked slow
	$(PY) -m pytest $(XDIST) -m "not slow"

demo: setup  ## the first run: set up, run the main job end to end (quick profile, ≤ 10 min), report with pictures in outputs/demo
	$(PY) -m ua3dtalk.cli.demo --profile quick --out outputs/demo $(if $(SEEDS),--seeds $(SEEDS))

demo-full: setup  ## the demo-scale run the README's results come from (3,000 face steps; SEEDS=0,1,2: mean ± 95 % CI) → outputs/demo-full
	$(PY) -m ua3dtalk.cli.demo --profile full --out outputs/demo-full $(if $(SEEDS),--seeds $(SEEDS))

video: setup  ## your own video end to end on a CPU: VIDEO=my.mp4 AUDIO=speech.wav → outputs/video/<name>/report.md
	VIDEO='$(VIDEO)' AUDIO='$(AUDIO)' NAME='$(NAME)' DATA='$(DATA)' EVALUATORS='$(EVALUATORS)' \
	  EXPRESSION='$(EXPRESSION)' ARGS='$(ARGS)' scripts/own_video.sh

sweep: setup  ## the ablation table as one sweep (CPU, demo scale; JOBS=2: two runs at a time; SWEEP=slurm for a cluster; ARGS=hydra overrides)
	JOBS='$(JOBS)' SEEDS='$(SEEDS)' scripts/sweep_ablation.sh $(or $(SWEEP),local) $(ARGS)

tables: setup  ## paper/ablation tables from outputs/runs (md + latex) into outputs/tables
	@mkdir -p outputs/tables
	@for t in paper_t1 paper_t2 ablation; do for f in md latex; do \
	  e=$$( [ $$f = md ] && echo md || echo tex ); \
	  $(PY) -m ua3dtalk.cli.tables --runs $(or $(RUNS),outputs/runs) --table $$t --format $$f \
	    --out outputs/tables/$$t.$$e >/dev/null && echo "  outputs/tables/$$t.$$e"; \
	done; done; true

EVAL_DATA ?= data/synth_small_emotional/synth0
evaluators: setup  ## train the metric evaluators (landmarks, expression, emotion, SyncNet) of the synthetic preset into data/evaluators/synth_small
	test -d $(EVAL_DATA) || $(PY) -m ua3dtalk.cli.synth --out $(dir $(EVAL_DATA)) --preset small --emotional --features ''
	$(PY) -m ua3dtalk.cli.evaluators train --data $(EVAL_DATA) --out data/evaluators/synth_small --epochs 15 --sync-steps 300

notebooks: setup  ## execute the notebooks on the tiny synthetic dataset (outputs stay stripped in git)
	$(PY) -m pytest tests/experiments/test_notebooks.py -q

bench: setup  ## run every benchmark in benchmarks/ (ratio tables, 2 threads; BENCH="render model" for some)
	$(PY) -m ua3dtalk.cli.bench $(or $(BENCH),all)

lint: setup  ## ruff
	$(PY) -m ruff check src tests benchmarks

clean:  ## remove caches and outputs (keeps .venv; `rm -rf .venv` to reinstall)
	rm -rf outputs .pytest_cache .ruff_cache build src/*.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
