# The README's commands. Each target sets up what it needs on a fresh machine.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test lint bench clean-venv

$(BIN)/lasp-streams: pyproject.toml
	@bash ops/install-system-deps.sh
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $@

## demo: the main job (see README)
demo: $(BIN)/lasp-streams
	$(BIN)/lasp-streams kafka fetch
	$(BIN)/lasp-streams demo ad-counter

## test: unit tests (no broker) and integration tests (a real broker the fixtures start)
test: $(BIN)/lasp-streams
	$(BIN)/lasp-streams kafka fetch
	$(BIN)/python -m pytest

lint: $(BIN)/lasp-streams
	$(BIN)/ruff check lasp_streams tests topologies
	$(BIN)/lint-imports
	$(BIN)/mypy

clean-venv:
	rm -rf $(VENV)
