# Every target creates or reuses the local virtual environment in .venv on its own, installed from the
# committed lock: exact versions with hashes of every dependency and of the build backend.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
LOCK ?= requirements/lock-cpu.txt
STAMP := $(VENV)/.installed-stamp
# XLA threads of each sweep job (see `bench`).
THREADS ?= 1

.PHONY: install install-cuda12 lock test ci-baseline test-slow test-package docs lint bench bench-reference policies \
	clean chromium

# The lock installs exact versions with hashes, the build backend included (requirements/build.txt), and
# offbench is built with that locked setuptools (--no-build-isolation). The filter hides one message,
# setuptools' "Editable installation" notice: an InformationOnly warning, a note that setuptools can only
# send as a warning. The package maps offbench to the repository root, so its editable install always uses
# setuptools' import finder and always prints the note otherwise.
$(STAMP): pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --require-hashes --no-deps -r $(LOCK)
	PYTHONWARNINGS="ignore:Editable installation:UserWarning" \
		$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

install: $(STAMP)

# NVIDIA GPUs: the same lock plus jax's CUDA 12 plugin and libraries.
install-cuda12:
	$(MAKE) install LOCK=requirements/lock-cuda12.txt

# Re-resolve both locks from pyproject.toml's ranges, requirements/choices.txt (versions held back by
# measurement) and requirements/build.txt (the build backend). A new lock can change generated data and
# scores: regenerate the references afterwards (`make bench-reference`, `make ci-baseline`).
LOCK_OPTIONS = --generate-hashes --universal --fork-strategy fewest --python-version 3.11 \
	-c requirements/choices.txt --quiet
lock: $(STAMP)
	$(BIN)/uv pip compile pyproject.toml requirements/build.txt --extra dev $(LOCK_OPTIONS) \
		-o requirements/lock-cpu.txt
	$(BIN)/uv pip compile pyproject.toml requirements/build.txt --extra dev --extra cuda12 $(LOCK_OPTIONS) \
		-o requirements/lock-cuda12.txt

# The unit tests, then the regression check on returns: the `ci` suite from scratch, its dataset
# regenerated in an empty dataset folder (never one left on the machine), against the committed baseline.
# The check fails when the data differ from the baseline's, naming the recorded facts that differ, so a
# dependency or machine that generates other data cannot pass unnoticed. `make ci-baseline` rewrites it.
CI_DATASETS := build/ci-datasets
test: $(STAMP) chromium
	$(BIN)/python -m pytest -q
	rm -rf build/ci $(CI_DATASETS)
	MINARI_DATASETS_PATH=$(CURDIR)/$(CI_DATASETS) $(BIN)/offbench sweep ci --out build/ci \
		--threads-per-worker $(THREADS)
	$(BIN)/offbench check --results build/ci --baseline results/ci/baseline.parquet --require-same-data

ci-baseline: $(STAMP)
	rm -rf build/ci $(CI_DATASETS)
	MINARI_DATASETS_PATH=$(CURDIR)/$(CI_DATASETS) $(BIN)/offbench sweep ci --out build/ci \
		--threads-per-worker $(THREADS)
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
# WORKERS=N runs N jobs at once (default: one per core; WORKERS=1 runs them one after another), each with
# THREADS XLA threads (default 1). XLA's float results can depend on its thread count, never on the number
# of workers, so with the THREADS the references were made with (1) the rows of any WORKERS equal the
# reference's on a CPU like the one that made it (other CPUs can differ in the last bits).
WORKERS ?=
bench: $(STAMP)
	rm -rf build/default
	$(BIN)/offbench sweep default --out build/default $(if $(WORKERS),--workers $(WORKERS)) \
		$(if $(THREADS),--threads-per-worker $(THREADS))
	$(BIN)/offbench report build/default
	$(BIN)/offbench check --results build/default --baseline results/default/runs

# Regenerates the committed reference run (after a change that alters what an algorithm computes).
bench-reference: $(STAMP)
	rm -rf build/default-reference
	$(BIN)/offbench sweep default --out build/default-reference --threads-per-worker $(THREADS)
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
