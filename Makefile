# Every target creates .venv and installs the project on first use (and again when
# pyproject.toml changes), so a fresh clone needs only Python 3.11+ and make.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo up test lint typecheck unit integration bench clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "contactsync needs Python 3.11 or newer")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

demo: $(STAMP)             ## run the whole system on the embedded default and show it working
	$(BIN)/contactsync demo

up: $(STAMP)               ## run the whole system until Ctrl-C
	$(BIN)/contactsync up

test: lint typecheck       ## lint, type-check and run every test
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check .

typecheck: $(STAMP)
	$(BIN)/mypy worker tasks producers

unit: $(STAMP)             ## tests that need no server
	$(BIN)/python -m pytest -m "not integration"

bench: $(STAMP)            ## benchmarks; results printed and written under bench/results/
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .contactsync .pytest_cache .mypy_cache .ruff_cache *.egg-info
