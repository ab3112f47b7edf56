# TempMe-STOP. `make demo` and `make test` do all set-up on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# Telemetry off everywhere.
export DO_NOT_TRACK := 1
export MLFLOW_DISABLE_TELEMETRY := true
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DVC_NO_ANALYTICS := 1
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS := 120

.PHONY: setup demo test test-fast lint clean

setup: $(STAMP)

# torch is installed first with exact versions: on this platform (x86_64, CPython 3.11) pip
# takes them from the local wheel cache; elsewhere pyproject's ranges decide.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1 || $(PY) -m pip install -q 'torch<=2.14.1' 'torchvision<=0.29.1'
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: setup
	$(BIN)/dvc repro

test: setup
	$(BIN)/pytest

test-fast: setup
	$(BIN)/pytest -m "not slow"

lint: setup
	$(BIN)/ruff check src pipelines tests benchmarks

clean:
	rm -rf data/demo data/frames outputs reports checkpoints
