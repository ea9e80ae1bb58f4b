# The two commands of the README. Each does all set-up on a fresh machine: a venv, the CPU
# build of torch first (so pip never pulls a multi-GB CUDA build), the project; then
# `make pipeline` runs the whole default pipeline and `make test` the suite.
VENV ?= .venv
TORCH ?= torch==2.13.0
CONFIG ?= config/config.yaml
BIN := $(VENV)/bin

.PHONY: install pipeline test lint

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $@

pipeline: install
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/snakemake --cores all --configfile $(CONFIG)

lint: install
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

test: lint
	$(BIN)/pytest
