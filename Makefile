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

.PHONY: run test install install-dev lint repro clean ui ui-stop serve-flow retrain

PREFECT_PORT ?= 4200
MLFLOW_PORT ?= 5000
PREFECT_UI_URL := http://127.0.0.1:$(PREFECT_PORT)

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

# the Prefect server (flows, deployments, schedules) and the MLflow UI (runs, models), on 127.0.0.1
ui: $(VENV)/.installed
	@$(VENV)/bin/prefect server start --host 127.0.0.1 --port $(PREFECT_PORT) > .prefect-server.log 2>&1 & echo $$! > .prefect-server.pid
	@$(VENV)/bin/mlflow ui --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 --port $(MLFLOW_PORT) > .mlflow-ui.log 2>&1 & echo $$! > .mlflow-ui.pid
	@echo "Prefect UI: $(PREFECT_UI_URL)   (logs: .prefect-server.log)"
	@echo "MLflow UI:  http://127.0.0.1:$(MLFLOW_PORT)   (logs: .mlflow-ui.log)"
	@echo "next: make serve-flow   (the nightly deployment); stop both with: make ui-stop"

ui-stop:
	-@kill $$(cat .prefect-server.pid .mlflow-ui.pid 2>/dev/null) 2>/dev/null; rm -f .prefect-server.pid .mlflow-ui.pid

# serve the scheduled deployment (params.yaml flow.cron) against the server `make ui` started
serve-flow: $(VENV)/.installed
	PREFECT_API_URL=$(PREFECT_UI_URL)/api $(PY) -m pipeline.deploy serve

# run the pipeline only if DVC reports changed data, params or code (what CI runs)
retrain: $(VENV)/.installed
	$(PY) -m pipeline.retrain_if_changed

lint: $(VENV)/.installed-dev
	$(PY) -m ruff check dsfnet pipeline tests bench
	$(VENV)/bin/hadolint Dockerfile

clean:
	rm -rf data/prepared models reports/validate reports/monitor mlruns mlflow.db
