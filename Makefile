# Two entry points for a fresh clone: `make run` (set up, then `dvc repro` the default pipeline)
# and `make test` (set up, then run the tests). Both create or refresh .venv from pyproject.toml.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export MLFLOW_DISABLE_TELEMETRY := true
export DVC_NO_ANALYTICS := 1
export RAY_USAGE_STATS_ENABLED := 0

.PHONY: setup run test smoke lint pretrain plots clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	touch $@

# The pipeline's commands (`python pipelines/...`) must find the venv's python: put it first.
run: $(STAMP)
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(VENV)/bin/dvc repro

pretrain: $(STAMP)
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(VENV)/bin/dvc repro pretrain

# `dvc plots show` as a page that renders offline (Vega inline): dvc_plots/index.html
plots: $(STAMP)
	$(PY) -m sdlora plots

# Two pytest processes: one alone leaves a core idle while a test waits for Ray workers or DVC
# stages to start; two keep both cores busy. `--dist loadfile` keeps each file in one process:
# a file's module fixtures (one `dvc repro` project, one Ray session) and its tests' order hold.
# --no-loadscope-reorder: files go out longest first (tests/conftest.py, LONGEST_FIRST).
# -m "not smoke": two presets' `reproduce --smoke` run here, every preset's in `make smoke`.
test: $(STAMP)
	$(PY) -m ruff check sdlora tests benchmarks pipelines docs/examples
	$(PY) -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder --durations=15 -m "not smoke"

# `reproduce --smoke` of every preset (tests/reproduce/test_smoke.py): CI runs it after `make test`.
# --dist load: the smokes share out between the two processes, each with its own Ray.
smoke: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist load tests/reproduce/test_smoke.py

lint: $(STAMP)
	$(PY) -m ruff check sdlora tests benchmarks pipelines docs/examples
	$(PY) -m ruff format --check sdlora tests benchmarks pipelines docs/examples

# results/ and dvc.lock stay: git keeps them (the committed default is the baseline to diff against)
clean:
	rm -rf runs artifacts data/prepared mlflow.db mlartifacts dvc_plots
