# `make run` sets everything up and reproduces the pipeline; `make test` runs the suite;
# `make bench` measures speed (not part of the tests); `make server` starts a shared tracking server;
# `make docs` renders docs/results.md from the committed metrics (tests/test_docs.py checks it is current).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PORT ?= 5000
# One worker: uvicorn's --workers N leaves Nagle on, so each keep-alive request of MLflow's client
# waits ~40 ms for a delayed ACK; one worker answered 5x more requests/s for one client, more for
# 8 too (`python -m benchmarks.tracking_server`).
SERVER_WORKERS ?= 1
# Stage commands call `python`, `dvc` and `mlflow`: take them from the project's venv.
export PATH := $(abspath $(BIN)):$(PATH)
# Offline by design: no usage telemetry from MLflow's UI and server either (the package turns it off for the stages).
export MLFLOW_DISABLE_TELEMETRY ?= true
export DO_NOT_TRACK ?= true

.PHONY: run test venv ui server bench docs lock

run: $(VENV)/.installed
	dvc repro

test: $(VENV)/.installed
	pytest

# Speed figures of this machine (about 4-10 min on 2 cores); writes metrics/bench.json.
bench: $(VENV)/.installed
	python -m benchmarks

# The current run's figures the docs cite (scores, training seconds, bench.json), from metrics/.
docs: $(VENV)/.installed
	python -m retinaseg.compare.docs

venv: $(VENV)/.installed

ui: $(VENV)/.installed
	@echo "MLflow UI, the project's runs: $$(MLFLOW_TRACKING_URI=sqlite:///$(CURDIR)/mlflow.db python -c 'from retinaseg.tracking import mlflow_runs; print(mlflow_runs.runs_table_url("http://127.0.0.1:$(PORT)"))')"
	mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlflow.db --port $(PORT)

# A tracking server and Model Registry that several machines (or queued experiments) log to:
# runs in mlflow-server.db, artifacts uploaded through the server into mlflow-server-artifacts/.
# Without MLflow's job runner (GenAI jobs, unused here: seven more processes).
server: $(VENV)/.installed
	@echo "MLflow tracking server on http://127.0.0.1:$(PORT); in the shells that run the pipeline:"
	@echo "export MLFLOW_TRACKING_URI=http://127.0.0.1:$(PORT)"
	MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false mlflow server --host 127.0.0.1 --port $(PORT) --workers $(SERVER_WORKERS) \
		--backend-store-uri sqlite:///$(CURDIR)/mlflow-server.db \
		--serve-artifacts --artifacts-destination $(CURDIR)/mlflow-server-artifacts

# GPU=1 (`make run GPU=1`, on a fresh venv) installs requirements-gpu.txt: tensorflow[and-cuda] with NVIDIA's
# CUDA and cuDNN wheels in place of tensorflow-cpu; everything else is pinned alike.
REQUIREMENTS := $(if $(GPU),requirements-gpu.txt,requirements.txt)

$(VENV)/.installed: $(REQUIREMENTS) pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r $(REQUIREMENTS)
	$(BIN)/pip install --quiet --no-deps -e .
	touch $@

# Regenerate the pinned environments from pyproject.toml's ranges (keeping every pin that still fits).
lock:
	$(BIN)/pip install --quiet uv
	for extra in cpu gpu; do \
		out=$$([ $$extra = cpu ] && echo requirements.txt || echo requirements-gpu.txt); \
		$(BIN)/uv pip compile pyproject.toml --extra $$extra --extra test --python-version 3.11 \
			--python-platform x86_64-unknown-linux-gnu -o $$out -q; \
	done
