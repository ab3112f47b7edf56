# TempMe-STOP. `make demo` and `make test` do all set-up on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# Telemetry off everywhere: the variables of pipelines/telemetry.env (the one list), exported.
include pipelines/telemetry.env
export $(shell sed -n 's/^\([A-Z_][A-Z0-9_]*\)=.*/\1/p' pipelines/telemetry.env)
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS := 120

# Prefect: a local server, process workers for the GPU work pool, the deployments (prefect.yaml).
PREFECT_HOST ?= 127.0.0.1
PREFECT_PORT ?= 4200
PREFECT_POOL ?= gpu-pool
GPU ?= 0
QUEUE ?= default
PREFECT_API := http://$(PREFECT_HOST):$(PREFECT_PORT)/api
# Tools run from the venv, and DVC stages find `tempstop` and `python` there too.
RUN := PATH="$(abspath $(BIN)):$$PATH"
comma := ,

.PHONY: setup os-deps demo smoke metrics test test-fast lint clean mlflow-ui tensorboard \
	prefect-server prefect-worker deploy gpu-check serve serve-mlflow stack-up stack-down

setup: $(STAMP)

# torch is installed first with exact versions: on this platform (x86_64, CPython 3.11) pip
# takes them from the local wheel cache; elsewhere pyproject's ranges decide.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1 || $(PY) -m pip install -q 'torch<=2.14.1' 'torchvision<=0.29.1'
	$(PY) -m pip install -q -e '.[pipeline,ray,dev]'
	touch $(STAMP)

# What the tests need from the system: Debian's chromium (the search page's browser test, driven
# by playwright; browsers cannot be downloaded) and PostgreSQL 15 (the team stack's tests).
# Installed with apt when running as root; otherwise those tests are skipped with a message.
os-deps:
	@if ! command -v chromium >/dev/null || [ ! -x /usr/lib/postgresql/15/bin/initdb ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    (apt-get install -y -q chromium postgresql-15 >/dev/null 2>&1 || \
	     (apt-get update -q >/dev/null && apt-get install -y -q chromium postgresql-15 >/dev/null)); \
	  else echo "note: chromium / postgresql-15 missing and not root: their tests will be skipped"; fi; fi

# The whole pipeline on the generated demo dataset, on whatever device is there (CPU is fine):
# every DVC stage, the last one indexing the test split for search (outputs/index). Ends by
# promoting the new registry version if it beats the champion (tempstop promote).
demo: setup
	$(RUN) dvc repro
	$(RUN) tempstop promote
	@$(MAKE) --no-print-directory metrics

# A tiny end-to-end run (about a minute) through the Prefect flow, in a temporary Prefect server
# and a scratch folder (SMOKE_DIR, default a new temporary one) holding this checkout's dvc.yaml
# and params.yaml: run here, it would overwrite the demo's data, model, metrics and registry.
smoke: setup
	@dir="$${SMOKE_DIR:-$$(mktemp -d -t tempstop-smoke.XXXXXX)}" && mkdir -p "$$dir" && \
	  cp dvc.yaml params.yaml "$$dir/" && \
	  echo "smoke run in $$dir (this checkout's data, outputs, metrics and mlflow.db are not touched)" && \
	  cd "$$dir" && $(RUN) PREFECT_LOGGING_EXTRA_LOGGERS=tempstop,tempstop_pipelines \
	  python -m tempstop_pipelines.flows.retrain --smoke

metrics:
	@echo; echo "== test-split metrics (dvc metrics show) =="
	@$(RUN) dvc metrics show
	@echo; echo "Plots:      metrics/plots/recall_at_k.png, metrics/plots/training_curves.png (or: dvc plots show)"
	@echo "MLflow:     $(BIN)/mlflow ui --backend-store-uri sqlite:///mlflow.db   (make mlflow-ui), http://127.0.0.1:5000"
	@echo "TensorBoard: $(BIN)/tensorboard --logdir outputs   (make tensorboard), http://127.0.0.1:6006"
	@echo "Experiments: $(BIN)/dvc exp run -S training.mode=sequential; $(BIN)/dvc exp show"
	@echo "Search:     make serve   (tempstop serve --index outputs/index), http://127.0.0.1:8000"

mlflow-ui: setup
	$(BIN)/mlflow ui --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 --port 5000

tensorboard: setup
	$(BIN)/tensorboard --logdir outputs --host 127.0.0.1 --port 6006

# Server state (sqlite) lives in .prefect/ of this checkout; stop with Ctrl-C.
prefect-server: setup
	PREFECT_HOME="$(CURDIR)/.prefect" $(BIN)/prefect server start --host $(PREFECT_HOST) --port $(PREFECT_PORT)

# One process worker per GPU: `make prefect-worker GPU=1` on the second card (each worker from
# its own checkout: runs write outputs/ of the checkout); --limit 1: one run at a time.
# Multi-GPU runs: `make prefect-worker GPU=0,1,2,3 QUEUE=multi-gpu`.
prefect-worker: setup
	PREFECT_API_URL=$(PREFECT_API) TEMPSTOP_ROOT="$(CURDIR)" CUDA_VISIBLE_DEVICES=$(GPU) \
	PREFECT_LOGGING_EXTRA_LOGGERS=tempstop,tempstop_pipelines $(RUN) \
	prefect worker start --pool $(PREFECT_POOL) --work-queue $(QUEUE) --type process --limit 1 \
	  --name "$$(hostname)-gpu$(subst $(comma),-,$(GPU))"

deploy: setup
	PREFECT_API_URL=$(PREFECT_API) $(BIN)/prefect work-pool inspect $(PREFECT_POOL) >/dev/null 2>&1 || \
	PREFECT_API_URL=$(PREFECT_API) $(BIN)/prefect work-pool create $(PREFECT_POOL) --type process
	PREFECT_API_URL=$(PREFECT_API) TEMPSTOP_ROOT="$(CURDIR)" $(RUN) prefect --no-prompt deploy --all

test: setup os-deps
	$(BIN)/pytest

test-fast: setup
	$(BIN)/pytest -m "not slow"

lint: setup
	$(BIN)/ruff check src pipelines tests benchmarks

clean:
	rm -rf data/demo data/frames data/frames_cache outputs reports metrics checkpoints

# On a CUDA machine: AMP (bf16/fp16) memory and speed, inference vs meanP, NCCL DDP, TempMe parity
# (benchmarks/results/gpu.json). Without a GPU it says so and exits 0.
gpu-check: setup
	$(PY) benchmarks/gpu_check.py

# Search: `make demo` indexes the demo test split into outputs/index (dvc.yaml's index stage);
# this serves it with its web page on http://127.0.0.1:8000 (SERVE_PORT=...).
SERVE_PORT ?= 8000
serve: setup
	$(RUN) tempstop serve --index outputs/index --port $(SERVE_PORT)

# The registry's champion as an MLflow model server: POST /invocations with
# {"dataframe_split": {"columns": ["text"], "data": [["a red circle moves left"]]}} -> embeddings.
# PATH holds the venv's bin, where MLflow finds the server it starts.
MLFLOW_MODEL ?= models:/tempstop-unified@champion
MLFLOW_SERVE_PORT ?= 5001
serve-mlflow: setup
	$(RUN) MLFLOW_TRACKING_URI="$${MLFLOW_TRACKING_URI:-sqlite:///mlflow.db}" mlflow models serve \
	  -m "$(MLFLOW_MODEL)" --env-manager local --host 127.0.0.1 --port $(MLFLOW_SERVE_PORT)

# The team stack on this machine (PostgreSQL + MLflow server + Prefect server, state in .stack/):
# `make stack-up` prints the MLFLOW_TRACKING_URI / PREFECT_API_URL each worker exports.
stack-up: setup
	$(RUN) tempstop stack up
stack-down: setup
	$(RUN) tempstop stack down
