# Every target creates or reuses the local virtual environment in .venv on its own.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: install test ci-baseline test-slow lint bench bench-reference policies clean chromium

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
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

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

lint: $(STAMP)
	$(BIN)/ruff check .

# Trains the default suite from scratch into build/default, writes its report there, then checks the fresh
# rows against the committed reference run results/default with the regression check's seed-noise rule.
# WORKERS=N runs N jobs at once (default: one per core; WORKERS=1 runs them one after another), each with
# its share of the cores, or THREADS XLA threads (THREADS=<cores>: rows bit-identical to WORKERS=1's).
WORKERS ?=
THREADS ?=
bench: $(STAMP)
	rm -rf build/default
	$(BIN)/offbench sweep default --out build/default $(if $(WORKERS),--workers $(WORKERS)) \
		$(if $(THREADS),--threads-per-worker $(THREADS))
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
