# Two commands for a fresh machine (see README.md):
#   make run    create .venv, install, run the whole pipeline (Prefect flow over the DVC stages)
#   make test   install the dev extras and run the test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# `mlflow models serve` and the DVC stages call tools by name: the venv must come first on PATH
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
# no analytics, no update checks: everything runs offline
export DO_NOT_TRACK := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS := 90
export MLFLOW_DISABLE_TELEMETRY := true
export DVC_NO_ANALYTICS := 1
export GX_ANALYTICS_ENABLED := false

.PHONY: run test install install-dev lint repro clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

install: $(VENV)/.installed

install-dev: $(VENV)/.installed-dev

run: $(VENV)/.installed
	$(PY) -m pipeline.flows

repro: $(VENV)/.installed
	$(PY) -m dvc repro

test: $(VENV)/.installed-dev
	$(PY) -m pytest

lint: $(VENV)/.installed-dev
	$(PY) -m ruff check dsfnet pipeline tests bench

clean:
	rm -rf data/prepared models reports/validate reports/monitor mlruns mlflow.db
