# Two commands on a fresh machine: `make demo` and `make test`. Both create or reuse .venv.
SHELL := /bin/bash
VENV ?= .venv
PYTHON ?= $(shell command -v python3.11 || command -v python3)
BIN := $(VENV)/bin
STAMP := $(VENV)/.mergebench-installed

.PHONY: venv demo test test-slow lint format clean

# torch first (the CPU build on local disk); anything that pulls a bare `torch` first gets a CUDA build.
$(STAMP): requirements.txt requirements-nodeps.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -r requirements.txt
	$(BIN)/python -m pip install -q --no-deps -r requirements-nodeps.txt
	$(BIN)/python -m pip install -q --no-deps -e .
	touch $(STAMP)

venv: $(STAMP)

demo: venv
	$(BIN)/mergebench tiny

test: lint
	$(BIN)/pytest

test-slow: venv
	$(BIN)/pytest -m slow

# ruff, the import-layer contracts and mypy (configuration of all three in pyproject.toml)
lint: venv
	$(BIN)/ruff check .
	$(BIN)/lint-imports --no-logo
	$(BIN)/mypy

format: venv
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) demo-output .pytest_cache .mypy_cache .import_linter_cache
