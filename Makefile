# Every target creates or reuses the local virtual environment in .venv on its own.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: install test ci-baseline test-slow test-package docs lint bench bench-reference policies clean chromium

# The filter hides one message, setuptools' "Editable installation" notice: an InformationOnly warning, a note
# that setuptools can only send as a warning. The package maps offbench to the repository root, so its
# editable install always uses setuptools' import finder and always prints the note otherwise.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	PYTHONWARNINGS="ignore:Editable installation:UserWarning" $(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

# The unit tests, then the regression check on returns: the `ci` suite from scratch (its dataset is
# generated if missing) against the committed baseline. `make ci-baseline` rewrites the baseline.
test: $(STAMP) chromium
	$(BIN)/python -m pytest -q
	rm -rf build/ci
	$(BIN)/offbench sweep ci --out build/ci
	$(BIN)/offbench check --results build/ci --baseline results/ci/baseline.parquet

ci-baseline: $(STAMP)
	rm -rf build/ci
	$(BIN)/offbench sweep ci --out build/ci
	$(BIN)/offbench check --results build/ci --baseline results/ci/baseline.parquet --write-baseline

# Every slow test: the learning tests, the long fault-injection run, and the package test below.
test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

# The wheel installed into a fresh virtual environment and used in a directory with no checkout (slow:
# about 2-3 minutes on 2 cores; it needs the package index for the dependencies). CI runs it after `make test`.
test-package: $(STAMP)
	$(BIN)/python -m pytest -q -m slow tests/test_packaging.py

# Regenerates the schema table of docs/results.md from the code's column descriptions (a test checks it).
docs: $(STAMP)
	$(BIN)/python -m offbench.bench.schema_doc docs/results.md

lint: $(STAMP)
	$(BIN)/ruff check .

# Trains the default suite from scratch into build/default, writes its report there, then checks the fresh
# rows against the committed reference run results/default with the regression check's seed-noise rule.
bench: $(STAMP)
	rm -rf build/default
	$(BIN)/offbench sweep default --out build/default
	$(BIN)/offbench report build/default
	$(BIN)/offbench check --results build/default --baseline results/default/runs

# Regenerates the committed reference run (after a change that alters what an algorithm computes).
bench-reference: $(STAMP)
	rm -rf build/default-reference
	$(BIN)/offbench sweep default --out build/default-reference
	$(BIN)/offbench report build/default-reference
	rm -rf build/default-reference/policies
	rm -rf results/default && mv build/default-reference results/default

# The leaderboard HTML test renders the page in headless Chromium (Debian's package); without root or
# apt the test is skipped with its reason.
chromium:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
		{ command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && \
		  (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) || \
		  echo "chromium not installed: the HTML rendering test will be skipped"; }

policies: $(STAMP)
	for env in hopper halfcheetah walker2d; do \
		$(BIN)/python -m offbench.datasets.generate.policies_cli train --env $$env --steps 1000000 --seed 0 || exit 1; \
	done

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
