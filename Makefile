# Two commands on a fresh machine: `make demo` and `make test`. Both create or reuse .venv.
SHELL := /bin/bash
VENV ?= .venv
PYTHON ?= $(shell command -v python3.11 || command -v python3)
BIN := $(VENV)/bin
STAMP := $(VENV)/.mergebench-installed

.PHONY: venv demo test test-slow lint format clean check-gpu-requirements

# The venv is built with uv (parallel downloads and installs; pip took 5 minutes of a fresh `make demo`). uv itself
# comes from PyPI, installed by pip into a bootstrap folder outside the repo, reused by every clone.
UV_VERSION := 0.13.9
UV_HOME ?= $(HOME)/.cache/mergebench/uv-$(UV_VERSION)
UV := $(UV_HOME)/bin/uv

# uv reads none of pip's configuration, so this machine's is handed over: its find-links (the CPU build of torch
# lies on local disk), extra indexes and constraint file, with pip's choice of the best match over all of them.
# Without the find-links uv would take PyPI's CUDA build of torch (several GB). Evaluated only when the venv is built.
pip_setting = $(shell $(PYTHON) -m pip config list 2>/dev/null | sed -n "s/^\(global\|install\|:env:\)\.$(1)='\(.*\)'$$/\2/p" | tail -n 1)
UV_SOURCES = $(addprefix --find-links ,$(call pip_setting,find-links)) \
	$(addprefix --extra-index-url ,$(call pip_setting,extra-index-url)) \
	$(addprefix --constraints ,$(call pip_setting,constraint)) --index-strategy unsafe-best-match
# --compile-bytecode: this machine sets PYTHONDONTWRITEBYTECODE, so without .pyc files written at install every
# process (the demo's child merges, the tests' CLI runs) compiled torch, transformers and lighteval again: 16 s of
# imports instead of 6 s. The package's own sources are compiled once too (a stale .pyc is simply not used).
UV_INSTALL = $(UV) pip install --quiet --compile-bytecode --python $(BIN)/python $(UV_SOURCES)

$(UV):
	$(PYTHON) -m pip install -q --disable-pip-version-check --upgrade --target $(UV_HOME) uv==$(UV_VERSION)

# torch first (the CPU build on local disk); anything that pulls a bare `torch` first gets a CUDA build.
# --seed: pip and setuptools in the venv, as `python -m venv` gives (`pip wheel --no-build-isolation` needs them).
$(STAMP): requirements.txt requirements-nodeps.txt pyproject.toml | $(UV)
	test -x $(BIN)/python || $(UV) venv --quiet --seed --python $(PYTHON) $(VENV)
	$(UV_INSTALL) torch==2.13.0
	$(UV_INSTALL) -r requirements.txt
	$(UV_INSTALL) --no-deps -r requirements-nodeps.txt
	$(UV_INSTALL) --no-deps -e .
	$(BIN)/python -m compileall -q -j 0 mergebench space > /dev/null
	touch $(STAMP)

venv: $(STAMP)

demo: venv
	$(BIN)/mergebench tiny

# The suite on two workers (pytest-xdist): a good part of it waits on subprocesses, servers and sockets, so two
# processes on 2 cores took it from 17 to 10.5–11.3 min. loadscope keeps each module (and its module fixtures) on
# one worker. `make test PYTEST_WORKERS=0` runs it in this process, as a bare `pytest` does.
PYTEST_WORKERS ?= 2
test: lint
	$(BIN)/pytest --numprocesses $(PYTEST_WORKERS) --dist loadscope

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

# The GPU requirements (vLLM and its CUDA torch) are never installed here, but they must resolve: with lighteval's
# pin, for the Linux x86-64 GPU machines they are for (metadata only, nothing downloaded; run by .ci/run).
check-gpu-requirements: | $(UV)
	grep -E '^lighteval==' requirements.txt | $(UV) pip compile --quiet --python-version 3.11 \
		--python-platform x86_64-manylinux_2_28 $(UV_SOURCES) requirements-gpu.txt - -o /dev/null
