# One command to a demo, one to a green test run (see README).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install bytecode demo test test-fast lint format bench docs image-check clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=25.1"
	$(BIN)/python -m pip install --quiet -e ".[postgres]" --group dev
	touch $(STAMP)

install: $(STAMP)

# The editable install imports queuectl from source: compile it once here, or every
# `queuectl` process compiles it again where PYTHONDONTWRITEBYTECODE is set (~50 ms each).
bytecode: $(STAMP)
	$(BIN)/python -m compileall -q queuectl benchmarks

demo: bytecode
	PATH="$(CURDIR)/$(BIN):$$PATH" bash examples/demo.sh

test: bytecode
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/pytest -n auto

# The inner loop: everything but the tests that drive real processes (marked e2e).
test-fast: bytecode
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/pytest -m "not e2e" -n auto -q

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: bytecode
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m benchmarks

docs: $(STAMP)
	$(BIN)/python docs/generate.py

# Builds the container image for real (podman/buildah, offline from a wheelhouse) and runs
# queuectl inside it. Slow on the first run, so it is not part of `make test`.
image-check:
	bash .ci/image-check

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build dist
