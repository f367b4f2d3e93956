# `make run` sets everything up and reproduces the pipeline; `make test` runs the suite;
# `make bench` measures speed (not part of the tests).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Stage commands call `python`, `dvc` and `mlflow`: take them from the project's venv.
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: run test venv ui bench

run: $(VENV)/.installed
	dvc repro

test: $(VENV)/.installed
	pytest

# Speed figures of this machine (about 4-10 min on 2 cores); writes metrics/bench.json.
bench: $(VENV)/.installed
	python -m benchmarks

venv: $(VENV)/.installed

ui: $(VENV)/.installed
	mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlflow.db

$(VENV)/.installed: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.txt
	$(BIN)/pip install --quiet --no-deps -e .
	touch $@
