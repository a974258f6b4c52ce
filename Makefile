# Every target creates .venv and installs the project on first use (and again when
# pyproject.toml changes), so a fresh clone needs only Python 3.11+ and make.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo up test test-tools lint typecheck unit integration bench screenshots clean

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

# Two pytest processes, each module's tests in one of them (its fleet is started once): most
# integration tests wait on workers, servers and timers, so two share 2 cores well.
# TEST_WORKERS=0 runs them in this process, one after another.
TEST_WORKERS ?= 2

test: lint typecheck test-tools  ## lint, type-check and run every test
	$(BIN)/python -m pytest $(if $(filter-out 0,$(TEST_WORKERS)),-n $(TEST_WORKERS) --dist loadfile)

# The console's browser tests drive Debian's chromium, and the alert rules' tests run promtool
# (Debian's prometheus package): installed here when missing, where apt-get runs as root. Where
# they cannot be, those tests skip and say why. (Never `playwright install`: it downloads a
# browser build of its own.)
test-tools:
	@if [ -x /usr/bin/chromium ] && command -v promtool >/dev/null; then exit 0; fi; \
	if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get install -y -qq --no-install-recommends chromium prometheus >/dev/null 2>&1 || \
	  { apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium prometheus; } || \
	  echo "note: could not install chromium and prometheus: the browser and promtool tests skip"; \
	else echo "note: no root apt-get here: the browser and promtool tests skip without chromium and promtool"; fi

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/xenon --max-absolute C worker tasks producers

typecheck: $(STAMP)
	$(BIN)/mypy worker tasks producers bench

unit: $(STAMP)             ## tests that need no server
	$(BIN)/python -m pytest -m "not integration"

bench: $(STAMP)            ## benchmarks; results printed and written under bench/results/
	$(BIN)/python -m bench

screenshots: $(STAMP) test-tools  ## rewrite the README's screenshots of the console
	CONTACTSYNC_SCREENSHOTS=docs/screenshots $(BIN)/python -m pytest tests/test_console_browser.py

clean:
	rm -rf $(VENV) .contactsync .pytest_cache .mypy_cache .ruff_cache *.egg-info
